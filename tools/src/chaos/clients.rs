//! Clients that behave like real ones: each sends its requests at a steady pace, and on a 503,
//! a 429, a time-out or a refused connection sends the *same* events again (same `event_id`s)
//! after `Retry-After` (or a backoff), until they are acknowledged. Every reply is written down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use crate::traffic::{request_body, GeneratedEvent, Generator, TrafficArgs};

/// How long a client waits for a reply before it gives up on that attempt and retries.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An acknowledged event and when its 202 arrived.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub event: GeneratedEvent,
    pub at: Instant,
}

/// A reply other than 202, or no reply.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The status, or `timeout` / `connection`.
    pub what: String,
    pub at: Instant,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct Ledger {
    pub acknowledged: Vec<Acknowledged>,
    pub refusals: Vec<Refusal>,
    /// Every attempt: when it ended and how long it took (the time-out itself for no reply).
    pub attempts: Vec<(Instant, Duration)>,
    /// Events of requests refused for good (a 4xx other than 429): the load sent something the
    /// bridge does not take, which is the load's bug.
    pub rejected: Vec<(GeneratedEvent, String)>,
    /// Events still unacknowledged when the clients were told to give up.
    pub abandoned: Vec<GeneratedEvent>,
}

pub struct Clients {
    ledger: Arc<Mutex<Ledger>>,
    generating: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Clone)]
pub struct LoadShape {
    pub url: String,
    pub api_key: String,
    pub clients: usize,
    pub batch_size: usize,
    /// Events per second over all clients.
    pub rate: u64,
}

impl Clients {
    pub fn start(shape: &LoadShape, traffic: &TrafficArgs) -> anyhow::Result<Self> {
        let generator = Arc::new(Mutex::new(Generator::new(traffic, Utc::now())?));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let generating = Arc::new(AtomicBool::new(true));
        let http = reqwest::Client::builder().timeout(REPLY_TIMEOUT).build()?;
        let clients = shape.clients.max(1);
        let batch = shape.batch_size.max(1);
        let period =
            Duration::from_secs_f64(clients as f64 * batch as f64 / shape.rate.max(1) as f64);
        let tasks = (0..clients)
            .map(|client| {
                let (generator, ledger, generating, http, shape) = (
                    generator.clone(),
                    ledger.clone(),
                    generating.clone(),
                    http.clone(),
                    shape.clone(),
                );
                tokio::spawn(async move {
                    let start = Instant::now() + period.mul_f64(client as f64 / clients as f64);
                    let mut ticks = tokio::time::interval_at(start, period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while generating.load(Ordering::Relaxed) {
                        ticks.tick().await;
                        let events: Vec<GeneratedEvent> = {
                            let mut generator = generator.lock().unwrap_or_else(|p| p.into_inner());
                            (0..batch).map(|_| generator.next()).collect()
                        };
                        deliver(&http, &shape, events, &ledger).await;
                    }
                })
            })
            .collect();
        Ok(Self {
            ledger,
            generating,
            tasks,
        })
    }

    pub fn ledger(&self) -> Arc<Mutex<Ledger>> {
        self.ledger.clone()
    }

    /// Stops generating new events; each client still delivers what it holds, for at most
    /// `grace`. What is still unacknowledged then is recorded as abandoned.
    pub async fn finish(self, grace: Duration) -> Arc<Mutex<Ledger>> {
        self.generating.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + grace;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
        self.ledger
    }
}

/// Sends `events` until the bridge acknowledges them or refuses them for good.
async fn deliver(
    http: &reqwest::Client,
    shape: &LoadShape,
    events: Vec<GeneratedEvent>,
    ledger: &Mutex<Ledger>,
) {
    let body = request_body(&events);
    let mut backoff = Duration::from_millis(250);
    // Recorded as abandoned unless the loop below ends otherwise (a client aborted at the end
    // of the run drops this guard mid-retry).
    let mut pending = Pending {
        events: Some(events),
        ledger,
    };
    loop {
        let sent = Instant::now();
        let reply = http
            .post(&shape.url)
            .bearer_auth(&shape.api_key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let took = sent.elapsed();
        ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attempts
            .push((Instant::now(), took));
        let wait = match reply {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let at = Instant::now();
                let events = pending.events.take().unwrap_or_default();
                let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                ledger
                    .acknowledged
                    .extend(events.into_iter().map(|event| Acknowledged { event, at }));
                return;
            }
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok())
                    .map(Duration::from_secs);
                record_refusal(ledger, status.as_u16().to_string());
                let retryable = status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if !retryable {
                    let text = response.text().await.unwrap_or_default();
                    let events = pending.events.take().unwrap_or_default();
                    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                    ledger.rejected.extend(
                        events
                            .into_iter()
                            .map(|event| (event, format!("{status}: {text}"))),
                    );
                    return;
                }
                retry_after.unwrap_or(backoff)
            }
            Err(error) => {
                let what = if error.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                };
                record_refusal(ledger, what.into());
                backoff
            }
        };
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn record_refusal(ledger: &Mutex<Ledger>, what: String) {
    ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .refusals
        .push(Refusal {
            what,
            at: Instant::now(),
        });
}

/// Events on their way; whatever is left when dropped is abandoned.
struct Pending<'a> {
    events: Option<Vec<GeneratedEvent>>,
    ledger: &'a Mutex<Ledger>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            self.ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .abandoned
                .extend(events);
        }
    }
}
