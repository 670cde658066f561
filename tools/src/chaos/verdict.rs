//! What landed, judged against what the clients were told: every acknowledged event exactly
//! once in the table its kind belongs to, nothing the load did not send, and the derived
//! sessions and error counts equal to what was generated. Counts are attributed to the phase
//! (the fault) during which the event's 202 arrived.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::clients::Ledger;

/// How often an event id is in each table (read with FINAL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copies {
    pub events: u64,
    pub event_errors: u64,
}

/// What ClickHouse holds after the run.
#[derive(Debug, Default)]
pub struct Landed {
    pub copies: HashMap<Uuid, Copies>,
    /// `session_summary.event_count` per session.
    pub session_events: HashMap<Uuid, u64>,
    /// Failures per error type, from `error_counts`.
    pub error_counts: BTreeMap<String, u64>,
}

/// One phase of the run: from `started` until the next phase starts.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub started: Instant,
    /// Seconds from the fault's end (the service restarted or continued) to the first 202;
    /// None if none came.
    pub first_accept_seconds: Option<f64>,
    /// Seconds from the fault's end until the processor had committed everything on the topic at
    /// that moment; None if it did not within the wait.
    pub backlog_seconds: Option<f64>,
    /// Whether each `/readyz` (ingest, processor) answered anything but 200 during the phase.
    pub ingest_unready_seen: bool,
    pub processor_unready_seen: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseCounts {
    pub acknowledged: u64,
    pub refused: u64,
    /// Acknowledged, and in neither table.
    pub lost: u64,
    /// Rows beyond the first of an acknowledged event, over both tables.
    pub duplicated: u64,
    /// Acknowledged, and only in the other kind's table.
    pub misfiled: u64,
    /// The longest any request took, whatever its answer.
    pub slowest_reply: Duration,
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub phases: Vec<PhaseCounts>,
    /// Event ids in the tables that no client sent.
    pub unexpected: u64,
    /// Sessions whose event count differs from the acknowledged valid events of it (or that
    /// should not be there).
    pub session_mismatches: u64,
    /// Error types whose count differs: (type, expected, found).
    pub error_count_mismatches: Vec<(String, u64, u64)>,
    pub rejected: u64,
    pub abandoned: u64,
}

impl Verdict {
    pub fn phase_passed(&self, index: usize, phase: &Phase) -> bool {
        let counts = &self.phases[index];
        counts.lost == 0
            && counts.duplicated == 0
            && counts.misfiled == 0
            && phase.first_accept_seconds.is_some()
            && phase.backlog_seconds.is_some()
    }
}

/// The index of the phase `at` falls in (phases are in time order).
fn phase_of(phases: &[Phase], at: Instant) -> usize {
    phases
        .iter()
        .rposition(|phase| phase.started <= at)
        .unwrap_or(0)
}

pub fn judge(ledger: &Ledger, phases: &[Phase], landed: &Landed) -> Verdict {
    let mut verdict = Verdict {
        phases: vec![PhaseCounts::default(); phases.len()],
        rejected: ledger.rejected.len() as u64,
        abandoned: ledger.abandoned.len() as u64,
        ..Verdict::default()
    };
    for refusal in &ledger.refusals {
        verdict.phases[phase_of(phases, refusal.at)].refused += 1;
    }
    for &(at, took) in &ledger.attempts {
        let counts = &mut verdict.phases[phase_of(phases, at)];
        counts.slowest_reply = counts.slowest_reply.max(took);
    }
    let mut sent: HashSet<Uuid> = HashSet::new();
    let mut session_events: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    let mut error_counts: BTreeMap<String, HashSet<Uuid>> = BTreeMap::new();
    for acknowledged in &ledger.acknowledged {
        let event = &acknowledged.event;
        let counts = &mut verdict.phases[phase_of(phases, acknowledged.at)];
        // A client's retry after a lost 202 is acknowledged twice; it is one event.
        if !sent.insert(event.event_id) {
            continue;
        }
        counts.acknowledged += 1;
        let copies = landed
            .copies
            .get(&event.event_id)
            .copied()
            .unwrap_or_default();
        let (own, other) = match event.failure {
            None => (copies.events, copies.event_errors),
            Some(_) => (copies.event_errors, copies.events),
        };
        match (own, other) {
            (0, 0) => counts.lost += 1,
            (0, _) => counts.misfiled += 1,
            _ => counts.duplicated += own + other - 1,
        }
        match event.failure {
            None => {
                session_events
                    .entry(event.session_id)
                    .or_default()
                    .insert(event.event_id);
            }
            Some(kind) => {
                error_counts
                    .entry(kind.to_string())
                    .or_default()
                    .insert(event.event_id);
            }
        }
    }
    // Events never acknowledged may still have reached the topic (a 503 after the broker took
    // them): they were sent, so they are not unexpected.
    sent.extend(ledger.abandoned.iter().map(|event| event.event_id));
    sent.extend(ledger.rejected.iter().map(|(event, _)| event.event_id));
    verdict.unexpected = landed
        .copies
        .keys()
        .filter(|event_id| !sent.contains(event_id))
        .count() as u64;
    verdict.session_mismatches = session_events
        .iter()
        .filter(|(session, events)| {
            landed.session_events.get(session).copied() != Some(events.len() as u64)
        })
        .count() as u64
        + landed
            .session_events
            .keys()
            .filter(|session| !session_events.contains_key(session))
            .count() as u64;
    let kinds: HashSet<&String> = error_counts
        .keys()
        .chain(landed.error_counts.keys())
        .collect();
    let mut kinds: Vec<&String> = kinds.into_iter().collect();
    kinds.sort();
    for kind in kinds {
        let expected = error_counts.get(kind).map_or(0, |ids| ids.len() as u64);
        let found = landed.error_counts.get(kind).copied().unwrap_or(0);
        if expected != found {
            verdict
                .error_count_mismatches
                .push((kind.clone(), expected, found));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::clients::{Acknowledged, Refusal};
    use crate::traffic::GeneratedEvent;

    fn event(id: u128, session: u128, failure: Option<&'static str>) -> GeneratedEvent {
        GeneratedEvent {
            event_id: Uuid::from_u128(id),
            session_id: Uuid::from_u128(session),
            failure,
            bytes: Vec::new(),
        }
    }

    fn phase(name: &str, started: Instant) -> Phase {
        Phase {
            name: name.into(),
            started,
            first_accept_seconds: Some(0.0),
            backlog_seconds: Some(0.0),
            ingest_unready_seen: false,
            processor_unready_seen: false,
        }
    }

    #[test]
    fn lost_duplicated_and_misfiled_events_count_in_the_phase_of_their_202() {
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let phases = [phase("steady", start), phase("broker SIGKILL", later)];
        let ack = |event, at| Acknowledged { event, at };
        let ledger = Ledger {
            acknowledged: vec![
                ack(event(1, 100, None), start),
                ack(event(2, 100, None), later),
                ack(event(3, 100, Some("invalid_data")), later),
                ack(event(4, 100, None), later),
                ack(event(5, 100, Some("invalid_data")), later),
            ],
            refusals: vec![Refusal {
                what: "503".into(),
                at: later + Duration::from_secs(1),
            }],
            attempts: vec![
                (start, Duration::from_millis(3)),
                (later + Duration::from_secs(1), Duration::from_millis(40)),
                (later + Duration::from_secs(2), Duration::from_millis(7)),
            ],
            ..Ledger::default()
        };
        let copies = |events, event_errors| Copies {
            events,
            event_errors,
        };
        let landed = Landed {
            copies: HashMap::from([
                (Uuid::from_u128(1), copies(1, 0)),
                // 2 is lost; 3 is kept twice; 4 went to the wrong table; 5 is fine.
                (Uuid::from_u128(3), copies(0, 2)),
                (Uuid::from_u128(4), copies(0, 1)),
                (Uuid::from_u128(5), copies(0, 1)),
                (Uuid::from_u128(99), copies(1, 0)),
            ]),
            session_events: HashMap::from([(Uuid::from_u128(100), 3)]),
            error_counts: BTreeMap::from([("invalid_data".into(), 2)]),
        };
        let verdict = judge(&ledger, &phases, &landed);
        assert_eq!(
            verdict.phases[0],
            PhaseCounts {
                acknowledged: 1,
                slowest_reply: Duration::from_millis(3),
                ..PhaseCounts::default()
            }
        );
        assert_eq!(
            verdict.phases[1],
            PhaseCounts {
                acknowledged: 4,
                refused: 1,
                lost: 1,
                duplicated: 1,
                misfiled: 1,
                slowest_reply: Duration::from_millis(40),
            }
        );
        assert_eq!(verdict.unexpected, 1, "99 was never sent");
        assert_eq!(verdict.session_mismatches, 0, "three valid events of 100");
        assert!(verdict.error_count_mismatches.is_empty());
        assert!(verdict.phase_passed(0, &phases[0]));
        assert!(!verdict.phase_passed(1, &phases[1]));
    }

    #[test]
    fn sessions_and_error_counts_must_equal_the_acknowledged_events() {
        let start = Instant::now();
        let phases = [phase("steady", start)];
        let ledger = Ledger {
            acknowledged: vec![
                Acknowledged {
                    event: event(1, 100, None),
                    at: start,
                },
                Acknowledged {
                    event: event(2, 200, Some("future_timestamp")),
                    at: start,
                },
            ],
            ..Ledger::default()
        };
        let landed = Landed {
            copies: HashMap::from([
                (
                    Uuid::from_u128(1),
                    Copies {
                        events: 1,
                        event_errors: 0,
                    },
                ),
                (
                    Uuid::from_u128(2),
                    Copies {
                        events: 0,
                        event_errors: 1,
                    },
                ),
            ]),
            // Session 100 counted twice (a retry counted as a new event); 300 never had one.
            session_events: HashMap::from([(Uuid::from_u128(100), 2), (Uuid::from_u128(300), 1)]),
            error_counts: BTreeMap::from([("future_timestamp".into(), 2)]),
        };
        let verdict = judge(&ledger, &phases, &landed);
        assert_eq!(verdict.session_mismatches, 2);
        assert_eq!(
            verdict.error_count_mismatches,
            vec![("future_timestamp".to_string(), 1, 2)]
        );
    }
}
