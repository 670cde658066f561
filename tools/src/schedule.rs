//! Open-loop sending: each request is due at a time set by the rate alone, and its latency counts
//! from then. A client that waits for a reply sends its next request late when the system under
//! test stalls; timed from the late send, the stall would not show (coordinated omission). Timed
//! from when it was due, every request due during the stall carries it.

use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

/// A request sent more than this after it was due went out late: its clients could not keep the
/// rate, and its latency includes the wait.
pub const LATE_AFTER: Duration = Duration::from_millis(1);

/// Whether a request due at `due` and sent now goes out late.
pub fn sent_late(due: Instant) -> bool {
    due.elapsed() > LATE_AFTER
}

/// When one client's requests are due.
pub struct Schedule {
    /// None: as fast as replies allow, each request due when it is sent (closed loop).
    ticks: Option<Interval>,
}

impl Schedule {
    /// Client `client` of `clients`, which share `requests_per_second` (0: no rate). The clients
    /// are spread over one period, so their requests interleave evenly.
    pub fn new(requests_per_second: f64, client: usize, clients: usize) -> Self {
        let ticks = (requests_per_second > 0.0).then(|| {
            let period = Duration::from_secs_f64(clients as f64 / requests_per_second);
            let first =
                tokio::time::Instant::now() + period.mul_f64(client as f64 / clients.max(1) as f64);
            let mut ticks = tokio::time::interval_at(first, period);
            // Requests missed during a stall are sent at once, each still due at its own time.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            ticks
        });
        Self { ticks }
    }

    /// Waits until the next request is due and returns when it was due.
    pub async fn next_due(&mut self) -> Instant {
        match self.ticks.as_mut() {
            Some(ticks) => ticks.tick().await.into_std(),
            None => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client held up for 10 periods sends the requests it missed at once, each due at its own
    /// time, so their latencies carry the hold-up (closed-loop timing would show none of it).
    #[tokio::test]
    async fn requests_missed_during_a_stall_stay_due_at_their_own_times() {
        let mut schedule = Schedule::new(100.0, 0, 1);
        let first = schedule.next_due().await;
        // Held up (waiting for a slow reply) for 10 periods.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut dues = Vec::new();
        for _ in 0..10 {
            dues.push(schedule.next_due().await);
        }
        for (index, due) in dues.iter().enumerate() {
            assert_eq!(
                due.duration_since(first),
                Duration::from_millis(10 * (index as u64 + 1)),
                "request {index} is due on its schedule, not when it could be sent"
            );
        }
    }
}
