//! A client for The Eye's ingest bridge, for back-end services.
//!
//! ```no_run
//! # async fn run() -> Result<(), eye_client::ClientError> {
//! use eye_client::{Client, ClientConfig, Event};
//!
//! let client = Client::start(ClientConfig::new("http://127.0.0.1:8080", "eye-local-dev-key"))?;
//! let session = uuid::Uuid::new_v4();
//! let data = serde_json::json!({"host": "www.example.com", "path": "/pricing"});
//! client.send(Event::new(session, "page interaction", "pageview", data)).await?;
//! let report = client.close().await;
//! assert!(report.undelivered.is_empty());
//! # Ok(()) }
//! ```
//!
//! [`Client::send`] queues an event (waiting while the queue is full: back-pressure); a task
//! sends the queue in batches bounded by count, bytes and time ([`ClientConfig`]), gzipped, one
//! request at a time, in order. A batch the bridge could not take (a refused connection, a
//! time-out, 408, 429, 503) is sent again, with the same `event_id`s, after an exponential
//! back-off with jitter that is never shorter than the bridge's `Retry-After` ([`Backoff`]); a
//! batch it refused for good (400, 401, 413, …) is reported in [`Report::undelivered`], one entry
//! per event. [`Endpoint`] is one request, for callers that batch themselves (`eye load`).

mod client;
mod endpoint;
mod event;
mod retry;

pub use client::{Client, ClientConfig, ClientError, Report, Undelivered};
pub use endpoint::{Accepted, Endpoint, SendError};
pub use event::Event;
pub use retry::{Backoff, Retry};
