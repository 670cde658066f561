//! The pipeline, in order: read a batch from the raw topic ([`source`](crate::source)),
//! validate each message into a row ([`validate`](crate::validate)), write the batch to
//! ClickHouse ([`sink`](crate::sink)) with its failures on the dead-letter topic and its
//! progress in `watermark_updates`, publish its sessions, and only then store its offsets for
//! commit. So a crash redelivers and never loses; the tables collapse redeliveries by event_id.
//!
//! A batch ClickHouse refuses for its data is written row by row once: each row it refuses alone
//! becomes a `sink_rejected` failure, so no row can stop a partition. Anything else is retried
//! with backoff (readiness false meanwhile).
//!
//! While ClickHouse inserts a batch, the next one is read and validated (up to a full batch), so
//! the processor's thread and ClickHouse work at once.
//!
//! A batch's session updates, from the sessions held in memory
//! ([`session_state`](crate::session_state)), and those sessions' states for their changelog are
//! handed to the producer as soon as its rows are in, before reading goes on, and acknowledged
//! while the next batch is read; its offsets are stored once they are. A batch after an
//! assignment first waits for them, since restoring reads the changelog to its end.
//! A rebalance (which happens while reading, also while a batch is inserted) first waits for the
//! producer's acknowledgements, so the partitions' next owner publishes after this processor,
//! never before; the rows of revoked partitions in a batch being inserted are written but neither
//! published nor stored. A batch written but not yet published when its partitions are revoked
//! is read again by the new owner (the same rows, collapsed by the tables).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use eye_core::kafka::headers_of;
use metrics::{counter, histogram, Counter};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::batch::Batch;
use crate::dead_letter::DeadLetterSink;
use crate::readiness::Readiness;
use crate::rows::{ErrorRow, EventRow, FailedMessage, WatermarkRow};
use crate::session_state::changelog::{Changelog, Pending, Refused};
use crate::session_state::SessionStates;
use crate::session_updates::{InFlight, SessionUpdates};
use crate::sink::{ClickHouseSink, SinkError};
use crate::source::{RawTopic, WrittenOffsets};
use eye_core::validate::{Envelope, Transport, Validator};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often caught-up partitions are reported to `ingest_watermarks` while no batch is written,
/// so an idle partition does not hold back how far the data is known to be complete.
const IDLE_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// How long a rebalance waits for the session updates handed to the producer.
const RELEASE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A written batch whose session updates and states are being acknowledged; its offsets wait
/// for them.
struct Publishing {
    /// Ends with the sessions whose states the changelog refused.
    task: JoinHandle<Refused>,
    next_offsets: BTreeMap<i32, i64>,
}

/// When a batch is written to ClickHouse: at `max_events`, or `max_wait_ms` after its first
/// event, whichever comes first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    pub max_events: usize,
    pub max_wait_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_events: 25_000,
            // At 1,000 events/s, 202 → row visible p99 640 ms instead of 870 (docs/benchmarks.md);
            // under load batches fill by count well before it.
            max_wait_ms: 250,
        }
    }
}

/// What the pipeline publishes besides the ClickHouse tables.
#[derive(Default)]
pub struct Outputs {
    /// None in a replay: the dead letters of the log are on their topic already.
    pub dead_letters: Option<DeadLetterSink>,
    /// The session topic's publisher and the sessions held in memory.
    pub session_updates: Option<(SessionUpdates, SessionStates)>,
}

pub struct Pipeline {
    source: RawTopic,
    validator: Validator,
    sink: ClickHouseSink,
    dead_letters: Option<DeadLetterSink>,
    session_updates: Option<Arc<SessionUpdates>>,
    session_states: Option<SessionStates>,
    publishing: Option<Publishing>,
    batch: BatchSettings,
    /// The raw topic, as `watermark_updates` names it.
    topic: String,
    default_application: String,
    readiness: Arc<Readiness>,
    /// `eye_processor_events_total` by outcome, registered once: a lookup per event cost 2% of
    /// the processor's thread.
    valid_events: Counter,
    invalid_events: Counter,
}

impl Pipeline {
    pub fn new(
        source: RawTopic,
        batch: BatchSettings,
        validator: Validator,
        sink: ClickHouseSink,
        outputs: Outputs,
        readiness: Arc<Readiness>,
    ) -> Self {
        let (session_updates, session_states) = outputs.session_updates.unzip();
        let session_updates = session_updates.map(Arc::new);
        if let Some(session_updates) = &session_updates {
            let session_updates = session_updates.clone();
            source.before_release(Box::new(move || {
                session_updates.flush(RELEASE_FLUSH_TIMEOUT)
            }));
        }
        Self {
            topic: source.topic().to_string(),
            default_application: source.default_application().to_string(),
            source,
            validator,
            sink,
            dead_letters: outputs.dead_letters,
            session_updates,
            session_states,
            publishing: None,
            batch,
            readiness,
            valid_events: counter!("eye_processor_events_total", "outcome" => "valid"),
            invalid_events: counter!("eye_processor_events_total", "outcome" => "invalid"),
        }
    }

    pub fn written_offsets(&self) -> WrittenOffsets {
        self.source.written_offsets()
    }

    /// True while this processor owns partition 0 of the raw topic.
    pub fn owns_first_partition(&self) -> Arc<AtomicBool> {
        self.source.owns_first_partition()
    }

    /// Runs until `shutdown` resolves, then writes what it holds and commits synchronously.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let max_wait = Duration::from_millis(self.batch.max_wait_ms);
        let mut idle_reports = tokio::time::interval(IDLE_REPORT_INTERVAL);
        let follows_group = self.source.follows_group();
        loop {
            if self.source.range_done() {
                break;
            }
            // Filled while the previous batch was inserted.
            if self
                .source
                .with_batch(|batch| batch.len() >= self.batch.max_events)
            {
                if !self.write(&mut shutdown).await {
                    break;
                }
                continue;
            }
            let deadline = self
                .source
                .with_batch(|batch| batch.opened.map(|opened| opened + max_wait));
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if !self.write(&mut shutdown).await {
                        break;
                    }
                }
                outcome = published(&mut self.publishing), if self.publishing.is_some() => {
                    if let Some(publishing) = self.publishing.take() {
                        self.complete_publishing(publishing.next_offsets, outcome);
                    }
                }
                _ = idle_reports.tick(), if deadline.is_none() && follows_group => self.report_idle().await,
                message = self.source.recv() => match message {
                    Ok(message) => {
                        let full = self.source.with_batch(|batch| {
                            self.add(batch, &message);
                            batch.len() >= self.batch.max_events
                        });
                        if full && !self.write(&mut shutdown).await {
                            break;
                        }
                    }
                    Err(error) => warn!(%error, "kafka consume error"),
                },
            }
        }
        if self.source.with_batch(|batch| batch.len()) > 0 {
            // One more attempt, bounded: what is not written now is redelivered after restart.
            self.write(tokio::time::sleep(Duration::from_secs(10)))
                .await;
        }
        // Bounded too: unpublished sessions are published again after the batch is redelivered.
        if tokio::time::timeout(Duration::from_secs(10), self.finish_publishing())
            .await
            .is_err()
        {
            warn!("session updates not published at shutdown; their batch will be read again");
        }
        if !follows_group {
            self.report_range_end().await;
        }
        self.source.close().await;
        info!("processor stopped");
    }

    fn add(&self, batch: &mut Batch, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        let envelope = Envelope::of(&transport_of(message), &self.default_application);
        match self
            .validator
            .validate(message.payload().unwrap_or_default(), &envelope)
        {
            Ok(valid) => {
                self.valid_events.increment(1);
                let row = EventRow::of_valid(valid, partition, offset);
                if !keyed_by(message, row.session_id) {
                    batch
                        .sessions_not_keyed
                        .insert((row.application.clone(), row.session_id));
                }
                batch.events.push(row);
            }
            Err(failed) => {
                self.invalid_events.increment(1);
                counter!("eye_processor_failures_total", "error_type" => failed.failure.error_type.as_str())
                    .increment(1);
                let row = ErrorRow::of_failed(
                    failed,
                    message.payload().unwrap_or_default(),
                    partition,
                    offset,
                );
                if !row.session_id.is_nil() && !keyed_by(message, row.session_id) {
                    batch
                        .sessions_not_keyed
                        .insert((row.application.clone(), row.session_id));
                }
                batch.errors.push(FailedMessage {
                    row,
                    key: message.key().map(<[u8]>::to_vec),
                    headers: headers_of(message)
                        .into_iter()
                        .map(|(key, value)| (key.into_owned(), value.unwrap_or_default().to_vec()))
                        .collect(),
                });
            }
        }
        batch.next_offsets.insert(partition, offset + 1);
        batch.opened.get_or_insert_with(Instant::now);
    }

    /// Writes the batch, retrying with backoff while ClickHouse is unavailable, then stores its
    /// offsets. False when `stop` resolved before the batch could be written (its rows are then
    /// dropped unstored, to be redelivered).
    async fn write(&mut self, stop: impl Future<Output = ()>) -> bool {
        let mut batch = self.source.take_batch();
        // Readiness sees a write that hangs (statistics stop while it does).
        self.readiness.set_writing(batch.len() as u64);
        let written = self.write_batch(&mut batch, stop).await;
        self.readiness.set_writing(0);
        written
    }

    async fn write_batch(&mut self, batch: &mut Batch, stop: impl Future<Output = ()>) -> bool {
        tokio::pin!(stop);
        let started = Instant::now();
        let mut backoff = Duration::from_secs(1);
        let mut isolated = false;
        if let Some(states) = &mut self.session_states {
            states.ownership_changed(self.source.take_ownership_changes());
            // A restore reads the changelog to its end: the previous batch's states first.
            if states.restore_pending() {
                self.finish_publishing().await;
            }
        }
        loop {
            self.prepare_session_states().await;
            match self.insert_while_reading(batch).await {
                Ok(()) => break,
                // Once: a refusal that outlives isolating the refused rows is no row's fault,
                // and is retried with backoff (readiness false) rather than isolated again.
                Err(SinkError::Permanent(error)) if !isolated => {
                    warn!(%error, "ClickHouse refused a batch; writing its rows one by one");
                    self.isolate_refused_rows(batch).await;
                    isolated = true;
                }
                Err(error) => {
                    self.readiness.set_outputs_healthy(false);
                    counter!("eye_processor_sink_retries_total").increment(1);
                    warn!(%error, retry_in = ?backoff, "ClickHouse write failed");
                    tokio::select! {
                        _ = &mut stop => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.readiness.set_outputs_healthy(true);
        histogram!("eye_processor_insert_seconds").record(started.elapsed().as_secs_f64());
        histogram!("eye_processor_batch_events").record(batch.len() as f64);
        debug!(
            events = batch.events.len(),
            errors = batch.errors.len(),
            first_offsets = ?batch.first_offsets(),
            next_offsets = ?batch.next_offsets,
            "batch written"
        );
        // The rows of partitions revoked while the batch was inserted are their next owner's to
        // publish (it reads them again: their offsets are not stored).
        let changes = self.source.take_ownership_changes();
        let revoked: Vec<i32> = changes.revoked.iter().copied().collect();
        if !revoked.is_empty() {
            batch.release(&revoked);
        }
        if let Some(states) = &mut self.session_states {
            states.ownership_changed(changes);
        }
        self.finish_publishing().await;
        match (&self.session_updates, &mut self.session_states) {
            (Some(session_updates), Some(states)) => {
                let changes = states.apply(batch);
                // Handed over now, before reading goes on (see the module's comment).
                let in_flight = session_updates.enqueue(changes.summaries);
                let stored = states.changelog().map(|changelog| {
                    let pending = changelog.enqueue(changes.stored);
                    (changelog, pending)
                });
                self.publishing = Some(Publishing {
                    task: tokio::spawn(publish_until_done(
                        session_updates.clone(),
                        in_flight,
                        changes.read_back,
                        stored,
                        self.readiness.clone(),
                    )),
                    next_offsets: batch.next_offsets.clone(),
                });
            }
            _ => self.source.store_offsets(&batch.next_offsets),
        }
        true
    }

    /// Waits for the previous batch's session updates, then stores its offsets.
    async fn finish_publishing(&mut self) {
        if let Some(publishing) = self.publishing.take() {
            let outcome = publishing.task.await;
            self.complete_publishing(publishing.next_offsets, outcome);
        }
    }

    fn complete_publishing(
        &mut self,
        next_offsets: BTreeMap<i32, i64>,
        outcome: Result<Refused, JoinError>,
    ) {
        match outcome {
            Ok(refused) => {
                if let Some(states) = &mut self.session_states {
                    states.forget(refused);
                }
                self.source.store_offsets(&next_offsets)
            }
            Err(error) => {
                error!(%error, "publishing session updates failed; their batch will be read again after a restart")
            }
        }
    }

    /// Before a batch is written: what the sessions held in memory need from ClickHouse after a
    /// change of partitions.
    async fn prepare_session_states(&mut self) {
        if let Some(states) = &mut self.session_states {
            states
                .prepare(&self.sink.client(), self.sink.request_timeout())
                .await;
        }
    }

    /// Inserts `batch` while the next one is read and validated, until that one is full.
    async fn insert_while_reading(&self, batch: &Batch) -> Result<(), SinkError> {
        let insert = self.insert(batch);
        tokio::pin!(insert);
        loop {
            let room = self
                .source
                .with_batch(|next| next.len() < self.batch.max_events);
            tokio::select! {
                biased;
                inserted = &mut insert => return inserted,
                message = self.source.recv(), if room => match message {
                    Ok(message) => self.source.with_batch(|next| self.add(next, &message)),
                    Err(error) => warn!(%error, "kafka consume error"),
                },
            }
        }
    }

    /// Both tables, the dead-letter topic, then progress; each step is idempotent for a retry.
    async fn insert(&self, batch: &Batch) -> Result<(), SinkError> {
        self.sink.insert_events(&batch.events).await?;
        self.sink
            .insert_errors(batch.errors.iter().map(|failed| &failed.row))
            .await?;
        if let Some(dead_letters) = &self.dead_letters {
            dead_letters
                .publish(batch.errors.iter())
                .await
                .map_err(SinkError::DeadLetter)?;
        }
        self.sink
            .insert_watermarks(
                batch
                    .watermarks(&self.topic, &self.source.high_watermarks(), now_seconds())
                    .iter(),
            )
            .await
    }

    /// Reports every partition of a range as written up to where it is, now: partitions without
    /// messages have no batch to report them.
    async fn report_range_end(&self) {
        let updated_at = now_seconds();
        let rows: Vec<WatermarkRow> = self
            .source
            .positions()
            .into_iter()
            .map(|(partition, written, end)| {
                WatermarkRow::position(&self.topic, partition, written, end, updated_at)
            })
            .collect();
        if let Err(error) = self.sink.insert_watermarks(rows.iter()).await {
            warn!(%error, "reporting where the replay ended");
        }
    }

    /// Reports each caught-up partition as written to its end, now.
    async fn report_idle(&self) {
        let updated_at = now_seconds();
        let rows: Vec<WatermarkRow> = self
            .source
            .caught_up()
            .into_iter()
            .map(|(partition, end)| {
                WatermarkRow::position(&self.topic, partition, end, end, updated_at)
            })
            .collect();
        if let Err(error) = self.sink.insert_watermarks(rows.iter()).await {
            warn!(%error, "reporting idle partitions");
        }
    }

    /// After ClickHouse refused a batch for its data: each event row it refuses on its own
    /// becomes a `sink_rejected` failure, so one bad row never blocks a partition.
    async fn isolate_refused_rows(&self, batch: &mut Batch) {
        let mut accepted = Vec::with_capacity(batch.events.len());
        for row in std::mem::take(&mut batch.events) {
            match self.sink.insert_events(std::slice::from_ref(&row)).await {
                Err(SinkError::Permanent(error)) => batch.errors.push(FailedMessage {
                    row: ErrorRow::refused(row, &error.to_string()),
                    key: None,
                    headers: Vec::new(),
                }),
                _ => accepted.push(row),
            }
        }
        batch.events = accepted;
        let mut errors = Vec::with_capacity(batch.errors.len());
        for failed in std::mem::take(&mut batch.errors) {
            match self.sink.insert_errors(std::iter::once(&failed.row)).await {
                Err(SinkError::Permanent(error)) => {
                    error!(%error, event_id = %failed.row.event_id, "ClickHouse refused a failure row; it goes to the dead-letter topic only");
                    if let Some(dead_letters) = &self.dead_letters {
                        if let Err(error) = dead_letters.publish(std::iter::once(&failed)).await {
                            error!(%error, event_id = %failed.row.event_id, "the failure is in neither table nor topic");
                        }
                    }
                }
                _ => errors.push(failed),
            }
        }
        batch.errors = errors;
    }
}

/// Waits for the enqueued session updates and states, then publishes what is left (updates to
/// send again, sessions read back from ClickHouse), retrying with backoff until they are out;
/// ends with the sessions whose states the changelog refused.
async fn publish_until_done(
    session_updates: Arc<SessionUpdates>,
    mut in_flight: InFlight,
    read_back: BTreeSet<(String, Uuid)>,
    stored: Option<(Arc<Changelog>, Pending)>,
    readiness: Arc<Readiness>,
) -> Refused {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let refused = match stored {
        Some((changelog, pending)) => changelog.complete(pending, &readiness).await,
        None => Refused::new(),
    };
    session_updates.complete(&mut in_flight).await;
    while let Err(error) = session_updates.publish(&in_flight.retry, &read_back).await {
        readiness.set_outputs_healthy(false);
        counter!("eye_processor_sink_retries_total").increment(1);
        warn!(%error, retry_in = ?backoff, "publishing session updates failed");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    readiness.set_outputs_healthy(true);
    histogram!("eye_processor_session_updates_seconds").record(started.elapsed().as_secs_f64());
    refused
}

/// The publishing task's outcome once it is done (never when there is none).
async fn published(publishing: &mut Option<Publishing>) -> Result<Refused, JoinError> {
    match publishing {
        Some(publishing) => (&mut publishing.task).await,
        None => std::future::pending().await,
    }
}

fn now_seconds() -> u32 {
    Utc::now().timestamp() as u32
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Whether the message is keyed by its session, as the raw topic's contract asks (the bridge
/// does): then all of a session's events are in one partition.
fn keyed_by(message: &BorrowedMessage<'_>, session_id: Uuid) -> bool {
    message
        .key()
        .and_then(|key| std::str::from_utf8(key).ok())
        .and_then(|key| Uuid::parse_str(key).ok())
        == Some(session_id)
}

/// The message's Kafka side, for the validator.
fn transport_of<'m>(message: &'m BorrowedMessage<'_>) -> Transport<'m> {
    Transport {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        headers: headers_of(message),
    }
}
