//! The pure part: from a key's window counts, in order, which alerts open and close. No I/O, so
//! the same counts always give the same alerts (and ids).

use std::collections::BTreeMap;

use clickhouse::Row;
use serde::Deserialize;
use uuid::Uuid;

use super::rules::AlertRule;

/// Namespace of alert ids: UUIDv5 of rule, key and opening window.
const ALERT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3b9e_61d2_7a44_4f0e_9c15_d8a2_47e0_b6c3);

/// A rule's key: the application, and for `event_type` rules the category and name.
pub(super) type Key = (String, String, String);

/// One key's counts in one window, as read from ClickHouse.
#[derive(Debug, Clone, Default, Row, Deserialize)]
pub(super) struct WindowCounts {
    pub(super) application: String,
    pub(super) category: String,
    pub(super) name: String,
    pub(super) window_start: u32,
    /// Failures the rule counts.
    pub(super) failures: u64,
    /// Failures of every type, and valid events: with `failures`, the rate's denominator.
    pub(super) all_failures: u64,
    pub(super) valid: u64,
}

impl WindowCounts {
    /// Whether these counts are over the rule's threshold: every condition given holds.
    pub(super) fn over(&self, rule: &AlertRule) -> bool {
        let events = self.events();
        rule.failures_above
            .is_none_or(|limit| self.failures > limit)
            && rule
                .rate_above
                .is_none_or(|limit| events >= rule.min_events && self.rate() > limit)
    }

    pub(super) fn events(&self) -> u64 {
        self.valid + self.all_failures
    }

    pub(super) fn rate(&self) -> f64 {
        match self.events() {
            0 => 0.0,
            events => self.failures as f64 / events as f64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// An alert left open by the last window judged for its key.
#[derive(Debug, Clone)]
pub(super) struct OpenAlert {
    pub(super) alert_id: Uuid,
    pub(super) last_window: u32,
}

/// What one rule has judged so far.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleProgress {
    /// Windows before this start (seconds) are judged.
    pub(super) judged_until: u32,
    pub(super) open: BTreeMap<Key, OpenAlert>,
}

/// A judgement to publish: an alert opening or closing.
#[derive(Debug)]
pub(super) struct Judgement {
    pub(super) alert_id: Uuid,
    pub(super) status: AlertStatus,
    pub(super) counts: WindowCounts,
}

pub(super) fn alert_id(rule: &str, key: &Key, window_start: u32) -> Uuid {
    let (application, category, name) = key;
    let text = format!("{rule}\n{application}\n{category}\n{name}\n{window_start}");
    Uuid::new_v5(&ALERT_ID_NAMESPACE, text.as_bytes())
}

/// Walks each key's windows in order (windows without data count as zero) and opens or closes
/// its alert; `until` is where the judged windows end.
pub(super) fn judge_windows(
    rule: &AlertRule,
    progress: &mut RuleProgress,
    counts: Vec<WindowCounts>,
    until: u32,
) -> Vec<Judgement> {
    let window = rule.window_seconds();
    let mut judgements = Vec::new();
    let empty = |key: &Key, window_start: u32| WindowCounts {
        application: key.0.clone(),
        category: key.1.clone(),
        name: key.2.clone(),
        window_start,
        ..WindowCounts::default()
    };
    for counts in counts {
        let key: Key = (
            counts.application.clone(),
            counts.category.clone(),
            counts.name.clone(),
        );
        // A window without data after an open alert's last one closes it.
        if let Some(open) = progress.open.get(&key) {
            if counts.window_start > open.last_window + window {
                judgements.push(Judgement {
                    alert_id: open.alert_id,
                    status: AlertStatus::Resolved,
                    counts: empty(&key, open.last_window + window),
                });
                progress.open.remove(&key);
            }
        }
        let over = counts.over(rule);
        match (progress.open.get_mut(&key), over) {
            (Some(open), true) => open.last_window = counts.window_start,
            (Some(open), false) => {
                judgements.push(Judgement {
                    alert_id: open.alert_id,
                    status: AlertStatus::Resolved,
                    counts,
                });
                progress.open.remove(&key);
            }
            (None, true) => {
                let alert_id = alert_id(&rule.name, &key, counts.window_start);
                progress.open.insert(
                    key,
                    OpenAlert {
                        alert_id,
                        last_window: counts.window_start,
                    },
                );
                judgements.push(Judgement {
                    alert_id,
                    status: AlertStatus::Firing,
                    counts,
                });
            }
            (None, false) => {}
        }
    }
    // Open alerts whose next window is judged and held no data.
    let closed: Vec<Key> = progress
        .open
        .iter()
        .filter(|(_, open)| open.last_window + window < until)
        .map(|(key, _)| key.clone())
        .collect();
    for key in closed {
        let open = progress.open.remove(&key).expect("listed above");
        judgements.push(Judgement {
            alert_id: open.alert_id,
            status: AlertStatus::Resolved,
            counts: empty(&key, open.last_window + window),
        });
    }
    progress.judged_until = until;
    judgements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::GroupBy;

    fn rule() -> AlertRule {
        AlertRule {
            name: "future".into(),
            error_type: Some("future_timestamp".into()),
            group_by: GroupBy::Application,
            window_minutes: 5,
            failures_above: Some(3),
            rate_above: None,
            min_events: 0,
        }
    }

    fn counts(application: &str, window_start: u32, failures: u64) -> WindowCounts {
        WindowCounts {
            application: application.into(),
            window_start,
            failures,
            all_failures: failures,
            ..WindowCounts::default()
        }
    }

    fn opened_and_closed(judgements: &[Judgement]) -> Vec<(&str, u32, AlertStatus)> {
        judgements
            .iter()
            .map(|d| {
                (
                    d.counts.application.as_str(),
                    d.counts.window_start,
                    d.status,
                )
            })
            .collect()
    }

    #[test]
    fn an_alert_opens_once_stays_open_while_over_and_closes_on_the_first_window_under() {
        let mut progress = RuleProgress::default();
        let judgements = judge_windows(
            &rule(),
            &mut progress,
            vec![
                counts("shop", 0, 4),
                counts("shop", 300, 9),
                counts("shop", 600, 1),
                counts("blog", 0, 2),
            ],
            900,
        );
        assert_eq!(
            opened_and_closed(&judgements),
            [
                ("shop", 0, AlertStatus::Firing),
                ("shop", 600, AlertStatus::Resolved),
            ]
        );
        assert_eq!(judgements[0].alert_id, judgements[1].alert_id);
    }

    #[test]
    fn a_window_without_data_closes_an_alert_only_once_it_is_judged() {
        let mut progress = RuleProgress::default();
        let opened = judge_windows(&rule(), &mut progress, vec![counts("shop", 0, 4)], 300);
        assert_eq!(
            opened_and_closed(&opened),
            [("shop", 0, AlertStatus::Firing)]
        );
        // The next window is not complete yet: nothing to say.
        assert!(judge_windows(&rule(), &mut progress, vec![], 300).is_empty());
        let closed = judge_windows(&rule(), &mut progress, vec![], 600);
        assert_eq!(
            opened_and_closed(&closed),
            [("shop", 300, AlertStatus::Resolved)]
        );
        assert_eq!(closed[0].alert_id, opened[0].alert_id);
    }

    #[test]
    fn judging_in_one_step_or_window_by_window_gives_the_same_judgements() {
        let series = vec![
            counts("shop", 0, 4),
            counts("shop", 300, 5),
            counts("shop", 1200, 7),
        ];
        let mut at_once = RuleProgress::default();
        let all = judge_windows(&rule(), &mut at_once, series.clone(), 2400);
        let mut stepwise = RuleProgress::default();
        let mut steps = Vec::new();
        for until in (300..=2400).step_by(300) {
            let window: Vec<WindowCounts> = series
                .iter()
                .filter(|c| c.window_start + 300 == until)
                .cloned()
                .collect();
            steps.extend(judge_windows(&rule(), &mut stepwise, window, until));
        }
        let ids = |judgements: &[Judgement]| -> Vec<(Uuid, AlertStatus)> {
            judgements.iter().map(|d| (d.alert_id, d.status)).collect()
        };
        assert_eq!(ids(&all), ids(&steps));
        assert_eq!(
            opened_and_closed(&all),
            [
                ("shop", 0, AlertStatus::Firing),
                ("shop", 600, AlertStatus::Resolved),
                ("shop", 1200, AlertStatus::Firing),
                ("shop", 1500, AlertStatus::Resolved),
            ]
        );
    }

    #[test]
    fn a_rate_rule_needs_its_minimum_of_events() {
        let rule = AlertRule {
            failures_above: None,
            rate_above: Some(0.1),
            min_events: 100,
            ..rule()
        };
        let few = WindowCounts {
            failures: 5,
            all_failures: 5,
            valid: 5,
            ..WindowCounts::default()
        };
        let many = WindowCounts {
            failures: 20,
            all_failures: 20,
            valid: 100,
            ..WindowCounts::default()
        };
        assert!(!few.over(&rule));
        assert!(many.over(&rule));
    }
}
