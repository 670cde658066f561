//! The ingest bridge: trusted applications POST events over HTTP; each event goes, byte for
//! byte, to the raw Kafka topic, and the reply comes once the broker has acknowledged them all.
//!
//! Follow an event: [`routes`] (authenticate with [`auth`], split the body with [`body`], admit
//! it under the application's [`rate_limit`], judge it ahead with [`verdicts`] when asked) →
//! [`producer`] → raw topic. [`error`] maps every refusal to its reply once; [`openapi`] describes
//! the API and serves its reference.

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod openapi;
pub mod producer;
pub mod rate_limit;
pub mod routes;
pub mod verdicts;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::auth::{Applications, ApplicationsError};
use crate::config::{ApplicationSourceError, IngestConfig};
use crate::producer::EventProducer;
use crate::rate_limit::{RateLimitError, RateLimits};
use crate::routes::{api_router, operations_router, AppState};
use crate::verdicts::Verdicts;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    ApplicationSource(#[from] ApplicationSourceError),
    #[error(transparent)]
    Applications(#[from] ApplicationsError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error("creating the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("serving HTTP: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Metrics(#[from] eye_core::telemetry::MetricsError),
    #[error("loading the event schemas (schemas_dir) for verdicts: {0}")]
    Schemas(#[from] eye_core::schemas::SchemaError),
}

/// How long shutdown waits for queued events to reach the broker.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// Where the bridge listens: the public API, and the operations endpoints.
pub struct Listeners {
    pub api: TcpListener,
    pub operations: TcpListener,
}

impl Listeners {
    /// Binds `listen` and `operations_listen`.
    pub async fn bind(config: &IngestConfig) -> io::Result<Self> {
        let bind = |address: &str| {
            let address = address.to_owned();
            async move {
                TcpListener::bind(&address)
                    .await
                    .map_err(|err| io::Error::new(err.kind(), format!("binding {address}: {err}")))
            }
        };
        Ok(Self {
            api: bind(&config.listen).await?,
            operations: bind(&config.operations_listen).await?,
        })
    }
}

/// Serves the API and the operations endpoints until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish and flushes the producer; health answers until the end.
pub async fn serve(
    config: IngestConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let all_applications = config.all_applications()?;
    let applications = Applications::new(&all_applications)?;
    let rate_limits = RateLimits::new(&all_applications, config.limits.max_batch_events)?;
    let verdicts = Verdicts::load(&config.schemas_dir, &config.validation)?;
    let producer = Arc::new(EventProducer::new(&config.kafka, &config.producer)?);
    let state = Arc::new(AppState {
        applications,
        rate_limits,
        producer: producer.clone(),
        verdicts,
        limits: config.limits.clone(),
        retry_after_seconds: config.retry_after_seconds,
        metrics: eye_core::telemetry::prometheus()?,
    });
    info!(
        address = %listeners.api.local_addr()?,
        operations = %listeners.operations.local_addr()?,
        topic = %config.producer.topic,
        "ingest listening"
    );
    let operations =
        eye_core::operations::spawn(listeners.operations, operations_router(state.clone()))?;
    axum::serve(listeners.api, api_router(state, &config))
        .with_graceful_shutdown(shutdown)
        .await?;
    let flush = tokio::task::spawn_blocking(move || producer.flush(SHUTDOWN_FLUSH));
    let _ = flush.await;
    operations.stop().await?;
    info!("ingest stopped");
    Ok(())
}

/// A bridge served on a task of the current runtime, on the addresses its listeners got (tests
/// and embedding set `listen` and `operations_listen` to `127.0.0.1:0`).
pub struct Spawned {
    pub api_addr: SocketAddr,
    pub operations_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), StartError>>,
}

impl Spawned {
    /// Binds the listeners and serves on a new task until [`Spawned::shutdown`].
    pub async fn start(config: IngestConfig) -> io::Result<Self> {
        let listeners = Listeners::bind(&config).await?;
        let api_addr = listeners.api.local_addr()?;
        let operations_addr = listeners.operations.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listeners, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            api_addr,
            operations_addr,
            stop,
            task,
        })
    }

    /// Shuts down as on SIGTERM (see [`serve`]); the error that stopped it early, if any.
    pub async fn shutdown(self) -> Result<(), StartError> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_else(|error| {
            Err(StartError::Io(io::Error::other(format!(
                "the bridge's task: {error}"
            ))))
        })
    }
}
