//! The queue and the task that sends it in batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::endpoint::{Endpoint, SendError};
use crate::event::Event;
use crate::retry::{Backoff, Retry};

/// How the client batches and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The bridge's base URL, e.g. `http://127.0.0.1:8080`.
    pub bridge_url: String,
    pub api_key: String,
    /// Most events in one request (the bridge takes at most `limits.max_batch_events`, 1000).
    pub max_batch_events: usize,
    /// Most bytes of JSON in one request before gzip (the bridge takes 10 MiB decompressed and
    /// 1 MiB as sent).
    pub max_batch_bytes: usize,
    /// How long the first event of a batch waits for more.
    pub linger: Duration,
    /// Events queued at most; past it [`Client::send`] waits and [`Client::try_send`] refuses.
    pub queue_events: usize,
    pub gzip: bool,
    /// How long one request may take.
    pub request_timeout: Duration,
    pub backoff: Backoff,
}

impl ClientConfig {
    pub fn new(bridge_url: &str, api_key: &str) -> ClientConfig {
        ClientConfig {
            bridge_url: bridge_url.to_string(),
            api_key: api_key.to_string(),
            max_batch_events: 500,
            max_batch_bytes: 512 * 1024,
            linger: Duration::from_millis(100),
            queue_events: 10_000,
            gzip: true,
            request_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the queue holds {0} events already")]
    QueueFull(usize),
    #[error("the client is closed")]
    Closed,
    #[error("creating the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("an event could not be serialised: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// An event the bridge did not take, and why.
#[derive(Debug, Clone)]
pub struct Undelivered {
    pub event_id: Uuid,
    pub error: Arc<SendError>,
}

/// What happened to the events since the last report.
#[derive(Debug, Default)]
pub struct Report {
    /// Events the bridge acknowledged (202).
    pub delivered: u64,
    pub undelivered: Vec<Undelivered>,
}

/// A serialised event waiting in the queue.
struct Queued {
    event_id: Uuid,
    json: Vec<u8>,
}

enum Command {
    Send(Queued),
    Flush(oneshot::Sender<Report>),
}

/// Sends events to the bridge from a task of its own; see the crate documentation.
pub struct Client {
    queue: mpsc::Sender<Command>,
    task: JoinHandle<Report>,
    queue_events: usize,
}

impl Client {
    /// Starts the sending task on the current Tokio runtime.
    pub fn start(config: ClientConfig) -> Result<Client, ClientError> {
        let endpoint = Endpoint::new(
            &config.bridge_url,
            &config.api_key,
            config.gzip,
            config.request_timeout,
        )?;
        let (queue, commands) = mpsc::channel(config.queue_events.max(1));
        let queue_events = config.queue_events;
        let task = tokio::spawn(
            Batcher {
                config,
                endpoint,
                report: Report::default(),
            }
            .run(commands),
        );
        Ok(Client {
            queue,
            task,
            queue_events,
        })
    }

    /// Queues `event`, waiting while the queue is full.
    pub async fn send(&self, event: Event) -> Result<(), ClientError> {
        let queued = Self::serialise(&event)?;
        self.queue
            .send(Command::Send(queued))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Queues `event` unless the queue is full.
    pub fn try_send(&self, event: Event) -> Result<(), ClientError> {
        let queued = Self::serialise(&event)?;
        self.queue
            .try_send(Command::Send(queued))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ClientError::QueueFull(self.queue_events),
                mpsc::error::TrySendError::Closed(_) => ClientError::Closed,
            })
    }

    /// Sends everything queued so far and reports what happened since the last report.
    pub async fn flush(&self) -> Result<Report, ClientError> {
        let (reply, report) = oneshot::channel();
        self.queue
            .send(Command::Flush(reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        report.await.map_err(|_| ClientError::Closed)
    }

    /// Sends everything queued and stops; what happened since the last report.
    pub async fn close(self) -> Report {
        drop(self.queue);
        self.task.await.unwrap_or_default()
    }

    fn serialise(event: &Event) -> Result<Queued, ClientError> {
        Ok(Queued {
            event_id: event.event_id,
            json: serde_json::to_vec(event)?,
        })
    }
}

struct Batcher {
    config: ClientConfig,
    endpoint: Endpoint,
    report: Report,
}

impl Batcher {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Report {
        let mut batch: Vec<Queued> = Vec::new();
        let mut batch_bytes = 0;
        let mut deadline = Instant::now();
        loop {
            let command = if batch.is_empty() {
                commands.recv().await
            } else {
                tokio::select! {
                    command = commands.recv() => command,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.deliver(std::mem::take(&mut batch)).await;
                        batch_bytes = 0;
                        continue;
                    }
                }
            };
            match command {
                None => {
                    self.deliver(batch).await;
                    return self.report;
                }
                Some(Command::Flush(reply)) => {
                    self.deliver(std::mem::take(&mut batch)).await;
                    batch_bytes = 0;
                    let _ = reply.send(std::mem::take(&mut self.report));
                }
                Some(Command::Send(queued)) => {
                    // The array's brackets and commas: one byte per event, and two.
                    if !batch.is_empty()
                        && batch_bytes + queued.json.len() + 2 > self.config.max_batch_bytes
                    {
                        self.deliver(std::mem::take(&mut batch)).await;
                        batch_bytes = 0;
                    }
                    if batch.is_empty() {
                        deadline = Instant::now() + self.config.linger;
                    }
                    batch_bytes += queued.json.len() + 1;
                    batch.push(queued);
                    if batch.len() >= self.config.max_batch_events {
                        self.deliver(std::mem::take(&mut batch)).await;
                        batch_bytes = 0;
                    }
                }
            }
        }
    }

    /// Sends `batch` until the bridge takes it or it is given up. A batch refused as too large
    /// is sent again in halves, so one oversized event fails alone.
    async fn deliver(&mut self, batch: Vec<Queued>) {
        let mut pending = vec![batch];
        while let Some(batch) = pending.pop() {
            if batch.is_empty() {
                continue;
            }
            match self.send_with_retries(&batch).await {
                Ok(()) => self.report.delivered += batch.len() as u64,
                Err(SendError::Refused { status: 413, .. }) if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    // Popped first-half first, so the order holds.
                    pending.push(second);
                    pending.push(first);
                }
                Err(error) => {
                    tracing::warn!(events = batch.len(), %error, "events not delivered");
                    let error = Arc::new(error);
                    self.report
                        .undelivered
                        .extend(batch.iter().map(|queued| Undelivered {
                            event_id: queued.event_id,
                            error: error.clone(),
                        }));
                }
            }
        }
    }

    async fn send_with_retries(&self, batch: &[Queued]) -> Result<(), SendError> {
        let mut body =
            Vec::with_capacity(batch.iter().map(|q| q.json.len() + 1).sum::<usize>() + 1);
        body.push(b'[');
        for (index, queued) in batch.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&queued.json);
        }
        body.push(b']');
        let body = self.endpoint.encode(body);
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let error = match self.endpoint.post_encoded(body.clone()).await {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            match self
                .config
                .backoff
                .decide(&error, attempt, started.elapsed())
            {
                Retry::After(wait) => {
                    tracing::debug!(%error, ?wait, "resending the same events");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Retry::GiveUp => return Err(error),
            }
        }
    }
}
