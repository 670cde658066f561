//! When to send a batch again.

use std::time::Duration;

use rand::Rng;

use crate::endpoint::SendError;

/// Exponential back-off with jitter: the `n`th retry waits a random time between half and all of
/// `initial × 2ⁿ` (at most `max`), never less than the bridge's `Retry-After`; after `give_up_after`
/// of retrying, the batch is undelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub give_up_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    After(Duration),
    GiveUp,
}

impl Backoff {
    /// After the `attempt`th failure (from 0), `retrying_for` since the first.
    pub fn decide(&self, error: &SendError, attempt: u32, retrying_for: Duration) -> Retry {
        if !error.is_transient() || retrying_for >= self.give_up_after {
            return Retry::GiveUp;
        }
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let jittered = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
        Retry::After(jittered.max(error.retry_after().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, retry_after: Option<u64>) -> SendError {
        SendError::Refused {
            status,
            reason: "r".into(),
            message: "m".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn waits_grow_with_jitter_up_to_the_maximum() {
        let backoff = Backoff::default();
        for attempt in 0..40 {
            let Retry::After(wait) = backoff.decide(&refused(503, None), attempt, Duration::ZERO)
            else {
                panic!("a 503 is retried");
            };
            let ceiling = (backoff.initial * 2u32.pow(attempt.min(20))).min(backoff.max);
            assert!(
                wait <= ceiling && wait >= ceiling / 2,
                "{attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn a_retry_never_comes_before_retry_after() {
        let wait = Backoff::default().decide(&refused(429, Some(7)), 0, Duration::ZERO);
        assert_eq!(wait, Retry::After(Duration::from_secs(7)));
    }

    #[test]
    fn a_permanent_refusal_or_a_long_outage_gives_up() {
        let backoff = Backoff::default();
        assert_eq!(
            backoff.decide(&refused(400, None), 0, Duration::ZERO),
            Retry::GiveUp
        );
        assert_eq!(
            backoff.decide(&refused(401, None), 0, Duration::ZERO),
            Retry::GiveUp
        );
        assert_eq!(
            backoff.decide(&refused(503, None), 9, backoff.give_up_after),
            Retry::GiveUp
        );
    }
}
