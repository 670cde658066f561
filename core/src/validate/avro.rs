//! Avro single-object messages: the fields of a decoded event record, each checked.

use std::collections::HashMap;

use crate::schemas::EventSchema;
use apache_avro::types::Value as Avro;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::timestamp::in_datetime_range;

use super::{ErrorType, Failure, MAX_APPLICATION_BYTES};

/// The fields of a decoded Avro event record.
pub(super) struct AvroEvent {
    pub(super) event_id: Uuid,
    pub(super) application: String,
    pub(super) session_id: Uuid,
    pub(super) category: String,
    pub(super) name: String,
    pub(super) timestamp: DateTime<Utc>,
    pub(super) received_at: DateTime<Utc>,
    pub(super) data: Map<String, Json>,
}

impl AvroEvent {
    pub(super) fn from_value(value: Avro, schema: &EventSchema) -> Result<Self, Failure> {
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

impl AvroEvent {
    /// A top-level `data` field's text, when it is a string.
    pub(super) fn text(&self, key: &str) -> String {
        self.data
            .get(key)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

pub(super) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
