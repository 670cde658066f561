//! What a message's transport says about its event: the bridge's headers, or values derived
//! from the message's place in the log, each checked (`invalid_envelope` when a header is unusable).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};
use uuid::Uuid;

use crate::raw::{APPLICATION_HEADER, EVENT_ID_HEADER, RECEIVED_AT_HEADER};
use crate::timestamp::in_datetime_range;

use super::{ErrorType, Failure};

/// What the message's transport says about the event (bridge headers or derived values).
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The bridge's `eye.event_id` header, if any.
    pub event_id: Option<Uuid>,
    /// Used when neither a header nor the event itself carries an id (nil when the header
    /// carries one: it is then never used).
    pub derived_event_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub application: String,
    /// Why the headers or the Kafka timestamp cannot be stored (`invalid_envelope`).
    pub fault: Option<Failure>,
}

/// A raw-topic message's Kafka side, as read.
#[derive(Debug, Clone, Default)]
pub struct Transport<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The message's Kafka timestamp (ms), when it has one.
    pub timestamp_ms: Option<i64>,
    /// Every header in order; a header may repeat (the first counts) or have no value.
    pub headers: Vec<(Cow<'a, str>, Option<&'a [u8]>)>,
}

/// Namespace of the event ids derived from a message's topic, partition and offset.
const DERIVED_EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c0e_92d4_4c6b_b1e8_5e7d_0c2a_9f41);
/// The longest application id stored (ids are short names; a header is not a payload).
pub const MAX_APPLICATION_BYTES: usize = 256;

/// `Uuid::new_v5(DERIVED_EVENT_ID_NAMESPACE, "{topic}/{partition}/{offset}")`, hashed by the
/// `sha1` crate (SHA-NI where the CPU has it) without formatting a string: uuid's own portable
/// SHA-1 took 8% of the processor's thread on messages without the bridge's id header.
fn derived_event_id(topic: &str, partition: i32, offset: i64) -> Uuid {
    let mut hasher = Sha1::new();
    hasher.update(DERIVED_EVENT_ID_NAMESPACE.as_bytes());
    hasher.update(topic.as_bytes());
    hasher.update(b"/");
    hasher.update(itoa::Buffer::new().format(partition).as_bytes());
    hasher.update(b"/");
    hasher.update(itoa::Buffer::new().format(offset).as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

impl Envelope {
    /// What the transport says, completed deterministically from the message itself, so a
    /// replay stamps the same.
    pub fn of(transport: &Transport<'_>, default_application: &str) -> Envelope {
        let header = |name: &str| {
            transport
                .headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.unwrap_or_default())
        };
        let mut fault = None;
        let mut fail = |field: &str, reason: String| {
            fault.get_or_insert_with(|| Failure::new(ErrorType::InvalidEnvelope, field, reason));
        };
        let kafka_time = transport
            .timestamp_ms
            .and_then(DateTime::from_timestamp_millis);
        let received_at = match header(RECEIVED_AT_HEADER) {
            Some(bytes) => {
                let parsed = std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                    .map(|at| at.with_timezone(&Utc))
                    .filter(|at| in_datetime_range(*at));
                if parsed.is_none() {
                    fail(
                        RECEIVED_AT_HEADER,
                        format!(
                            "{RECEIVED_AT_HEADER} {:?} is not an RFC 3339 time between 1970 and 2106-02-07",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
                        ),
                    );
                }
                parsed
            }
            // Kafka stamps every message since 0.10; a message without a time is judged by now.
            None => match kafka_time {
                None if transport.timestamp_ms.is_none() => Some(Utc::now()),
                Some(at) if in_datetime_range(at) => Some(at),
                _ => {
                    fail(
                        "",
                        format!(
                            "the Kafka timestamp {} ms is not between 1970 and 2106-02-07",
                            transport.timestamp_ms.unwrap_or_default()
                        ),
                    );
                    None
                }
            },
        }
        .or(kafka_time.filter(|at| in_datetime_range(*at)))
        .unwrap_or(DateTime::UNIX_EPOCH);
        let application = match header(APPLICATION_HEADER) {
            None => default_application.to_string(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if !text.is_empty() && text.len() <= MAX_APPLICATION_BYTES => {
                    text.to_string()
                }
                Ok(text) => {
                    fail(
                        APPLICATION_HEADER,
                        format!(
                            "{APPLICATION_HEADER} is {} bytes; an application id has 1 to {MAX_APPLICATION_BYTES}",
                            text.len()
                        ),
                    );
                    default_application.to_string()
                }
                Err(_) => {
                    fail(
                        APPLICATION_HEADER,
                        format!("{APPLICATION_HEADER} is not UTF-8"),
                    );
                    default_application.to_string()
                }
            },
        };
        let event_id = header(EVENT_ID_HEADER)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| Uuid::parse_str(text).ok());
        // Hashed only when no header carries an id (the bridge always sets one).
        let derived_event_id = match event_id {
            Some(_) => Uuid::nil(),
            None => derived_event_id(transport.topic, transport.partition, transport.offset),
        };
        Envelope {
            event_id,
            derived_event_id,
            received_at,
            application,
            fault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_event_id_is_the_v5_uuid_of_the_message_place_as_before() {
        for (topic, partition, offset) in [
            ("eye.events.raw", 0, 0),
            ("eye.events.raw", 3, 1_234_567_890_123),
            ("t", i32::MAX, i64::MIN),
            ("é".repeat(100).as_str(), -1, -1001),
        ] {
            let place = format!("{topic}/{partition}/{offset}");
            assert_eq!(
                derived_event_id(topic, partition, offset),
                Uuid::new_v5(&DERIVED_EVENT_ID_NAMESPACE, place.as_bytes()),
                "{place}"
            );
        }
    }
}
