//! The processor's settings, composed of each component's own (beside it): defaults that work
//! locally, a TOML file, `EYE_…` overrides.

use std::path::PathBuf;

use eye_core::settings::KafkaSettings;
use serde::{Deserialize, Serialize};

use crate::alerts::AlertSettings;
use crate::dead_letter::DeadLetterSettings;
use crate::pipeline::BatchSettings;
use crate::session_updates::SessionUpdateSettings;
use crate::sink::ClickHouseSettings;
use crate::source::ConsumerSettings;
use crate::validate::ValidationSettings;

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
