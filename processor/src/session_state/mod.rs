//! The sessions of the partitions this processor owns, held in memory and updated from each
//! written batch, so the session topic is published without reading ClickHouse.
//!
//! A session lives in one partition when the raw topic is keyed by session, as its contract asks
//! and the bridge does; a session with a message keyed otherwise is never held, and is read
//! back from ClickHouse, which has all of it. The processor holds a session from the first of its
//! events it writes, or as the [`changelog`] kept it when its partition was assigned (after a
//! restart or a rebalance). A session it meets otherwise may have earlier events in ClickHouse
//! (it left memory, or its state could not be restored), and is published as ClickHouse holds
//! it. Which sessions ClickHouse may hold is [`known`]: reloaded when partitions are assigned.
//!
//! Memory is bounded: a session idle for `idle_seconds` (by `received_at`, against the newest
//! seen) or the least recently written past `max_sessions_in_memory` leaves memory, joining the
//! known sessions, and its state leaves the changelog. The sessions of a revoked partition leave
//! memory at once, their state kept for the partition's next owner.

pub mod changelog;
mod known;
mod sets;
mod state;

use std::collections::hash_map::Entry;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use metrics::{counter, gauge, histogram};
use tracing::{info, warn};
use uuid::Uuid;

use crate::batch::Batch;
use crate::rows::SessionSummary;
use crate::source::OwnershipChanges;
use changelog::{Changelog, Refused, StateChange, MAX_STATE_BYTES};
use known::KnownSessions;
use state::{SessionState, TypeNames};

/// How a session held in memory stands.
struct Held {
    application: String,
    state: SessionState,
    /// The number of the batch that last changed it.
    written_in: u64,
}

/// What a batch changed: the sessions held in memory as they now stand, those to read back
/// from ClickHouse, and the changelog's messages (in order).
#[derive(Debug, Default)]
pub struct SessionChanges {
    pub summaries: Vec<SessionSummary>,
    pub read_back: BTreeSet<(String, Uuid)>,
    pub stored: Vec<StateChange>,
}

pub struct SessionStates {
    /// Boxed: growing the map moves pointers, not whole sessions, and its table stays small.
    held: HashMap<Uuid, Box<Held>>,
    types: TypeNames,
    known: KnownSessions,
    reload_known: bool,
    /// None in a replay: the live processor keeps the changelog.
    changelog: Option<Arc<Changelog>>,
    /// Partitions assigned whose sessions are still to be restored from the changelog.
    to_restore: BTreeSet<i32>,
    max_sessions: usize,
    idle_us: u64,
    batches: u64,
    newest_received_us: u64,
}

impl SessionStates {
    pub fn new(
        max_sessions: usize,
        idle_seconds: u64,
        known_capacity: usize,
        changelog: Option<Arc<Changelog>>,
    ) -> Self {
        Self {
            held: HashMap::new(),
            types: TypeNames::default(),
            known: KnownSessions::new(known_capacity),
            reload_known: true,
            changelog,
            to_restore: BTreeSet::new(),
            max_sessions: max_sessions.max(1),
            idle_us: idle_seconds.saturating_mul(1_000_000),
            batches: 0,
            newest_received_us: 0,
        }
    }

    /// Whether partitions wait to be restored from the changelog.
    pub fn restore_pending(&self) -> bool {
        !self.to_restore.is_empty()
    }

    /// The changelog this processor writes, if any.
    pub fn changelog(&self) -> Option<Arc<Changelog>> {
        self.changelog.clone()
    }

    /// Lets go of the sessions of revoked partitions; after an assignment, the known sessions
    /// are reloaded and the assigned partitions' sessions restored before the next batch is
    /// applied.
    pub fn ownership_changed(&mut self, changes: OwnershipChanges) {
        if !changes.revoked.is_empty() {
            for partition in &changes.revoked {
                self.to_restore.remove(partition);
            }
            let known = &mut self.known;
            self.held.retain(|session_id, held| {
                let keep = !changes.revoked.contains(&held.state.partition);
                if !keep {
                    known.learn(&held.application, *session_id);
                }
                keep
            });
        }
        // Revoked first: a partition revoked and assigned again is restored.
        if self.changelog.is_some() {
            self.to_restore.extend(&changes.assigned);
        }
        self.reload_known |= !changes.assigned.is_empty();
    }

    /// After an assignment, before the batch is written (so the batch's own sessions are not
    /// among them): reloads the known sessions, then restores the assigned partitions' sessions
    /// from the changelog. While ClickHouse does not answer, every session is read back (and the
    /// load is tried again before the next batch). A restore that fails is not tried again: the
    /// partitions' sessions are read back from ClickHouse instead, and their states tombstoned.
    pub async fn prepare(&mut self, client: &Client, request_timeout: Duration) {
        if self.reload_known {
            match self.known.reload(client, request_timeout).await {
                Ok(()) => self.reload_known = false,
                Err(error) => {
                    warn!(%error, "loading the sessions ClickHouse holds; this batch's sessions are read back")
                }
            }
        }
        let partitions = std::mem::take(&mut self.to_restore);
        if let (Some(changelog), false) = (self.changelog.clone(), partitions.is_empty()) {
            let started = Instant::now();
            match changelog.restore(partitions.clone()).await {
                Ok(stored) => {
                    let restored = self.restore(stored);
                    histogram!("eye_processor_session_restore_seconds")
                        .record(started.elapsed().as_secs_f64());
                    info!(
                        ?partitions,
                        restored, "sessions restored from the changelog"
                    );
                }
                Err(error) => {
                    warn!(%error, ?partitions, "restoring sessions; those of these partitions are read back from ClickHouse")
                }
            }
        }
    }

    /// Holds the sessions the changelog kept; how many.
    fn restore(&mut self, stored: Vec<changelog::StoredSession>) -> usize {
        let mut restored = 0;
        for session in stored {
            let (application, session_id) = (session.application.clone(), session.session_id);
            let Some(state) = SessionState::from_stored(session, &mut self.types) else {
                changelog::count_unreadable_state();
                continue;
            };
            self.newest_received_us = self.newest_received_us.max(state.last_received_us());
            self.held.insert(
                session_id,
                Box::new(Held {
                    application,
                    state,
                    written_in: self.batches,
                }),
            );
            restored += 1;
        }
        counter!("eye_processor_sessions_restored_total").increment(restored as u64);
        restored
    }

    /// The sessions whose state the changelog refused leave memory (their tombstones are out).
    pub fn forget(&mut self, refused: Refused) {
        for (application, session_id) in refused {
            if self
                .held
                .get(&session_id)
                .is_some_and(|held| held.application == application)
            {
                self.held.remove(&session_id);
            }
            self.known.learn(&application, session_id);
        }
    }

    /// Applies a written batch: its valid events and the failures naming a session.
    pub fn apply(&mut self, batch: &Batch) -> SessionChanges {
        self.batches += 1;
        let mut changes = SessionChanges::default();
        let keeps_changelog = self.changelog.is_some();
        for (application, session_id) in &batch.sessions_not_keyed {
            if let Some(held) = self.held.remove(session_id) {
                self.known.learn(application, *session_id);
                if keeps_changelog {
                    changes.stored.push(StateChange::tombstone(
                        held.state.partition,
                        &held.application,
                        *session_id,
                    ));
                }
            }
            changes.read_back.insert((application.clone(), *session_id));
        }
        let mut written: HashSet<Uuid> = HashSet::with_capacity(batch.events.len());
        for row in &batch.events {
            let type_id = self.types.id(&row.category, &row.name);
            if let Some(state) = self.state_for(
                &row.application,
                row.session_id,
                row.kafka_partition,
                &mut changes,
            ) {
                state.apply_event(row, type_id);
                written.insert(row.session_id);
            }
        }
        for failed in &batch.errors {
            let row = &failed.row;
            if row.session_id.is_nil() {
                continue;
            }
            if let Some(state) = self.state_for(
                &row.application,
                row.session_id,
                row.kafka_partition,
                &mut changes,
            ) {
                state.apply_error(row);
                written.insert(row.session_id);
            }
        }
        let mut too_large = Vec::new();
        for session_id in &written {
            let held = &self.held[session_id];
            self.newest_received_us = self.newest_received_us.max(held.state.last_received_us());
            changes.summaries.extend(held.state.summary(
                &held.application,
                *session_id,
                &self.types,
            ));
            if keeps_changelog {
                let state = changelog::encode(&held.state.to_stored(
                    &held.application,
                    *session_id,
                    &self.types,
                ));
                if state.len() > MAX_STATE_BYTES {
                    too_large.push(*session_id);
                    continue;
                }
                changes.stored.push(StateChange {
                    partition: held.state.partition,
                    application: held.application.clone(),
                    session_id: *session_id,
                    state: Some(state),
                });
            }
        }
        for session_id in too_large {
            let held = self.held.remove(&session_id).expect("written this batch");
            counter!("eye_processor_sessions_too_large_total").increment(1);
            self.known.learn(&held.application, session_id);
            changes.stored.push(StateChange::tombstone(
                held.state.partition,
                &held.application,
                session_id,
            ));
        }
        self.leave_memory(&mut changes.stored);
        gauge!("eye_processor_sessions_in_memory").set(self.held.len() as f64);
        changes
    }

    /// The state a row of this session changes, or None when the session is to be read back
    /// (recorded in `changes`, with its state's tombstone: a state the changelog may keep
    /// would miss this row).
    fn state_for(
        &mut self,
        application: &str,
        session_id: Uuid,
        partition: i32,
        changes: &mut SessionChanges,
    ) -> Option<&mut SessionState> {
        let batches = self.batches;
        let keeps_changelog = self.changelog.is_some();
        let read_back = |changes: &mut SessionChanges| {
            if changes
                .read_back
                .insert((application.to_string(), session_id))
                && keeps_changelog
            {
                changes
                    .stored
                    .push(StateChange::tombstone(partition, application, session_id));
            }
        };
        match self.held.entry(session_id) {
            Entry::Occupied(entry) => {
                let held = entry.into_mut();
                // The same session id in another application: rare enough to read back.
                if held.application != application {
                    read_back(changes);
                    return None;
                }
                held.written_in = batches;
                Some(&mut held.state)
            }
            Entry::Vacant(entry) => {
                // Usually nothing is read back: then no key is made to look for.
                if self.known.may_hold(application, session_id)
                    || (!changes.read_back.is_empty()
                        && changes
                            .read_back
                            .contains(&(application.to_string(), session_id)))
                {
                    read_back(changes);
                    return None;
                }
                let held = entry.insert(Box::new(Held {
                    application: application.to_string(),
                    state: SessionState::new(partition),
                    written_in: batches,
                }));
                Some(&mut held.state)
            }
        }
    }

    /// Idle sessions, then the least recently written past the bound, leave memory, their
    /// states' tombstones added to `stored`.
    fn leave_memory(&mut self, stored: &mut Vec<StateChange>) {
        let idle_before = self.newest_received_us.saturating_sub(self.idle_us);
        let known = &mut self.known;
        let keeps_changelog = self.changelog.is_some();
        let mut leave = |session_id: Uuid, held: &Held| {
            known.learn(&held.application, session_id);
            if keeps_changelog {
                stored.push(StateChange::tombstone(
                    held.state.partition,
                    &held.application,
                    session_id,
                ));
            }
        };
        self.held.retain(|session_id, held| {
            let idle = held.state.last_received_us() < idle_before;
            if idle {
                leave(*session_id, held);
            }
            !idle
        });
        if self.held.len() <= self.max_sessions {
            return;
        }
        // Down to 90% of the bound, so this runs once in many batches.
        let keep = self.max_sessions - self.max_sessions / 10;
        let mut written_in: Vec<u64> = self.held.values().map(|held| held.written_in).collect();
        let cut = self.held.len() - keep;
        // The newest batch to leave: every session written before it leaves, and of those written
        // in it as many as the cut still needs.
        let (_, &mut last_leaving, _) = written_in.select_nth_unstable(cut - 1);
        let before = written_in
            .iter()
            .filter(|&&batch| batch < last_leaving)
            .count();
        let mut ties_leaving = cut - before;
        self.held.retain(|session_id, held| {
            let leaves = held.written_in < last_leaving
                || (held.written_in == last_leaving && ties_leaving > 0);
            if held.written_in == last_leaving && leaves {
                ties_leaving -= 1;
            }
            if leaves {
                leave(*session_id, held);
            }
            !leaves
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{ErrorRow, EventRow, FailedMessage};

    fn event(id: u128, session: u128, partition: i32, received_s: u32) -> EventRow {
        EventRow {
            event_id: Uuid::from_u128(id),
            application: "shop".into(),
            session_id: Uuid::from_u128(session),
            category: "page interaction".into(),
            name: "pageview".into(),
            timestamp: 100,
            timestamp_us: 0,
            received_at: received_s,
            received_at_us: 0,
            host: "h".into(),
            path: "/".into(),
            data: "{}".into(),
            schema_version: 1,
            kafka_partition: partition,
            kafka_offset: id as u64,
        }
    }

    fn batch(events: Vec<EventRow>) -> Batch {
        Batch {
            events,
            ..Batch::default()
        }
    }

    /// Nothing in ClickHouse yet, room for `max` sessions, idle after an hour.
    fn states(max: usize) -> SessionStates {
        let mut states = SessionStates::new(max, 3_600, 1_000, None);
        states.known = KnownSessions::loaded_empty(1_000);
        states.reload_known = false;
        states
    }

    fn published(changes: &SessionChanges) -> Vec<u128> {
        changes
            .summaries
            .iter()
            .map(|summary| summary.session_id.as_u128())
            .collect()
    }

    #[test]
    fn a_new_session_is_held_and_one_clickhouse_may_hold_is_read_back() {
        let mut states = states(10);
        states.known.learn("shop", Uuid::from_u128(2));
        let changes = states.apply(&batch(vec![event(1, 1, 0, 10), event(2, 2, 0, 10)]));
        assert_eq!(published(&changes), [1]);
        assert_eq!(
            changes.read_back,
            BTreeSet::from([("shop".to_string(), Uuid::from_u128(2))])
        );
        let changes = states.apply(&batch(vec![event(3, 1, 0, 11)]));
        assert_eq!(changes.summaries[0].event_count, 2, "held across batches");
    }

    #[test]
    fn until_clickhouse_answers_every_session_is_read_back() {
        let mut states = SessionStates::new(10, 3_600, 1_000, None);
        let changes = states.apply(&batch(vec![event(1, 1, 0, 10)]));
        assert!(changes.summaries.is_empty());
        assert_eq!(changes.read_back.len(), 1);
    }

    #[test]
    fn a_message_keyed_otherwise_takes_its_session_out_of_memory() {
        let mut states = states(10);
        states.apply(&batch(vec![event(1, 1, 0, 10)]));
        let mut spread = batch(vec![event(2, 1, 3, 11)]);
        spread
            .sessions_not_keyed
            .insert(("shop".to_string(), Uuid::from_u128(1)));
        let changes = states.apply(&spread);
        assert!(changes.summaries.is_empty());
        assert_eq!(changes.read_back.len(), 1);
        let changes = states.apply(&batch(vec![event(3, 1, 0, 12)]));
        assert_eq!(changes.read_back.len(), 1, "never held again");
    }

    #[test]
    fn sessions_of_a_revoked_partition_leave_memory() {
        let mut states = states(10);
        states.apply(&batch(vec![event(1, 1, 0, 10), event(2, 2, 1, 10)]));
        states.ownership_changed(OwnershipChanges {
            revoked: BTreeSet::from([1]),
            assigned: BTreeSet::new(),
        });
        let changes = states.apply(&batch(vec![event(3, 1, 0, 11), event(4, 2, 1, 11)]));
        assert_eq!(published(&changes), [1]);
        assert_eq!(
            changes.read_back,
            BTreeSet::from([("shop".to_string(), Uuid::from_u128(2))])
        );
    }

    #[test]
    fn past_the_bound_the_least_recently_written_leave_memory() {
        let mut states = states(10);
        for session in 1..=11 {
            states.apply(&batch(vec![event(session, session, 0, 10)]));
        }
        assert_eq!(states.held.len(), 9, "down to 90% of the bound");
        let changes = states.apply(&batch(vec![event(100, 1, 0, 10), event(101, 11, 0, 10)]));
        assert_eq!(published(&changes), [11]);
        assert_eq!(changes.read_back.len(), 1, "session 1 was the oldest");
    }

    #[test]
    fn an_idle_session_leaves_memory() {
        let mut states = states(10);
        states.apply(&batch(vec![event(1, 1, 0, 10)]));
        states.apply(&batch(vec![event(2, 2, 0, 10 + 3_601)]));
        let changes = states.apply(&batch(vec![event(3, 1, 0, 10 + 3_602)]));
        assert!(changes.summaries.is_empty());
        assert_eq!(changes.read_back.len(), 1);
    }

    /// Nothing in ClickHouse yet, room for `max` sessions, a changelog no broker answers (the
    /// tests read what would be written).
    fn states_with_changelog(max: usize) -> SessionStates {
        let kafka = eye_core::settings::KafkaSettings::for_brokers("127.0.0.1:1");
        let producer = eye_core::kafka::client_config(&kafka, []).create().unwrap();
        let changelog = Changelog::new("state", producer, &kafka, Duration::from_secs(1));
        SessionStates {
            changelog: Some(Arc::new(changelog)),
            ..states(max)
        }
    }

    /// (session, partition, whether a state) of each changelog message, in order.
    fn stored(changes: &SessionChanges) -> Vec<(u128, i32, bool)> {
        changes
            .stored
            .iter()
            .map(|change| {
                (
                    change.session_id.as_u128(),
                    change.partition,
                    change.state.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn the_changelog_gets_each_written_session_and_a_tombstone_for_each_that_leaves() {
        let mut states = states_with_changelog(10);
        states.known.learn("shop", Uuid::from_u128(2));
        let changes = states.apply(&batch(vec![event(1, 1, 0, 10), event(2, 2, 1, 10)]));
        assert_eq!(
            stored(&changes),
            [(2, 1, false), (1, 0, true)],
            "a session read back has no state to keep"
        );
        let stored_state = changelog::decode(changes.stored[1].state.as_ref().unwrap()).unwrap();
        assert_eq!(stored_state.events, [(Uuid::from_u128(1), 0)]);
        let changes = states.apply(&batch(vec![event(3, 3, 0, 10 + 3_601)]));
        assert_eq!(
            stored(&changes),
            [(3, 0, true), (1, 0, false)],
            "idle, it leaves memory and the changelog"
        );
        let mut spread = batch(vec![event(4, 3, 2, 3_700)]);
        spread
            .sessions_not_keyed
            .insert(("shop".to_string(), Uuid::from_u128(3)));
        assert_eq!(stored(&states.apply(&spread)), [(3, 0, false)]);
    }

    #[test]
    fn sessions_restored_from_the_changelog_are_held_not_read_back() {
        let mut written = states_with_changelog(10);
        let changes = written.apply(&batch(vec![event(1, 1, 0, 10), event(2, 1, 0, 11)]));
        let stored = changelog::decode(changes.stored[0].state.as_ref().unwrap()).unwrap();
        let mut restarted = states_with_changelog(10);
        // ClickHouse holds the session: without its state it would be read back.
        restarted.known.learn("shop", Uuid::from_u128(1));
        assert_eq!(restarted.restore(vec![stored]), 1);
        let changes = restarted.apply(&batch(vec![event(2, 1, 0, 11), event(3, 1, 0, 12)]));
        assert!(changes.read_back.is_empty());
        assert_eq!(changes.summaries[0].event_count, 3, "event 2 counted once");
    }

    #[test]
    fn a_state_the_changelog_refused_leaves_memory() {
        let mut states = states_with_changelog(10);
        states.apply(&batch(vec![event(1, 1, 0, 10)]));
        states.forget(vec![("shop".to_string(), Uuid::from_u128(1))]);
        let changes = states.apply(&batch(vec![event(2, 1, 0, 11)]));
        assert!(changes.summaries.is_empty());
        assert_eq!(changes.read_back.len(), 1);
    }

    #[test]
    fn a_failure_naming_no_session_touches_none() {
        let mut states = states(10);
        let mut failure = ErrorRow::refused(event(1, 0, 0, 10), "x");
        failure.session_id = Uuid::nil();
        let changes = states.apply(&Batch {
            errors: vec![FailedMessage {
                row: failure,
                key: None,
                headers: Vec::new(),
            }],
            ..Batch::default()
        });
        assert!(changes.summaries.is_empty() && changes.read_back.is_empty());
        assert!(states.held.is_empty());
    }
}
