//! Overload is refused, not absorbed: the key before the body, 408 for a slow body, 503 past the concurrency limit or with a full queue, 429 over a rate limit; health answers meanwhile.

use std::io::Write;
use std::time::Duration;

use eye_core::raw::EVENT_ID_HEADER;
use eye_devenv::testing::{services, OwnedBroker};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::common::*;

/// A request whose headers and first body bytes are sent and whose body never ends: a slow or
/// stalled client, as the bridge sees it.
async fn stalled_request(bridge: &Bridge, key: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = bridge.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n[{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The status code of the reply on `stream` (waits for it).
async fn reply_status(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 1024];
    while !reply.windows(2).any(|window| window == b"\r\n") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "connection closed without a reply");
        reply.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&reply);
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_unknown_key_is_refused_before_the_body_is_read() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |config| {
        config.limits.body_read_timeout_ms = 600_000;
    })
    .await;
    let mut stalled = stalled_request(&bridge, "guess").await;
    // The body never ends: a reply at all means the key was judged from the headers alone.
    assert_eq!(reply_status(&mut stalled).await, 401);
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_produces_nothing() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |config| {
        config.limits.body_read_timeout_ms = 300;
    })
    .await;
    let mut stalled = stalled_request(&bridge, SHOP_KEY).await;
    assert_eq!(reply_status(&mut stalled).await, 408);
    let sentinel = bridge.post_json(reference_event("pageview")).await;
    assert_eq!(sentinel.status(), StatusCode::ACCEPTED);
    assert_eq!(bridge.messages(1).len(), 1, "only the sentinel");
    bridge.shutdown().await;
}

#[tokio::test]
async fn past_the_concurrency_limit_a_request_gets_503_at_once_and_health_answers() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |config| {
        config.limits.max_concurrent_requests = 2;
        config.limits.body_read_timeout_ms = 600_000;
    })
    .await;
    let _first = stalled_request(&bridge, SHOP_KEY).await;
    let _second = stalled_request(&bridge, SHOP_KEY).await;
    // Both stalled requests hold their slots once the bridge has read their headers.
    let mut shed = 0;
    for _ in 0..100 {
        let response = bridge.post_json(reference_event("pageview")).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"));
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], "overloaded");
            shed += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shed, 1, "a third request is shed while two are served");
    let health = bridge
        .http
        .get(format!("{}/healthz", bridge.operations_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "health is outside the limit"
    );
    drop((_first, _second));
    let accepted = bridge
        .accepted_within(reference_event("pageview"), 100, Duration::from_millis(50))
        .await;
    assert!(accepted, "slots come back when the stalled clients go");
    bridge.shutdown().await;
}

#[tokio::test]
async fn an_application_over_its_rate_limit_gets_429_with_retry_after_and_others_are_served() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |config| {
        config.limits.max_batch_events = 3;
        config.applications[0].rate_limit = Some(eye_ingest::config::RateLimit {
            events_per_second: 1,
            burst_events: 3,
        });
    })
    .await;
    let batch = format!("[{}]", reference_events().join(","));
    let first = bridge.post_json(batch.clone()).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let over = bridge.post_json(batch).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = over.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    let other = bridge
        .http
        .post(format!("{}/v1/events", bridge.url))
        .bearer_auth(BLOG_KEY)
        .body(reference_event("pageview"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::ACCEPTED, "blog has no limit");
    assert_eq!(bridge.messages(4).len(), 4, "nothing of the refused batch");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_full_producer_queue_refuses_a_request_at_once_and_produces_none_of_it() {
    let broker = OwnedBroker::start();
    let bridge = Bridge::start(&broker.bootstrap(), |config| {
        config.producer.queue_max_events = 3;
        config.producer.message_timeout_ms = 20_000;
    })
    .await;
    // A hung broker keeps the first request's three events queued.
    broker.signal(eye_devenv::testing::Signal::SIGSTOP).unwrap();
    let batch = format!("[{}]", reference_events().join(","));
    let first = tokio::spawn(
        bridge
            .post()
            .header("content-type", "application/json")
            .body(batch)
            .send(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused_id = Uuid::new_v4();
    let mut refused_event: serde_json::Value =
        serde_json::from_str(&reference_event("pageview")).unwrap();
    refused_event["event_id"] = serde_json::json!(refused_id.to_string());
    let refused = bridge.post_json(refused_event.to_string()).await;
    broker.signal(eye_devenv::testing::Signal::SIGCONT).unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "queue_full");
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::ACCEPTED);
    let sentinel = bridge.post_json(reference_event("cta_click")).await;
    assert_eq!(sentinel.status(), StatusCode::ACCEPTED);
    let messages = bridge.messages(4);
    assert_eq!(
        messages.len(),
        4,
        "the batch and the sentinel, nothing of the refused request"
    );
    assert!(messages
        .iter()
        .all(|message| header(message, EVENT_ID_HEADER) != refused_id.to_string()));
    bridge.shutdown().await;
}

/// A flood keeps the API's runtime busy; probes must not wait behind it. Here that runtime (the
/// test's own, single thread) is blocked outright until `/healthz` has answered.
#[tokio::test]
async fn health_answers_while_the_api_runtime_is_blocked() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let address = bridge
        .operations_url
        .trim_start_matches("http://")
        .to_string();
    let (answered, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: eye\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        std::io::Read::read_to_string(&mut stream, &mut reply).unwrap();
        let _ = answered.send(reply);
    });
    let reply = answer
        .recv_timeout(Duration::from_secs(30))
        .expect("/healthz answers while the API's runtime is blocked");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    bridge.shutdown().await;
}
