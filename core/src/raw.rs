//! The raw topic's message contract.
//!
//! A message's value is the event's JSON exactly as the application sent it. What the ingest
//! bridge adds travels in headers, so the original bytes are never re-serialised:
//!
//! | header            | value                                                   |
//! |-------------------|---------------------------------------------------------|
//! | `eye.event_id`    | UUID, the client's own `event_id` or a new UUIDv7       |
//! | `eye.received_at` | when the bridge received it, RFC 3339 UTC, microseconds |
//! | `eye.application` | id of the authenticated application                     |
//!
//! The message key is the event's `session_id` when it has one, else the event id.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

pub const EVENT_ID_HEADER: &str = "eye.event_id";
pub const RECEIVED_AT_HEADER: &str = "eye.received_at";
pub const APPLICATION_HEADER: &str = "eye.application";

/// The default raw topic.
pub const DEFAULT_RAW_TOPIC: &str = "eye.events.raw";

/// What the bridge stamps on every event it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub event_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub application: String,
}

impl Stamp {
    /// The header values, in the order of the header names above.
    pub fn header_values(&self) -> [(&'static str, String); 3] {
        [
            (EVENT_ID_HEADER, self.event_id.hyphenated().to_string()),
            (RECEIVED_AT_HEADER, format_received_at(self.received_at)),
            (APPLICATION_HEADER, self.application.clone()),
        ]
    }
}

/// `received_at` as carried in headers: RFC 3339, UTC, exactly six fractional digits.
pub fn format_received_at(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Server time truncated to microseconds, the precision every later stage keeps.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_at_has_microseconds_and_zulu() {
        let at = DateTime::parse_from_rfc3339("2021-01-01T09:15:27.243860123Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_received_at(at), "2021-01-01T09:15:27.243860Z");
    }

    #[test]
    fn now_is_truncated_to_microseconds() {
        assert_eq!(now_micros().timestamp_subsec_nanos() % 1_000, 0);
    }
}
