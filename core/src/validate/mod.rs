//! Deciding, for every message on the raw topic, whether it is a valid event or a failure with
//! one typed reason. The decision depends only on the message (bytes, headers, partition and
//! offset), never on when it is processed, so a replay decides the same.
//!
//! Failure precedence (the first that applies is recorded):
//! 0. `invalid_envelope` — an `eye.received_at` header that is no RFC 3339 time ClickHouse's
//!    `DateTime` holds (or, without one, such a Kafka timestamp), or an `eye.application` header
//!    that is not UTF-8, empty or over 256 bytes (the event is recorded under the default
//!    application, at the Kafka timestamp or else at 1970-01-01);
//! 1. `malformed_json` — not JSON, or not an object (the raw bytes are kept);
//!    `unknown_schema` / `invalid_avro` for Avro single-object messages;
//! 2. `missing_field` — `session_id`, `category`, `name`, `timestamp` or `data` absent;
//! 3. `invalid_type` — one of those (or `event_id`) of the wrong JSON type;
//! 4. `unexpected_field` — a top-level key outside the envelope;
//! 5. `invalid_session_id` — `session_id` is not a UUID;
//! 6. `invalid_timestamp` — `timestamp` is in no accepted form (see `crate::timestamp`);
//! 7. `unknown_event_type` — no schema for (category, name);
//! 8. `unexpected_field` / `invalid_data` — `data` does not match the type's schema: records are
//!    closed (an unknown key is `unexpected_field`), other mismatches are `invalid_data`; the
//!    reason names the field path;
//! 9. `future_timestamp` — `timestamp` later than `received_at` plus the configured tolerance.

mod avro;
mod envelope;
mod json;
mod raw;
mod shape;

use crate::raw::Stamp;
use crate::schemas::{SchemaRegistry, SINGLE_OBJECT_MARKER};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::failure::{ErrorType, Failure};
pub use envelope::{Envelope, Transport, MAX_APPLICATION_BYTES};

use avro::{hex_string, AvroEvent};
use json::JsonValidator;

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

/// A valid event, ready for the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub stamp: Stamp,
    pub session_id: Uuid,
    pub category: String,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    /// The validated payload as compact JSON, keys in byte order (the `events.data` column).
    pub data: String,
    /// `data.host` and `data.path` when they are strings, else empty (columns of their own).
    pub host: String,
    pub path: String,
    pub schema_version: u32,
}

/// A failed event: its identity, what could be read of its type, and why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedEvent {
    pub stamp: Stamp,
    /// The session, when the event names a valid one (its failures count in its session).
    pub session_id: Option<Uuid>,
    pub category: String,
    pub name: String,
    pub failure: Failure,
}

pub struct Validator {
    /// For Avro messages, found by their schema's fingerprint.
    registry: SchemaRegistry,
    json: JsonValidator,
    future_tolerance: chrono::Duration,
}

/// The longest string, bytes, array or map an Avro datum may declare (in bytes or items). A raw
/// message is at most the broker's message size (1 MB by default), so no honest length is
/// longer; apache-avro allocates a declared length before reading it (its default bound is
/// 512 MiB, and a map of 400 million entries aborted the process).
pub const MAX_AVRO_LENGTH: usize = 1 << 20;

impl Validator {
    pub fn new(registry: SchemaRegistry, future_tolerance: chrono::Duration) -> Self {
        // Process-wide and set once: every Avro decoding in the processor reads raw messages.
        let _ = apache_avro::util::max_allocation_bytes(MAX_AVRO_LENGTH);
        Self {
            json: JsonValidator::new(&registry, future_tolerance),
            registry,
            future_tolerance,
        }
    }

    /// Validates one raw-topic message value.
    pub fn validate(&self, bytes: &[u8], envelope: &Envelope) -> Result<ValidEvent, FailedEvent> {
        if let Some(failure) = &envelope.fault {
            return Err(FailedEvent {
                stamp: Stamp {
                    event_id: envelope.event_id.unwrap_or(envelope.derived_event_id),
                    received_at: envelope.received_at,
                    application: envelope.application.clone(),
                },
                session_id: None,
                category: String::new(),
                name: String::new(),
                failure: failure.clone(),
            });
        }
        if bytes.starts_with(&SINGLE_OBJECT_MARKER) {
            self.validate_avro(bytes, envelope)
        } else {
            self.json.validate(bytes, envelope)
        }
    }

    /// Avro single-object encoding: marker, fingerprint of a schema in the registry, datum.
    fn validate_avro(&self, bytes: &[u8], envelope: &Envelope) -> Result<ValidEvent, FailedEvent> {
        let fallback = Stamp {
            event_id: envelope.event_id.unwrap_or(envelope.derived_event_id),
            received_at: envelope.received_at,
            application: envelope.application.clone(),
        };
        let failed = |failure: Failure| FailedEvent {
            stamp: fallback.clone(),
            session_id: None,
            category: String::new(),
            name: String::new(),
            failure,
        };
        let Some(schema) = self.registry.by_single_object_header(bytes) else {
            let fingerprint = bytes.get(2..10).map(hex_string).unwrap_or_default();
            return Err(failed(Failure::new(
                ErrorType::UnknownSchema,
                "",
                format!("no schema has the fingerprint {fingerprint}"),
            )));
        };
        let mut datum = &bytes[10..];
        let value =
            apache_avro::from_avro_datum(&schema.event, &mut datum, None).map_err(|err| {
                failed(Failure::new(
                    ErrorType::InvalidAvro,
                    "",
                    format!("undecodable datum: {err}"),
                ))
            })?;
        if !datum.is_empty() {
            return Err(failed(Failure::new(
                ErrorType::InvalidAvro,
                "",
                format!("{} bytes follow the datum", datum.len()),
            )));
        }
        let event = AvroEvent::from_value(value, schema).map_err(failed)?;
        let (host, path) = (event.text("host"), event.text("path"));
        let stamp = Stamp {
            event_id: event.event_id,
            received_at: event.received_at,
            application: event.application,
        };
        let failed_with_stamp = |failure: Failure| FailedEvent {
            stamp: stamp.clone(),
            session_id: Some(event.session_id),
            category: schema.category.clone(),
            name: schema.name.clone(),
            failure,
        };
        if (event.category.as_str(), event.name.as_str())
            != (schema.category.as_str(), schema.name.as_str())
        {
            return Err(failed_with_stamp(Failure::new(
                ErrorType::InvalidData,
                "category",
                format!(
                    "category/name {:?}/{:?} differ from the schema's {:?}/{:?}",
                    event.category, event.name, schema.category, schema.name
                ),
            )));
        }
        check_not_future(event.timestamp, &stamp, self.future_tolerance)
            .map_err(failed_with_stamp)?;
        Ok(ValidEvent {
            stamp: stamp.clone(),
            session_id: event.session_id,
            category: event.category,
            name: event.name,
            timestamp: event.timestamp,
            host,
            path,
            data: serde_json::Value::Object(event.data).to_string(),
            schema_version: schema.version,
        })
    }
}

fn check_not_future(
    timestamp: DateTime<Utc>,
    stamp: &Stamp,
    tolerance: chrono::Duration,
) -> Result<(), Failure> {
    if timestamp > stamp.received_at + tolerance {
        return Err(Failure::new(
            ErrorType::FutureTimestamp,
            "timestamp",
            format!(
                "timestamp {} is more than {} s after received_at {}",
                timestamp.to_rfc3339(),
                tolerance.num_seconds(),
                stamp.received_at.to_rfc3339()
            ),
        ));
    }
    Ok(())
}
