//! What `run` and `replay` share to start: the schemas and tables, the session publisher, the
//! pipeline over a source, and the operations endpoints; with the one error a start can end in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use eye_core::schemas::{SchemaError, SchemaRegistry, TopicSchema};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::warn;

use crate::alerts::AlertError;
use crate::config::ProcessorConfig;
use crate::pipeline::{Outputs, Pipeline};
use crate::readiness::Readiness;
use crate::session_state::changelog::Changelog;
use crate::session_state::SessionStates;
use crate::session_updates::SessionUpdates;
use crate::sink::{ClickHouseSink, SinkError};
use crate::source::{RawTopic, Source, SourceError};
use eye_core::validate::Validator;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Schemas(#[from] SchemaError),
    #[error("preparing ClickHouse: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("creating the processor's topics: {0}")]
    Topics(#[from] eye_core::kafka::TopicError),
    #[error("creating the producer of {topic}: {source}")]
    Producer {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("the session changelog {topic} has {partitions} partitions, fewer than the raw topic's {raw_partitions}: add partitions to it (kafka-topics --alter --partitions {raw_partitions}) or name a new topic in session_updates.state_topic")]
    ChangelogPartitions {
        topic: String,
        partitions: i32,
        raw_partitions: i32,
    },
    #[error(transparent)]
    Alerts(#[from] AlertError),
    #[error(transparent)]
    Metrics(#[from] eye_core::telemetry::MetricsError),
    #[error("serving health endpoints: {0}")]
    Io(#[from] std::io::Error),
}

/// The validator over the event schemas, and the ClickHouse sink with its tables created.
pub async fn prepare(config: &ProcessorConfig) -> Result<(Validator, ClickHouseSink), StartError> {
    let registry = SchemaRegistry::load(&config.schemas_dir.join("avro"))?;
    let validator = Validator::new(
        registry,
        chrono::Duration::seconds(config.validation.future_tolerance_seconds),
    );
    let sink = ClickHouseSink::new(&config.clickhouse);
    sink.apply_ddl(
        &config.clickhouse.database,
        &config.schemas_dir.join("clickhouse"),
    )
    .await?;
    Ok((validator, sink))
}

/// How a start treats the session changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChangelog {
    /// The live processor: restores from it and writes it.
    Kept,
    /// A replay: the live processor keeps it.
    Untouched,
}

/// The session-topic publisher, its topic created, and the sessions held in memory (with their
/// changelog, its topic created, when kept), when enabled.
pub async fn session_updates(
    config: &ProcessorConfig,
    sink: &ClickHouseSink,
    changelog: SessionChangelog,
) -> Result<Option<(SessionUpdates, SessionStates)>, StartError> {
    let settings = &config.session_updates;
    if !settings.enabled {
        return Ok(None);
    }
    eye_core::kafka::create_topics(
        &config.kafka,
        &[&settings.topic],
        &config
            .topics
            .settings(settings.partitions, &config.topics.sessions),
    )
    .await?;
    let schema = TopicSchema::load(&config.schemas_dir.join("avro/topics/session.avsc"))?;
    let updates = SessionUpdates::new(settings, &config.kafka, sink, schema).map_err(|source| {
        StartError::Producer {
            topic: settings.topic.clone(),
            source,
        }
    })?;
    let changelog = match changelog {
        SessionChangelog::Kept => Some(Arc::new(session_changelog(config, &updates).await?)),
        SessionChangelog::Untouched => None,
    };
    let states = SessionStates::new(
        settings.max_sessions_in_memory,
        settings.idle_seconds,
        settings.known_sessions_capacity,
        changelog,
    );
    Ok(Some((updates, states)))
}

/// The changelog of the sessions in memory, its topic created with a partition for each of the
/// raw topic's (partition `p` keeps the sessions of raw partition `p`).
async fn session_changelog(
    config: &ProcessorConfig,
    updates: &SessionUpdates,
) -> Result<Changelog, StartError> {
    let settings = &config.session_updates;
    let state_topic = settings.state_topic.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-session-state",
            config.consumer.group_id, config.consumer.topic
        )
    });
    let raw_partitions =
        eye_core::kafka::partition_count(&config.kafka, &config.consumer.topic).await?;
    eye_core::kafka::create_topics(
        &config.kafka,
        &[&state_topic],
        &config
            .topics
            .settings(raw_partitions, &config.topics.session_state),
    )
    .await?;
    let state_partitions = eye_core::kafka::partition_count(&config.kafka, &state_topic).await?;
    if state_partitions < raw_partitions {
        return Err(StartError::ChangelogPartitions {
            topic: state_topic,
            partitions: state_partitions,
            raw_partitions,
        });
    }
    Ok(Changelog::new(
        &state_topic,
        updates.producer(),
        &config.kafka,
        Duration::from_millis(settings.restore_timeout_ms),
    ))
}

/// The pipeline over `source`, configured by `config`.
pub fn pipeline(
    config: &ProcessorConfig,
    source: Source,
    validator: Validator,
    sink: ClickHouseSink,
    outputs: Outputs,
    readiness: Arc<Readiness>,
) -> Result<Pipeline, StartError> {
    let raw_topic = RawTopic::new(&config.kafka, &config.consumer, source, readiness.clone())?;
    Ok(Pipeline::new(
        raw_topic,
        config.batch.clone(),
        validator,
        sink,
        outputs,
        readiness,
    ))
}

/// A readiness that goes false once committed offsets stand still `consumer.stalled_after_ms`.
pub fn readiness(config: &ProcessorConfig) -> Arc<Readiness> {
    Arc::new(Readiness::new(
        Duration::from_millis(config.consumer.stalled_after_ms),
        Instant::now(),
    ))
}

#[derive(Clone)]
pub struct Health {
    pub readiness: Arc<Readiness>,
    pub metrics: PrometheusHandle,
}

impl Health {
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(self)
    }
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    match health.readiness.check(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(not_ready) => (StatusCode::SERVICE_UNAVAILABLE, not_ready.to_string()),
    }
}

async fn render_metrics(State(health): State<Health>) -> String {
    health.metrics.run_upkeep();
    health.metrics.render()
}

/// Warns when the raw topic bounds its log: a replay after that rebuilds every table from what is
/// left, silently missing the rest. Not an error: an operator may bound it on purpose.
pub async fn check_raw_retention(config: &ProcessorConfig) {
    match eye_core::kafka::finite_retention(&config.kafka, &config.consumer.topic).await {
        Ok(None) => {}
        Ok(Some(bounds)) => warn!(
            topic = %config.consumer.topic,
            %bounds,
            "the raw topic's retention is finite: a replay rebuilds the tables from what is left of the log"
        ),
        Err(error) => {
            warn!(topic = %config.consumer.topic, %error, "could not read the raw topic's retention")
        }
    }
}
