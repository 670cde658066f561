//! A topic of keyed Avro messages in single-object encoding, each acknowledged by the broker: the
//! session topic and the alert topic publish through it, so both encode, key, wait and classify
//! refusals the same way.

use std::time::Duration;

use apache_avro::types::Value as Avro;
use eye_core::kafka::refused_for_good;
use eye_core::schemas::{TopicEncodeError, TopicSchema};
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// How long a message may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The record does not match the topic's schema: it never will (a defect to report).
    #[error("does not encode as {schema}: {source}")]
    Encode {
        schema: String,
        source: TopicEncodeError,
    },
    /// The broker or the client refuses the message for what it is (e.g. over the message
    /// size): the same message is refused every time.
    #[error("refused for good by the broker: {0}")]
    Refused(KafkaError),
    /// Not acknowledged (no broker, a time-out): the same message may pass later.
    #[error("not acknowledged by the broker: {0}")]
    Unacknowledged(KafkaError),
}

impl PublishError {
    /// Whether retrying the same message is pointless.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, PublishError::Unacknowledged(_))
    }
}

impl From<KafkaError> for PublishError {
    fn from(error: KafkaError) -> Self {
        if refused_for_good(&error) {
            PublishError::Refused(error)
        } else {
            PublishError::Unacknowledged(error)
        }
    }
}

/// What a topic's message is made from: an Avro value, or a type whose fields are the schema's.
pub trait TopicRecord {
    fn encode(&self, schema: &TopicSchema) -> Result<Vec<u8>, TopicEncodeError>;
}

impl TopicRecord for Avro {
    fn encode(&self, schema: &TopicSchema) -> Result<Vec<u8>, TopicEncodeError> {
        Ok(schema.encode(self)?)
    }
}

pub struct AvroTopic {
    name: String,
    schema: TopicSchema,
    producer: FutureProducer,
}

impl AvroTopic {
    /// `producer` must wait for every in-sync replica (see `eye_core::kafka::acknowledged_producer`).
    pub fn new(producer: FutureProducer, name: &str, schema: TopicSchema) -> Self {
        Self {
            name: name.to_string(),
            schema,
            producer,
        }
    }

    /// Publishes one message and waits for the broker's acknowledgement.
    pub async fn publish(&self, key: &str, record: &impl TopicRecord) -> Result<(), PublishError> {
        let payload = self.encode(record)?;
        self.producer
            .send(
                FutureRecord::to(&self.name).key(key).payload(&payload),
                QUEUE_TIMEOUT,
            )
            .await
            .map(drop)
            .map_err(|(error, _)| error.into())
    }

    /// Publishes every message at once and waits for all acknowledgements; the outcome of each,
    /// in order.
    pub async fn publish_all<R: TopicRecord>(
        &self,
        messages: Vec<(String, R)>,
    ) -> Vec<(String, Result<(), PublishError>)> {
        join_all(messages.into_iter().map(|(key, record)| async move {
            let outcome = self.publish(&key, &record).await;
            (key, outcome)
        }))
        .await
    }

    /// Hands one message to the producer now, without waiting; the future resolves with its
    /// acknowledgement.
    pub fn enqueue(
        &self,
        key: &str,
        record: &impl TopicRecord,
    ) -> Result<DeliveryFuture, PublishError> {
        let payload = self.encode(record)?;
        self.producer
            .send_result(FutureRecord::to(&self.name).key(key).payload(&payload))
            .map_err(|(error, _)| error.into())
    }

    /// The producer, for another topic that must be flushed with this one.
    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// Waits until every message handed over is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    fn encode(&self, record: &impl TopicRecord) -> Result<Vec<u8>, PublishError> {
        record
            .encode(&self.schema)
            .map_err(|source| PublishError::Encode {
                schema: self.schema.file.display().to_string(),
                source,
            })
    }
}
