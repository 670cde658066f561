//! The dead-letter topic: every failed event, with its original bytes, key and headers, plus why
//! it failed and where it came from, so it can be inspected, fixed and produced again.
//!
//! Headers added to the original ones:
//!
//! | header               | value                                          |
//! |----------------------|------------------------------------------------|
//! | `eye.event_id`       | the event id (added when the original had none) |
//! | `eye.error_type`     | e.g. `invalid_data`                            |
//! | `eye.error_reason`   | the reason, naming the field                   |
//! | `eye.error_field`    | the field path, empty for the whole message    |
//! | `eye.source_topic`, `eye.source_partition`, `eye.source_offset` | where the message was read |

use eye_core::raw::EVENT_ID_HEADER;
use eye_core::settings::KafkaSettings;
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::sink::ErrorRow;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadLetterSettings {
    pub topic: String,
    /// Partitions the topic is created with when it does not exist.
    pub partitions: i32,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            topic: "eye.events.dlq".into(),
            partitions: 4,
        }
    }
}

/// A producer for the topics the processor publishes (dead letters, alerts, session updates):
/// every message acknowledged by all replicas, idempotent, compressed.
pub fn acknowledged_producer(kafka: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5");
    for (key, value) in &kafka.librdkafka {
        config.set(key, value);
    }
    config.create()
}

/// A failed event: its `event_errors` row and the message's original key and headers.
#[derive(Debug, Clone)]
pub struct FailedMessage {
    pub row: ErrorRow,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
}

impl DeadLetterSink {
    pub fn new(
        kafka: &KafkaSettings,
        settings: &DeadLetterSettings,
        source_topic: &str,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: acknowledged_producer(kafka)?,
            topic: settings.topic.clone(),
            source_topic: source_topic.to_string(),
        })
    }

    /// Publishes every failure and waits until the broker has acknowledged all of them.
    pub async fn publish<'a>(
        &self,
        failures: impl Iterator<Item = &'a FailedMessage>,
    ) -> Result<(), KafkaError> {
        let mut deliveries = Vec::new();
        for failed in failures {
            let row = &failed.row;
            let mut headers = OwnedHeaders::new_with_capacity(failed.headers.len() + 7);
            for (key, value) in &failed.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            if !failed.headers.iter().any(|(key, _)| key == EVENT_ID_HEADER) {
                headers = headers.insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(&row.event_id.to_string()),
                });
            }
            let (partition, offset) = (
                row.kafka_partition.to_string(),
                row.kafka_offset.to_string(),
            );
            for (key, value) in [
                ("eye.error_type", row.error_type.as_str()),
                ("eye.error_reason", row.reason.as_str()),
                ("eye.error_field", row.field_path.as_str()),
                ("eye.source_topic", self.source_topic.as_str()),
                ("eye.source_partition", partition.as_str()),
                ("eye.source_offset", offset.as_str()),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .payload(&row.raw)
                .headers(headers);
            if let Some(key) = &failed.key {
                record = record.key(key);
            }
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(error, _)| error)?;
            deliveries.push(delivery);
        }
        for delivery in join_all(deliveries).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(error),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }
}
