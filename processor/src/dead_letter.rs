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
//! | `eye.truncated`      | only on a dead letter cut to fit `max_message_bytes`: what was cut |

use std::borrow::Cow;

use eye_core::kafka::{header_bytes, record_bytes, refused_for_good};
use eye_core::raw::EVENT_ID_HEADER;
use eye_core::settings::KafkaSettings;
use metrics::counter;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use tracing::error;
use uuid::Uuid;

use crate::rows::FailedMessage;

/// Set on a dead letter cut to fit the broker's message size: what was cut.
pub const TRUNCATED_HEADER: &str = "eye.truncated";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterSettings {
    pub topic: String,
    /// Partitions the topic is created with when it does not exist.
    pub partitions: i32,
    /// The broker's largest message: a dead letter over it is cut to fit (see `eye.truncated`).
    pub max_message_bytes: usize,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        Self {
            topic: "eye.events.dlq".into(),
            partitions: 4,
            max_message_bytes: 1_000_000,
        }
    }
}

pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    max_message_bytes: usize,
}

impl DeadLetterSink {
    pub fn new(
        kafka: &KafkaSettings,
        settings: &DeadLetterSettings,
        source_topic: &str,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: eye_core::kafka::acknowledged_producer(kafka)?,
            topic: settings.topic.clone(),
            source_topic: source_topic.to_string(),
            max_message_bytes: settings.max_message_bytes,
        })
    }

    /// Publishes every failure and waits until the broker has acknowledged all of them. A dead
    /// letter the broker refuses for good (it can only be a broker limit below
    /// `max_message_bytes`) is logged and counted, not retried: its row is in `event_errors`.
    pub async fn publish<'a>(
        &self,
        failures: impl Iterator<Item = &'a FailedMessage>,
    ) -> Result<(), KafkaError> {
        let mut deliveries = Vec::new();
        for failed in failures {
            let letter = DeadLetter::of(failed, &self.source_topic, self.max_message_bytes);
            let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len());
            for (key, value) in &letter.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_ref()),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .payload(letter.value)
                .headers(headers);
            if let Some(key) = letter.key {
                record = record.key(key);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push((failed.row.event_id, delivery)),
                Err((error, _)) if refused_for_good(&error) => refused(failed.row.event_id, &error),
                Err((error, _)) => return Err(error),
            }
        }
        for (event_id, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) if refused_for_good(&error) => refused(event_id, &error),
                Ok(Err((error, _))) => return Err(error),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }
}

fn refused(event_id: Uuid, error: &KafkaError) {
    counter!("eye_processor_dead_letters_refused_total").increment(1);
    error!(%event_id, %error, "the broker refused a dead letter for good; the failure is in event_errors only");
}

/// The longest reason or field path a dead letter carries (a field path names the field, and an
/// event can nest deeply).
const MAX_REASON_BYTES: usize = 1024;
/// Room kept for the `eye.truncated` header.
const TRUNCATION_NOTE_BYTES: usize = 160;

/// A dead letter as it goes to the broker: within `max_message_bytes`, whatever the failed
/// message held. The processor's headers always go; then the original key, the original headers
/// in order and the value, each as far as there is room, with `eye.truncated` saying what was
/// cut.
struct DeadLetter<'a> {
    key: Option<&'a [u8]>,
    headers: Vec<(&'a str, Cow<'a, [u8]>)>,
    value: &'a [u8],
}

impl<'a> DeadLetter<'a> {
    fn of(failed: &'a FailedMessage, source_topic: &'a str, max_message_bytes: usize) -> Self {
        let row = &failed.row;
        let mut ours: Vec<(&'a str, Cow<'a, [u8]>)> = Vec::with_capacity(7);
        if !failed.headers.iter().any(|(key, _)| key == EVENT_ID_HEADER) {
            ours.push((
                EVENT_ID_HEADER,
                row.event_id.to_string().into_bytes().into(),
            ));
        }
        ours.extend([
            ("eye.error_type", row.error_type.as_bytes().into()),
            (
                "eye.error_reason",
                prefix(&row.reason, MAX_REASON_BYTES).into(),
            ),
            (
                "eye.error_field",
                prefix(&row.field_path, MAX_REASON_BYTES).into(),
            ),
            ("eye.source_topic", source_topic.as_bytes().into()),
            (
                "eye.source_partition",
                row.kafka_partition.to_string().into_bytes().into(),
            ),
            (
                "eye.source_offset",
                row.kafka_offset.to_string().into_bytes().into(),
            ),
        ]);
        let mut room = max_message_bytes
            .saturating_sub(record_bytes(
                &[],
                &[],
                ours.iter().map(|(key, value)| (*key, value.as_ref())),
            ))
            .saturating_sub(TRUNCATION_NOTE_BYTES);
        let mut take = |bytes: usize| {
            let fits = bytes <= room;
            if fits {
                room -= bytes;
            }
            fits
        };
        let key = failed.key.as_deref().filter(|key| take(key.len()));
        let mut headers: Vec<(&'a str, Cow<'a, [u8]>)> = failed
            .headers
            .iter()
            .filter(|(key, value)| take(header_bytes(key, value)))
            .map(|(key, value)| (key.as_str(), Cow::Borrowed(value.as_slice())))
            .collect();
        let value = &row.raw[..row.raw.len().min(room)];
        let mut cut = Vec::new();
        if value.len() < row.raw.len() {
            cut.push(format!("value {} of {} bytes", value.len(), row.raw.len()));
        }
        if headers.len() < failed.headers.len() {
            cut.push(format!(
                "headers {} of {}",
                headers.len(),
                failed.headers.len()
            ));
        }
        if key.is_none() && failed.key.is_some() {
            cut.push("key dropped".to_string());
        }
        headers.extend(ours);
        if !cut.is_empty() {
            headers.push((TRUNCATED_HEADER, cut.join("; ").into_bytes().into()));
        }
        DeadLetter {
            key,
            headers,
            value,
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn prefix(text: &str, max: usize) -> &[u8] {
    &text.as_bytes()[..text.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::ErrorRow;

    fn failed(raw_bytes: usize, header_bytes: usize) -> FailedMessage {
        FailedMessage {
            row: ErrorRow {
                event_id: Uuid::from_u128(1),
                application: "shop".into(),
                session_id: Uuid::nil(),
                error_type: "invalid_data".into(),
                reason: "r".repeat(5000),
                field_path: "data.path".into(),
                category: String::new(),
                name: String::new(),
                raw: vec![b'x'; raw_bytes],
                received_at: 0,
                received_at_us: 0,
                kafka_partition: 3,
                kafka_offset: 17,
            },
            key: Some(b"session".to_vec()),
            headers: vec![("big".into(), vec![b'h'; header_bytes])],
        }
    }

    fn size(letter: &DeadLetter<'_>) -> usize {
        record_bytes(
            letter.key.unwrap_or_default(),
            letter.value,
            letter
                .headers
                .iter()
                .map(|(key, value)| (*key, value.as_ref())),
        )
    }

    fn header<'l>(letter: &'l DeadLetter<'_>, name: &str) -> Option<&'l str> {
        letter
            .headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| std::str::from_utf8(value).unwrap())
    }

    #[test]
    fn a_dead_letter_that_fits_is_the_message_as_received_plus_the_reason() {
        let failed = failed(100, 10);
        let letter = DeadLetter::of(&failed, "raw", 1_000_000);
        assert_eq!(letter.value, failed.row.raw.as_slice());
        assert_eq!(letter.key, Some(&b"session"[..]));
        assert_eq!(header(&letter, "big"), Some("hhhhhhhhhh"));
        assert_eq!(header(&letter, "eye.source_offset"), Some("17"));
        assert_eq!(header(&letter, TRUNCATED_HEADER), None);
    }

    #[test]
    fn a_failure_over_the_message_size_is_cut_to_fit_and_says_so() {
        let failed = failed(999_990, 10);
        let letter = DeadLetter::of(&failed, "raw", 1_000_000);
        assert!(size(&letter) <= 1_000_000, "{}", size(&letter));
        assert!(letter.value.len() > 990_000);
        assert_eq!(
            header(&letter, TRUNCATED_HEADER),
            Some(format!("value {} of 999990 bytes", letter.value.len()).as_str())
        );
        assert_eq!(
            header(&letter, "eye.error_reason").map(str::len),
            Some(MAX_REASON_BYTES)
        );
    }

    #[test]
    fn original_headers_too_large_to_fit_are_left_out() {
        let failed = failed(10, 1_200_000);
        let letter = DeadLetter::of(&failed, "raw", 1_000_000);
        assert!(size(&letter) <= 1_000_000);
        assert_eq!(header(&letter, "big"), None);
        assert_eq!(header(&letter, TRUNCATED_HEADER), Some("headers 0 of 1"));
        assert_eq!(letter.value.len(), 10);
    }
}
