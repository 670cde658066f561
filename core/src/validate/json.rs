//! JSON messages, judged in one pass over their bytes against each type's compiled shape: the
//! envelope's fields are borrowed from the message, `data` is checked and written out as its row
//! stores it, and no value tree is built.
//!
//! The verdict is the one a `serde_json::Value` parse followed by `json_to_avro` gives (the
//! equivalence test holds the two side by side): the top level is read leniently (values as raw
//! text), everything a valid event holds is parsed strictly, and every failure, and every valid
//! event with a repeated key, is confirmed against a full parse first, because malformed JSON
//! anywhere comes before every other failure.

use crate::raw::Stamp;
use crate::schemas::SchemaRegistry;
use crate::timestamp::parse_event_time;
use chrono::Duration;
use foldhash::{HashMap, HashMapExt};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::raw::{parse_string, top_level_kind, Entries, Kind};
use super::shape::{Mismatch, RecordShape, Walk};
use super::{check_not_future, Envelope, ErrorType, FailedEvent, Failure, ValidEvent};

const ENVELOPE_KEYS: [&str; 6] = [
    "event_id",
    "session_id",
    "category",
    "name",
    "timestamp",
    "data",
];

/// Every type's newest schema (what JSON events are validated against), compiled.
pub(super) struct JsonValidator {
    /// By category, then name (looked up without allocating; foldhash: two lookups an event,
    /// where SipHash cost more than the rest of the envelope).
    types: HashMap<String, HashMap<String, JsonType>>,
    future_tolerance: Duration,
}

struct JsonType {
    data: RecordShape,
    version: u32,
}

/// A verdict before the full parse confirms it.
enum Judged {
    Valid(ValidEvent),
    /// Valid, but a repeated key's earlier value was skipped unread.
    ValidIfJson(ValidEvent),
    Failed(FailedEvent),
    NotJson(serde_json::Error),
}

impl JsonValidator {
    pub(super) fn new(registry: &SchemaRegistry, future_tolerance: Duration) -> Self {
        let mut types: HashMap<String, HashMap<String, JsonType>> = HashMap::new();
        for versions in registry.types() {
            let Some(latest) = versions.last() else {
                continue;
            };
            let apache_avro::Schema::Record(record) = &latest.data else {
                // The registry loads records only.
                continue;
            };
            types.entry(latest.category.clone()).or_default().insert(
                latest.name.clone(),
                JsonType {
                    data: RecordShape::of(record),
                    version: latest.version,
                },
            );
        }
        Self {
            types,
            future_tolerance,
        }
    }

    pub(super) fn validate(
        &self,
        bytes: &[u8],
        envelope: &Envelope,
    ) -> Result<ValidEvent, FailedEvent> {
        let malformed = |reason: String| FailedEvent {
            stamp: header_or_derived(envelope),
            session_id: None,
            category: String::new(),
            name: String::new(),
            failure: Failure::new(ErrorType::MalformedJson, "", reason),
        };
        match self.judge(bytes, envelope) {
            Judged::Valid(valid) => Ok(valid),
            Judged::ValidIfJson(valid) => match top_level_kind(bytes) {
                Ok(_) => Ok(valid),
                Err(error) => Err(malformed(format!("not JSON: {error}"))),
            },
            Judged::Failed(failed) => match top_level_kind(bytes) {
                Ok(_) => Err(failed),
                Err(error) => Err(malformed(format!("not JSON: {error}"))),
            },
            Judged::NotJson(lenient) => Err(malformed(match top_level_kind(bytes) {
                Err(error) => format!("not JSON: {error}"),
                // Only the lenient read refused it (a case the equivalence test has not met).
                Ok(Kind::Object) => format!("not JSON: {lenient}"),
                Ok(kind) => format!("the message is a JSON {}, not an object", kind.name()),
            })),
        }
    }

    fn judge(&self, bytes: &[u8], envelope: &Envelope) -> Judged {
        let object = match Entries::parse_message(bytes) {
            Ok(object) => object,
            Err(error) => return Judged::NotJson(error),
        };
        let mut walk = Walk {
            skipped_repeated_keys: object.dropped_repeated_keys,
            ..Walk::default()
        };
        let mut stamp = header_or_derived(envelope);
        let fail = |stamp: Stamp, failure: Failure| {
            let text = |key: &str| match object.get(key) {
                Some(value) if Kind::of(value.get()) == Kind::String => parse_string(value.get())
                    .map(|text| text.into_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            Judged::Failed(FailedEvent {
                session_id: Uuid::parse_str(&text("session_id")).ok(),
                category: text("category"),
                name: text("name"),
                stamp,
                failure,
            })
        };
        match object.get("event_id") {
            None => {}
            Some(value) => match Kind::of(value.get()) {
                Kind::Null => {}
                Kind::String => {
                    let text = match parse_string(value.get()) {
                        Ok(text) => text,
                        Err(error) => return Judged::NotJson(error),
                    };
                    match Uuid::parse_str(&text) {
                        Ok(id) if envelope.event_id.is_none() => stamp.event_id = id,
                        Ok(_) => {}
                        Err(_) => {
                            let failure = Failure::new(
                                ErrorType::InvalidType,
                                "event_id",
                                "event_id must be a UUID",
                            );
                            return fail(stamp, failure);
                        }
                    }
                }
                other => {
                    let failure = Failure::new(
                        ErrorType::InvalidType,
                        "event_id",
                        format!("event_id must be a UUID string, got a {}", other.name()),
                    );
                    return fail(stamp, failure);
                }
            },
        }
        match self.check(&object, stamp, &mut walk) {
            Ok(valid) if walk.skipped_repeated_keys => Judged::ValidIfJson(valid),
            Ok(valid) => Judged::Valid(valid),
            Err((stamp, Mismatch::Data(failure))) => fail(stamp, failure),
            Err((_, Mismatch::NotJson(error))) => Judged::NotJson(error),
        }
    }

    /// The event, or why not, with the stamp handed back for the failure (moved, not cloned:
    /// a stamp holds the application's name).
    fn check(
        &self,
        object: &Entries<'_>,
        stamp: Stamp,
        walk: &mut Walk,
    ) -> Result<ValidEvent, (Stamp, Mismatch<Failure>)> {
        match self.check_fields(object, &stamp, walk) {
            Ok(mut valid) => {
                valid.stamp = stamp;
                Ok(valid)
            }
            Err(mismatch) => Err((stamp, mismatch)),
        }
    }

    /// The event, its stamp's application left empty for [`JsonValidator::check`] to move in.
    fn check_fields<'a>(
        &self,
        object: &Entries<'a>,
        stamp: &Stamp,
        walk: &mut Walk,
    ) -> Result<ValidEvent, Mismatch<Failure>> {
        let (members, unexpected) = envelope_members(object);
        let field = |key: &str| {
            let at = ENVELOPE_KEYS.iter().position(|known| *known == key);
            at.and_then(|at| members[at]).ok_or_else(|| {
                Mismatch::Data(Failure::new(
                    ErrorType::MissingField,
                    key,
                    format!("{key} is missing"),
                ))
            })
        };
        let (session_id, category, name, timestamp, data) = (
            field("session_id")?,
            field("category")?,
            field("name")?,
            field("timestamp")?,
            field("data")?,
        );
        let string = |key: &str, value: &'a RawValue| match Kind::of(value.get()) {
            Kind::String => parse_string(value.get()).map_err(Mismatch::NotJson),
            kind => Err(Mismatch::Data(Failure::new(
                ErrorType::InvalidType,
                key,
                format!("{key} must be a string, got a {}", kind.name()),
            ))),
        };
        let (session_id, category, name, timestamp) = (
            string("session_id", session_id)?,
            string("category", category)?,
            string("name", name)?,
            string("timestamp", timestamp)?,
        );
        let data_kind = Kind::of(data.get());
        if data_kind != Kind::Object {
            return Err(Mismatch::Data(Failure::new(
                ErrorType::InvalidType,
                "data",
                format!("data must be an object, got a {}", data_kind.name()),
            )));
        }
        if let Some(key) = unexpected {
            return Err(Mismatch::Data(Failure::new(
                ErrorType::UnexpectedField,
                key,
                format!(
                    "{key} is not an event field (expected only {})",
                    ENVELOPE_KEYS.join(", ")
                ),
            )));
        }
        let session_id = Uuid::parse_str(&session_id).map_err(|_| {
            Mismatch::Data(Failure::new(
                ErrorType::InvalidSessionId,
                "session_id",
                format!("session_id {session_id:?} is not a UUID"),
            ))
        })?;
        let timestamp = parse_event_time(&timestamp).ok_or_else(|| {
            Mismatch::Data(Failure::new(
                ErrorType::InvalidTimestamp,
                "timestamp",
                format!("timestamp {timestamp:?} is not `YYYY-MM-DD HH:MM:SS[.ffffff]` or RFC 3339 between 1970 and 2106-02-07"),
            ))
        })?;
        let Some(event_type) = self
            .types
            .get(category.as_ref())
            .and_then(|names| names.get(name.as_ref()))
        else {
            return Err(Mismatch::Data(Failure::new(
                ErrorType::UnknownEventType,
                "",
                format!("no schema for category {category:?} and name {name:?}"),
            )));
        };
        walk.path.push_str("data");
        let payload = match event_type.data.check_data(data.get(), walk) {
            Ok(payload) => payload,
            Err(Mismatch::Data(error)) => return Err(Mismatch::Data(Failure::from(error))),
            Err(Mismatch::NotJson(error)) => return Err(Mismatch::NotJson(error)),
        };
        check_not_future(timestamp, stamp, self.future_tolerance).map_err(Mismatch::Data)?;
        Ok(ValidEvent {
            stamp: Stamp {
                application: String::new(),
                ..*stamp
            },
            session_id,
            category: category.into_owned(),
            name: name.into_owned(),
            timestamp,
            data: payload.json,
            host: payload.host,
            path: payload.path,
            schema_version: event_type.version,
        })
    }
}

/// The envelope's members, by their place in [`ENVELOPE_KEYS`], and the first other key in byte
/// order: one pass over the members instead of a search for each key.
fn envelope_members<'o, 'a>(
    object: &'o Entries<'a>,
) -> ([Option<&'a RawValue>; ENVELOPE_KEYS.len()], Option<&'o str>) {
    let mut members = [None; ENVELOPE_KEYS.len()];
    let mut unexpected = None;
    for (key, value) in object.iter() {
        match ENVELOPE_KEYS
            .iter()
            .position(|known| *known == key.as_ref())
        {
            Some(at) => members[at] = Some(*value),
            None => {
                unexpected.get_or_insert(key.as_ref());
            }
        }
    }
    (members, unexpected)
}

fn header_or_derived(envelope: &Envelope) -> Stamp {
    Stamp {
        event_id: envelope.event_id.unwrap_or(envelope.derived_event_id),
        received_at: envelope.received_at,
        application: envelope.application.clone(),
    }
}
