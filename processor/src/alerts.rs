//! Alert rules over the failure counts, published to the error-alert topic (default `eye.alerts`)
//! in Avro single-object encoding (`schemas/avro/topics/alert.avsc`) and recorded in `eye.alerts`.
//!
//! A rule judges tumbling windows of `received_at` (aligned to the epoch), per application or per
//! event type, from `error_counts` and `event_counts`. A window is judged once, when it is
//! complete: every raw-topic partition is written past its end (`ingest_watermarks`) plus
//! `allowed_lateness_seconds`. So each verdict depends on the log only, and a replay publishes the
//! same alerts with the same ids, whatever its batches and timing.
//!
//! An alert opens (`firing`) with the first window of a key over the threshold and closes
//! (`resolved`, same `alert_id`) with the first window after it that is not; `alert_id` is a
//! UUIDv5 of rule, key and opening window. One processor judges: the owner of partition 0 of the
//! raw topic. On taking over it judges every window from the first one in ClickHouse again and
//! publishes only what `eye.alerts` does not hold yet.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sink::within;
use apache_avro::types::Value as Avro;
use clickhouse::{Client, Row};
use eye_core::kafka::refused_for_good;
use eye_core::schemas::TopicSchema;
use eye_core::settings::KafkaSettings;
use metrics::counter;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};
use uuid::Uuid;

/// Namespace of alert ids: UUIDv5 of rule, key and opening window.
const ALERT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3b9e_61d2_7a44_4f0e_9c15_d8a2_47e0_b6c3);
const SAMPLE_SIZE: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    pub topic: String,
    /// Partitions the topic is created with when it does not exist.
    pub partitions: i32,
    /// How often the complete windows are judged.
    pub evaluate_interval_ms: u64,
    /// How long after a window's end late messages may still arrive (the bridge stamps
    /// `received_at` before its produce, which may take seconds).
    pub allowed_lateness_seconds: u32,
    pub rules: Vec<AlertRule>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            topic: "eye.alerts".into(),
            partitions: 4,
            evaluate_interval_ms: 5_000,
            allowed_lateness_seconds: 60,
            rules: Vec::new(),
        }
    }
}

/// What a rule counts, per key and window, and when the window is over the threshold: every
/// condition given must hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// The failures counted; every type when absent.
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub group_by: GroupBy,
    pub window_minutes: u32,
    /// Over the threshold when the window has more failures than this.
    #[serde(default)]
    pub failures_above: Option<u64>,
    /// Over the threshold when failures / events (valid and failed) is above this (0.05 = 5%)…
    #[serde(default)]
    pub rate_above: Option<f64>,
    /// …and the window has at least this many events.
    #[serde(default)]
    pub min_events: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    Application,
    /// Application, category and name.
    EventType,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alert rule {0:?} has neither failures_above nor rate_above")]
    NoThreshold(String),
    #[error("alert rule {0:?} has a window of 0 minutes")]
    EmptyWindow(String),
    #[error("alert rules share the name {0:?}")]
    DuplicateName(String),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("encoding an alert: {0}")]
    Avro(#[from] apache_avro::Error),
}

impl AlertSettings {
    pub fn check(&self) -> Result<(), AlertError> {
        let mut names = HashSet::new();
        for rule in &self.rules {
            if rule.failures_above.is_none() && rule.rate_above.is_none() {
                return Err(AlertError::NoThreshold(rule.name.clone()));
            }
            if rule.window_minutes == 0 {
                return Err(AlertError::EmptyWindow(rule.name.clone()));
            }
            if !names.insert(&rule.name) {
                return Err(AlertError::DuplicateName(rule.name.clone()));
            }
        }
        Ok(())
    }
}

impl AlertRule {
    fn window_seconds(&self) -> u32 {
        self.window_minutes * 60
    }

    fn is_over(&self, counts: &WindowCounts) -> bool {
        let events = counts.events();
        self.failures_above
            .is_none_or(|limit| counts.failures > limit)
            && self
                .rate_above
                .is_none_or(|limit| events >= self.min_events && counts.rate() > limit)
    }
}

/// A rule's key: the application, and for `event_type` rules the category and name.
type Key = (String, String, String);

/// One key's counts in one window, as read from ClickHouse.
#[derive(Debug, Clone, Default, Row, Deserialize)]
struct WindowCounts {
    application: String,
    category: String,
    name: String,
    window_start: u32,
    /// Failures the rule counts.
    failures: u64,
    /// Failures of every type, and valid events: with `failures`, the rate's denominator.
    all_failures: u64,
    valid: u64,
}

impl WindowCounts {
    fn events(&self) -> u64 {
        self.valid + self.all_failures
    }

    fn rate(&self) -> f64 {
        match self.events() {
            0 => 0.0,
            events => self.failures as f64 / events as f64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// A row of `eye.alerts`: one per message published.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
struct AlertRow {
    #[serde(with = "clickhouse::serde::uuid")]
    alert_id: Uuid,
    status: String,
    rule: String,
    application: String,
    category: String,
    name: String,
    error_type: String,
    window_start: u32,
    window_end: u32,
    failures: u64,
    events: u64,
    rate: f64,
    sample_event_ids: Vec<String>,
}

/// An alert left open by the last window judged for its key.
#[derive(Debug, Clone)]
struct OpenAlert {
    alert_id: Uuid,
    last_window: u32,
}

/// What one rule has judged so far.
#[derive(Debug, Clone, Default)]
struct RuleProgress {
    /// Windows before this start (seconds) are judged.
    judged_until: u32,
    open: BTreeMap<Key, OpenAlert>,
}

pub struct AlertEvaluator {
    settings: AlertSettings,
    raw_topic: String,
    client: Client,
    producer: FutureProducer,
    schema: TopicSchema,
    owns_first_partition: Arc<AtomicBool>,
    /// Bounds each ClickHouse request (a hung server fails the judgement, tried again next tick).
    request_timeout: Duration,
}

/// The evaluator's memory while it owns partition 0; rebuilt from ClickHouse on taking over.
struct Judged {
    rules: Vec<RuleProgress>,
    published: HashSet<(Uuid, AlertStatus)>,
    /// A replay finished at or after this (seconds) rebuilt what this memory was built from.
    taken_over_at: u32,
}

/// What `replays` says.
#[derive(Debug, Row, Deserialize)]
struct Replays {
    /// Replays not finished whose heartbeat is recent.
    running: u64,
    /// The last heartbeat of the latest finished replay (0 when none).
    last_finished: u32,
}

impl AlertEvaluator {
    pub fn new(
        settings: AlertSettings,
        kafka: &KafkaSettings,
        raw_topic: &str,
        client: Client,
        request_timeout: Duration,
        schema: TopicSchema,
    ) -> Result<Self, AlertError> {
        settings.check()?;
        Ok(Self {
            settings,
            raw_topic: raw_topic.to_string(),
            client,
            producer: eye_core::kafka::acknowledged_producer(kafka)?,
            schema,
            owns_first_partition: Arc::default(),
            request_timeout,
        })
    }

    /// Judges only while `flag` is set (the pipeline's ownership of partition 0).
    pub fn owned_by(self, flag: Arc<AtomicBool>) -> Self {
        Self {
            owns_first_partition: flag,
            ..self
        }
    }

    /// Judges complete windows every `evaluate_interval_ms` until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.settings.evaluate_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut judged: Option<Judged> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = interval.tick() => {}
            }
            if !self.owns_first_partition.load(Ordering::Relaxed) {
                judged = None;
                continue;
            }
            match self.replays().await {
                Ok(replays) if replays.running > 0 => {
                    judged = None;
                    continue;
                }
                Ok(replays) => {
                    if judged
                        .as_ref()
                        .is_some_and(|judged| replays.last_finished >= judged.taken_over_at)
                    {
                        judged = None;
                    }
                }
                Err(error) => {
                    warn!(%error, "reading the replays");
                    continue;
                }
            }
            if let Err(error) = self.judge(&mut judged).await {
                warn!(%error, "judging alert rules");
            }
        }
    }

    /// Judges every complete window from the first one, publishing what `eye.alerts` does not
    /// hold yet (a replay's last step).
    pub async fn judge_once(&self) -> Result<(), AlertError> {
        self.judge(&mut None).await
    }

    /// Whether a replay is rebuilding the tables (its heartbeat is under a minute old), and when
    /// the last one finished.
    async fn replays(&self) -> Result<Replays, AlertError> {
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

    async fn judge(&self, judged: &mut Option<Judged>) -> Result<(), AlertError> {
        let Some(complete_until) = self.complete_until().await? else {
            return Ok(());
        };
        if judged.is_none() {
            *judged = self.take_over().await?;
        }
        let Some(judged) = judged.as_mut() else {
            return Ok(());
        };
        for (rule, progress) in self.settings.rules.iter().zip(judged.rules.iter_mut()) {
            let window = rule.window_seconds();
            let until = complete_until / window * window;
            if until <= progress.judged_until {
                continue;
            }
            let counts = self
                .window_counts(rule, progress.judged_until, until)
                .await?;
            let mut next = progress.clone();
            let decisions = decide(rule, &mut next, counts, until);
            for decision in decisions {
                let status = decision.status;
                if judged.published.contains(&(decision.alert_id, status)) {
                    continue;
                }
                let row = self.alert_row(rule, decision).await?;
                match self.publish(rule, &row).await {
                    Ok(()) => {}
                    // Never retried: the same message would be refused again. It is in `alerts`.
                    Err(AlertError::Kafka(error)) if refused_for_good(&error) => {
                        counter!("eye_processor_alerts_refused_total").increment(1);
                        error!(rule = %rule.name, alert_id = %row.alert_id, %error, "the broker refused an alert for good");
                    }
                    Err(error) => return Err(error),
                }
                let mut insert = self
                    .client
                    .insert::<AlertRow>("alerts")
                    .await?
                    .with_timeouts(Some(self.request_timeout), Some(self.request_timeout));
                insert.write(&row).await?;
                insert.end().await?;
                info!(rule = %rule.name, alert_id = %row.alert_id, status = %row.status, application = %row.application, "alert published");
                judged.published.insert((row.alert_id, status));
            }
            *progress = next;
        }
        Ok(())
    }

    /// The time (seconds) before which every partition of the raw topic is written, less the
    /// allowed lateness; none while some partition has not reported yet.
    async fn complete_until(&self) -> Result<Option<u32>, AlertError> {
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

    async fn partition_count(&self) -> Result<usize, AlertError> {
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
    async fn take_over(&self) -> Result<Option<Judged>, AlertError> {
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
    async fn window_counts(
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

    async fn alert_row(
        &self,
        rule: &AlertRule,
        decision: Decision,
    ) -> Result<AlertRow, AlertError> {
        let counts = decision.counts;
        let window_start = counts.window_start;
        let window_end = window_start + rule.window_seconds();
        let sample_event_ids = match decision.status {
            AlertStatus::Firing => self.sample(rule, &counts, window_end).await?,
            AlertStatus::Resolved => Vec::new(),
        };
        Ok(AlertRow {
            alert_id: decision.alert_id,
            status: decision.status.as_str().to_string(),
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
    async fn sample(
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

    async fn publish(&self, rule: &AlertRule, row: &AlertRow) -> Result<(), AlertError> {
        let millis = |seconds: u32| i64::from(seconds) * 1000;
        let value = Avro::Record(vec![
            ("alert_id".into(), Avro::Uuid(row.alert_id)),
            (
                "status".into(),
                match row.status.as_str() {
                    "firing" => Avro::Enum(0, "firing".into()),
                    _ => Avro::Enum(1, "resolved".into()),
                },
            ),
            ("rule".into(), Avro::String(row.rule.clone())),
            ("application".into(), Avro::String(row.application.clone())),
            ("category".into(), Avro::String(row.category.clone())),
            ("name".into(), Avro::String(row.name.clone())),
            ("error_type".into(), Avro::String(row.error_type.clone())),
            (
                "window_start".into(),
                Avro::TimestampMillis(millis(row.window_start)),
            ),
            (
                "window_end".into(),
                Avro::TimestampMillis(millis(row.window_end)),
            ),
            ("failures".into(), Avro::Long(row.failures as i64)),
            ("events".into(), Avro::Long(row.events as i64)),
            ("rate".into(), Avro::Double(row.rate)),
            (
                "failures_above".into(),
                match rule.failures_above {
                    Some(limit) => Avro::Union(1, Box::new(Avro::Long(limit as i64))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            (
                "rate_above".into(),
                match rule.rate_above {
                    Some(limit) => Avro::Union(1, Box::new(Avro::Double(limit))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            ("min_events".into(), Avro::Long(rule.min_events as i64)),
            (
                "sample_event_ids".into(),
                Avro::Array(
                    row.sample_event_ids
                        .iter()
                        .filter_map(|id| Uuid::parse_str(id).ok())
                        .map(Avro::Uuid)
                        .collect(),
                ),
            ),
        ]);
        let payload = self.schema.encode(value)?;
        // Keyed by rule and key: the messages of one alert stay in order on one partition.
        let key = format!(
            "{}/{}/{}/{}",
            row.rule, row.application, row.category, row.name
        );
        self.producer
            .send(
                FutureRecord::to(&self.settings.topic)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)?;
        Ok(())
    }
}

/// A verdict to publish.
#[derive(Debug)]
struct Decision {
    alert_id: Uuid,
    status: AlertStatus,
    counts: WindowCounts,
}

fn alert_id(rule: &str, key: &Key, window_start: u32) -> Uuid {
    let (application, category, name) = key;
    let text = format!("{rule}\n{application}\n{category}\n{name}\n{window_start}");
    Uuid::new_v5(&ALERT_ID_NAMESPACE, text.as_bytes())
}

/// Walks each key's windows in order (windows without data count as zero) and opens or closes
/// its alert; `until` is where the judged windows end.
fn decide(
    rule: &AlertRule,
    progress: &mut RuleProgress,
    counts: Vec<WindowCounts>,
    until: u32,
) -> Vec<Decision> {
    let window = rule.window_seconds();
    let mut decisions = Vec::new();
    let empty = |key: &Key, window_start: u32| WindowCounts {
        application: key.0.clone(),
        category: key.1.clone(),
        name: key.2.clone(),
        window_start,
        ..WindowCounts::default()
    };
    for counts in counts {
        let key: Key = (
            counts.application.clone(),
            counts.category.clone(),
            counts.name.clone(),
        );
        // A window without data after an open alert's last one closes it.
        if let Some(open) = progress.open.get(&key) {
            if counts.window_start > open.last_window + window {
                decisions.push(Decision {
                    alert_id: open.alert_id,
                    status: AlertStatus::Resolved,
                    counts: empty(&key, open.last_window + window),
                });
                progress.open.remove(&key);
            }
        }
        let over = rule.is_over(&counts);
        match (progress.open.get_mut(&key), over) {
            (Some(open), true) => open.last_window = counts.window_start,
            (Some(open), false) => {
                decisions.push(Decision {
                    alert_id: open.alert_id,
                    status: AlertStatus::Resolved,
                    counts,
                });
                progress.open.remove(&key);
            }
            (None, true) => {
                let alert_id = alert_id(&rule.name, &key, counts.window_start);
                progress.open.insert(
                    key,
                    OpenAlert {
                        alert_id,
                        last_window: counts.window_start,
                    },
                );
                decisions.push(Decision {
                    alert_id,
                    status: AlertStatus::Firing,
                    counts,
                });
            }
            (None, false) => {}
        }
    }
    // Open alerts whose next window is judged and held no data.
    let closed: Vec<Key> = progress
        .open
        .iter()
        .filter(|(_, open)| open.last_window + window < until)
        .map(|(key, _)| key.clone())
        .collect();
    for key in closed {
        let open = progress.open.remove(&key).expect("listed above");
        decisions.push(Decision {
            alert_id: open.alert_id,
            status: AlertStatus::Resolved,
            counts: empty(&key, open.last_window + window),
        });
    }
    progress.judged_until = until;
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> AlertRule {
        AlertRule {
            name: "future".into(),
            error_type: Some("future_timestamp".into()),
            group_by: GroupBy::Application,
            window_minutes: 5,
            failures_above: Some(3),
            rate_above: None,
            min_events: 0,
        }
    }

    fn counts(application: &str, window_start: u32, failures: u64) -> WindowCounts {
        WindowCounts {
            application: application.into(),
            window_start,
            failures,
            all_failures: failures,
            ..WindowCounts::default()
        }
    }

    fn verdicts(decisions: &[Decision]) -> Vec<(&str, u32, AlertStatus)> {
        decisions
            .iter()
            .map(|d| {
                (
                    d.counts.application.as_str(),
                    d.counts.window_start,
                    d.status,
                )
            })
            .collect()
    }

    #[test]
    fn an_alert_opens_once_stays_open_while_over_and_closes_on_the_first_window_under() {
        let mut progress = RuleProgress::default();
        let decisions = decide(
            &rule(),
            &mut progress,
            vec![
                counts("shop", 0, 4),
                counts("shop", 300, 9),
                counts("shop", 600, 1),
                counts("blog", 0, 2),
            ],
            900,
        );
        assert_eq!(
            verdicts(&decisions),
            [
                ("shop", 0, AlertStatus::Firing),
                ("shop", 600, AlertStatus::Resolved),
            ]
        );
        assert_eq!(decisions[0].alert_id, decisions[1].alert_id);
    }

    #[test]
    fn a_window_without_data_closes_an_alert_only_once_it_is_judged() {
        let mut progress = RuleProgress::default();
        let opened = decide(&rule(), &mut progress, vec![counts("shop", 0, 4)], 300);
        assert_eq!(verdicts(&opened), [("shop", 0, AlertStatus::Firing)]);
        // The next window is not complete yet: nothing to say.
        assert!(decide(&rule(), &mut progress, vec![], 300).is_empty());
        let closed = decide(&rule(), &mut progress, vec![], 600);
        assert_eq!(verdicts(&closed), [("shop", 300, AlertStatus::Resolved)]);
        assert_eq!(closed[0].alert_id, opened[0].alert_id);
    }

    #[test]
    fn judging_in_one_step_or_window_by_window_gives_the_same_verdicts() {
        let series = vec![
            counts("shop", 0, 4),
            counts("shop", 300, 5),
            counts("shop", 1200, 7),
        ];
        let mut at_once = RuleProgress::default();
        let all = decide(&rule(), &mut at_once, series.clone(), 2400);
        let mut stepwise = RuleProgress::default();
        let mut steps = Vec::new();
        for until in (300..=2400).step_by(300) {
            let window: Vec<WindowCounts> = series
                .iter()
                .filter(|c| c.window_start + 300 == until)
                .cloned()
                .collect();
            steps.extend(decide(&rule(), &mut stepwise, window, until));
        }
        let ids = |decisions: &[Decision]| -> Vec<(Uuid, AlertStatus)> {
            decisions.iter().map(|d| (d.alert_id, d.status)).collect()
        };
        assert_eq!(ids(&all), ids(&steps));
        assert_eq!(
            verdicts(&all),
            [
                ("shop", 0, AlertStatus::Firing),
                ("shop", 600, AlertStatus::Resolved),
                ("shop", 1200, AlertStatus::Firing),
                ("shop", 1500, AlertStatus::Resolved),
            ]
        );
    }

    #[test]
    fn a_rate_rule_needs_its_minimum_of_events() {
        let rule = AlertRule {
            failures_above: None,
            rate_above: Some(0.1),
            min_events: 100,
            ..rule()
        };
        let few = WindowCounts {
            failures: 5,
            all_failures: 5,
            valid: 5,
            ..WindowCounts::default()
        };
        let many = WindowCounts {
            failures: 20,
            all_failures: 20,
            valid: 100,
            ..WindowCounts::default()
        };
        assert!(!rule.is_over(&few));
        assert!(rule.is_over(&many));
    }
}
