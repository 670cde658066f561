//! Health, readiness and metrics, on their own port.

use eye_devenv::testing::services;
use reqwest::StatusCode;

use crate::common::*;

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    assert_eq!(
        bridge.post_json(reference_event("pageview")).await.status(),
        StatusCode::ACCEPTED
    );
    let health = bridge
        .http
        .get(format!("{}/healthz", bridge.operations_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = bridge
        .http
        .get(format!("{}/metrics", bridge.operations_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "eye_ingest_requests_total",
        "eye_ingest_events_produced_total",
        "eye_ingest_produce_seconds_bucket",
        "eye_ingest_request_bytes_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics:\n{metrics}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let public = bridge
            .http
            .get(format!("{}{path}", bridge.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            public.status(),
            StatusCode::NOT_FOUND,
            "{path} on the API port"
        );
    }
    bridge.shutdown().await;
}
