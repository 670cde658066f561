//! Precise refusals that produce nothing: 401, 400 naming the problem, 413, and CORS for configured origins only.

use eye_core::raw::EVENT_ID_HEADER;
use eye_devenv::testing::services;
use eye_ingest::routes::Accepted;
use reqwest::StatusCode;

use crate::common::*;

#[tokio::test]
async fn missing_or_unknown_key_is_401_and_produces_nothing() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let url = format!("{}/v1/events", bridge.url);
    let pageview = reference_event("pageview");
    let without_key = bridge
        .http
        .post(&url)
        .body(pageview.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(without_key.status(), StatusCode::UNAUTHORIZED);
    let wrong_key = bridge
        .http
        .post(&url)
        .bearer_auth("guess")
        .body(pageview.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), StatusCode::UNAUTHORIZED);
    let wrong_query_key = bridge
        .http
        .post(format!("{url}?api_key=guess"))
        .body(pageview.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_query_key.status(), StatusCode::UNAUTHORIZED);

    // The only events on the topic are the ones sent with a valid key afterwards.
    let sentinel = bridge.post_json(pageview).await;
    assert_eq!(
        sentinel.status(),
        StatusCode::ACCEPTED,
        "{:?}",
        sentinel.text().await
    );
    assert_eq!(bridge.messages(1).len(), 1);
    bridge.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_get_400_naming_the_problem_and_produce_nothing() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let pageview = reference_event("pageview");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "application/json",
            "{\"session_id\": ".into(),
            "not valid JSON",
        ),
        ("application/json", "42".into(), "number"),
        (
            "application/json",
            format!("[{pageview}, \"x\"]"),
            "event 1 of the array",
        ),
        (
            "application/json",
            r#"{"event_id": "not-a-uuid"}"#.into(),
            "event_id must be a UUID",
        ),
        (
            "application/x-ndjson",
            "{\"a\":1}\n{\"a\":\n".into(),
            "NDJSON line 2",
        ),
        (
            "application/x-ndjson",
            "{\"a\":1}\n[1]\n".into(),
            "NDJSON line 2",
        ),
        ("application/json", "[]".into(), "no events"),
    ];
    for (content_type, body, expected) in cases {
        let response = bridge
            .post()
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let reply: serde_json::Value = response.json().await.unwrap();
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{body:?} → {message:?}, expected {expected:?}"
        );
    }
    let broken_gzip = bridge
        .post()
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(broken_gzip.status(), StatusCode::BAD_REQUEST);
    let xml = bridge
        .post()
        .header("content-type", "application/xml")
        .body("<a/>")
        .send()
        .await
        .unwrap();
    assert_eq!(xml.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert_eq!(
        bridge.post_json(pageview).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        bridge.messages(1).len(),
        1,
        "only the valid request produced"
    );
    bridge.shutdown().await;
}

/// Regression: an event under the body limit but over the broker's message size got 503 with
/// `Retry-After`, so a well-behaved client retried it forever.
#[tokio::test]
async fn an_event_over_the_brokers_message_size_gets_413_and_nothing_of_its_request_is_produced() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let mut huge: serde_json::Value = serde_json::from_str(&reference_event("pageview")).unwrap();
    huge["data"]["path"] = format!("/{}", "a".repeat(1_010_000)).into();
    let small: serde_json::Value = serde_json::from_str(&reference_event("pageview")).unwrap();
    let body = serde_json::to_string(&vec![small.clone(), huge]).unwrap();
    assert!(body.len() < 1024 * 1024, "under the body limit");

    let response = bridge.post_json(body).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(response.headers().get("retry-after").is_none());
    let reply: serde_json::Value = response.json().await.unwrap();
    assert_eq!(reply["error"], "event_too_large");
    assert!(
        reply["message"].as_str().unwrap().contains("event 1 is"),
        "{reply}"
    );

    let accepted = bridge.post_json(small.to_string()).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Accepted = accepted.json().await.unwrap();
    let on_topic: Vec<String> = bridge
        .messages(1)
        .iter()
        .map(|message| header(message, EVENT_ID_HEADER).to_string())
        .collect();
    assert_eq!(
        on_topic,
        vec![accepted.event_ids[0].to_string()],
        "the topic's first message is the second request's event"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn oversize_bodies_gzip_bombs_and_huge_batches_get_413() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |config| {
        config.limits.max_body_bytes = 64 * 1024;
        config.limits.max_decompressed_bytes = 256 * 1024;
        config.limits.max_batch_events = 10;
    })
    .await;
    let pageview = reference_event("pageview");

    let oversize = format!("[{}]", vec![pageview.as_str(); 400].join(","));
    assert!(oversize.len() > 64 * 1024);
    assert_eq!(
        bridge.post_json(oversize).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let bomb = gzip(&vec![b' '; 50 * 1024 * 1024]);
    assert!(
        bomb.len() < 64 * 1024,
        "the bomb itself fits the body limit"
    );
    let response = bridge
        .post()
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let too_many = format!("[{}]", ["{}"; 11].join(","));
    assert_eq!(
        bridge.post_json(too_many).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    assert_eq!(
        bridge.post_json(pageview).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        bridge.messages(1).len(),
        1,
        "only the valid request produced"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn cors_preflight_is_answered_for_configured_origins_only() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |config| {
        config.cors_allowed_origins = vec!["https://shop.example".into()];
    })
    .await;
    let preflight = |origin: &'static str| {
        bridge
            .http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/events", bridge.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    bridge.shutdown().await;
}
