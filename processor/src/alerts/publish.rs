//! Publishing an alert: the Avro record on the alert topic, and its row in `alerts`.

use apache_avro::types::Value as Avro;
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::rules::AlertRule;
use super::{AlertError, AlertJudge};

/// A row of `eye.alerts`: one per message published.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub(super) struct AlertRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub(super) alert_id: Uuid,
    pub(super) status: String,
    pub(super) rule: String,
    pub(super) application: String,
    pub(super) category: String,
    pub(super) name: String,
    pub(super) error_type: String,
    pub(super) window_start: u32,
    pub(super) window_end: u32,
    pub(super) failures: u64,
    pub(super) events: u64,
    pub(super) rate: f64,
    pub(super) sample_event_ids: Vec<String>,
}

impl AlertJudge {
    pub(super) async fn publish(&self, rule: &AlertRule, row: &AlertRow) -> Result<(), AlertError> {
        let millis = |seconds: u32| i64::from(seconds) * 1000;
        let value = Avro::Record(vec![
            ("alert_id".into(), Avro::Uuid(row.alert_id)),
            (
                "status".into(),
                match row.status.as_str() {
                    "firing" => Avro::Enum(0, "firing".into()),
                    _ => Avro::Enum(1, "resolved".into()),
                },
            ),
            ("rule".into(), Avro::String(row.rule.clone())),
            ("application".into(), Avro::String(row.application.clone())),
            ("category".into(), Avro::String(row.category.clone())),
            ("name".into(), Avro::String(row.name.clone())),
            ("error_type".into(), Avro::String(row.error_type.clone())),
            (
                "window_start".into(),
                Avro::TimestampMillis(millis(row.window_start)),
            ),
            (
                "window_end".into(),
                Avro::TimestampMillis(millis(row.window_end)),
            ),
            ("failures".into(), Avro::Long(row.failures as i64)),
            ("events".into(), Avro::Long(row.events as i64)),
            ("rate".into(), Avro::Double(row.rate)),
            (
                "failures_above".into(),
                match rule.failures_above {
                    Some(limit) => Avro::Union(1, Box::new(Avro::Long(limit as i64))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            (
                "rate_above".into(),
                match rule.rate_above {
                    Some(limit) => Avro::Union(1, Box::new(Avro::Double(limit))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            ("min_events".into(), Avro::Long(rule.min_events as i64)),
            (
                "sample_event_ids".into(),
                Avro::Array(
                    row.sample_event_ids
                        .iter()
                        .filter_map(|id| Uuid::parse_str(id).ok())
                        .map(Avro::Uuid)
                        .collect(),
                ),
            ),
        ]);
        // Keyed by rule and key: the messages of one alert stay in order on one partition.
        let key = format!(
            "{}/{}/{}/{}",
            row.rule, row.application, row.category, row.name
        );
        self.topic.publish(&key, &value).await?;
        Ok(())
    }
}
