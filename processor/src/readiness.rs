//! Whether the processor is doing its job, for `/readyz`: its ClickHouse writes and publishes
//! go through, a broker connection is up, and while there is lag its committed offsets move. A
//! processor stuck on one batch (a dependency that hangs instead of refusing, a retry that cannot
//! succeed) is reported not ready, so whatever restarts it can see it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why `/readyz` answers 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("ClickHouse writes or session-topic publishes are failing")]
    OutputFailing,
    #[error("no connection to a Kafka broker")]
    BrokerDown,
    #[error("committed offsets have not moved for {stalled_seconds} s while {lag} messages wait")]
    Stalled { lag: i64, stalled_seconds: u64 },
    #[error("{partitions} assigned partitions have not started fetching for {stalled_seconds} s (the broker answers no offsets)")]
    NotFetching {
        partitions: usize,
        stalled_seconds: u64,
    },
}

/// What the consumer's statistics said of the assigned partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    pub broker_up: bool,
    /// Per assigned partition, the committed offset (absent before the first commit).
    pub committed: BTreeMap<i32, i64>,
    /// Messages on the assigned partitions after their committed offsets.
    pub lag: i64,
    /// Assigned partitions the consumer is not fetching from (no start offset from the broker,
    /// so their lag is unknown).
    pub not_fetching: usize,
}

#[derive(Debug)]
struct Observed {
    report: ConsumerReport,
    /// When the committed offsets last moved, or the lag was last zero.
    last_progress: Instant,
    /// Messages of the batch being written. A write that hangs stops the consumer's polling and
    /// so its statistics: the last report may predate the batch.
    writing: u64,
}

#[derive(Debug)]
pub struct Readiness {
    outputs_healthy: AtomicBool,
    observed: Mutex<Observed>,
    stalled_after: Duration,
}

impl Readiness {
    /// Ready until told otherwise; stalled once the offsets stand still for `stalled_after`
    /// while there is lag.
    pub fn new(stalled_after: Duration, now: Instant) -> Self {
        Self {
            outputs_healthy: AtomicBool::new(true),
            observed: Mutex::new(Observed {
                report: ConsumerReport {
                    broker_up: true,
                    ..ConsumerReport::default()
                },
                last_progress: now,
                writing: 0,
            }),
            stalled_after,
        }
    }

    /// Whether the last ClickHouse write or session-topic publish went through.
    pub fn set_outputs_healthy(&self, healthy: bool) {
        self.outputs_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Messages of the batch being written now (0 once it is written).
    pub fn set_writing(&self, messages: u64) {
        self.observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writing = messages;
    }

    /// Takes one statistics report of the consumer.
    pub fn observe(&self, report: ConsumerReport, now: Instant) {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let moved = report.committed.iter().any(|(partition, offset)| {
            observed
                .report
                .committed
                .get(partition)
                .is_none_or(|before| offset > before)
        });
        if moved || (report.lag <= 0 && report.not_fetching == 0) {
            observed.last_progress = now;
        }
        observed.report = report;
    }

    pub fn check(&self, now: Instant) -> Result<(), NotReady> {
        if !self.outputs_healthy.load(Ordering::Relaxed) {
            return Err(NotReady::OutputFailing);
        }
        let observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        if !observed.report.broker_up {
            return Err(NotReady::BrokerDown);
        }
        let still = now.saturating_duration_since(observed.last_progress);
        if observed.report.not_fetching > 0 && still >= self.stalled_after {
            return Err(NotReady::NotFetching {
                partitions: observed.report.not_fetching,
                stalled_seconds: still.as_secs(),
            });
        }
        let waiting = observed.report.lag.max(observed.writing as i64);
        if waiting > 0 && still >= self.stalled_after {
            return Err(NotReady::Stalled {
                lag: waiting,
                stalled_seconds: still.as_secs(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    fn report(committed: &[(i32, i64)], lag: i64) -> ConsumerReport {
        ConsumerReport {
            broker_up: true,
            committed: committed.iter().copied().collect(),
            lag,
            not_fetching: 0,
        }
    }

    #[test]
    fn offsets_standing_still_with_lag_is_stalled_after_the_limit() {
        let start = Instant::now();
        let readiness = Readiness::new(STALL, start);
        readiness.observe(report(&[(0, 10)], 5), start);
        assert_eq!(readiness.check(start + STALL / 2), Ok(()));
        readiness.observe(report(&[(0, 10)], 9), start + STALL / 2);
        assert_eq!(
            readiness.check(start + STALL),
            Err(NotReady::Stalled {
                lag: 9,
                stalled_seconds: 60
            })
        );
        // Offsets that move make it ready again.
        readiness.observe(report(&[(0, 12)], 7), start + STALL * 2);
        assert_eq!(readiness.check(start + STALL * 2), Ok(()));
    }

    #[test]
    fn offsets_standing_still_without_lag_is_ready() {
        let start = Instant::now();
        let readiness = Readiness::new(STALL, start);
        readiness.observe(report(&[(0, 10)], 0), start);
        assert_eq!(readiness.check(start + STALL * 10), Ok(()));
    }

    #[test]
    fn a_stall_is_seen_without_new_statistics() {
        // A pipeline stuck in a write does not poll, so statistics stop arriving.
        let start = Instant::now();
        let readiness = Readiness::new(STALL, start);
        readiness.observe(report(&[(1, 3)], 100), start);
        assert!(matches!(
            readiness.check(start + STALL + Duration::from_secs(1)),
            Err(NotReady::Stalled { lag: 100, .. })
        ));
    }

    #[test]
    fn partitions_that_never_start_fetching_are_not_ready_after_the_limit() {
        // tansu 0.6 on PostgreSQL 15 failed every ListOffsets: the consumer never had a position,
        // its lag was unknown, and the processor had looked ready while writing nothing.
        let start = Instant::now();
        let readiness = Readiness::new(STALL, start);
        let stuck = ConsumerReport {
            not_fetching: 4,
            ..report(&[], 0)
        };
        readiness.observe(stuck.clone(), start);
        assert_eq!(readiness.check(start + STALL / 2), Ok(()));
        readiness.observe(stuck, start + STALL);
        assert_eq!(
            readiness.check(start + STALL),
            Err(NotReady::NotFetching {
                partitions: 4,
                stalled_seconds: 60
            })
        );
        readiness.observe(report(&[(0, 1)], 0), start + STALL * 2);
        assert_eq!(readiness.check(start + STALL * 2), Ok(()));
    }

    #[test]
    fn a_write_that_hangs_after_a_caught_up_report_is_stalled() {
        let start = Instant::now();
        let readiness = Readiness::new(STALL, start);
        readiness.observe(report(&[(0, 10)], 0), start);
        readiness.set_writing(25);
        assert!(matches!(
            readiness.check(start + STALL),
            Err(NotReady::Stalled { lag: 25, .. })
        ));
        readiness.set_writing(0);
        assert_eq!(readiness.check(start + STALL), Ok(()));
    }

    #[test]
    fn broker_down_and_failing_outputs_are_not_ready_until_they_recover() {
        let start = Instant::now();
        let readiness = Readiness::new(STALL, start);
        readiness.observe(
            ConsumerReport {
                broker_up: false,
                ..report(&[], 0)
            },
            start,
        );
        assert_eq!(readiness.check(start), Err(NotReady::BrokerDown));
        readiness.observe(report(&[], 0), start);
        readiness.set_outputs_healthy(false);
        assert_eq!(readiness.check(start), Err(NotReady::OutputFailing));
        readiness.set_outputs_healthy(true);
        assert_eq!(readiness.check(start), Ok(()));
    }
}
