//! Every event the client is given arrives on the raw topic exactly once, or is reported
//! undelivered with its reason.

use std::collections::HashSet;
use std::time::Duration;

use eye_client::{Backoff, Client, ClientConfig, ClientError, Event, SendError};
use eye_core::raw::EVENT_ID_HEADER;
use eye_devenv::testing::{new_topic, read_topic, services};
use eye_ingest::auth::key_sha256;
use eye_ingest::config::{Application, IngestConfig, RateLimit};
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

const KEY: &str = "service-key";
const PARTITIONS: i32 = 2;

async fn bridge_config(rate_limit: Option<RateLimit>) -> IngestConfig {
    let bootstrap = services().broker.bootstrap();
    let mut config = IngestConfig::default();
    config.producer.topic = new_topic(&bootstrap, "raw", PARTITIONS).await;
    config.kafka.brokers = bootstrap;
    config.applications = vec![Application {
        id: "service".into(),
        key_sha256: key_sha256(KEY),
        rate_limit,
    }];
    config.schemas_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas").into();
    config.listen = "127.0.0.1:0".into();
    config.operations_listen = "127.0.0.1:0".into();
    config
}

fn events(count: usize) -> Vec<Event> {
    (0..count)
        .map(|index| {
            let data = json!({"host": "api.example.com", "path": format!("/orders/{index}")});
            Event::new(Uuid::new_v4(), "page interaction", "pageview", data)
        })
        .collect()
}

/// The `eye.event_id` of every message on `topic`, once `expected` have arrived.
fn event_ids_on(topic: &str, expected: usize) -> Vec<Uuid> {
    read_topic(&services().broker.bootstrap(), topic, PARTITIONS, expected)
        .iter()
        .map(|message| {
            let headers = message.headers().expect("the bridge's headers");
            let id = headers
                .iter()
                .find(|header| header.key == EVENT_ID_HEADER)
                .and_then(|header| header.value)
                .expect("an event id");
            Uuid::parse_str(std::str::from_utf8(id).unwrap()).unwrap()
        })
        .collect()
}

fn assert_exactly_once(sent: &[Event], on_topic: &[Uuid]) {
    let sent: HashSet<Uuid> = sent.iter().map(|event| event.event_id).collect();
    let unique: HashSet<Uuid> = on_topic.iter().copied().collect();
    assert_eq!(unique.len(), on_topic.len(), "duplicated on the topic");
    assert_eq!(unique, sent, "lost or foreign events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_gzipped_batches() {
    let config = bridge_config(None).await;
    let topic = config.producer.topic.clone();
    let bridge = eye_ingest::Spawned::start(config).await.unwrap();
    let mut client_config = ClientConfig::new(&format!("http://{}", bridge.api_addr), KEY);
    client_config.max_batch_events = 100;
    let client = Client::start(client_config).unwrap();
    let sent = events(1234);
    for event in &sent {
        client.send(event.clone()).await.unwrap();
    }
    let report = client.close().await;
    assert_eq!(report.delivered, 1234);
    assert!(report.undelivered.is_empty());
    assert_exactly_once(&sent, &event_ids_on(&topic, sent.len()));
    bridge.shutdown().await.unwrap();
}

/// The bridge is not there when the client starts sending; it comes up on its address a little
/// later, and every event then arrives once, with the id it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_while_the_bridge_is_away_arrive_once_when_it_is_back() {
    let mut config = bridge_config(None).await;
    let topic = config.producer.topic.clone();
    let port = eye_devenv::process::free_port();
    config.listen = format!("127.0.0.1:{port}");
    let client =
        Client::start(ClientConfig::new(&format!("http://127.0.0.1:{port}"), KEY)).unwrap();
    let sent = events(300);
    for event in &sent {
        client.send(event.clone()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bridge = eye_ingest::Spawned::start(config).await.unwrap();
    let report = client.close().await;
    assert_eq!((report.delivered, report.undelivered.len()), (300, 0));
    assert_exactly_once(&sent, &event_ids_on(&topic, sent.len()));
    bridge.shutdown().await.unwrap();
}

/// Over its rate limit the application gets 429 with `Retry-After`; the client waits as told and
/// sends the same events again until all are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refused_as_over_the_rate_limit_are_sent_again_after_retry_after() {
    let config = bridge_config(Some(RateLimit {
        events_per_second: 500,
        burst_events: 1000,
    }))
    .await;
    let topic = config.producer.topic.clone();
    let bridge = eye_ingest::Spawned::start(config).await.unwrap();
    let client = Client::start(ClientConfig::new(
        &format!("http://{}", bridge.api_addr),
        KEY,
    ))
    .unwrap();
    let sent = events(2500);
    for event in &sent {
        client.send(event.clone()).await.unwrap();
    }
    let report = client.close().await;
    assert_eq!((report.delivered, report.undelivered.len()), (2500, 0));
    assert_exactly_once(&sent, &event_ids_on(&topic, sent.len()));
    bridge.shutdown().await.unwrap();
}

/// A refusal that resending cannot cure (here an unknown key) is reported for every event, and
/// nothing reaches the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refused_for_good_are_reported_undelivered_with_the_reason() {
    let config = bridge_config(None).await;
    let topic = config.producer.topic.clone();
    let bridge = eye_ingest::Spawned::start(config).await.unwrap();
    let client = Client::start(ClientConfig::new(
        &format!("http://{}", bridge.api_addr),
        "wrong-key",
    ))
    .unwrap();
    let sent = events(10);
    for event in &sent {
        client.send(event.clone()).await.unwrap();
    }
    let report = client.flush().await.unwrap();
    assert_eq!(report.delivered, 0);
    let undelivered: HashSet<Uuid> = report.undelivered.iter().map(|u| u.event_id).collect();
    assert_eq!(
        undelivered,
        sent.iter().map(|event| event.event_id).collect()
    );
    assert!(report.undelivered.iter().all(|u| matches!(
        u.error.as_ref(),
        SendError::Refused { status: 401, reason, .. } if reason == "unauthorized"
    )));
    assert!(event_ids_on(&topic, 0).is_empty());
    client.close().await;
    bridge.shutdown().await.unwrap();
}

/// With nowhere to send, the queue fills up to its bound and refuses more instead of growing;
/// once retrying has gone on too long the queued events are reported undelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_more_events_instead_of_growing() {
    let port = eye_devenv::process::free_port();
    let mut config = ClientConfig::new(&format!("http://127.0.0.1:{port}"), KEY);
    config.queue_events = 20;
    config.max_batch_events = 5;
    config.linger = Duration::ZERO;
    config.backoff = Backoff {
        give_up_after: Duration::from_secs(2),
        ..Backoff::default()
    };
    let client = Client::start(config).unwrap();
    let mut queued = 0;
    let refused = loop {
        match client.try_send(events(1).remove(0)) {
            Ok(()) => queued += 1,
            Err(error) => break error,
        }
        assert!(queued <= 100, "the queue keeps growing");
    };
    assert!(matches!(refused, ClientError::QueueFull(20)), "{refused}");
    let report = client.close().await;
    assert_eq!(report.delivered, 0);
    assert_eq!(report.undelivered.len(), queued);
    assert!(report
        .undelivered
        .iter()
        .all(|u| matches!(u.error.as_ref(), SendError::Transport(_))));
}
