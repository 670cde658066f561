//! What lands on the topic: every body form byte for byte, the client's ids kept, the application taken from the key, and every acknowledged event exactly once under concurrent clients.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use eye_core::raw::{APPLICATION_HEADER, EVENT_ID_HEADER, RECEIVED_AT_HEADER};
use eye_devenv::testing::{services, OwnedBroker};
use eye_ingest::routes::Accepted;
use rdkafka::Message;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::common::*;

#[tokio::test]
async fn reference_events_reach_the_topic_byte_for_byte_in_every_body_form() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let events = reference_events();
    let started = Utc::now();

    let single_bodies = events.iter().map(|event| event.as_bytes().to_vec());
    let array = format!("[{}]", events.join(",\n")).into_bytes();
    let ndjson: String = events
        .iter()
        .map(|event| {
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(event).unwrap())
                .unwrap()
                + "\n"
        })
        .collect();
    let mut requests: Vec<(&str, Vec<u8>)> = single_bodies
        .map(|body| ("application/json", body))
        .collect();
    requests.push(("application/json", array));
    requests.push(("application/x-ndjson", ndjson.into_bytes()));

    // Each event as sent (trimmed of surrounding whitespace), with the id the reply gave it.
    let mut sent: Vec<(Uuid, Vec<u8>)> = Vec::new();
    for gzipped in [false, true] {
        for (content_type, body) in &requests {
            let mut request = bridge.post().header("content-type", *content_type);
            request = if gzipped {
                request.header("content-encoding", "gzip").body(gzip(body))
            } else {
                request.body(body.clone())
            };
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::ACCEPTED,
                "{content_type} gzip={gzipped}"
            );
            let accepted: Accepted = response.json().await.unwrap();
            let pieces: Vec<Vec<u8>> = match *content_type {
                "application/x-ndjson" => String::from_utf8(body.clone())
                    .unwrap()
                    .lines()
                    .map(|line| line.as_bytes().to_vec())
                    .collect(),
                _ if body.starts_with(b"[") => events
                    .iter()
                    .map(|event| event.trim().as_bytes().to_vec())
                    .collect(),
                _ => vec![String::from_utf8(body.clone())
                    .unwrap()
                    .trim()
                    .as_bytes()
                    .to_vec()],
            };
            assert_eq!(accepted.event_ids.len(), pieces.len());
            sent.extend(accepted.event_ids.into_iter().zip(pieces));
        }
    }
    assert_eq!(sent.len(), 18);

    let messages = bridge.messages(sent.len());
    assert_eq!(messages.len(), sent.len());
    for (event_id, bytes) in &sent {
        let message = messages
            .iter()
            .find(|message| header(message, EVENT_ID_HEADER) == event_id.to_string())
            .unwrap_or_else(|| panic!("event {event_id} not on the topic"));
        assert_eq!(
            message.payload().unwrap(),
            &bytes[..],
            "original bytes of {event_id}"
        );
        let session_id = session_id_of(std::str::from_utf8(bytes).unwrap());
        assert_eq!(message.key().unwrap(), session_id.as_bytes());
        assert_eq!(header(message, APPLICATION_HEADER), "shop");
        let received_at: DateTime<Utc> = header(message, RECEIVED_AT_HEADER).parse().unwrap();
        assert!(received_at >= started - chrono::Duration::seconds(1) && received_at <= Utc::now());
        assert_eq!(event_id.get_version_num(), 7, "assigned ids are UUIDv7");
    }
    // One session: every message sits in the same partition, in request order.
    let partitions: HashSet<i32> = messages.iter().map(|message| message.partition()).collect();
    assert_eq!(partitions.len(), 1);
    bridge.shutdown().await;
}

#[tokio::test]
async fn client_event_id_is_kept() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let client_id = Uuid::new_v4();
    let mut event: serde_json::Value = serde_json::from_str(&reference_event("pageview")).unwrap();
    event["event_id"] = client_id.to_string().into();
    let response = bridge.post_json(event.to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Accepted = response.json().await.unwrap();
    assert_eq!(accepted.event_ids, vec![client_id]);
    let messages = bridge.messages(1);
    assert_eq!(header(&messages[0], EVENT_ID_HEADER), client_id.to_string());
    bridge.shutdown().await;
}

#[tokio::test]
async fn application_is_stamped_from_the_key_not_the_body() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let mut event: serde_json::Value = serde_json::from_str(&reference_event("cta_click")).unwrap();
    event["application"] = "shop".into();
    let response = bridge
        .http
        .post(format!("{}/v1/events", bridge.url))
        .bearer_auth(BLOG_KEY)
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // sendBeacon: text/plain and the key in the query string.
    let beacon = bridge
        .http
        .post(format!("{}/v1/events?api_key={SHOP_KEY}", bridge.url))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(reference_event("pageview"))
        .send()
        .await
        .unwrap();
    assert_eq!(beacon.status(), StatusCode::ACCEPTED);
    let mut applications: Vec<String> = bridge
        .messages(2)
        .iter()
        .map(|message| header(message, APPLICATION_HEADER).to_string())
        .collect();
    applications.sort();
    assert_eq!(applications, ["blog", "shop"]);
    bridge.shutdown().await;
}

#[tokio::test]
async fn concurrent_clients_every_acknowledged_event_on_the_topic_exactly_once() {
    const CLIENTS: usize = 50;
    const EVENTS_PER_CLIENT: usize = 200;
    const BATCH: usize = 20;
    // A durable broker of its own, so this load does not slow the other tests.
    let broker = OwnedBroker::start();
    let bridge = Bridge::start(&broker.bootstrap(), |_| {}).await;
    let template: serde_json::Value = serde_json::from_str(&reference_event("pageview")).unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let request = bridge.post();
        let mut template = template.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for _ in 0..EVENTS_PER_CLIENT / BATCH {
                let batch: Vec<serde_json::Value> = (0..BATCH)
                    .map(|_| {
                        template["session_id"] = Uuid::new_v4().to_string().into();
                        template.clone()
                    })
                    .collect();
                let response = request
                    .try_clone()
                    .unwrap()
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                acknowledged.extend(response.json::<Accepted>().await.unwrap().event_ids);
            }
            acknowledged
        }));
    }
    let mut acknowledged = HashSet::new();
    for client in clients {
        for event_id in client.await.unwrap() {
            assert!(acknowledged.insert(event_id.to_string()), "ids are unique");
        }
    }
    assert_eq!(acknowledged.len(), CLIENTS * EVENTS_PER_CLIENT);

    let messages = bridge.messages(acknowledged.len());
    let on_topic: Vec<String> = messages
        .iter()
        .map(|message| header(message, EVENT_ID_HEADER).to_string())
        .collect();
    let distinct: HashSet<String> = on_topic.iter().cloned().collect();
    assert_eq!(on_topic.len(), acknowledged.len(), "no event twice");
    assert_eq!(
        distinct, acknowledged,
        "every acknowledged event, nothing else"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn verdicts_say_for_each_event_what_the_processor_will_record() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let mut invalid: serde_json::Value =
        serde_json::from_str(&reference_event("pageview")).unwrap();
    invalid["data"]["path"] = serde_json::json!(404);
    let body = format!("[{},{invalid}]", reference_event("cta_click"));
    let reply = bridge
        .http
        .post(format!("{}/v1/events?verdicts=true", bridge.url))
        .bearer_auth(SHOP_KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::ACCEPTED);
    let reply: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(
        reply["verdicts"][0],
        serde_json::json!({"verdict": "valid"})
    );
    assert_eq!(reply["verdicts"][1]["verdict"], "invalid");
    assert_eq!(reply["verdicts"][1]["error_type"], "invalid_data");
    assert_eq!(reply["verdicts"][1]["field_path"], "data.path");
    // Both went to the topic all the same.
    assert_eq!(bridge.messages(2).len(), 2);

    // Without the parameter the reply is as before.
    let plain: serde_json::Value = bridge.post_json(body).await.json().await.unwrap();
    assert!(plain.get("verdicts").is_none(), "{plain}");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_verdicts_parameter_that_is_not_a_boolean_gets_400_and_produces_nothing() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let reply = bridge
        .http
        .post(format!("{}/v1/events?verdicts=please", bridge.url))
        .bearer_auth(SHOP_KEY)
        .body(reference_event("pageview"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let reply: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(reply["error"], "bad_query");
    assert!(bridge.messages(0).is_empty());
    bridge.shutdown().await;
}
