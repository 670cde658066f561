//! A batch: the rows read since the last write, until they are in ClickHouse, and per
//! partition the offset to store once they are.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use uuid::Uuid;

use crate::rows::{EventRow, FailedMessage, WatermarkRow};

/// What one batch holds until it is in ClickHouse.
#[derive(Default)]
pub struct Batch {
    pub events: Vec<EventRow>,
    pub errors: Vec<FailedMessage>,
    /// Per partition, the offset after the last message in the batch.
    pub next_offsets: BTreeMap<i32, i64>,
    pub opened: Option<Instant>,
    /// Sessions with a message here whose key is not the session id: their events may be in
    /// any partition, so no processor holds the whole session.
    pub sessions_not_keyed: BTreeSet<(String, Uuid)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len() + self.errors.len()
    }

    /// Per partition, the lowest offset the batch holds.
    pub fn first_offsets(&self) -> BTreeMap<i32, i64> {
        let mut first = BTreeMap::new();
        let offsets = self
            .events
            .iter()
            .map(|row| (row.kafka_partition, row.kafka_offset as i64))
            .chain(
                self.errors
                    .iter()
                    .map(|failed| (failed.row.kafka_partition, failed.row.kafka_offset as i64)),
            );
        for (partition, offset) in offsets {
            first
                .entry(partition)
                .and_modify(|lowest: &mut i64| *lowest = (*lowest).min(offset))
                .or_insert(offset);
        }
        first
    }

    /// Drops the rows and offsets of `partitions`; returns how many rows went.
    pub fn release(&mut self, partitions: &[i32]) -> usize {
        let before = self.len();
        self.events
            .retain(|row| !partitions.contains(&row.kafka_partition));
        self.errors
            .retain(|failed| !partitions.contains(&failed.row.kafka_partition));
        self.next_offsets
            .retain(|partition, _| !partitions.contains(partition));
        if !self.sessions_not_keyed.is_empty() {
            // A session left only in released rows is the next owner's to publish.
            let left: BTreeSet<(&str, Uuid)> = self
                .events
                .iter()
                .map(|row| (row.application.as_str(), row.session_id))
                .chain(
                    self.errors
                        .iter()
                        .map(|failed| (failed.row.application.as_str(), failed.row.session_id)),
                )
                .collect();
            self.sessions_not_keyed.retain(|(application, session_id)| {
                left.contains(&(application.as_str(), *session_id))
            });
        }
        if self.len() == 0 {
            self.opened = None;
        }
        before - self.len()
    }
    /// One progress report per partition of the batch, for `watermark_updates`: the offset after
    /// its last message, the log's end (`high_watermarks`, at least that offset) and the latest
    /// event and received times written.
    pub fn watermarks(
        &self,
        topic: &str,
        high_watermarks: &BTreeMap<i32, i64>,
        updated_at: u32,
    ) -> Vec<WatermarkRow> {
        self.next_offsets
            .iter()
            .map(|(&partition, &next_offset)| {
                let events = self
                    .events
                    .iter()
                    .filter(|row| row.kafka_partition == partition);
                let errors = self
                    .errors
                    .iter()
                    .filter(|failed| failed.row.kafka_partition == partition);
                let event_time = events.clone().map(|row| row.timestamp).max().unwrap_or(0);
                let received_time = events
                    .map(|row| row.received_at)
                    .chain(errors.map(|failed| failed.row.received_at))
                    .max()
                    .unwrap_or(0);
                let high_watermark = high_watermarks
                    .get(&partition)
                    .copied()
                    .unwrap_or(0)
                    .max(next_offset);
                WatermarkRow {
                    topic: topic.to_string(),
                    partition,
                    next_offset,
                    high_watermark,
                    lag: high_watermark - next_offset,
                    event_time,
                    received_time,
                    updated_at,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::ErrorRow;

    fn event(partition: i32, offset: u64, session: u128) -> EventRow {
        EventRow {
            event_id: Uuid::new_v4(),
            application: "shop".into(),
            session_id: Uuid::from_u128(session),
            category: "page interaction".into(),
            name: "pageview".into(),
            timestamp: 0,
            timestamp_us: 0,
            received_at: 0,
            received_at_us: 0,
            host: String::new(),
            path: String::new(),
            data: "{}".into(),
            schema_version: 1,
            kafka_partition: partition,
            kafka_offset: offset,
        }
    }

    fn failure(partition: i32, offset: u64, session: u128) -> FailedMessage {
        FailedMessage {
            row: ErrorRow::refused(event(partition, offset, session), "test"),
            key: None,
            headers: Vec::new(),
        }
    }

    fn batch() -> Batch {
        Batch {
            events: vec![event(0, 5, 1), event(1, 7, 2), event(0, 6, 1)],
            errors: vec![failure(1, 3, 0), failure(2, 9, 3)],
            next_offsets: BTreeMap::from([(0, 7), (1, 8), (2, 10)]),
            opened: Some(Instant::now()),
            sessions_not_keyed: BTreeSet::new(),
        }
    }

    #[test]
    fn first_offsets_are_the_lowest_per_partition_over_events_and_failures() {
        assert_eq!(
            batch().first_offsets(),
            BTreeMap::from([(0, 5), (1, 3), (2, 9)])
        );
    }

    #[test]
    fn watermarks_report_each_partitions_next_offset_lag_and_latest_times() {
        let mut batch = batch();
        batch.events[0].timestamp = 50;
        batch.events[2].received_at = 60;
        batch.errors[0].row.received_at = 70;
        let rows = batch.watermarks("raw", &BTreeMap::from([(0, 12), (1, 2)]), 99);
        let reported: Vec<(i32, i64, i64, i64, u32, u32)> = rows
            .iter()
            .map(|row| {
                (
                    row.partition,
                    row.next_offset,
                    row.high_watermark,
                    row.lag,
                    row.event_time,
                    row.received_time,
                )
            })
            .collect();
        assert_eq!(
            reported,
            [
                (0, 7, 12, 5, 50, 60),
                // A stale end below what was read counts as that offset: no negative lag.
                (1, 8, 8, 0, 0, 70),
                (2, 10, 10, 0, 0, 0),
            ]
        );
        assert!(rows
            .iter()
            .all(|row| row.topic == "raw" && row.updated_at == 99));
    }

    #[test]
    fn releasing_partitions_drops_the_sessions_not_keyed_that_only_they_held() {
        let mut batch = batch();
        batch.sessions_not_keyed = BTreeSet::from([
            ("shop".to_string(), Uuid::from_u128(1)),
            ("shop".to_string(), Uuid::from_u128(2)),
        ]);
        batch.release(&[1]);
        assert_eq!(
            batch.sessions_not_keyed,
            BTreeSet::from([("shop".to_string(), Uuid::from_u128(1))]),
            "session 2 was only in partition 1"
        );
    }

    #[test]
    fn releasing_partitions_drops_their_rows_and_offsets_only() {
        let mut batch = batch();
        assert_eq!(batch.release(&[1]), 2);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.next_offsets, BTreeMap::from([(0, 7), (2, 10)]));
        assert!(batch.opened.is_some());
        assert_eq!(batch.release(&[0, 2]), 3);
        assert_eq!(batch.len(), 0);
        assert!(batch.opened.is_none(), "an empty batch is not open");
    }
}
