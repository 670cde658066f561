//! The ingest bridge: trusted applications POST events over HTTP; each event goes, byte for
//! byte, to the raw Kafka topic, and the reply comes once the broker has acknowledged them all.
//!
//! Follow an event: [`routes`] (authenticate with [`auth`], split the body with [`body`], admit
//! it under the application's [`rate_limit`]) →
//! [`producer`] → raw topic.

pub mod auth;
pub mod body;
pub mod config;
pub mod producer;
pub mod rate_limit;
pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

use crate::auth::{Applications, ApplicationsError};
use crate::config::IngestConfig;
use crate::producer::EventProducer;
use crate::rate_limit::{RateLimitError, RateLimits};
use crate::routes::{router, AppState};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Applications(#[from] ApplicationsError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error("creating the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] eye_core::telemetry::MetricsError),
}

/// How long shutdown waits for queued events to reach the broker.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish and flushes the producer.
pub async fn serve(
    config: IngestConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let applications = Applications::new(&config.applications)?;
    let rate_limits = RateLimits::new(&config.applications, config.limits.max_batch_events)?;
    let producer = Arc::new(EventProducer::new(&config.kafka, &config.producer)?);
    let state = Arc::new(AppState {
        applications,
        rate_limits,
        producer: producer.clone(),
        limits: config.limits.clone(),
        retry_after_seconds: config.retry_after_seconds,
        metrics: eye_core::telemetry::prometheus()?,
    });
    info!(address = %listener.local_addr()?, topic = %config.producer.topic, "ingest listening");
    axum::serve(listener, router(state, &config))
        .with_graceful_shutdown(shutdown)
        .await?;
    let flush = tokio::task::spawn_blocking(move || producer.flush(SHUTDOWN_FLUSH));
    let _ = flush.await;
    info!("ingest stopped");
    Ok(())
}
