//! Prometheus metrics for the bridge.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::StartError;

const PRODUCE_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use (metrics macros record into
/// the one global recorder, so several servers in one process share it).
pub fn prometheus() -> Result<PrometheusHandle, StartError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("eye_ingest_produce_seconds".into()),
                    PRODUCE_SECONDS_BUCKETS,
                )
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|err| err.to_string())
        })
        .clone()
        .map_err(StartError::Metrics)
}
