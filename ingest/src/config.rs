//! The ingest bridge's settings: defaults that work locally, a TOML file, `EYE_…` overrides.

use eye_core::raw::DEFAULT_RAW_TOPIC;
use eye_core::settings::KafkaSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Address the public API (`/v1/events`) listens on.
    pub listen: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`: apart from the API, so probes answer
    /// during a flood and metrics need not be public.
    pub operations_listen: String,
    pub kafka: KafkaSettings,
    pub producer: ProducerSettings,
    pub limits: Limits,
    /// The trusted applications and the SHA-256 of their API keys.
    pub applications: Vec<Application>,
    /// Origins allowed to call the API from a browser (CORS); empty allows none.
    pub cors_allowed_origins: Vec<String>,
    /// `Retry-After` sent with 503 replies.
    pub retry_after_seconds: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            operations_listen: "127.0.0.1:8082".into(),
            kafka: KafkaSettings::default(),
            producer: ProducerSettings::default(),
            limits: Limits::default(),
            applications: Vec::new(),
            cors_allowed_origins: Vec::new(),
            retry_after_seconds: 1,
        }
    }
}

/// How events are produced to the raw topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerSettings {
    pub topic: String,
    /// How long an event may wait for the broker's acknowledgement before the request fails with
    /// 503 (`message.timeout.ms`).
    pub message_timeout_ms: u64,
    /// How long the producer waits to fill a batch (`linger.ms`). Every request waits for its
    /// acknowledgement, so this is added to each reply: 1 ms gave 2.7x the single-event requests/s
    /// of 5 ms for 11% fewer batched events/s (docs/benchmarks.md).
    pub linger_ms: u64,
    /// Largest batch sent to one partition (`batch.size`).
    pub batch_size_bytes: u64,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Events waiting for acknowledgement at most; a request that would exceed it gets 503.
    pub queue_max_events: u64,
    /// Largest Kafka message (value, key and headers) the bridge produces: librdkafka's and
    /// Kafka's default `message.max.bytes`. A request holding a larger event gets 413 and nothing
    /// of it is produced.
    pub max_event_bytes: usize,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            topic: DEFAULT_RAW_TOPIC.into(),
            message_timeout_ms: 5_000,
            linger_ms: 1,
            batch_size_bytes: 1_000_000,
            compression: "lz4".into(),
            queue_max_events: 40_000,
            max_event_bytes: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body as sent (compressed when gzip).
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression.
    pub max_decompressed_bytes: usize,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// Requests served at once; one more gets 503 `overloaded` at once instead of waiting.
    pub max_concurrent_requests: usize,
    /// A request whose body has not fully arrived this long after its headers gets 408.
    pub body_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_decompressed_bytes: 10 * 1024 * 1024,
            max_batch_events: 1000,
            max_concurrent_requests: 1024,
            body_read_timeout_ms: 10_000,
        }
    }
}

/// A trusted application: its id, stamped on its events, and the hex SHA-256 of its API key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub id: String,
    pub key_sha256: String,
    /// Events per second the application may send, as a token bucket; unlimited when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `events_per_second` refill, `burst_events` capacity (at least
/// `limits.max_batch_events`, so every allowed batch can pass). Over it: 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub events_per_second: u32,
    pub burst_events: u32,
}
