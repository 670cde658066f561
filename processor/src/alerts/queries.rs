//! What the rules read from ClickHouse: how far the data is complete, the window counts, the
//! samples, and on taking over what is judged and published already.

use std::collections::BTreeMap;
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use uuid::Uuid;

use super::judgement::{AlertStatus, Judgement, RuleProgress, WindowCounts};
use super::publish::AlertRow;
use super::rules::{AlertRule, GroupBy};
use super::{AlertError, AlertJudge, Judged};
use crate::sink::within;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use tracing::info;

const SAMPLE_SIZE: u64 = 5;

/// What `replays` says.
#[derive(Debug, Row, Deserialize)]
pub(super) struct Replays {
    /// Replays not finished whose heartbeat is recent.
    pub(super) running: u64,
    /// The last heartbeat of the latest finished replay (0 when none).
    pub(super) last_finished: u32,
}

impl AlertJudge {
    /// Whether a replay is rebuilding the tables (its heartbeat is under a minute old), and when
    /// the last one finished.
    pub(super) async fn replays(&self) -> Result<Replays, AlertError> {
        Ok(within(
            self.request_timeout,
            self.client
                .query(
                    "SELECT countIf(done = 0 AND seen > now() - 60) AS running, \
                 toUInt32(maxIf(seen, done = 1)) AS last_finished FROM \
                 (SELECT replay_id, max(finished) AS done, max(heartbeat_at) AS seen \
                  FROM replays GROUP BY replay_id)",
                )
                .fetch_one(),
        )
        .await?)
    }

    /// The time (seconds) before which every partition of the raw topic is written, less the
    /// allowed lateness; none while some partition has not reported yet.
    pub(super) async fn complete_until(&self) -> Result<Option<u32>, AlertError> {
        let partitions = self.partition_count().await?;
        let (reported, complete) = within(
            self.request_timeout,
            self.client
                .query(
                    "SELECT count(), toUInt32(min(if(committed_offset >= high_watermark, \
                 greatest(updated_at, received_time_watermark), received_time_watermark))) \
                 FROM ingest_watermarks WHERE topic = ?",
                )
                .bind(&self.raw_topic)
                .fetch_one::<(u64, u32)>(),
        )
        .await?;
        if partitions == 0 || reported < partitions as u64 {
            return Ok(None);
        }
        Ok(complete.checked_sub(self.settings.allowed_lateness_seconds))
    }

    pub(super) async fn partition_count(&self) -> Result<usize, AlertError> {
        let producer = self.producer.clone();
        let topic = self.raw_topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        Ok(metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == self.raw_topic)
            .map_or(0, |topic| topic.partitions().len()))
    }

    /// Starts judging at the first window holding data; what `eye.alerts` holds is not
    /// published again. None while there is no data.
    pub(super) async fn take_over(&self) -> Result<Option<Judged>, AlertError> {
        let first = within(
            self.request_timeout,
            self.client
                .query(
                    "SELECT toUInt32(min(minute)) FROM \
                 (SELECT minute FROM error_counts UNION ALL SELECT minute FROM event_counts)",
                )
                .fetch_one::<u32>(),
        )
        .await?;
        if first == 0 {
            return Ok(None);
        }
        let published: Vec<(String, String)> = within(
            self.request_timeout,
            self.client
                .query("SELECT DISTINCT toString(alert_id), status FROM alerts")
                .fetch_all(),
        )
        .await?;
        let published = published
            .into_iter()
            .filter_map(|(alert_id, status)| {
                let status = match status.as_str() {
                    "firing" => AlertStatus::Firing,
                    "resolved" => AlertStatus::Resolved,
                    _ => return None,
                };
                Some((Uuid::parse_str(&alert_id).ok()?, status))
            })
            .collect();
        let rules = self
            .settings
            .rules
            .iter()
            .map(|rule| RuleProgress {
                judged_until: first / rule.window_seconds() * rule.window_seconds(),
                open: BTreeMap::new(),
            })
            .collect();
        info!(
            first_window = first,
            "alert rules: judging from the first window"
        );
        Ok(Some(Judged {
            rules,
            published,
            // A replay finishing within this second may not be visible yet.
            taken_over_at: chrono::Utc::now().timestamp() as u32,
        }))
    }

    /// Every key's counts per window in [from, until), ordered by key and window.
    pub(super) async fn window_counts(
        &self,
        rule: &AlertRule,
        from: u32,
        until: u32,
    ) -> Result<Vec<WindowCounts>, AlertError> {
        let (category, name) = match rule.group_by {
            GroupBy::Application => ("''", "''"),
            GroupBy::EventType => ("category", "name"),
        };
        let counted = if rule.error_type.is_some() {
            "error_type = ?"
        } else {
            "1"
        };
        let window = rule.window_seconds();
        // Inner aliases differ from the columns they aggregate: ClickHouse would read an alias
        // named like its column as the aggregate inside another.
        let sql = format!(
            "SELECT application, key_category AS category, key_name AS name, window_start, \
             sum(counted) AS failures, sum(every_failure) AS all_failures, sum(valid_events) AS valid FROM ( \
               SELECT application, {category} AS key_category, {name} AS key_name, \
                 toUInt32(intDiv(toUInt32(minute), {window}) * {window}) AS window_start, \
                 uniqExactMergeIf(failures, {counted}) AS counted, uniqExactMerge(failures) AS every_failure, \
                 toUInt64(0) AS valid_events \
               FROM error_counts WHERE minute >= toDateTime(?) AND minute < toDateTime(?) \
               GROUP BY application, key_category, key_name, window_start \
               UNION ALL \
               SELECT application, {category} AS key_category, {name} AS key_name, \
                 toUInt32(intDiv(toUInt32(minute), {window}) * {window}) AS window_start, \
                 toUInt64(0) AS counted, toUInt64(0) AS every_failure, uniqExactMerge(events) AS valid_events \
               FROM event_counts WHERE minute >= toDateTime(?) AND minute < toDateTime(?) \
               GROUP BY application, key_category, key_name, window_start \
             ) GROUP BY application, key_category, key_name, window_start \
             ORDER BY application, key_category, key_name, window_start"
        );
        let mut query = self.client.query(&sql);
        if let Some(error_type) = &rule.error_type {
            query = query.bind(error_type);
        }
        Ok(within(
            self.request_timeout,
            query
                .bind(from)
                .bind(until)
                .bind(from)
                .bind(until)
                .fetch_all(),
        )
        .await?)
    }

    pub(super) async fn alert_row(
        &self,
        rule: &AlertRule,
        judgement: Judgement,
    ) -> Result<AlertRow, AlertError> {
        let counts = judgement.counts;
        let window_start = counts.window_start;
        let window_end = window_start + rule.window_seconds();
        let sample_event_ids = match judgement.status {
            AlertStatus::Firing => self.sample(rule, &counts, window_end).await?,
            AlertStatus::Resolved => Vec::new(),
        };
        Ok(AlertRow {
            alert_id: judgement.alert_id,
            status: judgement.status.as_str().to_string(),
            rule: rule.name.clone(),
            application: counts.application.clone(),
            category: counts.category.clone(),
            name: counts.name.clone(),
            error_type: rule.error_type.clone().unwrap_or_default(),
            window_start,
            window_end,
            failures: counts.failures,
            events: counts.events(),
            rate: counts.rate(),
            sample_event_ids,
        })
    }

    /// The lowest failed event ids of the window, so a replay picks the same ones.
    pub(super) async fn sample(
        &self,
        rule: &AlertRule,
        counts: &WindowCounts,
        window_end: u32,
    ) -> Result<Vec<String>, AlertError> {
        let mut sql = String::from(
            "SELECT DISTINCT toString(event_id) AS id, event_id FROM event_errors \
             WHERE received_at >= toDateTime(?) AND received_at < toDateTime(?) AND application = ?",
        );
        if rule.group_by == GroupBy::EventType {
            sql.push_str(" AND category = ? AND name = ?");
        }
        if rule.error_type.is_some() {
            sql.push_str(" AND error_type = ?");
        }
        sql.push_str(&format!(" ORDER BY event_id LIMIT {SAMPLE_SIZE}"));
        let mut query = self
            .client
            .query(&format!("SELECT id FROM ({sql})"))
            .bind(counts.window_start)
            .bind(window_end)
            .bind(&counts.application);
        if rule.group_by == GroupBy::EventType {
            query = query.bind(&counts.category).bind(&counts.name);
        }
        if let Some(error_type) = &rule.error_type {
            query = query.bind(error_type);
        }
        Ok(within(self.request_timeout, query.fetch_all()).await?)
    }
}
