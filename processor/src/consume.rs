//! The pipeline: consume the raw topic, validate each message, write batches to ClickHouse, and
//! only then store the batch's offsets for commit (so a crash redelivers, never loses; the
//! tables collapse redeliveries by event_id).
//!
//! On a rebalance, the rows held for revoked partitions are let go unwritten and the offsets
//! already written are committed: the partitions' new owner starts right after what is in
//! ClickHouse, so a rebalance neither loses nor duplicates.
//!
//! A batch's session updates are published while the next batch is read (reading a batch's
//! sessions back from ClickHouse was the largest part of a batch's time); its offsets are stored
//! once they are out. A batch written but not yet published when its partitions are revoked is
//! read again by the new owner (the rows are the same rows, collapsed by the tables).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use eye_core::kafka::{client_config, commit_within, headers_of};
use metrics::{counter, gauge, histogram};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::batch::Batch;
use crate::config::ProcessorConfig;
use crate::dead_letter::DeadLetterSink;
use crate::readiness::{ConsumerReport, Readiness};
use crate::rows::{ErrorRow, FailedMessage, WatermarkRow};
use crate::session_updates::SessionUpdates;
use crate::sink::{ClickHouseSink, SinkError};
use crate::validate::{Envelope, Transport, Validator};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long shutdown waits for the final commit and the consumer's close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a rebalance waits for the commit of the revoked partitions' written offsets.
const REVOKE_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often caught-up partitions are reported to `ingest_watermarks` while no batch is written,
/// so an idle partition does not hold back how far the data is known to be complete.
const IDLE_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// What the consume loop and the rebalance callback share.
#[derive(Default)]
struct Progress {
    batch: Batch,
    /// Per partition, the offset after the last message written to ClickHouse and stored.
    stored: BTreeMap<i32, i64>,
    /// Per partition, the end of the log as of the last statistics.
    high_watermarks: BTreeMap<i32, i64>,
    assigned: BTreeSet<i32>,
    /// Assigned partitions written up to the end of their log, as of the last statistics: the
    /// end offset.
    caught_up: BTreeMap<i32, i64>,
}

/// The consumer's context: reports lag, and lets go of revoked partitions (see the module doc).
pub struct PipelineContext {
    topic: String,
    progress: Arc<Mutex<Progress>>,
    /// Whether this processor owns partition 0, and so judges the alert rules.
    owns_first_partition: Arc<AtomicBool>,
    readiness: Arc<Readiness>,
}

impl PipelineContext {
    fn set_assigned(&self, progress: &mut Progress) {
        self.owns_first_partition
            .store(progress.assigned.contains(&0), Ordering::Relaxed);
    }
}

impl ClientContext for PipelineContext {
    fn stats(&self, stats: Statistics) {
        let broker_up = stats
            .brokers
            .values()
            .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        let Some(topic) = stats.topics.get(&self.topic) else {
            self.readiness.observe(
                ConsumerReport {
                    broker_up,
                    ..ConsumerReport::default()
                },
                Instant::now(),
            );
            return;
        };
        let mut progress = lock(&self.progress);
        let mut report = ConsumerReport {
            broker_up,
            ..ConsumerReport::default()
        };
        for (&partition, state) in &topic.partitions {
            if partition < 0 {
                continue;
            }
            if progress.assigned.contains(&partition) && state.fetch_state != "active" {
                report.not_fetching += 1;
            }
            if progress.assigned.contains(&partition) && state.hi_offset >= 0 {
                let from = if state.committed_offset >= 0 {
                    report.committed.insert(partition, state.committed_offset);
                    state.committed_offset
                } else {
                    state.lo_offset.max(0)
                };
                report.lag += (state.hi_offset - from).max(0);
            }
            if state.consumer_lag >= 0 {
                gauge!("eye_processor_consumer_lag", "partition" => partition.to_string())
                    .set(state.consumer_lag as f64);
            }
            if state.hi_offset >= 0 {
                progress.high_watermarks.insert(partition, state.hi_offset);
            }
            let caught_up = state.hi_offset >= 0
                && (state.consumer_lag_stored == 0
                    || state.consumer_lag == 0
                    || state.hi_offset == state.lo_offset);
            if caught_up && progress.assigned.contains(&partition) {
                progress.caught_up.insert(partition, state.hi_offset);
            } else {
                progress.caught_up.remove(&partition);
            }
        }
        self.readiness.observe(report, Instant::now());
    }
}

impl ConsumerContext for PipelineContext {
    // Runs inside `recv()`, never while a batch is being written: the loop does one at a time.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let revoked = match rebalance {
            Rebalance::Revoke(revoked) => revoked,
            Rebalance::Assign(assigned) => {
                let assigned: BTreeSet<i32> = assigned
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|element| element.partition())
                    .collect();
                info!(?assigned, "partitions assigned");
                let mut progress = lock(&self.progress);
                progress.assigned.extend(assigned);
                self.set_assigned(&mut progress);
                return;
            }
            Rebalance::Error(error) => {
                warn!(%error, "rebalance failed");
                return;
            }
        };
        let revoked: Vec<i32> = revoked
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        if consumer.assignment_lost() {
            // Taken away without a rebalance: no answer from the group for a session time-out.
            counter!("eye_processor_partitions_lost_total").increment(revoked.len() as u64);
            warn!(
                ?revoked,
                "partitions lost: the group coordinator did not answer in time"
            );
        }
        let mut written = TopicPartitionList::new();
        let released = {
            let mut progress = lock(&self.progress);
            for partition in &revoked {
                progress.assigned.remove(partition);
                progress.caught_up.remove(partition);
                if let Some(offset) = progress.stored.remove(partition) {
                    let _ = written.add_partition_offset(
                        &self.topic,
                        *partition,
                        Offset::Offset(offset),
                    );
                }
            }
            self.set_assigned(&mut progress);
            progress.batch.release(&revoked)
        };
        // Committed without holding the lock: a synchronous commit may serve other callbacks.
        // Bounded: this runs inside `recv()`, so a commit that waits blocks the whole loop.
        if written.count() > 0 {
            if let Err(error) = commit_within(consumer, &written, REVOKE_COMMIT_TIMEOUT) {
                warn!(%error, "committing offsets of revoked partitions; the next owner reads their last rows again");
            }
        }
        info!(
            ?revoked,
            released, "partitions revoked; their unwritten rows are left to the next owner"
        );
    }
}

fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // A panic elsewhere cannot leave the batch half-updated in a way that matters here.
    progress
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("creating the Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
}

/// Where the pipeline reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// The consumer group: follow the topic, commit offsets (the live processor).
    Group,
    /// Each partition from a start offset until at least an end offset, outside any group, then
    /// stop (a replay).
    Range {
        start: BTreeMap<i32, i64>,
        end: BTreeMap<i32, i64>,
    },
}

/// What the pipeline publishes besides the ClickHouse tables.
#[derive(Default)]
pub struct Outputs {
    /// None in a replay: the dead letters of the log are on their topic already.
    pub dead_letters: Option<DeadLetterSink>,
    pub session_updates: Option<SessionUpdates>,
}

/// A view of how far the pipeline has written, for progress displays.
#[derive(Clone)]
pub struct WrittenOffsets(Arc<Mutex<Progress>>);

impl WrittenOffsets {
    /// Per partition, the offset after the last message written.
    pub fn get(&self) -> BTreeMap<i32, i64> {
        lock(&self.0).stored.clone()
    }
}

/// A written batch whose session updates are being published; its offsets wait for them.
struct Publishing {
    task: JoinHandle<()>,
    next_offsets: BTreeMap<i32, i64>,
}

pub struct Pipeline {
    consumer: StreamConsumer<PipelineContext>,
    source: Source,
    validator: Validator,
    sink: ClickHouseSink,
    dead_letters: Option<DeadLetterSink>,
    session_updates: Option<Arc<SessionUpdates>>,
    publishing: Option<Publishing>,
    config: ProcessorConfig,
    progress: Arc<Mutex<Progress>>,
    readiness: Arc<Readiness>,
    owns_first_partition: Arc<AtomicBool>,
}

impl Pipeline {
    pub fn new(
        config: ProcessorConfig,
        source: Source,
        validator: Validator,
        sink: ClickHouseSink,
        outputs: Outputs,
        readiness: Arc<Readiness>,
    ) -> Result<Self, PipelineError> {
        let replay = matches!(source, Source::Range { .. });
        let client = client_config(
            &config.kafka,
            [
                ("group.id", config.consumer.group_id.clone()),
                ("auto.offset.reset", "earliest".into()),
                // A replay reads outside the group and commits nothing.
                ("enable.auto.commit", (!replay).to_string()),
                ("auto.commit.interval.ms", "1000".into()),
                // Offsets are stored by hand once their batch is in ClickHouse.
                ("enable.auto.offset.store", "false".into()),
                // While ClickHouse is down the pipeline retries instead of polling; stay in the
                // group.
                ("max.poll.interval.ms", "600000".into()),
                (
                    "session.timeout.ms",
                    config.consumer.session_timeout_ms.to_string(),
                ),
                ("statistics.interval.ms", "1000".into()),
            ],
        );
        let progress = Arc::new(Mutex::new(Progress::default()));
        let owns_first_partition = Arc::new(AtomicBool::new(false));
        let consumer: StreamConsumer<PipelineContext> =
            client.create_with_context(PipelineContext {
                topic: config.consumer.topic.clone(),
                progress: progress.clone(),
                owns_first_partition: owns_first_partition.clone(),
                readiness: readiness.clone(),
            })?;
        match &source {
            Source::Group => consumer.subscribe(&[&config.consumer.topic])?,
            Source::Range { start, .. } => {
                let mut assignment = TopicPartitionList::new();
                for (&partition, &offset) in start {
                    assignment.add_partition_offset(
                        &config.consumer.topic,
                        partition,
                        Offset::Offset(offset),
                    )?;
                }
                consumer.assign(&assignment)?;
                let mut progress = lock(&progress);
                progress.assigned = start.keys().copied().collect();
                progress.stored = start.clone();
            }
        }
        Ok(Self {
            consumer,
            source,
            validator,
            sink,
            dead_letters: outputs.dead_letters,
            session_updates: outputs.session_updates.map(Arc::new),
            publishing: None,
            config,
            progress,
            readiness,
            owns_first_partition,
        })
    }

    pub fn written_offsets(&self) -> WrittenOffsets {
        WrittenOffsets(self.progress.clone())
    }

    /// A range source whose every partition is written up to its end.
    fn range_done(&self) -> bool {
        let Source::Range { end, .. } = &self.source else {
            return false;
        };
        let progress = lock(&self.progress);
        end.iter().all(|(partition, &end)| {
            progress
                .stored
                .get(partition)
                .is_some_and(|&written| written >= end)
        })
    }

    /// True while this processor owns partition 0 of the raw topic.
    pub fn owns_first_partition(&self) -> Arc<AtomicBool> {
        self.owns_first_partition.clone()
    }

    /// Runs until `shutdown` resolves, then writes what it holds and commits synchronously.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let max_wait = Duration::from_millis(self.config.batch.max_wait_ms);
        let mut idle_reports = tokio::time::interval(IDLE_REPORT_INTERVAL);
        let follows_group = matches!(self.source, Source::Group);
        loop {
            if self.range_done() {
                break;
            }
            let deadline = lock(&self.progress)
                .batch
                .opened
                .map(|opened| opened + max_wait);
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
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let full = {
                            let mut progress = lock(&self.progress);
                            self.add(&mut progress.batch, &message);
                            progress.batch.len() >= self.config.batch.max_events
                        };
                        if full && !self.write(&mut shutdown).await {
                            break;
                        }
                    }
                    Err(error) => warn!(%error, "kafka consume error"),
                },
            }
        }
        if lock(&self.progress).batch.len() > 0 {
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
        let stored = match self.source {
            Source::Group => self.stored_offsets(),
            Source::Range { .. } => {
                self.report_range_end().await;
                TopicPartitionList::new()
            }
        };
        close_within(self.consumer, stored, CLOSE_TIMEOUT).await;
        info!("processor stopped");
    }

    fn add(&self, batch: &mut Batch, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        let envelope = Envelope::of(
            &transport_of(message),
            &self.config.consumer.default_application,
        );
        match self
            .validator
            .validate(message.payload().unwrap_or_default(), &envelope)
        {
            Ok(valid) => {
                counter!("eye_processor_events_total", "outcome" => "valid").increment(1);
                batch.events.push(valid.into_row(partition, offset));
            }
            Err(failed) => {
                counter!("eye_processor_events_total", "outcome" => "invalid").increment(1);
                counter!("eye_processor_failures_total", "error_type" => failed.failure.error_type.as_str())
                    .increment(1);
                batch.errors.push(FailedMessage {
                    row: failed.into_row(message.payload().unwrap_or_default(), partition, offset),
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
        let mut batch = std::mem::take(&mut lock(&self.progress).batch);
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
        loop {
            match self.insert(batch).await {
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
        self.finish_publishing().await;
        match &self.session_updates {
            Some(session_updates) => {
                self.publishing = Some(Publishing {
                    task: tokio::spawn(publish_until_done(
                        session_updates.clone(),
                        batch.sessions(),
                        self.readiness.clone(),
                    )),
                    next_offsets: batch.next_offsets.clone(),
                })
            }
            None => self.store_offsets(&batch.next_offsets),
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
        &self,
        next_offsets: BTreeMap<i32, i64>,
        outcome: Result<(), JoinError>,
    ) {
        match outcome {
            Ok(()) => self.store_offsets(&next_offsets),
            Err(error) => {
                error!(%error, "publishing session updates failed; their batch will be read again after a restart")
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
            .insert_watermarks(self.watermarks(batch).iter())
            .await
    }

    /// One progress report per partition of the batch, for `ingest_watermarks`.
    fn watermarks(&self, batch: &Batch) -> Vec<WatermarkRow> {
        let high_watermarks = lock(&self.progress).high_watermarks.clone();
        let updated_at = Utc::now().timestamp() as u32;
        batch
            .next_offsets
            .iter()
            .map(|(&partition, &next_offset)| {
                let events = batch
                    .events
                    .iter()
                    .filter(|row| row.kafka_partition == partition);
                let errors = batch
                    .errors
                    .iter()
                    .filter(|failed| failed.row.kafka_partition == partition);
                let event_time = events.clone().map(|row| row.timestamp).max().unwrap_or(0);
                let received_time = events
                    .map(|row| row.received_at)
                    .chain(errors.map(|failed| failed.row.received_at))
                    .max()
                    .unwrap_or(0);
                let high_watermark = high_watermarks
                    .get(&partition)
                    .copied()
                    .unwrap_or(0)
                    .max(next_offset);
                WatermarkRow {
                    topic: self.config.consumer.topic.clone(),
                    partition,
                    next_offset,
                    high_watermark,
                    lag: high_watermark - next_offset,
                    event_time,
                    received_time,
                    updated_at,
                }
            })
            .collect()
    }

    /// Reports every partition of a range as written up to where it is, now: partitions without
    /// messages have no batch to report them.
    async fn report_range_end(&self) {
        let rows: Vec<WatermarkRow> = {
            let progress = lock(&self.progress);
            let updated_at = Utc::now().timestamp() as u32;
            progress
                .stored
                .iter()
                .map(|(&partition, &written)| {
                    let end = progress
                        .high_watermarks
                        .get(&partition)
                        .copied()
                        .unwrap_or(written)
                        .max(written);
                    self.position_row(partition, written, end, updated_at)
                })
                .collect()
        };
        if let Err(error) = self.sink.insert_watermarks(rows.iter()).await {
            warn!(%error, "reporting where the replay ended");
        }
    }

    /// A progress report that says where a partition stands and carries no times (the
    /// watermark aggregates keep the latest times already reported).
    fn position_row(
        &self,
        partition: i32,
        written: i64,
        end: i64,
        updated_at: u32,
    ) -> WatermarkRow {
        WatermarkRow {
            topic: self.config.consumer.topic.clone(),
            partition,
            next_offset: written,
            high_watermark: end,
            lag: end - written,
            event_time: 0,
            received_time: 0,
            updated_at,
        }
    }

    /// Reports each caught-up partition as written to its end, now.
    async fn report_idle(&self) {
        let rows: Vec<WatermarkRow> = {
            let progress = lock(&self.progress);
            let updated_at = Utc::now().timestamp() as u32;
            progress
                .caught_up
                .iter()
                .map(|(&partition, &end)| self.position_row(partition, end, end, updated_at))
                .collect()
        };
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

    /// Stores the offsets of partitions still assigned (a published batch may outlive them).
    fn store_offsets(&self, next_offsets: &BTreeMap<i32, i64>) {
        let next_offsets: BTreeMap<i32, i64> = {
            let progress = lock(&self.progress);
            next_offsets
                .iter()
                .filter(|(partition, _)| progress.assigned.contains(partition))
                .map(|(&partition, &offset)| (partition, offset))
                .collect()
        };
        if next_offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &next_offsets {
            let _ = list.add_partition_offset(
                &self.config.consumer.topic,
                partition,
                Offset::Offset(offset),
            );
        }
        if let Err(error) = self.consumer.store_offsets(&list) {
            warn!(%error, "storing offsets");
        }
        lock(&self.progress).stored.extend(next_offsets);
    }

    /// The offsets stored for commit, as a list for the final commit.
    fn stored_offsets(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &lock(&self.progress).stored {
            let _ = list.add_partition_offset(
                &self.config.consumer.topic,
                partition,
                Offset::Offset(offset),
            );
        }
        list
    }
}

/// Commits `stored` and closes the consumer (leaving the group) on a thread of its own, waiting
/// for them at most `timeout`: against a broker that hangs, librdkafka's synchronous commit and
/// its close never return. The group then resumes from the last periodic commit (at most a
/// second older), and those messages are written again, collapsed by event_id.
async fn close_within(
    consumer: StreamConsumer<PipelineContext>,
    stored: TopicPartitionList,
    timeout: Duration,
) {
    let (closed, on_closed) = tokio::sync::oneshot::channel();
    // Detached: a process exiting does not wait for it.
    std::thread::spawn(move || {
        if stored.count() > 0 {
            if let Err(error) = consumer.commit(&stored, CommitMode::Sync) {
                warn!(%error, "committing offsets at shutdown");
            }
        }
        drop(consumer);
        let _ = closed.send(());
    });
    if tokio::time::timeout(timeout, on_closed).await.is_err() {
        warn!(?timeout, "the broker did not answer the final commit and close in time; left to the group's last commit");
    }
}

/// Publishes the sessions, retrying with backoff until they are out.
async fn publish_until_done(
    session_updates: Arc<SessionUpdates>,
    sessions: BTreeSet<(String, Uuid)>,
    readiness: Arc<Readiness>,
) {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    while let Err(error) = session_updates.publish(&sessions).await {
        readiness.set_outputs_healthy(false);
        counter!("eye_processor_sink_retries_total").increment(1);
        warn!(%error, retry_in = ?backoff, "publishing session updates failed");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    readiness.set_outputs_healthy(true);
    histogram!("eye_processor_session_updates_seconds").record(started.elapsed().as_secs_f64());
}

/// The publishing task's outcome once it is done (never when there is none).
async fn published(publishing: &mut Option<Publishing>) -> Result<(), JoinError> {
    match publishing {
        Some(publishing) => (&mut publishing.task).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
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
