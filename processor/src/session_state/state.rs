//! One session as the processor holds it: the same aggregates as ClickHouse's `sessions` and
//! `session_errors` (schemas/clickhouse/009–012), kept as sets so that a row applied twice (a
//! redelivery, a client's retry) changes nothing and the order of rows does not matter.

use uuid::Uuid;

use super::changelog::StoredSession;
use super::sets::{CompactSet, TypedEvents};
use crate::rows::{ErrorRow, EventRow, SessionSummary};
use crate::session_updates::bounded_path;

/// An event type, numbered by [`TypeNames`] so each event of a session costs a few bytes.
pub type TypeId = u32;

/// The (category, name) of every type seen, numbered. A handful of types: a scan finds one
/// without allocating.
#[derive(Debug, Default)]
pub struct TypeNames {
    names: Vec<(String, String)>,
}

impl TypeNames {
    pub fn id(&mut self, category: &str, name: &str) -> TypeId {
        match self.names.iter().position(|(known_category, known_name)| {
            known_category == category && known_name == name
        }) {
            Some(index) => index as TypeId,
            None => {
                self.names.push((category.to_string(), name.to_string()));
                (self.names.len() - 1) as TypeId
            }
        }
    }

    fn name(&self, id: TypeId) -> &(String, String) {
        &self.names[id as usize]
    }
}

/// A pageview's place in time, as ClickHouse's `argMinIf`/`argMaxIf` order it: event time, then
/// event id (see [`clickhouse_uuid_order`]).
type PageviewOrder = (u64, (u64, u64));

#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// The raw-topic partition its events come from.
    pub partition: i32,
    first_us: u64,
    last_us: u64,
    events: TypedEvents,
    /// Distinct events per type.
    by_type: Vec<(TypeId, u64)>,
    entry: Option<(PageviewOrder, String)>,
    exit: Option<(PageviewOrder, String)>,
    /// Hashes of the distinct pageview paths (ClickHouse's `uniqExact` keeps hashes too).
    pages: CompactSet<u64>,
    form_submitted: bool,
    last_received_us: u64,
    errors: CompactSet<Uuid>,
    error_last_received_us: u64,
}

impl SessionState {
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    pub fn apply_event(&mut self, row: &EventRow, type_id: TypeId) {
        let at_us = micros(row.timestamp, row.timestamp_us);
        if self.events.is_empty() {
            (self.first_us, self.last_us) = (at_us, at_us);
        } else {
            self.first_us = self.first_us.min(at_us);
            self.last_us = self.last_us.max(at_us);
        }
        if self.events.insert(row.event_id, type_id) {
            match self.by_type.iter_mut().find(|(id, _)| *id == type_id) {
                Some((_, count)) => *count += 1,
                None => self.by_type.push((type_id, 1)),
            }
        }
        if row.category == "page interaction" && row.name == "pageview" {
            let order = (at_us, clickhouse_uuid_order(row.event_id));
            if self.entry.as_ref().is_none_or(|(first, _)| order < *first) {
                self.entry = Some((order, row.path.clone()));
            }
            if self.exit.as_ref().is_none_or(|(last, _)| order > *last) {
                self.exit = Some((order, row.path.clone()));
            }
            self.pages.insert(page_hash(&row.path));
        }
        self.form_submitted |= row.category == "form interaction" && row.name == "submit";
        self.last_received_us = self
            .last_received_us
            .max(micros(row.received_at, row.received_at_us));
    }

    /// A failure naming this session.
    pub fn apply_error(&mut self, row: &ErrorRow) {
        self.errors.insert(row.event_id);
        self.error_last_received_us = self
            .error_last_received_us
            .max(micros(row.received_at, row.received_at_us));
    }

    /// The latest `received_at` of any of its events: how recently the session moved.
    pub fn last_received_us(&self) -> u64 {
        self.last_received_us.max(self.error_last_received_us)
    }

    /// What the session topic says of it; None while it has no valid event (`session_summary`
    /// lists no such session).
    pub fn summary(
        &self,
        application: &str,
        session_id: Uuid,
        types: &TypeNames,
    ) -> Option<SessionSummary> {
        if self.events.is_empty() {
            return None;
        }
        let path = |end: &Option<(PageviewOrder, String)>| {
            end.as_ref()
                .map(|(_, path)| path.clone())
                .unwrap_or_default()
        };
        Some(SessionSummary {
            application: application.to_string(),
            session_id,
            first_us: self.first_us,
            last_us: self.last_us,
            event_count: self.events.distinct_ids(),
            by_type: by_type_id(&self.by_type)
                .into_iter()
                .map(|(id, count)| {
                    let (category, name) = types.name(id);
                    (category.clone(), name.clone(), count)
                })
                .collect(),
            entry_path: path(&self.entry),
            exit_path: path(&self.exit),
            distinct_pages: self.pages.len() as u64,
            form_submitted: self.form_submitted,
            last_received_us: self.last_received_us,
            error_count: self.errors.len() as u64,
            error_last_received_us: self.error_last_received_us,
        })
    }
}

impl SessionState {
    /// The session as the changelog keeps it.
    pub fn to_stored(
        &self,
        application: &str,
        session_id: Uuid,
        types: &TypeNames,
    ) -> StoredSession {
        // This session's types, numbered in the order first met.
        let mut local_types: Vec<TypeId> = Vec::new();
        let events = self
            .events
            .pairs()
            .into_iter()
            .map(|(event_id, type_id)| {
                let index = match local_types.iter().position(|&known| known == type_id) {
                    Some(index) => index,
                    None => {
                        local_types.push(type_id);
                        local_types.len() - 1
                    }
                };
                (event_id, index as u32)
            })
            .collect();
        let end = |end: &Option<(PageviewOrder, String)>| {
            end.as_ref().map(|((at_us, (last, first)), path)| {
                (
                    *at_us,
                    Uuid::from_u64_pair(*first, *last),
                    bounded_path(path).into_owned(),
                )
            })
        };
        StoredSession {
            application: application.to_string(),
            session_id,
            partition: self.partition,
            first_us: self.first_us,
            last_us: self.last_us,
            types: local_types
                .into_iter()
                .map(|type_id| types.name(type_id).clone())
                .collect(),
            events,
            entry: end(&self.entry),
            exit: end(&self.exit),
            pages: self.pages.to_vec(),
            form_submitted: self.form_submitted,
            last_received_us: self.last_received_us,
            errors: self.errors.to_vec(),
            error_last_received_us: self.error_last_received_us,
        }
    }

    /// The session the changelog kept, its types numbered in `types`; None when an event names
    /// a type the message does not have (no message this processor writes).
    pub fn from_stored(stored: StoredSession, types: &mut TypeNames) -> Option<Self> {
        let type_ids: Vec<TypeId> = stored
            .types
            .iter()
            .map(|(category, name)| types.id(category, name))
            .collect();
        let mut state = SessionState {
            partition: stored.partition,
            first_us: stored.first_us,
            last_us: stored.last_us,
            form_submitted: stored.form_submitted,
            last_received_us: stored.last_received_us,
            error_last_received_us: stored.error_last_received_us,
            ..SessionState::default()
        };
        for (event_id, index) in stored.events {
            let type_id = *type_ids.get(index as usize)?;
            if state.events.insert(event_id, type_id) {
                match state.by_type.iter_mut().find(|(id, _)| *id == type_id) {
                    Some((_, count)) => *count += 1,
                    None => state.by_type.push((type_id, 1)),
                }
            }
        }
        let end = |end: Option<(u64, Uuid, String)>| {
            end.map(|(at_us, event_id, path)| ((at_us, clickhouse_uuid_order(event_id)), path))
        };
        state.entry = end(stored.entry);
        state.exit = end(stored.exit);
        for page in stored.pages {
            state.pages.insert(page);
        }
        for error in stored.errors {
            state.errors.insert(error);
        }
        Some(state)
    }
}

/// A pageview path's hash, as the session keeps it (ClickHouse's `uniqExact` keeps hashes too).
/// The changelog keeps these hashes across restarts and upgrades, so the algorithm is one that
/// is specified (XXH3), not std's `DefaultHasher`, which may change between Rust releases.
fn page_hash(path: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(path.as_bytes())
}

/// The counts in type order, so a summary does not depend on the order events came in.
fn by_type_id(counts: &[(TypeId, u64)]) -> Vec<(TypeId, u64)> {
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    counts
}

fn micros(seconds: u32, micros: u32) -> u64 {
    u64::from(seconds) * 1_000_000 + u64::from(micros)
}

/// A UUID in the order ClickHouse compares UUIDs: the last 8 bytes first, then the first 8, each
/// as a big-endian number (checked on 18.16: `…-0000-000000000002` < `…-0001-0000-000000000000`
/// is false).
pub fn clickhouse_uuid_order(id: Uuid) -> (u64, u64) {
    let (first, last) = id.as_u64_pair();
    (last, first)
}

#[cfg(test)]
mod tests {
    use super::super::changelog;
    use super::*;

    fn event(
        id: u128,
        category: &str,
        name: &str,
        at_s: u32,
        path: &str,
        received_s: u32,
    ) -> EventRow {
        EventRow {
            event_id: Uuid::from_u128(id),
            application: "shop".into(),
            session_id: Uuid::from_u128(7),
            category: category.into(),
            name: name.into(),
            timestamp: at_s,
            timestamp_us: 0,
            received_at: received_s,
            received_at_us: 0,
            host: "h".into(),
            path: path.into(),
            data: "{}".into(),
            schema_version: 1,
            kafka_partition: 0,
            kafka_offset: id as u64,
        }
    }

    /// A pageview, a click, a second pageview, a form submitted.
    fn visit() -> [EventRow; 4] {
        [
            event(1, "page interaction", "pageview", 100, "/", 500),
            event(2, "page interaction", "cta click", 110, "/", 501),
            event(3, "page interaction", "pageview", 120, "/pricing", 502),
            event(4, "form interaction", "submit", 130, "/pricing", 503),
        ]
    }

    fn apply(state: &mut SessionState, types: &mut TypeNames, row: &EventRow) {
        let id = types.id(&row.category, &row.name);
        state.apply_event(row, id);
    }

    #[test]
    fn a_row_applied_twice_or_late_gives_the_same_session() {
        let rows = visit();
        let mut types = TypeNames::default();
        let mut in_order = SessionState::new(0);
        for row in &rows {
            apply(&mut in_order, &mut types, row);
        }
        let mut shuffled = SessionState::new(0);
        for index in [3, 1, 0, 2, 0, 3] {
            apply(&mut shuffled, &mut types, &rows[index]);
        }
        let session = Uuid::from_u128(7);
        let summary = in_order.summary("shop", session, &types).unwrap();
        assert_eq!(
            Some(&summary),
            shuffled.summary("shop", session, &types).as_ref()
        );
        assert_eq!(
            (summary.first_us, summary.last_us),
            (100_000_000, 130_000_000)
        );
        assert_eq!(summary.event_count, 4);
        assert_eq!(
            summary.by_type,
            [
                ("page interaction".into(), "pageview".into(), 2),
                ("page interaction".into(), "cta click".into(), 1),
                ("form interaction".into(), "submit".into(), 1),
            ]
        );
        assert_eq!(
            (summary.entry_path.as_str(), summary.exit_path.as_str()),
            ("/", "/pricing")
        );
        assert_eq!(summary.distinct_pages, 2);
        assert!(summary.form_submitted);
        assert_eq!(summary.last_received_us, 503_000_000);
    }

    /// A restart restores the session from its changelog message: the same session, still
    /// deaf to the rows it has (a redelivery after the restart), numbering types its own way.
    #[test]
    fn a_restored_session_is_the_session_and_still_ignores_rows_it_has() {
        let rows = visit();
        let session = Uuid::from_u128(7);
        let mut types = TypeNames::default();
        let mut original = SessionState::new(2);
        for row in &rows[..3] {
            apply(&mut original, &mut types, row);
        }
        original.apply_error(&ErrorRow::refused(rows[0].clone(), "x"));
        let stored = changelog::encode(&original.to_stored("shop", session, &types));
        let mut other_types = TypeNames::default();
        other_types.id("form interaction", "submit");
        let decoded = changelog::decode(&stored).unwrap();
        let mut restored = SessionState::from_stored(decoded, &mut other_types).unwrap();
        // Types are listed in each process's numbering; the topic's record keys them by name.
        let summary_of = |state: &SessionState, types: &TypeNames| {
            let mut summary = state.summary("shop", session, types).unwrap();
            summary.by_type.sort();
            summary
        };
        assert_eq!(restored.partition, 2);
        assert_eq!(
            summary_of(&restored, &other_types),
            summary_of(&original, &types)
        );
        for row in [&rows[1], &rows[3]] {
            apply(&mut original, &mut types, row);
            apply(&mut restored, &mut other_types, row);
        }
        restored.apply_error(&ErrorRow::refused(rows[0].clone(), "x"));
        let summary = summary_of(&restored, &other_types);
        assert_eq!(summary, summary_of(&original, &types));
        assert_eq!((summary.event_count, summary.error_count), (4, 1));
    }

    /// A changelog written by one release is read by the next: the hash of a path is fixed, the
    /// value the reference XXH3 implementation gives (Python's `xxhash.xxh3_64_intdigest`).
    #[test]
    fn a_page_hash_is_the_same_in_every_release() {
        assert_eq!(page_hash("/pricing"), 13_414_460_924_399_274_188);
    }

    #[test]
    fn a_session_with_failures_only_has_no_summary_until_a_valid_event() {
        let mut types = TypeNames::default();
        let mut state = SessionState::new(0);
        let mut failure =
            ErrorRow::refused(event(9, "page interaction", "pageview", 1, "/", 600), "x");
        state.apply_error(&failure);
        failure.received_at = 700;
        state.apply_error(&failure);
        assert!(state.summary("shop", Uuid::from_u128(7), &types).is_none());
        apply(
            &mut state,
            &mut types,
            &event(1, "page interaction", "pageview", 100, "/", 500),
        );
        let summary = state.summary("shop", Uuid::from_u128(7), &types).unwrap();
        assert_eq!(
            (summary.error_count, summary.error_last_received_us),
            (1, 700_000_000)
        );
        assert_eq!(state.last_received_us(), 700_000_000);
    }

    #[test]
    fn pageviews_at_the_same_time_are_ordered_by_event_id_as_clickhouse_orders_them() {
        let mut types = TypeNames::default();
        let mut state = SessionState::new(0);
        // First in ClickHouse's order although greater as a number: its last 8 bytes are lower.
        let low = 0x0000_0000_0000_0002_0000_0000_0000_0000;
        let high = 0x0000_0000_0000_0001_ffff_ffff_ffff_ffff;
        apply(
            &mut state,
            &mut types,
            &event(high, "page interaction", "pageview", 100, "/high", 1),
        );
        apply(
            &mut state,
            &mut types,
            &event(low, "page interaction", "pageview", 100, "/low", 1),
        );
        let summary = state.summary("shop", Uuid::from_u128(7), &types).unwrap();
        assert_eq!(
            (summary.entry_path.as_str(), summary.exit_path.as_str()),
            ("/low", "/high")
        );
    }
}
