//! Every refusal of the API, mapped once to its status, its stable `reason` label and, where a
//! retry can succeed, `Retry-After`. Nothing a client sends yields a 500.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::body::BodyError;
use crate::producer::{EventTooLarge, ProduceError};
use crate::rate_limit::RateLimited;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("could not read the body: {0}")]
    BodyUnreadable(String),
    #[error(
        "unsupported Content-Type {0:?}; use application/json, text/plain or application/x-ndjson"
    )]
    UnsupportedContentType(String),
    #[error("unsupported Content-Encoding {0:?}; use gzip or none")]
    UnsupportedEncoding(String),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    EventTooLarge(#[from] EventTooLarge),
    #[error("events not accepted, retry later: {0}")]
    Unavailable(#[from] ProduceError),
    #[error("the body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("the bridge is serving as many requests as it may; retry later")]
    Overloaded,
    #[error("{0}; retry later")]
    RateLimited(#[from] RateLimited),
    #[error("the query string: {0}")]
    BadQuery(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BodyTooLarge(_)
            | ApiError::EventTooLarge(_)
            | ApiError::Unavailable(ProduceError::MessageTooLarge(_))
            | ApiError::Body(
                BodyError::DecompressedTooLarge { .. } | BodyError::TooManyEvents { .. },
            ) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedContentType(_) | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::BodyUnreadable(_) | ApiError::Body(_) | ApiError::BadQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable label for metrics and for clients to branch on.
    pub fn reason(&self) -> Reason {
        match self {
            ApiError::Unauthorized => Reason::Unauthorized,
            ApiError::BodyTooLarge(_) => Reason::BodyTooLarge,
            ApiError::BodyUnreadable(_) => Reason::BodyUnreadable,
            ApiError::UnsupportedContentType(_) => Reason::UnsupportedContentType,
            ApiError::UnsupportedEncoding(_) => Reason::UnsupportedEncoding,
            ApiError::Body(BodyError::DecompressedTooLarge { .. }) => Reason::DecompressedTooLarge,
            ApiError::Body(BodyError::TooManyEvents { .. }) => Reason::TooManyEvents,
            ApiError::Body(_) => Reason::MalformedBody,
            ApiError::EventTooLarge(_)
            | ApiError::Unavailable(ProduceError::MessageTooLarge(_)) => Reason::EventTooLarge,
            ApiError::Unavailable(ProduceError::QueueFull) => Reason::QueueFull,
            ApiError::Unavailable(ProduceError::Fatal(_)) => Reason::ProducerFailed,
            ApiError::Unavailable(_) => Reason::BrokerUnavailable,
            ApiError::BodyTimeout(_) => Reason::BodyTimeout,
            ApiError::Overloaded => Reason::Overloaded,
            ApiError::RateLimited(_) => Reason::RateLimited,
            ApiError::BadQuery(_) => Reason::BadQuery,
        }
    }

    /// Seconds a client should wait before retrying, for the replies that ask for a retry.
    pub fn retry_after_seconds(&self, default: u32) -> Option<u64> {
        match self {
            ApiError::RateLimited(limited) => {
                Some(limited.retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            ApiError::Unavailable(ProduceError::MessageTooLarge(_)) => None,
            ApiError::Unavailable(_) | ApiError::Overloaded => Some(u64::from(default)),
            _ => None,
        }
    }
}

/// A refusal's stable label: the `error` of its body and the `reason` of
/// `eye_ingest_rejects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Unauthorized,
    BodyTooLarge,
    BodyUnreadable,
    UnsupportedContentType,
    UnsupportedEncoding,
    DecompressedTooLarge,
    TooManyEvents,
    MalformedBody,
    EventTooLarge,
    QueueFull,
    ProducerFailed,
    BrokerUnavailable,
    BodyTimeout,
    Overloaded,
    RateLimited,
    BadQuery,
}

impl Reason {
    /// The label, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unauthorized => "unauthorized",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BodyUnreadable => "body_unreadable",
            Reason::UnsupportedContentType => "unsupported_content_type",
            Reason::UnsupportedEncoding => "unsupported_encoding",
            Reason::DecompressedTooLarge => "decompressed_too_large",
            Reason::TooManyEvents => "too_many_events",
            Reason::MalformedBody => "malformed_body",
            Reason::EventTooLarge => "event_too_large",
            Reason::QueueFull => "queue_full",
            Reason::ProducerFailed => "producer_failed",
            Reason::BrokerUnavailable => "broker_unavailable",
            Reason::BodyTimeout => "body_timeout",
            Reason::Overloaded => "overloaded",
            Reason::RateLimited => "rate_limited",
            Reason::BadQuery => "bad_query",
        }
    }
}

/// The body of every refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: Reason,
    /// What was wrong, for a person: it names the event, line or limit.
    pub message: String,
}

/// The one place an [`ApiError`] becomes a reply: its status, a JSON body with the stable reason,
/// and `Retry-After` where a retry can succeed.
pub fn error_response(error: ApiError, default_retry_after_seconds: u32) -> Response {
    let status = error.status();
    let retry_after = error.retry_after_seconds(default_retry_after_seconds);
    let body = Json(ErrorBody {
        error: error.reason(),
        message: error.to_string(),
    });
    match retry_after {
        Some(seconds) => {
            (status, [(header::RETRY_AFTER, seconds.to_string())], body).into_response()
        }
        None => (status, body).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    #[test]
    fn every_reason_label_is_its_serialised_name_and_in_the_schema() {
        let reasons = [
            Reason::Unauthorized,
            Reason::BodyTooLarge,
            Reason::BodyUnreadable,
            Reason::UnsupportedContentType,
            Reason::UnsupportedEncoding,
            Reason::DecompressedTooLarge,
            Reason::TooManyEvents,
            Reason::MalformedBody,
            Reason::EventTooLarge,
            Reason::QueueFull,
            Reason::ProducerFailed,
            Reason::BrokerUnavailable,
            Reason::BodyTimeout,
            Reason::Overloaded,
            Reason::RateLimited,
            Reason::BadQuery,
        ];
        let schema = serde_json::to_value(Reason::schema()).unwrap();
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|label| label.as_str().unwrap())
            .collect();
        let labels: Vec<&str> = reasons.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(listed, labels);
        for reason in reasons {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}
