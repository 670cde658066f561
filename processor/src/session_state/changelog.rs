//! The changelog of the sessions held in memory: a compacted topic (by default
//! `<group>-<raw topic>-session-state`, one for each group and raw topic) with as many
//! partitions as the raw topic, where partition `p` holds the sessions of raw
//! partition `p`, keyed `application/session_id` like the session topic. After each batch, every
//! session it changed is written there whole (its sets too, so a restored session stays
//! idempotent), and a session that leaves memory or is read back from ClickHouse gets a tombstone.
//! So a key's latest message is either the session's state up to the last stored offset or
//! nothing; the partition's next owner restores from it instead of reading ClickHouse.
//!
//! A message is one version byte then the session in postcard (compact, serde); a message of
//! another version, or one that does not decode, is skipped at restore: that session is then
//! read back from ClickHouse, which is always right, only slower.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eye_core::kafka::{client_config, refused_for_good};
use eye_core::settings::KafkaSettings;
use metrics::counter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};
use uuid::Uuid;

use crate::readiness::Readiness;

/// The format of a changelog message's body, its first byte.
const VERSION: u8 = 1;
/// A session whose state is larger than this leaves memory (and is read back from ClickHouse
/// from then on): its message must fit the broker's default message size (1 MB) with room.
pub const MAX_STATE_BYTES: usize = 512 * 1024;
/// How long a restore waits for one poll of the changelog.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A session as the changelog keeps it: what [`super::state::SessionState`] holds, with its
/// types by name (type numbers are this process's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSession {
    pub application: String,
    pub session_id: Uuid,
    pub partition: i32,
    pub first_us: u64,
    pub last_us: u64,
    /// The (category, name) of the session's types; `events` refer to them by index.
    pub types: Vec<(String, String)>,
    /// Each distinct (event id, type index).
    pub events: Vec<(Uuid, u32)>,
    /// The first and last pageview: time, event id, path (cut as the session topic cuts it).
    pub entry: Option<(u64, Uuid, String)>,
    pub exit: Option<(u64, Uuid, String)>,
    /// Hashes of the distinct pageview paths (XXH3, so any release computes the same).
    pub pages: Vec<u64>,
    pub form_submitted: bool,
    pub last_received_us: u64,
    /// The ids of its failed events.
    pub errors: Vec<Uuid>,
    pub error_last_received_us: u64,
}

/// One message for the changelog: a session's state, or its tombstone (`state` None).
#[derive(Debug, Clone)]
pub struct StateChange {
    pub partition: i32,
    pub application: String,
    pub session_id: Uuid,
    pub state: Option<Vec<u8>>,
}

impl StateChange {
    pub fn tombstone(partition: i32, application: &str, session_id: Uuid) -> Self {
        Self {
            partition,
            application: application.to_string(),
            session_id,
            state: None,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.application, self.session_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading the session changelog: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the session changelog was not read to its end within {0:?}")]
    TimedOut(Duration),
    #[error("the session changelog's restore stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub fn encode(session: &StoredSession) -> Vec<u8> {
    // A session of ten events takes about 300 bytes: room for it without growing by doubling.
    let mut bytes = Vec::with_capacity(384);
    bytes.push(VERSION);
    // Writing to a vector cannot fail, and every field has a serde form.
    postcard::to_io(session, &mut bytes).expect("a session encodes");
    bytes
}

pub fn decode(bytes: &[u8]) -> Option<StoredSession> {
    match bytes.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).ok(),
        _ => None,
    }
}

/// The changelog topic: written through the session topic's producer, so a rebalance's flush of
/// that producer covers both.
pub struct Changelog {
    topic: String,
    producer: FutureProducer,
    kafka: KafkaSettings,
    restore_timeout: Duration,
}

/// The sessions whose state the broker refused for good: they leave memory.
pub type Refused = Vec<(String, Uuid)>;

/// Changes handed to the producer, each with its acknowledgement (None: not even queued).
pub type Pending = Vec<(StateChange, Option<DeliveryFuture>)>;

impl Changelog {
    pub fn new(
        topic: &str,
        producer: FutureProducer,
        kafka: &KafkaSettings,
        restore_timeout: Duration,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            producer,
            kafka: kafka.clone(),
            restore_timeout,
        }
    }

    /// Hands every change to the producer now; [`Changelog::complete`] waits for them.
    pub fn enqueue(&self, changes: Vec<StateChange>) -> Pending {
        changes
            .into_iter()
            .map(|change| {
                let delivery = self.send(&change);
                (change, delivery)
            })
            .collect()
    }

    fn send(&self, change: &StateChange) -> Option<DeliveryFuture> {
        let key = change.key();
        let mut record = FutureRecord::<String, Vec<u8>>::to(&self.topic)
            .partition(change.partition)
            .key(&key);
        if let Some(state) = &change.state {
            record = record.payload(state);
        }
        match self.producer.send_result(record) {
            Ok(delivery) => Some(delivery),
            Err((error, _)) => {
                warn!(%error, "queueing a session's state");
                None
            }
        }
    }

    /// Waits until every change is acknowledged, sending again with backoff what may pass later
    /// (readiness false meanwhile); a state refused for good is replaced by the session's
    /// tombstone, and the session is in the answer.
    pub async fn complete(&self, mut pending: Pending, readiness: &Readiness) -> Refused {
        let mut refused = Refused::new();
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut again = Vec::new();
            for (change, delivery) in pending {
                let outcome = match delivery {
                    Some(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(error),
                        Err(_) => Err(KafkaError::Canceled),
                    },
                    None => Err(KafkaError::Canceled),
                };
                match outcome {
                    Ok(()) => {}
                    Err(error) if change.state.is_some() && refused_for_good(&error) => {
                        counter!("eye_processor_session_states_refused_total").increment(1);
                        error!(application = %change.application, session = %change.session_id, %error, "a session's state is refused by the changelog; it leaves memory");
                        refused.push((change.application.clone(), change.session_id));
                        again.push(StateChange::tombstone(
                            change.partition,
                            &change.application,
                            change.session_id,
                        ));
                    }
                    Err(_) => again.push(change),
                }
            }
            if again.is_empty() {
                return refused;
            }
            readiness.set_outputs_healthy(false);
            counter!("eye_processor_sink_retries_total").increment(1);
            warn!(
                changes = again.len(),
                retry_in = ?backoff,
                "session states not acknowledged by the changelog"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            pending = self.enqueue(again);
        }
    }

    /// The sessions the changelog holds for `partitions`: each key's latest message, read to the
    /// end the partitions have now.
    pub async fn restore(
        &self,
        partitions: BTreeSet<i32>,
    ) -> Result<Vec<StoredSession>, RestoreError> {
        let (kafka, topic, timeout) =
            (self.kafka.clone(), self.topic.clone(), self.restore_timeout);
        let latest =
            tokio::task::spawn_blocking(move || read_latest(&kafka, &topic, &partitions, timeout))
                .await??;
        let mut sessions = Vec::with_capacity(latest.len());
        for bytes in latest.into_values() {
            match decode(&bytes) {
                Some(session) => sessions.push(session),
                None => count_unreadable_state(),
            }
        }
        Ok(sessions)
    }
}

/// A stored state that cannot be used (undecodable, or naming what it does not hold): that session
/// is read back from ClickHouse instead.
pub fn count_unreadable_state() {
    counter!("eye_processor_session_states_unreadable_total").increment(1);
}

/// Each key's latest body in `partitions` (tombstones remove the key), up to the end each had
/// when the read began.
fn read_latest(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: &BTreeSet<i32>,
    timeout: Duration,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, RestoreError> {
    let consumer: BaseConsumer = client_config(
        kafka,
        [
            // Assigned, never subscribed: the group id only names the client to the broker.
            ("group.id", "eye-processor-session-restore".to_string()),
            ("enable.auto.commit", "false".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
        ],
    )
    .create()?;
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    let mut latest = BTreeMap::new();
    if ends.is_empty() {
        return Ok(latest);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(RestoreError::TimedOut(timeout));
        }
        let Some(message) = consumer.poll(POLL_TIMEOUT) else {
            // Nothing more: a partition read past its end is done, even where the messages
            // before the end are gone (compacted).
            for element in consumer.position()?.elements() {
                if let Offset::Offset(position) = element.offset() {
                    if ends
                        .get(&element.partition())
                        .is_some_and(|&end| position >= end)
                    {
                        ends.remove(&element.partition());
                    }
                }
            }
            continue;
        };
        let message = message?;
        let Some(&end) = ends.get(&message.partition()) else {
            continue;
        };
        if message.offset() >= end {
            ends.remove(&message.partition());
            continue;
        }
        let key = message.key().unwrap_or_default().to_vec();
        match message.payload() {
            Some(body) => latest.insert(key, body.to_vec()),
            None => latest.remove(&key),
        };
        if message.offset() + 1 >= end {
            ends.remove(&message.partition());
        }
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_session_reads_back_as_it_was_and_another_version_not_at_all() {
        let session = StoredSession {
            application: "shop".into(),
            session_id: Uuid::from_u128(7),
            partition: 3,
            first_us: 1,
            last_us: 2,
            types: vec![("page interaction".into(), "pageview".into())],
            events: vec![(Uuid::from_u128(1), 0), (Uuid::from_u128(2), 0)],
            entry: Some((1, Uuid::from_u128(1), "/".into())),
            exit: Some((2, Uuid::from_u128(2), "/pricing".into())),
            pages: vec![10, 20],
            form_submitted: true,
            last_received_us: 5,
            errors: vec![Uuid::from_u128(9)],
            error_last_received_us: 6,
        };
        let bytes = encode(&session);
        assert_eq!(decode(&bytes), Some(session));
        let mut other_version = bytes.clone();
        other_version[0] = VERSION + 1;
        assert_eq!(decode(&other_version), None);
        assert_eq!(decode(&bytes[..bytes.len() / 2]), None, "cut short");
    }
}
