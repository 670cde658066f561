//! An event as the bridge takes it.

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

/// One event. Its `event_id` is made here, once, so every resend of it is the same event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub event_id: Uuid,
    pub session_id: Uuid,
    pub category: String,
    pub name: String,
    /// RFC 3339, UTC, microseconds.
    pub timestamp: String,
    /// The payload the type's schema (`schemas/avro/events/`) describes.
    pub data: serde_json::Value,
}

impl Event {
    /// An event happening now, with a new UUIDv7 `event_id`.
    pub fn new(
        session_id: Uuid,
        category: impl Into<String>,
        name: impl Into<String>,
        data: serde_json::Value,
    ) -> Event {
        Event {
            event_id: Uuid::now_v7(),
            session_id,
            category: category.into(),
            name: name.into(),
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            data,
        }
    }
}
