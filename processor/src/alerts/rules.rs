//! What an operator configures: the alert topic, how often and how late windows are judged,
//! and the rules.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::AlertError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    pub topic: String,
    /// Partitions the topic is created with when it does not exist.
    pub partitions: i32,
    /// How often the complete windows are judged.
    pub judge_interval_ms: u64,
    /// How long after a window's end late messages may still arrive (the bridge stamps
    /// `received_at` before its produce, which may take seconds).
    pub allowed_lateness_seconds: u32,
    pub rules: Vec<AlertRule>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            topic: "eye.alerts".into(),
            partitions: 4,
            judge_interval_ms: 5_000,
            allowed_lateness_seconds: 60,
            rules: Vec::new(),
        }
    }
}

/// What a rule counts, per key and window, and when the window is over the threshold: every
/// condition given must hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// The failures counted; every type when absent.
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub group_by: GroupBy,
    pub window_minutes: u32,
    /// Over the threshold when the window has more failures than this.
    #[serde(default)]
    pub failures_above: Option<u64>,
    /// Over the threshold when failures / events (valid and failed) is above this (0.05 = 5%)…
    #[serde(default)]
    pub rate_above: Option<f64>,
    /// …and the window has at least this many events.
    #[serde(default)]
    pub min_events: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    Application,
    /// Application, category and name.
    EventType,
}

impl AlertSettings {
    pub fn check(&self) -> Result<(), AlertError> {
        let mut names = HashSet::new();
        for rule in &self.rules {
            if rule.failures_above.is_none() && rule.rate_above.is_none() {
                return Err(AlertError::NoThreshold(rule.name.clone()));
            }
            if rule.window_minutes == 0 {
                return Err(AlertError::EmptyWindow(rule.name.clone()));
            }
            if !names.insert(&rule.name) {
                return Err(AlertError::DuplicateName(rule.name.clone()));
            }
        }
        Ok(())
    }
}

impl AlertRule {
    pub(super) fn window_seconds(&self) -> u32 {
        self.window_minutes * 60
    }
}
