//! The ClickHouse side: tables created from `schemas/clickhouse/*.sql` at start-up, and batch
//! inserts of valid events and failures. Insert errors are classified: ClickHouse refusing the data
//! itself is permanent (the rows become failures), anything else is retried.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::rows::{ErrorRow, EventRow, WatermarkRow};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseSettings {
    /// HTTP endpoint.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Longest an insert or a query may take before it counts as failed (and is retried): a
    /// server that hangs instead of refusing must not hold a batch forever.
    pub request_timeout_ms: u64,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "eye".into(),
            user: "default".into(),
            password: String::new(),
            request_timeout_ms: 30_000,
        }
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
}

impl SinkError {
    fn from_clickhouse(error: clickhouse::error::Error) -> Self {
        match &error {
            clickhouse::error::Error::BadResponse(message)
                if exception_code(message).is_some_and(|code| DATA_ERRORS.contains(&code)) =>
            {
                SinkError::Permanent(error)
            }
            _ => SinkError::Retryable(error),
        }
    }
}

/// Exception codes meaning "this data can never be inserted": parse failures, type mismatches,
/// out-of-range values, oversized strings. Anything else (252 included: "too many parts" means
/// merges are behind, and inserts never span partitions) is retried.
const DATA_ERRORS: [u32; 9] = [6, 27, 33, 53, 69, 70, 72, 117, 131];

/// The code of a ClickHouse exception, in both forms servers write it: `Code: 27, e.displayText()
/// = DB::Exception: …` (18.16) and `Code: 27. DB::Exception: …` (current releases).
pub fn exception_code(message: &str) -> Option<u32> {
    let (_, after) = message.split_once("Code: ")?;
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    match after.as_bytes().get(digits) {
        Some(b'.' | b',') => after[..digits].parse().ok(),
        _ => None,
    }
}

/// The month a time falls in, as the tables' `PARTITION BY toYYYYMM(…)` sees it.
fn month(seconds: u32) -> u32 {
    use chrono::Datelike;
    let at = chrono::DateTime::from_timestamp(i64::from(seconds), 0).unwrap_or_default();
    at.year() as u32 * 100 + at.month()
}

#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    /// Bounds every insert: a server that hangs instead of refusing fails the attempt (retried).
    request_timeout: Duration,
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
        Self {
            client,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
        }
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

    /// How long a request may take; queries made with [`ClickHouseSink::client`] use it too.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub async fn ping(&self) -> bool {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .is_ok()
    }

    /// One insert per (event month, received month): each holds rows of one partition of
    /// `events` and of each of its views, so "too many partitions for a single insert" (252 on
    /// current ClickHouse) cannot refuse a batch whose events span many months.
    pub async fn insert_events(&self, rows: &[EventRow]) -> Result<(), SinkError> {
        for group in by_partition(rows, |row| (month(row.timestamp), month(row.received_at))) {
            self.insert("events", group.into_iter()).await?;
        }
        Ok(())
    }

    /// One insert per received month, as for events.
    pub async fn insert_errors<'a>(
        &self,
        rows: impl Iterator<Item = &'a ErrorRow>,
    ) -> Result<(), SinkError> {
        for group in by_partition(rows, |row| month(row.received_at)) {
            self.insert("event_errors", group.into_iter()).await?;
        }
        Ok(())
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
            .map_err(SinkError::from_clickhouse)?
            .with_timeouts(Some(self.request_timeout), Some(self.request_timeout));
        for row in rows {
            insert
                .write(row)
                .await
                .map_err(SinkError::from_clickhouse)?;
        }
        insert.end().await.map_err(SinkError::from_clickhouse)
    }
}

/// Runs a ClickHouse request, failing it as timed out after `timeout`: a server that hangs
/// instead of refusing must not hold a caller forever.
pub async fn within<T>(
    timeout: Duration,
    request: impl std::future::Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, clickhouse::error::Error> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or(Err(clickhouse::error::Error::TimedOut))
}

/// The rows grouped by partition, in partition order (one group for an ordinary batch).
fn by_partition<'r, T, K: Ord>(
    rows: impl IntoIterator<Item = &'r T>,
    partition: impl Fn(&T) -> K,
) -> impl Iterator<Item = Vec<&'r T>>
where
    T: 'r,
{
    let mut groups: BTreeMap<K, Vec<&'r T>> = BTreeMap::new();
    for row in rows {
        groups.entry(partition(row)).or_default().push(row);
    }
    groups.into_values()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_codes_are_read_from_old_and_current_servers() {
        assert_eq!(
            exception_code("Code: 27, e.displayText() = DB::Exception: Cannot parse input"),
            Some(27)
        );
        assert_eq!(
            exception_code("Code: 27. DB::Exception: Cannot parse input: expected '\\t'"),
            Some(27)
        );
        assert_eq!(
            exception_code("Code: 252. DB::Exception: Too many partitions for single INSERT block"),
            Some(252)
        );
        assert_eq!(exception_code("Code: 2x. nothing"), None);
        assert_eq!(exception_code("connection refused"), None);
    }

    #[test]
    fn a_refusal_of_the_data_is_permanent_on_old_and_current_servers() {
        for message in [
            "Code: 27, e.displayText() = DB::Exception: Cannot parse input, e.what() = DB::Exception",
            "Code: 27. DB::Exception: Cannot parse input: expected '\\t' before: ... (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
        ] {
            let error = SinkError::from_clickhouse(clickhouse::error::Error::BadResponse(
                message.to_string(),
            ));
            assert!(matches!(error, SinkError::Permanent(_)), "{message}");
        }
        let busy = SinkError::from_clickhouse(clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts".into(),
        ));
        assert!(matches!(busy, SinkError::Retryable(_)));
    }

    #[test]
    fn rows_of_many_months_are_inserted_one_partition_at_a_time() {
        let months = [1_609_459_200u32, 1_612_137_600, 1_609_459_300, 0];
        let groups: Vec<Vec<u32>> = by_partition(months.iter(), |&seconds| month(seconds))
            .map(|group| group.into_iter().copied().collect())
            .collect();
        assert_eq!(
            groups,
            vec![
                vec![0],
                vec![1_609_459_200, 1_609_459_300],
                vec![1_612_137_600]
            ]
        );
    }
}
