//! The rows the processor writes: one struct per ClickHouse table it inserts into, a failed
//! message as the batch holds it (its row, and what the dead letter needs besides), and a
//! session as the session topic carries it.

use clickhouse::Row;
use serde::Serialize;
use uuid::Uuid;

use eye_core::failure::ErrorType;
use eye_core::timestamp::split_seconds;
use eye_core::validate::{FailedEvent, ValidEvent};

/// A row of `events` (and, through the materialized view, of `events_by_session`).
#[derive(Debug, Clone, Row, Serialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub application: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: Uuid,
    pub category: String,
    pub name: String,
    pub timestamp: u32,
    pub timestamp_us: u32,
    pub received_at: u32,
    pub received_at_us: u32,
    pub host: String,
    pub path: String,
    pub data: String,
    pub schema_version: u16,
    pub kafka_partition: i32,
    pub kafka_offset: u64,
}

/// A row of `event_errors`.
#[derive(Debug, Clone, Row, Serialize)]
pub struct ErrorRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub application: String,
    /// The nil UUID when the event names no valid session.
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: Uuid,
    pub error_type: String,
    pub reason: String,
    pub field_path: String,
    pub category: String,
    pub name: String,
    /// The message value exactly as received (any bytes; ClickHouse `String` holds bytes); for
    /// `sink_rejected`, the validated payload.
    #[serde(with = "serde_bytes_as_string")]
    pub raw: Vec<u8>,
    pub received_at: u32,
    pub received_at_us: u32,
    pub kafka_partition: i32,
    pub kafka_offset: u64,
}

/// A progress report for one raw-topic partition, into `watermark_updates`.
#[derive(Debug, Clone, Row, Serialize)]
pub struct WatermarkRow {
    pub topic: String,
    pub partition: i32,
    /// Every message before this offset is written.
    pub next_offset: i64,
    pub high_watermark: i64,
    pub lag: i64,
    /// Latest event time and received time written from the partition (0 when none).
    pub event_time: u32,
    pub received_time: u32,
    pub updated_at: u32,
}

/// A session as the session topic carries it: what `session_summary` says of it, before
/// encoding (see `session_updates`). Times in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    pub application: String,
    pub session_id: Uuid,
    pub first_us: u64,
    pub last_us: u64,
    /// Distinct valid events.
    pub event_count: u64,
    /// Distinct valid events per (category, name).
    pub by_type: Vec<(String, String, u64)>,
    /// The path of the first and of the last pageview; empty when there is none.
    pub entry_path: String,
    pub exit_path: String,
    pub distinct_pages: u64,
    pub form_submitted: bool,
    /// The latest `received_at` of a valid event, and of a failed one (0 when none).
    pub last_received_us: u64,
    /// Distinct failed events naming the session.
    pub error_count: u64,
    pub error_last_received_us: u64,
}

/// RowBinary writes a `String` as length + bytes, which is what a byte slice serialises to.
mod serde_bytes_as_string {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }
}

/// A failed event: its `event_errors` row and the message's original key and headers.
#[derive(Debug, Clone)]
pub struct FailedMessage {
    pub row: ErrorRow,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl EventRow {
    /// A valid event's row, read from `partition` at `offset`.
    pub fn of_valid(valid: ValidEvent, partition: i32, offset: i64) -> EventRow {
        let (timestamp, timestamp_us) = split_seconds(valid.timestamp);
        let (received_at, received_at_us) = split_seconds(valid.stamp.received_at);
        EventRow {
            event_id: valid.stamp.event_id,
            application: valid.stamp.application,
            session_id: valid.session_id,
            category: valid.category,
            name: valid.name,
            timestamp,
            timestamp_us,
            received_at,
            received_at_us,
            host: valid.host,
            path: valid.path,
            data: valid.data,
            schema_version: valid.schema_version as u16,
            kafka_partition: partition,
            // Kafka offsets are never negative.
            kafka_offset: offset as u64,
        }
    }
}

impl ErrorRow {
    /// A failed event's row: `raw` is the message value, read from `partition` at `offset`.
    pub fn of_failed(failed: FailedEvent, raw: &[u8], partition: i32, offset: i64) -> ErrorRow {
        let (received_at, received_at_us) = split_seconds(failed.stamp.received_at);
        ErrorRow {
            event_id: failed.stamp.event_id,
            application: failed.stamp.application,
            session_id: failed.session_id.unwrap_or(Uuid::nil()),
            error_type: failed.failure.error_type.as_str().to_string(),
            reason: failed.failure.reason,
            field_path: failed.failure.field_path,
            category: failed.category,
            name: failed.name,
            raw: raw.to_vec(),
            received_at,
            received_at_us,
            kafka_partition: partition,
            // Kafka offsets are never negative.
            kafka_offset: offset as u64,
        }
    }
}

impl WatermarkRow {
    /// A report that says where a partition stands and carries no times (the watermark
    /// aggregates keep the latest times already reported).
    pub fn position(topic: &str, partition: i32, written: i64, end: i64, updated_at: u32) -> Self {
        WatermarkRow {
            topic: topic.to_string(),
            partition,
            next_offset: written,
            high_watermark: end,
            lag: end - written,
            event_time: 0,
            received_time: 0,
            updated_at,
        }
    }
}

impl ErrorRow {
    /// An event row ClickHouse refused on its own, as a `sink_rejected` failure.
    pub fn refused(row: EventRow, reason: &str) -> ErrorRow {
        ErrorRow {
            event_id: row.event_id,
            application: row.application,
            session_id: row.session_id,
            error_type: ErrorType::SinkRejected.as_str().to_string(),
            reason: format!("ClickHouse refused the row: {reason}"),
            // The original bytes are not kept past validation; the validated payload stands in.
            field_path: String::new(),
            category: row.category,
            name: row.name,
            raw: row.data.into_bytes(),
            received_at: row.received_at,
            received_at_us: row.received_at_us,
            kafka_partition: row.kafka_partition,
            kafka_offset: row.kafka_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use eye_core::failure::Failure;
    use eye_core::raw::Stamp;

    #[test]
    fn a_refused_event_becomes_a_sink_rejected_failure_at_the_same_place() {
        let row = EventRow {
            event_id: Uuid::from_u128(1),
            application: "shop".into(),
            session_id: Uuid::from_u128(2),
            category: "page interaction".into(),
            name: "pageview".into(),
            timestamp: 10,
            timestamp_us: 1,
            received_at: 11,
            received_at_us: 2,
            host: "h".into(),
            path: "/".into(),
            data: r#"{"host":"h"}"#.into(),
            schema_version: 1,
            kafka_partition: 3,
            kafka_offset: 99,
        };
        let failed = ErrorRow::refused(row, "Code: 27");
        assert_eq!(failed.error_type, "sink_rejected");
        assert_eq!(failed.reason, "ClickHouse refused the row: Code: 27");
        assert_eq!(failed.raw, br#"{"host":"h"}"#);
        assert_eq!(
            (failed.event_id, failed.session_id),
            (Uuid::from_u128(1), Uuid::from_u128(2))
        );
        assert_eq!((failed.received_at, failed.received_at_us), (11, 2));
        assert_eq!((failed.kafka_partition, failed.kafka_offset), (3, 99));
    }

    fn stamp() -> Stamp {
        Stamp {
            event_id: Uuid::from_u128(7),
            received_at: Utc.timestamp_opt(1_609_492_527, 243_861_000).unwrap(),
            application: "shop".into(),
        }
    }

    #[test]
    fn a_valid_events_row_splits_its_times_into_seconds_and_microseconds() {
        let valid = ValidEvent {
            stamp: stamp(),
            session_id: Uuid::from_u128(9),
            category: "page interaction".into(),
            name: "pageview".into(),
            timestamp: Utc.timestamp_opt(1_609_492_527, 243_860_000).unwrap(),
            data: r#"{"host":"www.example.com","n":1,"path":"/"}"#.into(),
            host: "www.example.com".into(),
            path: "/".into(),
            schema_version: 2,
        };
        let row = EventRow::of_valid(valid, 3, 41);
        assert_eq!((row.timestamp, row.timestamp_us), (1_609_492_527, 243_860));
        assert_eq!(
            (row.received_at, row.received_at_us),
            (1_609_492_527, 243_861)
        );
        assert_eq!(
            (row.host.as_str(), row.path.as_str()),
            ("www.example.com", "/")
        );
        assert_eq!(row.data, r#"{"host":"www.example.com","n":1,"path":"/"}"#);
        assert_eq!((row.kafka_partition, row.kafka_offset), (3, 41));
        assert_eq!((row.application.as_str(), row.schema_version), ("shop", 2));
    }

    #[test]
    fn a_failures_row_keeps_the_raw_bytes_and_a_nil_session_when_none_is_named() {
        let failed = FailedEvent {
            stamp: stamp(),
            session_id: None,
            category: String::new(),
            name: String::new(),
            failure: Failure {
                error_type: ErrorType::MalformedJson,
                reason: "not JSON".into(),
                field_path: String::new(),
            },
        };
        let row = ErrorRow::of_failed(failed, b"\xff{", 1, 5);
        assert_eq!(row.raw, b"\xff{");
        assert!(row.session_id.is_nil());
        assert_eq!(row.error_type, "malformed_json");
        assert_eq!((row.kafka_partition, row.kafka_offset), (1, 5));
    }
}
