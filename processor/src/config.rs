//! The processor's settings: defaults that work locally, a TOML file, `EYE_…` overrides.

use std::path::PathBuf;

use eye_core::raw::DEFAULT_RAW_TOPIC;
use eye_core::settings::KafkaSettings;
use serde::{Deserialize, Serialize};

use crate::alerts::AlertSettings;
use crate::dead_letter::DeadLetterSettings;
use crate::session_updates::SessionUpdateSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Address of the health, readiness and metrics endpoints.
    pub listen: String,
    pub kafka: KafkaSettings,
    pub consumer: ConsumerSettings,
    pub batch: BatchSettings,
    pub clickhouse: ClickHouseSettings,
    pub dead_letter: DeadLetterSettings,
    pub validation: ValidationSettings,
    pub alerts: AlertSettings,
    pub session_updates: SessionUpdateSettings,
    /// Directory holding `avro/` (event schemas) and `clickhouse/` (table DDL).
    pub schemas_dir: PathBuf,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            kafka: KafkaSettings::default(),
            consumer: ConsumerSettings::default(),
            batch: BatchSettings::default(),
            clickhouse: ClickHouseSettings::default(),
            dead_letter: DeadLetterSettings::default(),
            validation: ValidationSettings::default(),
            alerts: AlertSettings::default(),
            session_updates: SessionUpdateSettings::default(),
            schemas_dir: "schemas".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    pub topic: String,
    pub group_id: String,
    /// Application recorded for events produced straight to Kafka without an
    /// `eye.application` header.
    pub default_application: String,
    /// How long the group waits for a silent member (a crashed processor) before giving its
    /// partitions to another (`session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// `/readyz` answers 503 once the committed offsets have not moved for this long while
    /// messages wait: a processor stuck on one batch is visible to whatever restarts it.
    pub stalled_after_ms: u64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            topic: DEFAULT_RAW_TOPIC.into(),
            group_id: "eye-processor".into(),
            default_application: "direct".into(),
            session_timeout_ms: 45_000,
            stalled_after_ms: 120_000,
        }
    }
}

/// When a batch is written to ClickHouse: at `max_events`, or `max_wait_ms` after its first
/// event, whichever comes first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    pub max_events: usize,
    pub max_wait_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_events: 50_000,
            max_wait_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseSettings {
    /// HTTP endpoint.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Longest an insert or a query may take before it counts as failed (and is retried): a
    /// server that hangs instead of refusing must not hold a batch forever.
    pub request_timeout_ms: u64,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "eye".into(),
            user: "default".into(),
            password: String::new(),
            request_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSettings {
    /// How far an event's timestamp may lie after its `received_at` (client clocks run fast)
    /// before it is a `future_timestamp` failure.
    pub future_tolerance_seconds: i64,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        Self {
            future_tolerance_seconds: 300,
        }
    }
}
