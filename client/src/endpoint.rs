//! One request to `POST /v1/events`, and what its reply means.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Deserialize;
use uuid::Uuid;

/// The 202 reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Accepted {
    /// The id of every event, in request order.
    pub event_ids: Vec<Uuid>,
}

/// Why a request did not get its 202.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The bridge answered with a refusal (its `reason` label and message, and `Retry-After`).
    #[error("the bridge refused the events with {status} {reason}: {message}")]
    Refused {
        status: u16,
        reason: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No reply: the connection was refused or broke, or the reply did not come in time.
    #[error("no reply from the bridge: {0}")]
    Transport(#[source] reqwest::Error),
    /// A reply that is not the bridge's (a proxy's error page, say).
    #[error("an unexpected reply {status}: {body}")]
    UnexpectedReply { status: u16, body: String },
}

impl SendError {
    /// Whether sending the same events again can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Refused { status, .. } | SendError::UnexpectedReply { status, .. } => {
                matches!(status, 408 | 429 | 502 | 503 | 504)
            }
            SendError::Transport(_) => true,
        }
    }

    /// The bridge's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Refusal {
    error: String,
    message: String,
}

/// Where and how requests go: the bridge's `/v1/events`, the API key, gzip or not.
#[derive(Debug, Clone)]
pub struct Endpoint {
    http: reqwest::Client,
    url: String,
    api_key: String,
    gzip: bool,
}

impl Endpoint {
    /// `bridge_url` is the bridge's base URL (`http://127.0.0.1:8080`).
    pub fn new(
        bridge_url: &str,
        api_key: &str,
        gzip: bool,
        timeout: Duration,
    ) -> Result<Endpoint, reqwest::Error> {
        Ok(Endpoint {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            url: format!("{}/v1/events", bridge_url.trim_end_matches('/')),
            api_key: api_key.to_string(),
            gzip,
        })
    }

    /// Sends `json`, a JSON event or array of events, once.
    pub async fn post(&self, json: Vec<u8>) -> Result<Accepted, SendError> {
        self.post_encoded(self.encode(json)).await
    }

    /// The request body for `json`: gzipped when the endpoint gzips. Encoded once per batch, so
    /// a resend costs no compression.
    pub(crate) fn encode(&self, json: Vec<u8>) -> Bytes {
        if self.gzip {
            Bytes::from(gzip(&json))
        } else {
            Bytes::from(json)
        }
    }

    /// Sends a body made by [`Endpoint::encode`], once.
    pub(crate) async fn post_encoded(&self, body: Bytes) -> Result<Accepted, SendError> {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.api_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if self.gzip {
            request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(SendError::Transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(SendError::Transport)?;
        if status == 202 {
            if let Ok(accepted) = serde_json::from_str::<Accepted>(&text) {
                return Ok(accepted);
            }
        } else if let Ok(refusal) = serde_json::from_str::<Refusal>(&text) {
            return Err(SendError::Refused {
                status,
                reason: refusal.error,
                message: refusal.message,
                retry_after,
            });
        }
        Err(SendError::UnexpectedReply {
            status,
            body: text.chars().take(200).collect(),
        })
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}
