//! Kafka set-up shared by the services, the tools and the tests: client configuration (the
//! operator's overrides applied in one place), the acknowledged producer, topic creation, and
//! what librdkafka's Rust API lacks (bounded commits, headers with any name).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::bindings as native;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::settings::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("creating or describing topic {topic}: {code}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} does not exist")]
    Missing(String),
}

/// A client configuration: `kafka.brokers`, then the client's own `properties`, then the
/// operator's `kafka.librdkafka` overrides, last so they win (TLS, SASL, tuning). Every client
/// of the services is configured here.
pub fn client_config<'a>(
    kafka: &KafkaSettings,
    properties: impl IntoIterator<Item = (&'a str, String)>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in properties {
        config.set(key, value);
    }
    for (key, value) in &kafka.librdkafka {
        config.set(key, value);
    }
    config
}

/// A producer for what the processor publishes (dead letters, alerts, session updates): every
/// message acknowledged by all in-sync replicas, idempotent, compressed.
pub fn acknowledged_producer(kafka: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    client_config(
        kafka,
        [
            ("acks", "all".into()),
            ("enable.idempotence", "true".into()),
            ("compression.type", "lz4".into()),
            ("linger.ms", "5".into()),
        ],
    )
    .create()
}

/// How a topic is created when it does not exist. An existing topic is left as it is: its
/// operator created it, and [`finite_retention`] tells whether it keeps the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    pub partitions: i32,
    /// Copies of each partition; absent: as many as the cluster has brokers, at most 3.
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas`; absent: one less than the copies, at least 1.
    pub min_insync_replicas: Option<i32>,
    /// Topic properties set at creation (`retention.ms`, `cleanup.policy`, …).
    pub properties: BTreeMap<String, String>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self::with_partitions(4)
    }
}

/// The properties of a topic that keeps every message: the raw topic, which every table is
/// rebuilt from.
pub fn unbounded_retention() -> BTreeMap<String, String> {
    [("retention.ms", "-1"), ("retention.bytes", "-1")]
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .into()
}

/// The properties of a topic whose latest message of a key is all that counts.
pub fn compacted() -> BTreeMap<String, String> {
    [("cleanup.policy".to_string(), "compact".to_string())].into()
}

impl TopicSettings {
    /// `partitions`, the copies chosen from the cluster, the broker's default properties.
    pub fn with_partitions(partitions: i32) -> Self {
        Self {
            partitions,
            replication_factor: None,
            min_insync_replicas: None,
            properties: BTreeMap::new(),
        }
    }
}

/// The largest replication factor chosen for a topic when its settings name none.
const MAX_AUTOMATIC_REPLICATION: i32 = 3;

/// Creates each topic that does not exist, as `settings` say; a topic that exists is left as it
/// is.
pub async fn create_topics(
    kafka: &KafkaSettings,
    topics: &[&str],
    settings: &TopicSettings,
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, []).create()?;
    let replication = match settings.replication_factor {
        Some(copies) => copies,
        None => {
            let brokers = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))?
                .brokers()
                .len();
            i32::try_from(brokers)
                .unwrap_or(i32::MAX)
                .clamp(1, MAX_AUTOMATIC_REPLICATION)
        }
    };
    let min_insync = settings
        .min_insync_replicas
        .unwrap_or(replication - 1)
        .max(1)
        .to_string();
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(replication),
            )
            .set("min.insync.replicas", &min_insync);
            settings
                .properties
                .iter()
                .fold(topic, |topic, (key, value)| topic.set(key, value))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Refused { topic, code }),
        }
    }
    Ok(())
}

/// How many partitions `topic` has.
pub async fn partition_count(kafka: &KafkaSettings, topic: &str) -> Result<i32, TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, []).create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let described = metadata
        .topics()
        .first()
        .filter(|described| described.error().is_none() && !described.partitions().is_empty())
        .ok_or_else(|| TopicError::Missing(topic.to_string()))?;
    Ok(described.partitions().len() as i32)
}

/// The topic's `retention.ms` and `retention.bytes` when either bounds the log (not -1); None
/// when it keeps every message.
pub async fn finite_retention(
    kafka: &KafkaSettings,
    topic: &str,
) -> Result<Option<String>, TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, []).create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await?;
    let mut bounds = Vec::new();
    for resource in described {
        let resource = resource.map_err(|code| TopicError::Refused {
            topic: topic.to_string(),
            code,
        })?;
        for name in ["retention.ms", "retention.bytes"] {
            if let Some(value) = resource.get(name).and_then(|entry| entry.value.as_deref()) {
                if value.trim() != "-1" {
                    bounds.push(format!("{name}={value}"));
                }
            }
        }
    }
    Ok((!bounds.is_empty()).then(|| bounds.join(", ")))
}

/// Whether the broker or the client refuses a message for what it is (too large, invalid), so no
/// retry of the same message can succeed. Anything else (no broker, a time-out) may pass later.
pub fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// Every header of a consumed message, in order, names read lossily. rdkafka's own accessor
/// (`Headers::iter`) panics on a name that is not UTF-8, and any producer can send one: one such
/// message would crash the processor on every restart.
#[allow(unsafe_code)]
pub fn headers_of<'m>(message: &'m BorrowedMessage<'_>) -> Vec<(Cow<'m, str>, Option<&'m [u8]>)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    let native = std::ptr::from_ref(headers).cast::<rdkafka::bindings::rd_kafka_headers_t>();
    (0..headers.count())
        .filter_map(|index| {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: `native` is the message's header list (rdkafka's `BorrowedHeaders` is that
            // pointer); librdkafka points `name` at a NUL-terminated string and `value` at `size`
            // bytes, both owned by the message, which outlives the returned borrows.
            unsafe {
                let error = rdkafka::bindings::rd_kafka_header_get_all(
                    native, index, &mut name, &mut value, &mut size,
                );
                if error != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return None;
                }
                let name = CStr::from_ptr(name).to_string_lossy();
                let value = (!value.is_null())
                    .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
                Some((name, value))
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the group coordinator did not answer the commit within {0:?}")]
    TimedOut(Duration),
    #[error("committing offsets: {0}")]
    Refused(RDKafkaErrorCode),
}

/// Commits `offsets` and waits for the coordinator's answer at most `timeout`. librdkafka's own
/// synchronous commit waits without limit, so from a rebalance callback a broker that hangs
/// would stop the consumer, shutdown included. A commit that times out may still land later.
#[allow(unsafe_code)]
pub fn commit_within<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> Result<(), CommitError> {
    let client = consumer.client().native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `client` and `offsets` are live handles borrowed for this call; the queue is ours,
    // created and destroyed here (librdkafka keeps it alive for a late answer); the event
    // returned by `rd_kafka_queue_poll` is ours to destroy.
    unsafe {
        let queue = native::rd_kafka_queue_new(client);
        let code =
            native::rd_kafka_commit_queue(client, offsets.ptr(), queue, None, std::ptr::null_mut());
        let outcome = if code != native::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err(CommitError::Refused(code.into()))
        } else {
            let event = native::rd_kafka_queue_poll(queue, timeout_ms);
            if event.is_null() {
                Err(CommitError::TimedOut(timeout))
            } else {
                let code = native::rd_kafka_event_error(event);
                native::rd_kafka_event_destroy(event);
                match code {
                    native::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
                    code => Err(CommitError::Refused(code.into())),
                }
            }
        };
        native::rd_kafka_queue_destroy(queue);
        outcome
    }
}

/// What a header adds to a record on the wire beyond its key and value (length prefixes).
const HEADER_OVERHEAD_BYTES: usize = 10;
/// A record's own framing (lengths, attributes, offset and timestamp deltas), at most.
const RECORD_OVERHEAD_BYTES: usize = 32;

/// The size of a record as the broker's `message.max.bytes` counts it, at most.
pub fn record_bytes<'a>(
    key: &[u8],
    value: &[u8],
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> usize {
    let headers: usize = headers
        .into_iter()
        .map(|(key, value)| header_bytes(key, value))
        .sum();
    RECORD_OVERHEAD_BYTES + key.len() + value.len() + headers
}

/// What one header adds to a record.
pub fn header_bytes(key: &str, value: &[u8]) -> usize {
    HEADER_OVERHEAD_BYTES + key.len() + value.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_overrides_win_over_a_clients_own_properties() {
        let mut kafka = KafkaSettings::for_brokers("broker:9092");
        kafka.librdkafka.insert("linger.ms".into(), "50".into());
        let config = client_config(&kafka, [("linger.ms", "5".into()), ("acks", "all".into())]);
        assert_eq!(config.get("bootstrap.servers"), Some("broker:9092"));
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("acks"), Some("all"));
    }

    #[test]
    fn only_refusals_of_the_message_itself_are_for_good() {
        let refused = |code| KafkaError::MessageProduction(code);
        assert!(refused_for_good(&refused(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(refused_for_good(&refused(RDKafkaErrorCode::InvalidRecord)));
        assert!(!refused_for_good(&refused(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!refused_for_good(&refused(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!refused_for_good(&KafkaError::Canceled));
    }
}
