//! The ClickHouse side: tables created from `schemas/clickhouse/*.sql` at start-up, and batch
//! inserts of valid events and failures. Insert errors are classified: ClickHouse refusing the data
//! itself is permanent (the rows become failures), anything else is retried.

use std::path::Path;

use clickhouse::{Client, Row};
use serde::Serialize;
use uuid::Uuid;

use crate::config::ClickHouseSettings;

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

/// RowBinary writes a `String` as length + bytes, which is what a byte slice serialises to.
mod serde_bytes_as_string {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("reading DDL {path}: {source}")]
    Ddl {
        path: String,
        source: std::io::Error,
    },
    #[error("ClickHouse refused the data: {0}")]
    Permanent(clickhouse::error::Error),
    #[error("ClickHouse unavailable: {0}")]
    Retryable(clickhouse::error::Error),
    #[error("dead-letter topic unavailable: {0}")]
    DeadLetter(rdkafka::error::KafkaError),
    #[error(transparent)]
    SessionUpdates(#[from] crate::session_updates::SessionUpdateError),
}

impl SinkError {
    fn from_clickhouse(error: clickhouse::error::Error) -> Self {
        // Codes meaning "this data can never be inserted": parse failures, type mismatches,
        // out-of-range values, oversized strings.
        const DATA_ERRORS: [&str; 9] = [
            "Code: 6.",
            "Code: 27.",
            "Code: 33.",
            "Code: 53.",
            "Code: 69.",
            "Code: 70.",
            "Code: 72.",
            "Code: 117.",
            "Code: 131.",
        ];
        match &error {
            clickhouse::error::Error::BadResponse(message)
                if DATA_ERRORS.iter().any(|code| message.contains(code)) =>
            {
                SinkError::Permanent(error)
            }
            _ => SinkError::Retryable(error),
        }
    }
}

#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
}

impl ClickHouseSink {
    pub fn new(settings: &ClickHouseSettings) -> Self {
        let client = Client::default()
            .with_url(&settings.url)
            .with_user(&settings.user)
            .with_password(&settings.password)
            .with_database(&settings.database)
            // ClickHouse 18.16 knows no RowBinaryWithNamesAndTypes, which validation needs.
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        Self { client }
    }

    /// Creates the database and applies every `*.sql` file of `ddl_dir` in name order. Each file
    /// holds one idempotent statement (`IF NOT EXISTS`).
    pub async fn apply_ddl(&self, database: &str, ddl_dir: &Path) -> Result<(), SinkError> {
        self.client
            .clone()
            .with_database("default")
            .query(&format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
            .execute()
            .await
            .map_err(SinkError::Retryable)?;
        let read_error = |source| SinkError::Ddl {
            path: ddl_dir.display().to_string(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(ddl_dir)
            .map_err(read_error)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .collect();
        files.sort();
        for file in files {
            let statement = std::fs::read_to_string(&file).map_err(|source| SinkError::Ddl {
                path: file.display().to_string(),
                source,
            })?;
            self.client
                .query(&statement)
                .execute()
                .await
                .map_err(SinkError::from_clickhouse)?;
        }
        Ok(())
    }

    /// The client, for queries of the derived tables (alert rules).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub async fn ping(&self) -> bool {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .is_ok()
    }

    pub async fn insert_events<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = &'a EventRow>,
    ) -> Result<(), SinkError> {
        self.insert("events", rows).await
    }

    pub async fn insert_errors<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = &'a ErrorRow>,
    ) -> Result<(), SinkError> {
        self.insert("event_errors", rows).await
    }

    pub async fn insert_watermarks<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = &'a WatermarkRow>,
    ) -> Result<(), SinkError> {
        self.insert("watermark_updates", rows).await
    }

    async fn insert<'r, T>(
        &self,
        table: &str,
        rows: impl ExactSizeIterator<Item = &'r T>,
    ) -> Result<(), SinkError>
    where
        for<'a> T: Row<Value<'a> = T> + Serialize + 'r,
    {
        if rows.len() == 0 {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<T>(table)
            .await
            .map_err(SinkError::from_clickhouse)?;
        for row in rows {
            insert
                .write(row)
                .await
                .map_err(SinkError::from_clickhouse)?;
        }
        insert.end().await.map_err(SinkError::from_clickhouse)
    }
}
