//! What the bridge's tests share: the bridge under test on free ports, the reference events,
//! and reading what landed on its topic.

use std::io::Write;
use std::time::Duration;

use eye_devenv::testing::{new_topic, read_topic};
use eye_ingest::auth::key_sha256;
use eye_ingest::config::{Application, IngestConfig};
use flate2::write::GzEncoder;
use flate2::Compression;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use reqwest::StatusCode;

pub const PARTITIONS: i32 = 3;
pub const SHOP_KEY: &str = "shop-key";
pub const BLOG_KEY: &str = "blog-key";

pub fn reference_event(name: &str) -> String {
    let path = format!(
        "{}/../examples/events/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

pub fn reference_events() -> Vec<String> {
    ["pageview", "cta_click", "form_submit"]
        .map(reference_event)
        .to_vec()
}

/// An ingest bridge served in-process on a free port, producing to its own fresh topic.
pub struct Bridge {
    /// The public API.
    pub url: String,
    /// `/healthz`, `/readyz` and `/metrics`.
    pub operations_url: String,
    pub topic: String,
    pub bootstrap: String,
    pub spawned: Option<eye_ingest::Spawned>,
    pub http: reqwest::Client,
}

impl Bridge {
    pub async fn start(bootstrap: &str, adjust: impl FnOnce(&mut IngestConfig)) -> Bridge {
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
        config.schemas_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas").into();
        config.listen = "127.0.0.1:0".into();
        config.operations_listen = "127.0.0.1:0".into();
        adjust(&mut config);
        let spawned = eye_ingest::Spawned::start(config).await.unwrap();
        let bridge = Bridge {
            url: format!("http://{}", spawned.api_addr),
            operations_url: format!("http://{}", spawned.operations_addr),
            topic,
            bootstrap: bootstrap.to_string(),
            spawned: Some(spawned),
            http: reqwest::Client::new(),
        };
        bridge.wait_ready().await;
        bridge
    }

    pub async fn wait_ready(&self) {
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

    pub fn post(&self) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/events", self.url))
            .bearer_auth(SHOP_KEY)
    }

    pub async fn post_json(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post()
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Whether `body` gets a 202 within `attempts` tries, `pause` apart.
    pub async fn accepted_within(&self, body: String, attempts: usize, pause: Duration) -> bool {
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
    pub fn messages(&self, expected: usize) -> Vec<OwnedMessage> {
        read_topic(&self.bootstrap, &self.topic, PARTITIONS, expected)
    }

    pub async fn shutdown(mut self) {
        self.spawned
            .take()
            .unwrap()
            .shutdown()
            .await
            .expect("ingest serves");
    }
}

pub fn header<'a>(message: &'a OwnedMessage, name: &str) -> &'a str {
    let headers = message.headers().expect("message has headers");
    let found = headers
        .iter()
        .find(|header| header.key == name)
        .unwrap_or_else(|| panic!("header {name} missing"));
    std::str::from_utf8(found.value.unwrap()).unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub fn session_id_of(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value["session_id"].as_str().unwrap().to_string()
}
