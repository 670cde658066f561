//! The stream processor: consumes the raw topic, decides for each message whether it is a valid
//! event or a typed failure, and writes each to exactly one ClickHouse table.
//!
//! Follow an event: [`pipeline`] (the order and the guarantee) reads it from [`source`] (Kafka:
//! partitions, offsets, commits) → [`validate`] (schemas from `eye_core::schemas`, timestamps
//! from `eye_core::timestamp`; the [`failure`] kinds) → a row of [`rows`] in the batch →
//! [`sink`] (ClickHouse), and for failures also [`dead_letter`] (the dead-letter topic), then
//! [`session_updates`]. [`alerts`] judges the failure counts in ClickHouse and publishes the
//! error-alert topic.

pub mod alerts;
mod batch;
pub mod config;
pub mod dead_letter;
pub mod failure;
pub mod pipeline;
pub mod readiness;
pub mod replay;
pub mod rows;
pub mod session_updates;
pub mod sink;
pub mod source;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use eye_core::schemas::{SchemaError, SchemaRegistry, TopicSchema};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::info;

use crate::alerts::{AlertError, AlertJudge};
use crate::config::ProcessorConfig;
use crate::dead_letter::DeadLetterSink;
use crate::pipeline::{Outputs, Pipeline};
use crate::readiness::Readiness;
use crate::session_updates::SessionUpdates;
use crate::sink::{ClickHouseSink, SinkError};
use crate::source::{Source, SourceError};
use crate::validate::Validator;

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
    #[error(transparent)]
    Alerts(#[from] AlertError),
    #[error(transparent)]
    Metrics(#[from] eye_core::telemetry::MetricsError),
    #[error("serving health endpoints: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the schemas, creates the ClickHouse tables, then processes until `shutdown` resolves.
/// Health, readiness and metrics are served on `listener`.
pub async fn run(
    config: ProcessorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (validator, sink) = prepare(&config).await?;
    eye_core::kafka::create_topics(
        &config.kafka,
        &[&config.dead_letter.topic],
        config.dead_letter.partitions,
    )
    .await?;
    eye_core::kafka::create_topics(
        &config.kafka,
        &[&config.alerts.topic],
        config.alerts.partitions,
    )
    .await?;
    let session_updates = session_updates(&config, &sink).await?;
    let alert_schema = TopicSchema::load(&config.schemas_dir.join("avro/topics/alert.avsc"))?;
    let dead_letters =
        DeadLetterSink::new(&config.kafka, &config.dead_letter, &config.consumer.topic).map_err(
            |source| StartError::Producer {
                topic: config.dead_letter.topic.clone(),
                source,
            },
        )?;
    let readiness = Arc::new(Readiness::new(
        Duration::from_millis(config.consumer.stalled_after_ms),
        Instant::now(),
    ));
    let health = Health {
        readiness: readiness.clone(),
        metrics: eye_core::telemetry::prometheus()?,
    };
    info!(address = %listener.local_addr()?, topic = %config.consumer.topic, "processor starting");
    let alerts = (!config.alerts.rules.is_empty())
        .then(|| {
            AlertJudge::new(
                config.alerts.clone(),
                &config.kafka,
                &config.consumer.topic,
                sink.client(),
                sink.request_timeout(),
                alert_schema,
            )
        })
        .transpose()?;
    let pipeline = Pipeline::new(
        config,
        Source::Group,
        validator,
        sink,
        Outputs {
            dead_letters: Some(dead_letters),
            session_updates,
        },
        readiness,
    )?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let alerts = alerts.map(|alerts| {
        let alerts = alerts.owned_by(pipeline.owns_first_partition());
        let mut stop_rx = stop_rx;
        tokio::spawn(alerts.run(async move {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
        }))
    });
    let operations = eye_core::operations::spawn(listener, health.router())?;
    pipeline.run(shutdown).await;
    let _ = stop_tx.send(true);
    operations.stop().await?;
    if let Some(alerts) = alerts {
        let _ = alerts.await;
    }
    Ok(())
}

/// The validator over the event schemas, and the ClickHouse sink with its tables created.
pub(crate) async fn prepare(
    config: &ProcessorConfig,
) -> Result<(Validator, ClickHouseSink), StartError> {
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

/// The session-topic publisher, its topic created, when enabled.
pub(crate) async fn session_updates(
    config: &ProcessorConfig,
    sink: &ClickHouseSink,
) -> Result<Option<SessionUpdates>, StartError> {
    let settings = &config.session_updates;
    if !settings.enabled {
        return Ok(None);
    }
    eye_core::kafka::create_topics(&config.kafka, &[&settings.topic], settings.partitions).await?;
    let schema = TopicSchema::load(&config.schemas_dir.join("avro/topics/session.avsc"))?;
    Ok(Some(
        SessionUpdates::new(settings, &config.kafka, sink, schema).map_err(|source| {
            StartError::Producer {
                topic: settings.topic.clone(),
                source,
            }
        })?,
    ))
}

#[derive(Clone)]
struct Health {
    readiness: Arc<Readiness>,
    metrics: PrometheusHandle,
}

impl Health {
    fn router(self) -> Router {
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
