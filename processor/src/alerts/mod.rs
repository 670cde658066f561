//! Alert rules over the failure counts, published to the error-alert topic (default `eye.alerts`)
//! in Avro single-object encoding (`schemas/avro/topics/alert.avsc`) and recorded in `eye.alerts`.
//!
//! A rule judges tumbling windows of `received_at` (aligned to the epoch), per application or per
//! event type, from `error_counts` and `event_counts`. A window is judged once, when it is
//! complete: every raw-topic partition is written past its end (`ingest_watermarks`) plus
//! `allowed_lateness_seconds`. So each judgement depends on the log only, and a replay publishes the
//! same alerts with the same ids, whatever its batches and timing.
//!
//! An alert opens (`firing`) with the first window of a key over the threshold and closes
//! (`resolved`, same `alert_id`) with the first window after it that is not; `alert_id` is a
//! UUIDv5 of rule, key and opening window. One processor judges: the owner of partition 0 of the
//! raw topic. On taking over it judges every window from the first one in ClickHouse again and
//! publishes only what `eye.alerts` does not hold yet.

mod judgement;
mod publish;
mod queries;
mod rules;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use eye_core::schemas::TopicSchema;
use eye_core::settings::KafkaSettings;
use metrics::counter;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tracing::{error, info, warn};
use uuid::Uuid;

pub use judgement::AlertStatus;
pub use rules::{AlertRule, AlertSettings, GroupBy};

use judgement::{judge_windows, RuleProgress};
use publish::AlertRow;

use crate::avro_topic::{AvroTopic, PublishError};

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
    #[error("publishing an alert: {0}")]
    Publish(#[from] PublishError),
}

pub struct AlertJudge {
    settings: AlertSettings,
    raw_topic: String,
    client: Client,
    topic: AvroTopic,
    /// Also reads the raw topic's partition count.
    producer: FutureProducer,
    owns_first_partition: Arc<AtomicBool>,
    /// Bounds each ClickHouse request (a hung server fails the judgement, tried again next tick).
    request_timeout: Duration,
}

/// The judge's memory while it owns partition 0; rebuilt from ClickHouse on taking over.
pub(super) struct Judged {
    rules: Vec<RuleProgress>,
    published: HashSet<(Uuid, AlertStatus)>,
    /// A replay finished at or after this (seconds) rebuilt what this memory was built from.
    taken_over_at: u32,
}

impl AlertJudge {
    pub fn new(
        settings: AlertSettings,
        kafka: &KafkaSettings,
        raw_topic: &str,
        client: Client,
        request_timeout: Duration,
        schema: TopicSchema,
    ) -> Result<Self, AlertError> {
        settings.check()?;
        let producer = eye_core::kafka::acknowledged_producer(kafka)?;
        let topic = AvroTopic::new(producer.clone(), &settings.topic, schema);
        Ok(Self {
            settings,
            raw_topic: raw_topic.to_string(),
            client,
            topic,
            producer,
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

    /// Judges complete windows every `judge_interval_ms` until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.settings.judge_interval_ms));
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
            let judgements = judge_windows(rule, &mut next, counts, until);
            for judgement in judgements {
                let status = judgement.status;
                if judged.published.contains(&(judgement.alert_id, status)) {
                    continue;
                }
                let row = self.alert_row(rule, judgement).await?;
                match self.publish(rule, &row).await {
                    Ok(()) => {}
                    // Never retried: the same message would fail again. It is in `alerts`.
                    Err(AlertError::Publish(error)) if error.is_permanent() => {
                        counter!("eye_processor_alerts_refused_total").increment(1);
                        error!(rule = %rule.name, alert_id = %row.alert_id, %error, "an alert is not published; it is in the alerts table only");
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
}
