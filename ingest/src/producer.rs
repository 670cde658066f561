//! The Kafka side of the bridge: produces a request's events to the raw topic and resolves only
//! when the broker has acknowledged every one of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eye_core::kafka::{record_bytes, refused_for_good};
use eye_core::raw::Stamp;
use eye_core::settings::KafkaSettings;
use futures::future::join_all;
use metrics::{counter, gauge, histogram};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::config::ProducerSettings;

/// Why a request's events could not all be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("the Kafka broker is unreachable")]
    BrokerUnavailable,
    #[error("the Kafka producer failed for good ({0}); the bridge needs a restart")]
    Fatal(String),
    #[error("the producer queue is full")]
    QueueFull,
    #[error("the broker did not acknowledge an event: {0}")]
    NotAcknowledged(KafkaError),
    /// Permanent: the same event is refused on every retry.
    #[error("an event is too large for the broker ({0})")]
    MessageTooLarge(KafkaError),
}

/// An event that would make a Kafka message over the size limit: refused before anything of the
/// request is produced, since no retry can succeed.
#[derive(Debug, thiserror::Error)]
#[error("event {index} is {bytes} bytes as a Kafka message (value, key and headers), over the {limit}-byte limit")]
pub struct EventTooLarge {
    pub index: usize,
    pub bytes: usize,
    pub limit: usize,
}

/// One event ready to produce: the client's bytes, its routing key and the bridge's stamp.
pub struct OutgoingEvent<'a> {
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub stamp: &'a Stamp,
}

/// Tracks whether any broker connection is up, from librdkafka's statistics and errors.
pub struct BrokerWatch {
    up: Arc<AtomicBool>,
}

impl ClientContext for BrokerWatch {
    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().any(|broker| broker.state == "UP");
        self.up.store(up, Ordering::Relaxed);
        gauge!("eye_ingest_producer_queue_events").set(stats.msg_cnt as f64);
        gauge!("eye_ingest_broker_up").set(if up { 1.0 } else { 0.0 });
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.up.store(false, Ordering::Relaxed);
        }
        warn!(%error, reason, "kafka client error");
    }
}

/// The bridge's producer settings, also used by the benchmark's plain-producer ceiling.
pub fn client_config(kafka: &KafkaSettings, settings: &ProducerSettings) -> ClientConfig {
    eye_core::kafka::client_config(
        kafka,
        [
            ("acks", "all".into()),
            ("enable.idempotence", "true".into()),
            ("compression.type", settings.compression.clone()),
            ("linger.ms", settings.linger_ms.to_string()),
            ("batch.size", settings.batch_size_bytes.to_string()),
            (
                "message.timeout.ms",
                settings.message_timeout_ms.to_string(),
            ),
            // librdkafka counts a message until just after its delivery report, when the
            // request's permits are already back (`EventProducer::queue`): with room to spare it
            // never refuses a request half-way, which would put part of a 503's events on the
            // topic.
            (
                "queue.buffering.max.messages",
                settings.queue_max_events.saturating_mul(2).to_string(),
            ),
            ("statistics.interval.ms", "1000".into()),
            // Keep a connection to every known broker even when idle, so readiness (any broker
            // connection up) does not flicker while no events flow.
            ("enable.sparse.connections", "false".into()),
            ("reconnect.backoff.max.ms", "1000".into()),
        ],
    )
}

pub struct EventProducer {
    producer: FutureProducer<BrokerWatch>,
    topic: String,
    /// A permit per event the producer queue may hold (`queue_max_events`): a request takes all
    /// of its events' permits or none, so a full queue refuses it before any of it is produced.
    queue: Arc<Semaphore>,
    max_event_bytes: usize,
    broker_up: Arc<AtomicBool>,
}

impl EventProducer {
    pub fn new(kafka: &KafkaSettings, settings: &ProducerSettings) -> Result<Self, KafkaError> {
        let config = client_config(kafka, settings);
        let broker_up = Arc::new(AtomicBool::new(false));
        let producer = config.create_with_context(BrokerWatch {
            up: broker_up.clone(),
        })?;
        Ok(Self {
            producer,
            topic: settings.topic.clone(),
            queue: Arc::new(Semaphore::new(settings.queue_max_events as usize)),
            max_event_bytes: settings.max_event_bytes,
            broker_up,
        })
    }

    /// Refuses the first event whose Kafka message would exceed `producer.max_event_bytes`.
    pub fn check_sizes(&self, events: &[OutgoingEvent<'_>]) -> Result<(), EventTooLarge> {
        for (index, event) in events.iter().enumerate() {
            let headers = event.stamp.header_values();
            let bytes = record_bytes(
                event.key,
                event.payload,
                headers.iter().map(|(key, value)| (*key, value.as_bytes())),
            );
            if bytes > self.max_event_bytes {
                return Err(EventTooLarge {
                    index,
                    bytes,
                    limit: self.max_event_bytes,
                });
            }
        }
        Ok(())
    }

    /// Whether a broker connection is up, as of the last statistics (at most a second old).
    pub fn broker_reachable(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// A fatal producer error (the idempotent producer can raise one): no event can be produced
    /// until the process restarts, so liveness reports it.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Produces every event and waits until the broker has acknowledged all of them. Refuses
    /// up front, producing nothing, when the broker is unreachable or the queue lacks room.
    pub async fn produce_all(&self, events: &[OutgoingEvent<'_>]) -> Result<(), ProduceError> {
        if let Some(error) = self.fatal_error() {
            return Err(ProduceError::Fatal(error));
        }
        if !self.broker_reachable() {
            return Err(ProduceError::BrokerUnavailable);
        }
        // Held until every delivery of the request is reported, as librdkafka holds the events.
        let _queued = u32::try_from(events.len())
            .ok()
            .and_then(|events| self.queue.clone().try_acquire_many_owned(events).ok())
            .ok_or(ProduceError::QueueFull)?;
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(events.len());
        let mut refused = None;
        for event in events {
            let mut headers = OwnedHeaders::new_with_capacity(3);
            for (key, value) in event.stamp.header_values() {
                headers = headers.insert(Header {
                    key,
                    value: Some(&value),
                });
            }
            let record = FutureRecord::to(&self.topic)
                .key(event.key)
                .payload(event.payload)
                .headers(headers)
                .timestamp(event.stamp.received_at.timestamp_millis());
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        // Wait for what was queued even when the rest was refused, so nothing is left behind
        // unobserved; the reply is 503 either way.
        let results = join_all(deliveries).await;
        histogram!("eye_ingest_produce_seconds").record(started.elapsed().as_secs_f64());
        if let Some(error) = refused {
            return Err(match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
                _ if refused_for_good(&error) => ProduceError::MessageTooLarge(error),
                _ => ProduceError::NotAcknowledged(error),
            });
        }
        let mut acknowledged = 0u64;
        let mut failure = None;
        for result in results {
            match result {
                Ok(Ok(_)) => acknowledged += 1,
                Ok(Err((error, _))) => failure = Some(error),
                Err(_canceled) => failure = Some(KafkaError::Canceled),
            }
        }
        counter!("eye_ingest_events_produced_total").increment(acknowledged);
        match failure {
            None => Ok(()),
            // A broker whose limit is below ours.
            Some(error) if refused_for_good(&error) => Err(ProduceError::MessageTooLarge(error)),
            Some(error) => Err(ProduceError::NotAcknowledged(error)),
        }
    }

    /// Waits for queued events to be delivered, for graceful shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            warn!(%error, "events still queued at shutdown");
        }
    }
}
