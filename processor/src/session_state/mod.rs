//! The sessions of the partitions this processor owns, held in memory and updated from each
//! written batch, so the session topic is published without reading ClickHouse.
//!
//! A session lives in one partition when the raw topic is keyed by session, as its contract asks
//! and the bridge does; a session with a message keyed otherwise is never held, and is read
//! back from ClickHouse, which has all of it. The processor holds a
//! session from the first of its events it writes, and only then: a session it meets later may
//! have earlier events in ClickHouse (written before a restart, by the partition's previous
//! owner, or before it left memory), and is published as ClickHouse holds it, as before. Which
//! sessions ClickHouse may hold is [`known`]: reloaded when partitions are assigned.
//!
//! Memory is bounded: a session idle for `idle_seconds` (by `received_at`, against the newest
//! seen) or the least recently written past `max_sessions_in_memory` leaves memory, joining the
//! known sessions. The sessions of a revoked partition leave memory at once: its next owner
//! writes events this processor will not see.

mod known;
mod sets;
mod state;

use std::collections::hash_map::Entry;
use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use clickhouse::Client;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use metrics::gauge;
use tracing::warn;
use uuid::Uuid;

use crate::batch::Batch;
use crate::rows::SessionSummary;
use crate::source::OwnershipChanges;
use known::KnownSessions;
use state::{SessionState, TypeNames};

/// A 64-bit hash of `value`, the same in every run (SipHash with fixed keys): pages and session
/// keys are kept as hashes.
fn stable_hash(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// How a session held in memory stands.
struct Held {
    application: String,
    state: SessionState,
    /// The number of the batch that last changed it.
    written_in: u64,
}

/// What a batch changed: the sessions held in memory as they now stand, and those to read
/// back from ClickHouse.
#[derive(Debug, Default)]
pub struct SessionChanges {
    pub summaries: Vec<SessionSummary>,
    pub read_back: BTreeSet<(String, Uuid)>,
}

pub struct SessionStates {
    held: HashMap<Uuid, Held>,
    types: TypeNames,
    known: KnownSessions,
    reload_known: bool,
    max_sessions: usize,
    idle_us: u64,
    batches: u64,
    newest_received_us: u64,
}

impl SessionStates {
    pub fn new(max_sessions: usize, idle_seconds: u64, known_capacity: usize) -> Self {
        Self {
            held: HashMap::new(),
            types: TypeNames::default(),
            known: KnownSessions::new(known_capacity),
            reload_known: true,
            max_sessions: max_sessions.max(1),
            idle_us: idle_seconds.saturating_mul(1_000_000),
            batches: 0,
            newest_received_us: 0,
        }
    }

    /// Lets go of the sessions of revoked partitions; after an assignment, the known sessions
    /// are reloaded before the next batch is applied.
    pub fn ownership_changed(&mut self, changes: OwnershipChanges) {
        if !changes.revoked.is_empty() {
            let known = &mut self.known;
            self.held.retain(|session_id, held| {
                let keep = !changes.revoked.contains(&held.state.partition);
                if !keep {
                    known.learn(&held.application, *session_id);
                }
                keep
            });
        }
        self.reload_known |= changes.assigned;
    }

    /// Reloads the known sessions if an assignment asked for it; before the batch is written,
    /// so the batch's own sessions are not among them. While ClickHouse does not answer, every
    /// session is read back (and the load is tried again before the next batch).
    pub async fn prepare(&mut self, client: &Client, request_timeout: Duration) {
        if !self.reload_known {
            return;
        }
        match self.known.reload(client, request_timeout).await {
            Ok(()) => self.reload_known = false,
            Err(error) => {
                warn!(%error, "loading the sessions ClickHouse holds; this batch's sessions are read back")
            }
        }
    }

    /// Applies a written batch: its valid events and the failures naming a session.
    pub fn apply(&mut self, batch: &Batch) -> SessionChanges {
        self.batches += 1;
        let mut changes = SessionChanges::default();
        for (application, session_id) in &batch.sessions_not_keyed {
            if self.held.remove(session_id).is_some() {
                self.known.learn(application, *session_id);
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
                &mut changes.read_back,
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
                &mut changes.read_back,
            ) {
                state.apply_error(row);
                written.insert(row.session_id);
            }
        }
        for session_id in &written {
            let held = &self.held[session_id];
            self.newest_received_us = self.newest_received_us.max(held.state.last_received_us());
            changes.summaries.extend(held.state.summary(
                &held.application,
                *session_id,
                &self.types,
            ));
        }
        self.leave_memory();
        gauge!("eye_processor_sessions_in_memory").set(self.held.len() as f64);
        changes
    }

    /// The state a row of this session changes, or None when the session is to be read back
    /// (recorded in `read_back`).
    fn state_for(
        &mut self,
        application: &str,
        session_id: Uuid,
        partition: i32,
        read_back: &mut BTreeSet<(String, Uuid)>,
    ) -> Option<&mut SessionState> {
        let batches = self.batches;
        match self.held.entry(session_id) {
            Entry::Occupied(entry) => {
                let held = entry.into_mut();
                // The same session id in another application: rare enough to read back.
                if held.application != application {
                    read_back.insert((application.to_string(), session_id));
                    return None;
                }
                held.written_in = batches;
                Some(&mut held.state)
            }
            Entry::Vacant(entry) => {
                let key = (application.to_string(), session_id);
                if read_back.contains(&key) || self.known.may_hold(application, session_id) {
                    read_back.insert(key);
                    return None;
                }
                let held = entry.insert(Held {
                    application: key.0,
                    state: SessionState::new(partition),
                    written_in: batches,
                });
                Some(&mut held.state)
            }
        }
    }

    /// Idle sessions, then the least recently written past the bound, leave memory.
    fn leave_memory(&mut self) {
        let idle_before = self.newest_received_us.saturating_sub(self.idle_us);
        let known = &mut self.known;
        self.held.retain(|session_id, held| {
            let idle = held.state.last_received_us() < idle_before;
            if idle {
                known.learn(&held.application, *session_id);
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
                known.learn(&held.application, *session_id);
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
        let mut states = SessionStates::new(max, 3_600, 1_000);
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
        let mut states = SessionStates::new(10, 3_600, 1_000);
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
            assigned: false,
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
