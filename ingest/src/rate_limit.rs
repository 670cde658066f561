//! Per-application rate limits: a token bucket of events per application (governor's GCRA), so
//! one application's flood is refused with 429 and a `Retry-After` it can honour, and the others
//! go on being served.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{Application, RateLimit};

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error(
        "application {id}: rate_limit needs events_per_second > 0 and burst_events of at least \
         limits.max_batch_events ({max_batch_events}), so every allowed batch can pass"
    )]
    Unusable { id: String, max_batch_events: usize },
}

/// Over the application's rate: retry after `retry_after`.
#[derive(Debug, thiserror::Error)]
#[error("application {application} is over its rate limit of {events_per_second} events/s")]
pub struct RateLimited {
    pub application: String,
    pub events_per_second: u32,
    pub retry_after: Duration,
}

pub struct RateLimits {
    by_application: HashMap<String, (RateLimit, DefaultDirectRateLimiter)>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(
        applications: &[Application],
        max_batch_events: usize,
    ) -> Result<Self, RateLimitError> {
        let mut by_application = HashMap::new();
        for application in applications {
            let Some(limit) = application.rate_limit else {
                continue;
            };
            let unusable = || RateLimitError::Unusable {
                id: application.id.clone(),
                max_batch_events,
            };
            let rate = NonZeroU32::new(limit.events_per_second).ok_or_else(unusable)?;
            let burst = NonZeroU32::new(limit.burst_events)
                .filter(|burst| burst.get() as usize >= max_batch_events)
                .ok_or_else(unusable)?;
            let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
            by_application.insert(application.id.clone(), (limit, limiter));
        }
        Ok(Self {
            by_application,
            clock: DefaultClock::default(),
        })
    }

    /// Takes `events` tokens from the application's bucket, or says when they will be there.
    /// A refused request takes none.
    pub fn admit(&self, application: &str, events: usize) -> Result<(), RateLimited> {
        let Some((limit, limiter)) = self.by_application.get(application) else {
            return Ok(());
        };
        let limited = |retry_after| RateLimited {
            application: application.to_string(),
            events_per_second: limit.events_per_second,
            retry_after,
        };
        let events =
            NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        match limiter.check_n(events) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(limited(not_until.wait_time_from(self.clock.now()))),
            // More than the burst: cannot happen for a batch within max_batch_events (checked
            // at start); a second is the refill's unit.
            Err(_) => Err(limited(Duration::from_secs(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events_per_second: u32, burst_events: u32) -> Result<RateLimits, RateLimitError> {
        RateLimits::new(
            &[Application {
                id: "shop".into(),
                rate_limit: Some(RateLimit {
                    events_per_second,
                    burst_events,
                }),
                ..Application::default()
            }],
            10,
        )
    }

    #[test]
    fn a_burst_passes_then_the_next_event_waits_for_the_refill() {
        let limits = limits(2, 10).unwrap();
        limits.admit("shop", 10).unwrap();
        let limited = limits.admit("shop", 1).unwrap_err();
        assert!(limited.retry_after > Duration::ZERO);
        assert!(limited.retry_after <= Duration::from_millis(500));
        assert!(limits.admit("blog", 1_000).is_ok(), "no limit configured");
    }

    #[test]
    fn a_refused_batch_takes_no_tokens() {
        let limits = limits(1, 10).unwrap();
        limits.admit("shop", 6).unwrap();
        assert!(limits.admit("shop", 6).is_err());
        limits.admit("shop", 4).unwrap();
    }

    #[test]
    fn a_burst_below_the_batch_size_or_a_zero_rate_is_refused_at_start() {
        assert!(limits(5, 9).is_err());
        assert!(limits(0, 10).is_err());
        assert!(limits(5, 10).is_ok());
    }
}
