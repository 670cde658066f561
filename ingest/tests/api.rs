//! The ingest bridge against a real broker: what clients get back, and what lands on the topic.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eye_core::raw::{APPLICATION_HEADER, EVENT_ID_HEADER, RECEIVED_AT_HEADER};
use eye_devenv::testing::{new_topic, services, unique_name, OwnedBroker};
use eye_ingest::auth::key_sha256;
use eye_ingest::config::{Application, IngestConfig};
use eye_ingest::routes::Accepted;
use flate2::write::GzEncoder;
use flate2::Compression;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use reqwest::StatusCode;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const SHOP_KEY: &str = "shop-key";
const BLOG_KEY: &str = "blog-key";

fn reference_event(name: &str) -> String {
    let path = format!(
        "{}/../../shared/examples/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

fn reference_events() -> Vec<String> {
    ["pageview", "cta_click", "form_submit"]
        .map(reference_event)
        .to_vec()
}

/// An ingest bridge served in-process on a free port, producing to its own fresh topic.
struct Bridge {
    /// The public API.
    url: String,
    /// `/healthz`, `/readyz` and `/metrics`.
    operations_url: String,
    topic: String,
    bootstrap: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    http: reqwest::Client,
}

impl Bridge {
    async fn start(bootstrap: &str, adjust: impl FnOnce(&mut IngestConfig)) -> Bridge {
        let topic = new_topic(bootstrap, "raw", PARTITIONS).await;
        let mut config = IngestConfig::default();
        config.kafka.brokers = bootstrap.to_string();
        config.producer.topic = topic.clone();
        config.applications = vec![
            Application {
                id: "shop".into(),
                key_sha256: key_sha256(SHOP_KEY),
                ..Application::default()
            },
            Application {
                id: "blog".into(),
                key_sha256: key_sha256(BLOG_KEY),
                ..Application::default()
            },
        ];
        config.listen = "127.0.0.1:0".into();
        config.operations_listen = "127.0.0.1:0".into();
        adjust(&mut config);
        let listeners = eye_ingest::Listeners::bind(&config).await.unwrap();
        let url = format!("http://{}", listeners.api.local_addr().unwrap());
        let operations_url = format!("http://{}", listeners.operations.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            eye_ingest::serve(config, listeners, async move {
                let _ = stopped.await;
            })
            .await
            .expect("ingest serves");
        });
        let bridge = Bridge {
            url,
            operations_url,
            topic,
            bootstrap: bootstrap.to_string(),
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
        };
        bridge.wait_ready().await;
        bridge
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            let ready = self
                .http
                .get(format!("{}/readyz", self.operations_url))
                .send()
                .await;
            if ready.is_ok_and(|response| response.status() == StatusCode::OK) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("ingest not ready within 30 s");
    }

    fn post(&self) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/events", self.url))
            .bearer_auth(SHOP_KEY)
    }

    async fn post_json(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post()
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Whether `body` gets a 202 within `attempts` tries, `pause` apart.
    async fn accepted_within(&self, body: String, attempts: usize, pause: Duration) -> bool {
        for _ in 0..attempts {
            if self.post_json(body.clone()).await.status() == StatusCode::ACCEPTED {
                return true;
            }
            tokio::time::sleep(pause).await;
        }
        false
    }

    /// Every message on the topic once `expected` have arrived (and a moment more, so extra
    /// messages would be seen too).
    fn messages(&self, expected: usize) -> Vec<OwnedMessage> {
        read_topic(&self.bootstrap, &self.topic, expected)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

fn read_topic(bootstrap: &str, topic: &str, expected: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut settle_until = None;
    loop {
        let now = std::time::Instant::now();
        if now > deadline || settle_until.is_some_and(|until| now > until) {
            break;
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            messages.push(message.unwrap().detach());
        }
        if messages.len() >= expected && settle_until.is_none() {
            settle_until = Some(std::time::Instant::now() + Duration::from_millis(1500));
        }
    }
    messages
}

fn header<'a>(message: &'a OwnedMessage, name: &str) -> &'a str {
    let headers = message.headers().expect("message has headers");
    let found = headers
        .iter()
        .find(|header| header.key == name)
        .unwrap_or_else(|| panic!("header {name} missing"));
    std::str::from_utf8(found.value.unwrap()).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn session_id_of(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value["session_id"].as_str().unwrap().to_string()
}

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
