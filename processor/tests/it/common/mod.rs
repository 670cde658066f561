//! What the processor's integration tests share: a fresh topic and database per test on the
//! shared services, the processor served in-process, producing and reading topics.
#![allow(dead_code)] // Each test binary uses its own part of it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eye_devenv::clickhouse::ClickHouseServer;
use eye_devenv::testing::{new_topic, services, unique_name};
use eye_processor::config::ProcessorConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PARTITIONS: i32 = 4;

/// A message value and its headers.
pub type RawMessage = (Vec<u8>, Vec<(&'static str, String)>);

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

pub fn reference(name: &str) -> Value {
    let path = repo(&format!("examples/events/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fresh topic and a fresh database, on the given services.
pub struct Setup {
    pub bootstrap: String,
    pub topic: String,
    pub clickhouse: ClickHouseServer,
    pub database: String,
}

impl Setup {
    pub async fn new(bootstrap: &str, clickhouse: &ClickHouseServer) -> Setup {
        let topic = new_topic(bootstrap, "raw", PARTITIONS).await;
        Setup {
            bootstrap: bootstrap.to_string(),
            topic,
            clickhouse: clickhouse.clone(),
            database: unique_name("eye"),
        }
    }

    /// The bridge in-process, producing to this setup's topic for one application and its key.
    pub async fn bridge(&self, application: &str, key: &str) -> eye_ingest::Spawned {
        start_bridge(self.bridge_config(application, key)).await
    }

    /// The settings of [`Setup::bridge`], on free ports.
    pub fn bridge_config(&self, application: &str, key: &str) -> eye_ingest::config::IngestConfig {
        let mut ingest = eye_ingest::config::IngestConfig::default();
        ingest.kafka.brokers = self.bootstrap.clone();
        ingest.producer.topic = self.topic.clone();
        ingest.applications = vec![eye_ingest::config::Application {
            id: application.into(),
            key_sha256: eye_ingest::auth::key_sha256(key),
            ..Default::default()
        }];
        ingest.schemas_dir = repo("schemas");
        ingest.listen = "127.0.0.1:0".into();
        ingest.operations_listen = "127.0.0.1:0".into();
        ingest
    }

    pub async fn shared() -> Setup {
        let services = services();
        Setup::new(&services.broker.bootstrap(), &services.clickhouse).await
    }

    /// The same topic, into a database of its own (a replay).
    pub fn with_fresh_database(&self) -> Setup {
        Setup {
            bootstrap: self.bootstrap.clone(),
            topic: self.topic.clone(),
            clickhouse: self.clickhouse.clone(),
            database: unique_name("eye"),
        }
    }

    pub fn config(&self) -> ProcessorConfig {
        let mut config = ProcessorConfig::default();
        config.kafka.brokers = self.bootstrap.clone();
        config.consumer.topic = self.topic.clone();
        config.consumer.group_id = unique_name("processor");
        config.clickhouse.url = self.clickhouse.url();
        config.clickhouse.database = self.database.clone();
        config.batch.max_wait_ms = 200;
        config.schemas_dir = repo("schemas");
        config.dead_letter.topic = format!("{}_dlq", self.topic);
        config.alerts.topic = format!("{}_alerts", self.topic);
        config.session_updates.topic = format!("{}_sessions", self.topic);
        config
    }

    /// The first value of the first row of `sql` (table names may use `{db}`).
    pub fn query(&self, sql: &str) -> String {
        let sql = sql.replace("{db}", &self.database);
        self.clickhouse
            .query(&sql)
            .unwrap_or_else(|err| panic!("{sql}: {err:#}"))
            .trim()
            .to_string()
    }

    /// Every row of `sql` (table names may use `{db}`) as a JSON object.
    pub fn rows(&self, sql: &str) -> Vec<Value> {
        self.query(&format!("{sql} FORMAT JSONEachRow"))
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
            .collect()
    }

    pub fn count(&self, sql: &str) -> u64 {
        self.query(sql).parse().unwrap_or(0)
    }

    /// Waits until `sql` counts `expected`, failing after `timeout`.
    pub async fn wait_for_count(&self, sql: &str, expected: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self
                .clickhouse
                .query(&sql.replace("{db}", &self.database))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            if count == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql}: {count:?}, expected {expected} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Produces each message with a key of its own (`key-<index>`), as a producer that ignores
    /// the raw topic's keying would.
    pub async fn produce(&self, messages: &[RawMessage]) {
        self.produce_keyed(messages, |index, _| format!("key-{index}"))
            .await
    }

    pub async fn produce_keyed(
        &self,
        messages: &[RawMessage],
        key_of: impl Fn(usize, &RawMessage) -> String,
    ) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "2000000")
            .create()
            .unwrap();
        let mut deliveries = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            let (payload, headers) = message;
            let mut owned = OwnedHeaders::new();
            for (key, value) in headers {
                owned = owned.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let key = key_of(index, message);
            let record = FutureRecord::to(&self.topic)
                .key(&key)
                .payload(payload)
                .headers(owned);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(error, _)| error)
                    .expect("queued"),
            );
        }
        for delivery in futures::future::join_all(deliveries).await {
            delivery.expect("delivered").expect("produced");
        }
    }
}

/// The processor served in-process.
/// The bridge in-process with `config`, once it is ready (connected to the broker).
pub async fn start_bridge(config: eye_ingest::config::IngestConfig) -> eye_ingest::Spawned {
    let bridge = eye_ingest::Spawned::start(config).await.unwrap();
    let ready = format!("http://{}/readyz", bridge.operations_addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the bridge not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bridge
}

pub struct Processor {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    pub health_url: String,
}

impl Processor {
    pub async fn start(config: ProcessorConfig) -> Processor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            eye_processor::run(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("processor runs");
        });
        Processor {
            stop: Some(stop),
            task,
            health_url,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// The processor as its own process, with `config`'s settings and `extra` environment, its log
/// in `log`; killed (SIGKILL) when dropped, also when a test fails.
pub fn spawn_processor(
    config: &ProcessorConfig,
    log: &std::path::Path,
    extra: &[(&str, String)],
) -> KillOnDrop {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_eye-processor"));
    command
        .env(
            "EYE_LISTEN",
            format!("127.0.0.1:{}", eye_devenv::free_port()),
        )
        .env("EYE_KAFKA__BROKERS", &config.kafka.brokers)
        .env("EYE_CONSUMER__TOPIC", &config.consumer.topic)
        .env("EYE_CONSUMER__GROUP_ID", &config.consumer.group_id)
        .env("EYE_CLICKHOUSE__URL", &config.clickhouse.url)
        .env("EYE_CLICKHOUSE__DATABASE", &config.clickhouse.database)
        .env(
            "EYE_BATCH__MAX_WAIT_MS",
            config.batch.max_wait_ms.to_string(),
        )
        .env("EYE_DEAD_LETTER__TOPIC", &config.dead_letter.topic)
        .env("EYE_ALERTS__TOPIC", &config.alerts.topic)
        .env("EYE_SESSION_UPDATES__TOPIC", &config.session_updates.topic)
        .env("EYE_SCHEMAS_DIR", &config.schemas_dir)
        .env("RUST_LOG", "info,eye_processor=debug")
        .envs(extra.iter().map(|(name, value)| (name, value)))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    KillOnDrop(command.spawn().unwrap())
}

/// A processor process that is killed (SIGKILL) when dropped.
pub struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A counter the processor exports, 0 before its first increment.
pub async fn counter_value(processor: &Processor, name: &str) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", processor.health_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

pub fn direct(event: &Value) -> RawMessage {
    (event.to_string().into_bytes(), Vec::new())
}

/// Every message on `topic` (from the beginning), once `expected` have arrived (and a moment more).
/// Read on a blocking thread: the processor under test may share the test's runtime thread, and
/// must go on publishing meanwhile.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<OwnedMessage> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        read_topic_blocking(&bootstrap, &topic, partitions, expected)
    })
    .await
    .unwrap()
}

fn read_topic_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .create()
        .unwrap();
    // The processor may not have created the topic yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_or(true, |metadata| {
            metadata.topics()[0].error().is_some() || metadata.topics()[0].partitions().is_empty()
        })
    {
        assert!(Instant::now() < deadline, "{topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut messages = Vec::new();
    // Generous: a dead-letter publish that fails is retried with backoff (up to 30 s a step).
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut settle_until: Option<Instant> = None;
    while Instant::now() < deadline && settle_until.is_none_or(|until| Instant::now() < until) {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            messages.push(message.unwrap().detach());
        }
        if messages.len() >= expected && settle_until.is_none() {
            settle_until = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    messages
}

/// Waits until the group has committed `expected` offsets over the raw topic: every message up to
/// there is written and its outputs published.
pub async fn wait_for_committed(config: &ProcessorConfig, expected: i64, timeout: Duration) {
    let group = committed_offsets(config);
    let deadline = Instant::now() + timeout;
    loop {
        let committed = group();
        if committed == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets {committed}, expected {expected} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The group's committed offsets over the raw topic, summed (partitions without one count 0).
pub fn committed_offsets(config: &ProcessorConfig) -> impl Fn() -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.consumer.group_id)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(&config.consumer.topic, partition);
    }
    move || {
        consumer
            .committed_offsets(partitions.clone(), Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            })
            .sum()
    }
}

/// Avro's zig-zag varint.
pub fn avro_long(value: i64) -> Vec<u8> {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut bytes = Vec::new();
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            bytes.push(byte);
            return bytes;
        }
        bytes.push(byte | 0x80);
    }
}

/// Polls the processor's `/readyz` until it answers `ready` (200) or not (503 with a body
/// containing `reason`).
pub async fn wait_for_readiness(
    processor: &Processor,
    ready: bool,
    reason: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(format!("{}/readyz", processor.health_url)).await {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() == ready && (ready || body.contains(reason)) {
                return;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "/readyz not {} within {timeout:?}: last answer {last:?}",
        if ready { "ready" } else { reason }
    );
}
