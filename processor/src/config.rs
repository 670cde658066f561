//! The processor's settings, composed of each component's own (beside it): defaults that work
//! locally, a TOML file, `EYE_…` overrides.

use std::collections::BTreeMap;
use std::path::PathBuf;

use eye_core::kafka::{compacted, unbounded_retention, TopicSettings};
use eye_core::settings::KafkaSettings;
use serde::{Deserialize, Serialize};

use crate::alerts::AlertSettings;
use crate::dead_letter::DeadLetterSettings;
use crate::pipeline::BatchSettings;
use crate::session_updates::SessionUpdateSettings;
use crate::sink::ClickHouseSettings;
use crate::source::ConsumerSettings;
use eye_core::validate::ValidationSettings;

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
    pub topics: Topics,
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
            topics: Topics::default(),
            schemas_dir: "schemas".into(),
        }
    }
}

/// How the processor creates the topics it reads and writes when they do not exist; an existing
/// topic is left as it is (README, "Topics", for operators who create them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// Copies of each partition; absent: as many as the cluster has brokers, at most 3.
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas`; absent: one less than the copies, at least 1.
    pub min_insync_replicas: Option<i32>,
    /// Partitions of the raw topic (`consumer.topic`).
    pub raw_partitions: i32,
    /// Properties of the raw topic: by default it keeps every message, since every table is
    /// rebuilt from it.
    pub raw: BTreeMap<String, String>,
    /// Properties of the session topic: by default compacted, since a key's latest message is
    /// the session.
    pub sessions: BTreeMap<String, String>,
    /// Properties of the session changelog (`session_updates.state_topic`): by default compacted,
    /// segments rolled hourly so compaction can reach them.
    pub session_state: BTreeMap<String, String>,
    /// Properties of the dead-letter topic (the broker's defaults unless set).
    pub dead_letter: BTreeMap<String, String>,
    /// Properties of the alert topic (the broker's defaults unless set).
    pub alerts: BTreeMap<String, String>,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            replication_factor: None,
            min_insync_replicas: None,
            raw_partitions: 4,
            raw: unbounded_retention(),
            sessions: compacted(),
            session_state: session_state_properties(),
            dead_letter: BTreeMap::new(),
            alerts: BTreeMap::new(),
        }
    }
}

/// Compacted, as the session topic; the active segment is never compacted, so it rolls hourly
/// (Kafka's default is a week): a restore reads little more than the open sessions.
fn session_state_properties() -> BTreeMap<String, String> {
    let mut properties = compacted();
    properties.insert("segment.ms".into(), "3600000".into());
    properties
}

impl Topics {
    /// A topic of `partitions` with `properties`, copied as this section says.
    pub fn settings(
        &self,
        partitions: i32,
        properties: &BTreeMap<String, String>,
    ) -> TopicSettings {
        TopicSettings {
            partitions,
            replication_factor: self.replication_factor,
            min_insync_replicas: self.min_insync_replicas,
            properties: properties.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw topic keeps its log and the session topic and changelog are compacted, by default
    /// and in the local config file that documents the section.
    #[test]
    fn the_raw_topic_keeps_every_message_and_the_session_topic_is_compacted() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/processor.toml");
        let loaded: ProcessorConfig = eye_core::settings::load_with_env(Some(&file), []).unwrap();
        for topics in [Topics::default(), loaded.topics] {
            let raw = topics.settings(topics.raw_partitions, &topics.raw);
            assert_eq!(raw.properties, unbounded_retention());
            assert_eq!(raw.replication_factor, None, "chosen from the cluster");
            assert_eq!(topics.sessions, compacted());
            assert_eq!(topics.session_state, session_state_properties());
            assert!(topics.dead_letter.is_empty() && topics.alerts.is_empty());
        }
    }
}
