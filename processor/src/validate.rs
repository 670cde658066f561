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
//! 6. `invalid_timestamp` — `timestamp` is in no accepted form (see `eye_core::timestamp`);
//! 7. `unknown_event_type` — no schema for (category, name);
//! 8. `unexpected_field` / `invalid_data` — `data` does not match the type's schema: records are
//!    closed (an unknown key is `unexpected_field`), other mismatches are `invalid_data`; the
//!    reason names the field path;
//! 9. `future_timestamp` — `timestamp` later than `received_at` plus the configured tolerance.

use std::borrow::Cow;
use std::collections::HashMap;

use apache_avro::types::Value as Avro;
use chrono::{DateTime, Utc};
use eye_core::convert::{json_kind, json_to_avro, ConversionError, MismatchKind};
use eye_core::raw::Stamp;
use eye_core::schemas::{EventSchema, SchemaRegistry, SINGLE_OBJECT_MARKER};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use eye_core::raw::{APPLICATION_HEADER, EVENT_ID_HEADER, RECEIVED_AT_HEADER};
use eye_core::timestamp::{in_datetime_range, parse_event_time};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    InvalidEnvelope,
    MalformedJson,
    UnknownSchema,
    InvalidAvro,
    MissingField,
    InvalidType,
    UnexpectedField,
    InvalidSessionId,
    InvalidTimestamp,
    UnknownEventType,
    InvalidData,
    FutureTimestamp,
    /// Valid, but ClickHouse refused the row (recorded by the sink, not by validation).
    SinkRejected,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidEnvelope => "invalid_envelope",
            ErrorType::MalformedJson => "malformed_json",
            ErrorType::UnknownSchema => "unknown_schema",
            ErrorType::InvalidAvro => "invalid_avro",
            ErrorType::MissingField => "missing_field",
            ErrorType::InvalidType => "invalid_type",
            ErrorType::UnexpectedField => "unexpected_field",
            ErrorType::InvalidSessionId => "invalid_session_id",
            ErrorType::InvalidTimestamp => "invalid_timestamp",
            ErrorType::UnknownEventType => "unknown_event_type",
            ErrorType::InvalidData => "invalid_data",
            ErrorType::FutureTimestamp => "future_timestamp",
            ErrorType::SinkRejected => "sink_rejected",
        }
    }
}

/// Why an event failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error_type: ErrorType,
    pub reason: String,
    /// The offending field, e.g. `data.form.first_name`; empty when the whole message is at fault.
    pub field_path: String,
}

impl Failure {
    fn new(error_type: ErrorType, field_path: &str, reason: impl Into<String>) -> Self {
        Failure {
            error_type,
            reason: reason.into(),
            field_path: field_path.to_string(),
        }
    }
}

impl From<ConversionError> for Failure {
    fn from(error: ConversionError) -> Self {
        let error_type = match error.kind {
            MismatchKind::UnexpectedField => ErrorType::UnexpectedField,
            MismatchKind::InvalidData => ErrorType::InvalidData,
        };
        Failure {
            error_type,
            reason: error.reason,
            field_path: error.path,
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
    /// The validated payload.
    pub data: Map<String, Json>,
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
            None => {
                let derived = format!(
                    "{}/{}/{}",
                    transport.topic, transport.partition, transport.offset
                );
                Uuid::new_v5(&DERIVED_EVENT_ID_NAMESPACE, derived.as_bytes())
            }
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

pub struct Validator {
    registry: SchemaRegistry,
    future_tolerance: chrono::Duration,
}

const ENVELOPE_KEYS: [&str; 6] = [
    "event_id",
    "session_id",
    "category",
    "name",
    "timestamp",
    "data",
];

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
            self.validate_json(bytes, envelope)
        }
    }

    fn validate_json(&self, bytes: &[u8], envelope: &Envelope) -> Result<ValidEvent, FailedEvent> {
        let header_or_derived = Stamp {
            event_id: envelope.event_id.unwrap_or(envelope.derived_event_id),
            received_at: envelope.received_at,
            application: envelope.application.clone(),
        };
        let fail = |stamp: Stamp, object: Option<&Map<String, Json>>, failure: Failure| {
            let text = |key: &str| {
                object
                    .and_then(|object| object.get(key))
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            FailedEvent {
                session_id: Uuid::parse_str(&text("session_id")).ok(),
                category: text("category"),
                name: text("name"),
                stamp,
                failure,
            }
        };
        let object = match serde_json::from_slice::<Json>(bytes) {
            Ok(Json::Object(object)) => object,
            Ok(other) => {
                let failure = Failure::new(
                    ErrorType::MalformedJson,
                    "",
                    format!("the message is a JSON {}, not an object", json_kind(&other)),
                );
                return Err(fail(header_or_derived, None, failure));
            }
            Err(err) => {
                let failure =
                    Failure::new(ErrorType::MalformedJson, "", format!("not JSON: {err}"));
                return Err(fail(header_or_derived, None, failure));
            }
        };

        let mut stamp = header_or_derived;
        let body_event_id = match object.get("event_id") {
            None | Some(Json::Null) => None,
            Some(Json::String(text)) => match Uuid::parse_str(text) {
                Ok(id) => Some(id),
                Err(_) => {
                    let failure = Failure::new(
                        ErrorType::InvalidType,
                        "event_id",
                        "event_id must be a UUID",
                    );
                    return Err(fail(stamp, Some(&object), failure));
                }
            },
            Some(other) => {
                let failure = Failure::new(
                    ErrorType::InvalidType,
                    "event_id",
                    format!("event_id must be a UUID string, got a {}", json_kind(other)),
                );
                return Err(fail(stamp, Some(&object), failure));
            }
        };
        if envelope.event_id.is_none() {
            if let Some(id) = body_event_id {
                stamp.event_id = id;
            }
        }

        match self.check_json(&object, &stamp) {
            Ok(valid) => Ok(valid),
            Err(failure) => Err(fail(stamp, Some(&object), failure)),
        }
    }

    fn check_json(&self, object: &Map<String, Json>, stamp: &Stamp) -> Result<ValidEvent, Failure> {
        for key in ["session_id", "category", "name", "timestamp", "data"] {
            if !object.contains_key(key) {
                return Err(Failure::new(
                    ErrorType::MissingField,
                    key,
                    format!("{key} is missing"),
                ));
            }
        }
        let string = |key: &str| -> Result<&str, Failure> {
            object[key].as_str().ok_or_else(|| {
                Failure::new(
                    ErrorType::InvalidType,
                    key,
                    format!("{key} must be a string, got a {}", json_kind(&object[key])),
                )
            })
        };
        let (session_id, category, name, timestamp) = (
            string("session_id")?,
            string("category")?,
            string("name")?,
            string("timestamp")?,
        );
        let Json::Object(data) = &object["data"] else {
            return Err(Failure::new(
                ErrorType::InvalidType,
                "data",
                format!(
                    "data must be an object, got a {}",
                    json_kind(&object["data"])
                ),
            ));
        };
        if let Some(key) = object
            .keys()
            .find(|key| !ENVELOPE_KEYS.contains(&key.as_str()))
        {
            return Err(Failure::new(
                ErrorType::UnexpectedField,
                key,
                format!(
                    "{key} is not an event field (expected only {})",
                    ENVELOPE_KEYS.join(", ")
                ),
            ));
        }
        let session_id = Uuid::parse_str(session_id).map_err(|_| {
            Failure::new(
                ErrorType::InvalidSessionId,
                "session_id",
                format!("session_id {session_id:?} is not a UUID"),
            )
        })?;
        let timestamp = parse_event_time(timestamp).ok_or_else(|| {
            Failure::new(
                ErrorType::InvalidTimestamp,
                "timestamp",
                format!("timestamp {timestamp:?} is not `YYYY-MM-DD HH:MM:SS[.ffffff]` or RFC 3339 between 1970 and 2106-02-07"),
            )
        })?;
        let schema = self.registry.latest(category, name).ok_or_else(|| {
            Failure::new(
                ErrorType::UnknownEventType,
                "",
                format!("no schema for category {category:?} and name {name:?}"),
            )
        })?;
        let mut path = String::from("data");
        let avro = json_to_avro(&object["data"], &schema.data, &mut path).map_err(Failure::from)?;
        avro.resolve(&schema.data).map_err(|err| {
            Failure::new(
                ErrorType::InvalidData,
                "data",
                format!("data does not match its schema: {err}"),
            )
        })?;
        self.check_not_future(timestamp, stamp)?;
        Ok(ValidEvent {
            stamp: stamp.clone(),
            session_id,
            category: category.to_string(),
            name: name.to_string(),
            timestamp,
            data: data.clone(),
            schema_version: schema.version,
        })
    }

    fn check_not_future(&self, timestamp: DateTime<Utc>, stamp: &Stamp) -> Result<(), Failure> {
        if timestamp > stamp.received_at + self.future_tolerance {
            return Err(Failure::new(
                ErrorType::FutureTimestamp,
                "timestamp",
                format!(
                    "timestamp {} is more than {} s after received_at {}",
                    timestamp.to_rfc3339(),
                    self.future_tolerance.num_seconds(),
                    stamp.received_at.to_rfc3339()
                ),
            ));
        }
        Ok(())
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
        self.check_not_future(event.timestamp, &stamp)
            .map_err(failed_with_stamp)?;
        Ok(ValidEvent {
            stamp: stamp.clone(),
            session_id: event.session_id,
            category: event.category,
            name: event.name,
            timestamp: event.timestamp,
            data: event.data,
            schema_version: schema.version,
        })
    }
}

/// The fields of a decoded Avro event record.
struct AvroEvent {
    event_id: Uuid,
    application: String,
    session_id: Uuid,
    category: String,
    name: String,
    timestamp: DateTime<Utc>,
    received_at: DateTime<Utc>,
    data: Map<String, Json>,
}

impl AvroEvent {
    fn from_value(value: Avro, schema: &EventSchema) -> Result<Self, Failure> {
        let Avro::Record(fields) = value else {
            return Err(Failure::new(
                ErrorType::InvalidAvro,
                "",
                "the datum is not a record",
            ));
        };
        let mut fields: HashMap<String, Avro> = fields.into_iter().collect();
        let mut take = |key: &str| {
            fields.remove(key).ok_or_else(|| {
                Failure::new(
                    ErrorType::InvalidAvro,
                    key,
                    format!("{key} missing from the datum"),
                )
            })
        };
        let invalid = |key: &str, what: &str| {
            Failure::new(ErrorType::InvalidAvro, key, format!("{key} is not {what}"))
        };
        let uuid = |key: &str, value: Avro| match value {
            Avro::Uuid(id) => Ok(id),
            Avro::String(text) => Uuid::parse_str(&text).map_err(|_| invalid(key, "a UUID")),
            _ => Err(invalid(key, "a UUID")),
        };
        let string = |key: &str, value: Avro| match value {
            Avro::String(text) => Ok(text),
            _ => Err(invalid(key, "a string")),
        };
        let micros = |key: &str, value: Avro| match value {
            Avro::TimestampMicros(micros) | Avro::Long(micros) => {
                DateTime::from_timestamp_micros(micros)
                    .filter(|at| in_datetime_range(*at))
                    .ok_or_else(|| invalid(key, "a time between 1970 and 2106-02-07"))
            }
            _ => Err(invalid(key, "timestamp-micros")),
        };
        let event_id = uuid("event_id", take("event_id")?)?;
        let application = string("application", take("application")?)?;
        if application.is_empty() || application.len() > MAX_APPLICATION_BYTES {
            return Err(invalid(
                "application",
                &format!("an application id of 1 to {MAX_APPLICATION_BYTES} bytes"),
            ));
        }
        let session_id = uuid("session_id", take("session_id")?)?;
        let category = string("category", take("category")?)?;
        let name = string("name", take("name")?)?;
        let timestamp = micros("timestamp", take("timestamp")?)?;
        let received_at = micros("received_at", take("received_at")?)?;
        let data = match serde_json::Value::try_from(take("data")?) {
            Ok(Json::Object(data)) => data,
            _ => {
                return Err(Failure::new(
                    ErrorType::InvalidAvro,
                    "data",
                    format!("data is not a {:?} record", schema.name),
                ))
            }
        };
        Ok(AvroEvent {
            event_id,
            application,
            session_id,
            category,
            name,
            timestamp,
            received_at,
            data,
        })
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
