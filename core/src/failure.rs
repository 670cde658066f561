//! The failure vocabulary: what can be wrong with a message (`ErrorType`, stored as
//! `event_errors.error_type`) and one failure's type, reason and field.

use crate::convert::{ConversionError, MismatchKind};

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
    pub(crate) fn new(error_type: ErrorType, field_path: &str, reason: impl Into<String>) -> Self {
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
