//! Logging and Prometheus metrics, set up the same way in every service.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Histogram buckets for latencies in seconds, 1 ms to 10 s.
pub const LATENCY_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// JSON logs on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .json()
        .with_writer(std::io::stderr)
        .init();
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("installing the metrics recorder: {0}")]
pub struct MetricsError(String);

/// The process-wide Prometheus recorder, installed on first use: metrics macros record into one
/// global recorder, so several servers in one process (tests) share it. Metrics whose name ends
/// in `_seconds` are histograms with [`LATENCY_SECONDS_BUCKETS`].
pub fn prometheus() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_SECONDS_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|err| MetricsError(err.to_string()))
        })
        .clone()
}
