//! A broker that is down or hangs: 503 with Retry-After and not ready, never a request that hangs, and 202 once it is back.

use std::time::Duration;

use eye_devenv::testing::OwnedBroker;
use reqwest::StatusCode;

use crate::common::*;

#[tokio::test]
async fn broker_down_gives_503_with_retry_after_and_not_ready_then_202_and_ready_once_it_is_back() {
    let mut broker = OwnedBroker::start();
    let bridge = Bridge::start(&broker.bootstrap(), |config| {
        config.producer.message_timeout_ms = 3_000;
        config.retry_after_seconds = 2;
    })
    .await;
    let pageview = reference_event("pageview");
    assert_eq!(
        bridge.post_json(pageview.clone()).await.status(),
        StatusCode::ACCEPTED
    );

    broker.halt();
    let mut refused = None;
    for _ in 0..20 {
        let response = bridge.post_json(pageview.clone()).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused = refused.expect("503 while the broker is down");
    assert_eq!(refused.headers()["retry-after"], "2");
    let readiness = bridge
        .http
        .get(format!("{}/readyz", bridge.operations_url))
        .send()
        .await
        .unwrap();
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);

    broker.resume();
    let accepted = bridge
        .accepted_within(pageview.clone(), 60, Duration::from_millis(500))
        .await;
    assert!(accepted, "202 again once the broker is back");
    let readiness = bridge
        .http
        .get(format!("{}/readyz", bridge.operations_url))
        .send()
        .await
        .unwrap();
    assert_eq!(readiness.status(), StatusCode::OK, "ready again");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_hung_broker_gets_503_once_the_message_times_out_never_a_request_that_hangs() {
    let broker = OwnedBroker::start();
    let bridge = Bridge::start(&broker.bootstrap(), |config| {
        config.producer.message_timeout_ms = 2_000;
    })
    .await;
    let pageview = reference_event("pageview");
    assert_eq!(
        bridge.post_json(pageview.clone()).await.status(),
        StatusCode::ACCEPTED
    );
    // SIGSTOP: connections stay open and nothing answers (unlike a broker that is down).
    broker.signal(eye_devenv::testing::Signal::SIGSTOP).unwrap();
    let reply =
        tokio::time::timeout(Duration::from_secs(60), bridge.post_json(pageview.clone())).await;
    broker.signal(eye_devenv::testing::Signal::SIGCONT).unwrap();
    let reply = reply.expect("the request is answered while the broker hangs");
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers().contains_key("retry-after"));
    let accepted = bridge
        .accepted_within(pageview.clone(), 60, Duration::from_millis(500))
        .await;
    assert!(accepted, "202 again once the broker answers");
    bridge.shutdown().await;
}
