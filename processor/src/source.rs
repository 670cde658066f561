//! The raw topic as the pipeline reads it: a consumer in the group (or over a fixed range, for a
//! replay), the partitions it owns, how far each is written and stored for commit, and the
//! commits.
//!
//! On a rebalance, the rows held for revoked partitions are let go unwritten and the offsets
//! already written are committed: the partitions' new owner starts right after what is in
//! ClickHouse, so a rebalance neither loses nor duplicates. Every commit waits for the broker a
//! bounded time: partitions lost to a coordinator that stopped answering cannot stop the loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use eye_core::kafka::{client_config, commit_within};
use eye_core::raw::DEFAULT_RAW_TOPIC;
use eye_core::settings::KafkaSettings;
use metrics::{counter, gauge};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::batch::Batch;
use crate::readiness::{ConsumerReport, Readiness};

/// How long shutdown waits for the final commit and the consumer's close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a rebalance waits for the commit of the revoked partitions' written offsets.
const REVOKE_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    pub topic: String,
    pub group_id: String,
    /// Application recorded for events produced straight to Kafka without an
    /// `eye.application` header.
    pub default_application: String,
    /// How long the group waits for a silent member (a crashed processor) before giving its
    /// partitions to another (`session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// `/readyz` answers 503 once the committed offsets have not moved for this long while
    /// messages wait: a processor stuck on one batch is visible to whatever restarts it.
    pub stalled_after_ms: u64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            topic: DEFAULT_RAW_TOPIC.into(),
            group_id: "eye-processor".into(),
            default_application: "direct".into(),
            session_timeout_ms: 45_000,
            stalled_after_ms: 120_000,
        }
    }
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

#[derive(Debug, thiserror::Error)]
#[error("creating the Kafka consumer: {0}")]
pub struct SourceError(#[from] KafkaError);

/// The consumer of the raw topic and what it knows of its partitions.
pub struct RawTopic {
    consumer: StreamConsumer<SourceContext>,
    source: Source,
    topic: String,
    default_application: String,
    progress: Arc<Mutex<Progress>>,
    owns_first_partition: Arc<AtomicBool>,
}

impl RawTopic {
    pub fn new(
        kafka: &KafkaSettings,
        settings: &ConsumerSettings,
        source: Source,
        readiness: Arc<Readiness>,
    ) -> Result<Self, SourceError> {
        let replay = matches!(source, Source::Range { .. });
        let client = client_config(
            kafka,
            [
                ("group.id", settings.group_id.clone()),
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
                    settings.session_timeout_ms.to_string(),
                ),
                ("statistics.interval.ms", "1000".into()),
            ],
        );
        let progress = Arc::new(Mutex::new(Progress::default()));
        let owns_first_partition = Arc::new(AtomicBool::new(false));
        let consumer: StreamConsumer<SourceContext> =
            client.create_with_context(SourceContext {
                topic: settings.topic.clone(),
                before_release: std::sync::OnceLock::new(),
                progress: progress.clone(),
                owns_first_partition: owns_first_partition.clone(),
                readiness,
            })?;
        match &source {
            Source::Group => consumer.subscribe(&[&settings.topic])?,
            Source::Range { start, .. } => {
                let mut assignment = TopicPartitionList::new();
                for (&partition, &offset) in start {
                    assignment.add_partition_offset(
                        &settings.topic,
                        partition,
                        Offset::Offset(offset),
                    )?;
                }
                consumer.assign(&assignment)?;
                let mut progress = lock(&progress);
                progress.assigned = start.keys().copied().collect();
                progress.ownership_changes.assigned = progress.assigned.clone();
                progress.stored = start.clone();
            }
        }
        Ok(Self {
            consumer,
            source,
            topic: settings.topic.clone(),
            default_application: settings.default_application.clone(),
            progress,
            owns_first_partition,
        })
    }

    pub async fn recv(&self) -> Result<BorrowedMessage<'_>, KafkaError> {
        self.consumer.recv().await
    }

    /// The raw topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The application recorded for messages without an `eye.application` header.
    pub fn default_application(&self) -> &str {
        &self.default_application
    }

    pub fn follows_group(&self) -> bool {
        matches!(self.source, Source::Group)
    }

    /// The batch being read, shared with the rebalance callback (which drops revoked rows).
    pub fn with_batch<R>(&self, use_batch: impl FnOnce(&mut Batch) -> R) -> R {
        use_batch(&mut lock(&self.progress).batch)
    }

    /// The batch read so far, leaving an empty one to read into.
    pub fn take_batch(&self) -> Batch {
        std::mem::take(&mut lock(&self.progress).batch)
    }

    /// Runs `hook` inside each rebalance, before revoked partitions are let go (once set, it
    /// stays).
    pub fn before_release(&self, hook: BeforeRelease) {
        let _ = self.consumer.context().before_release.set(hook);
    }

    /// How ownership changed since the last call. Changes happen only inside [`RawTopic::recv`].
    pub fn take_ownership_changes(&self) -> OwnershipChanges {
        std::mem::take(&mut lock(&self.progress).ownership_changes)
    }

    /// Per partition, the end of the log as of the last statistics.
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        lock(&self.progress).high_watermarks.clone()
    }

    /// Assigned partitions written up to the end of their log, with that end.
    pub fn caught_up(&self) -> BTreeMap<i32, i64> {
        lock(&self.progress).caught_up.clone()
    }

    /// Per partition written from: the offset written up to and the end of the log (at least
    /// that offset).
    pub fn positions(&self) -> Vec<(i32, i64, i64)> {
        let progress = lock(&self.progress);
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
                (partition, written, end)
            })
            .collect()
    }

    /// A range source whose every partition is written up to its end.
    pub fn range_done(&self) -> bool {
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

    /// Stores the offsets of partitions still assigned (a published batch may outlive them).
    pub fn store_offsets(&self, next_offsets: &BTreeMap<i32, i64>) {
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
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if let Err(error) = self.consumer.store_offsets(&list) {
            warn!(%error, "storing offsets");
        }
        lock(&self.progress).stored.extend(next_offsets);
    }

    pub fn written_offsets(&self) -> WrittenOffsets {
        WrittenOffsets(self.progress.clone())
    }

    /// True while this processor owns partition 0 of the raw topic.
    pub fn owns_first_partition(&self) -> Arc<AtomicBool> {
        self.owns_first_partition.clone()
    }

    /// Commits what is stored (in the group) and leaves, waiting for the broker at most
    /// [`CLOSE_TIMEOUT`].
    pub async fn close(self) {
        let mut stored = TopicPartitionList::new();
        if self.follows_group() {
            for (&partition, &offset) in &lock(&self.progress).stored {
                let _ = stored.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
            }
        }
        close_within(self.consumer, stored, CLOSE_TIMEOUT).await;
    }
}

/// How the partitions this processor owns changed since they were last asked for.
#[derive(Debug, Default)]
pub struct OwnershipChanges {
    pub revoked: BTreeSet<i32>,
    /// The partitions assigned (a range source's are, once, at the start).
    pub assigned: BTreeSet<i32>,
}

/// What the consume loop and the rebalance callback share.
#[derive(Default)]
struct Progress {
    ownership_changes: OwnershipChanges,
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

/// Called before revoked partitions are let go: waits for what is in flight to them.
pub type BeforeRelease = Box<dyn Fn() + Send + Sync>;

/// The consumer's context: reports lag and readiness, and lets go of revoked partitions.
pub struct SourceContext {
    topic: String,
    before_release: std::sync::OnceLock<BeforeRelease>,
    progress: Arc<Mutex<Progress>>,
    /// Whether this processor owns partition 0, and so judges the alert rules.
    owns_first_partition: Arc<AtomicBool>,
    readiness: Arc<Readiness>,
}

impl SourceContext {
    fn set_assigned(&self, progress: &mut Progress) {
        self.owns_first_partition
            .store(progress.assigned.contains(&0), Ordering::Relaxed);
    }
}

impl ClientContext for SourceContext {
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

impl ConsumerContext for SourceContext {
    // Runs inside `recv()`: between batches, or while a batch is inserted (the next one is read
    // meanwhile); the pipeline then releases that batch's rows of revoked partitions itself.
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
                progress.assigned.extend(&assigned);
                progress.ownership_changes.assigned.extend(assigned);
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
        if let Some(before_release) = self.before_release.get() {
            before_release();
        }
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
                progress.ownership_changes.revoked.insert(*partition);
                // Assigned then revoked before the pipeline looked: not this processor's now.
                progress.ownership_changes.assigned.remove(partition);
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

/// A view of how far the pipeline has written, for progress displays.
#[derive(Clone)]
pub struct WrittenOffsets(Arc<Mutex<Progress>>);

impl WrittenOffsets {
    /// Per partition, the offset after the last message written.
    pub fn get(&self) -> BTreeMap<i32, i64> {
        lock(&self.0).stored.clone()
    }
}

/// Commits `stored` and closes the consumer (leaving the group) on a thread of its own, waiting
/// for them at most `timeout`: against a broker that hangs, librdkafka's synchronous commit and
/// its close never return. The group then resumes from the last periodic commit (at most a
/// second older), and those messages are written again, collapsed by event_id.
async fn close_within(
    consumer: StreamConsumer<SourceContext>,
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
