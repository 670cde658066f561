//! Alert rules against a real broker and ClickHouse: an alert fires once for its window, resolves
//! on the first window back under the threshold, is not published again after a restart, and a
//! replay of the raw log into fresh tables publishes the same alerts with the same ids; an alert
//! the broker refuses for good does not stop the rules.

use std::collections::BTreeSet;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use chrono::{DateTime, TimeZone, Utc};
use eye_core::schemas::TopicSchema;
use eye_devenv::testing::unique_name;
use eye_processor::alerts::{AlertRule, GroupBy};
use eye_processor::config::ProcessorConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

use crate::common::*;

/// One alert message, as the fields a consumer compares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct AlertMessage {
    alert_id: String,
    status: String,
    application: String,
    window_start: i64,
    failures: i64,
    events: i64,
    samples: Vec<String>,
}

fn decode(schema: &TopicSchema, bytes: &[u8]) -> AlertMessage {
    let Avro::Record(fields) = schema
        .decode(bytes)
        .expect("an alert in single-object encoding")
    else {
        panic!("not a record");
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let text = |value: Avro| match value {
        Avro::String(text) | Avro::Enum(_, text) => text,
        Avro::Uuid(uuid) => uuid.to_string(),
        other => panic!("{other:?}"),
    };
    let long = |value: Avro| match value {
        Avro::Long(n) | Avro::TimestampMillis(n) => n,
        other => panic!("{other:?}"),
    };
    let Avro::Array(samples) = field("sample_event_ids") else {
        panic!("samples");
    };
    AlertMessage {
        alert_id: text(field("alert_id")),
        status: text(field("status")),
        application: text(field("application")),
        window_start: long(field("window_start")) / 1000,
        failures: long(field("failures")),
        events: long(field("events")),
        samples: samples.into_iter().map(text).collect(),
    }
}

fn at(minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2021, 1, 1, 10, minute, second)
        .unwrap()
}

/// A pageview received at `received_at`; a `future_timestamp` failure when `future`.
fn pageview(application: &str, received_at: DateTime<Utc>, future: bool) -> (RawMessage, Uuid) {
    let mut event = reference("pageview");
    event["session_id"] = json!(Uuid::new_v4().to_string());
    let occurred = if future {
        received_at + chrono::Duration::hours(1)
    } else {
        received_at - chrono::Duration::seconds(1)
    };
    event["timestamp"] = json!(occurred.format("%Y-%m-%d %H:%M:%S%.6f").to_string());
    let event_id = Uuid::new_v4();
    let headers = vec![
        ("eye.event_id", event_id.to_string()),
        ("eye.received_at", received_at.to_rfc3339()),
        ("eye.application", application.to_string()),
    ];
    ((event.to_string().into_bytes(), headers), event_id)
}

fn with_rule(setup: &Setup, alerts_topic: &str) -> ProcessorConfig {
    let mut config = setup.config();
    config.alerts.topic = alerts_topic.to_string();
    config.alerts.judge_interval_ms = 300;
    config.alerts.rules = vec![AlertRule {
        name: "future timestamps".into(),
        error_type: Some("future_timestamp".into()),
        group_by: GroupBy::Application,
        window_minutes: 5,
        failures_above: Some(3),
        rate_above: None,
        min_events: 0,
    }];
    config
}

async fn alerts_on(setup: &Setup, topic: &str, expected: usize) -> Vec<AlertMessage> {
    let schema = TopicSchema::load(&repo("schemas/avro/topics/alert.avsc")).unwrap();
    let mut alerts: Vec<AlertMessage> = read_topic(&setup.bootstrap, topic, 4, expected)
        .await
        .iter()
        .map(|message| decode(&schema, message.payload().unwrap()))
        .collect();
    alerts.sort_by_key(|alert| (alert.window_start, alert.status.clone()));
    alerts
}

/// Raw messages that make the rule publish four alerts: fired and resolved twice for `shop`,
/// nothing for `blog`; with the ids of the first window's failures.
fn four_alerts() -> (Vec<RawMessage>, BTreeSet<String>) {
    let mut messages = Vec::new();
    let mut failed_in_first_window = BTreeSet::new();
    // 10:00–10:05: five failures (over 3) and two valid events → fires.
    for second in 0..5 {
        let (message, event_id) = pageview("shop", at(1, second * 7), true);
        failed_in_first_window.insert(event_id.to_string());
        messages.push(message);
    }
    messages.push(pageview("shop", at(2, 0), false).0);
    messages.push(pageview("shop", at(3, 0), false).0);
    // 10:05–10:10: one failure → resolves the first alert.
    messages.push(pageview("shop", at(6, 0), true).0);
    // 10:15–10:20: four failures → a second alert, resolved by the empty window after it.
    for second in 0..4 {
        messages.push(pageview("shop", at(16, second), true).0);
    }
    // Another application under the threshold: no alert.
    for second in 0..2 {
        messages.push(pageview("blog", at(1, second), true).0);
    }
    (messages, failed_in_first_window)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_once_per_window_resolves_and_replays_with_the_same_ids() {
    let setup = Setup::shared().await;
    let (messages, failed_in_first_window) = four_alerts();
    setup.produce(&messages).await;

    let alerts_topic = unique_name("alerts");
    let processor = Processor::start(with_rule(&setup, &alerts_topic)).await;
    let alerts = alerts_on(&setup, &alerts_topic, 4).await;
    let window = |minute: u32| at(minute, 0).timestamp();
    let judgements: Vec<(&str, &str, i64, i64)> = alerts
        .iter()
        .map(|alert| {
            (
                alert.application.as_str(),
                alert.status.as_str(),
                alert.window_start,
                alert.failures,
            )
        })
        .collect();
    assert_eq!(
        judgements,
        [
            ("shop", "firing", window(0), 5),
            ("shop", "resolved", window(5), 1),
            ("shop", "firing", window(15), 4),
            ("shop", "resolved", window(20), 0),
        ]
    );
    assert_eq!(alerts[0].alert_id, alerts[1].alert_id, "resolved matches");
    assert_eq!(alerts[2].alert_id, alerts[3].alert_id, "resolved matches");
    assert_ne!(alerts[0].alert_id, alerts[2].alert_id);
    assert_eq!(alerts[0].events, 7, "valid and failed events of the window");
    assert_eq!(
        alerts[0].samples.iter().cloned().collect::<BTreeSet<_>>(),
        failed_in_first_window,
        "the window's failures as samples"
    );
    assert_eq!(
        setup.count("SELECT count() FROM {db}.alerts FINAL"),
        4,
        "each message recorded"
    );

    // A restart judges every window again and publishes nothing new.
    processor.stop().await;
    let mut restarted = with_rule(&setup, &alerts_topic);
    restarted.consumer.group_id = unique_name("processor");
    let processor = Processor::start(restarted).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    processor.stop().await;
    assert_eq!(
        alerts_on(&setup, &alerts_topic, 4).await.len(),
        4,
        "once per window"
    );

    // A replay of the raw log into fresh tables publishes the same alerts.
    let replay = setup.with_fresh_database();
    let replay_topic = unique_name("alerts");
    let processor = Processor::start(with_rule(&replay, &replay_topic)).await;
    let replayed = alerts_on(&replay, &replay_topic, 4).await;
    processor.stop().await;
    assert_eq!(replayed, alerts);
}

/// An alert the broker refuses for what it is can never be published: it is not retried (which
/// would stop judging for good), it is counted and still recorded in `alerts`, and the rules go
/// on to the next alert. Here the alert topic's `max.message.bytes` is smaller than any alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_the_broker_refuses_for_good_are_recorded_and_judging_goes_on() {
    let setup = Setup::shared().await;
    let (messages, _) = four_alerts();
    setup.produce(&messages).await;
    let alerts_topic = unique_name("alerts");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &setup.bootstrap)
        .create()
        .unwrap();
    let topic =
        NewTopic::new(&alerts_topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "64");
    for result in admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }

    let processor = Processor::start(with_rule(&setup, &alerts_topic)).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.alerts FINAL",
            4,
            Duration::from_secs(60),
        )
        .await;
    let refused = counter_value(&processor, "eye_processor_alerts_refused_total").await;
    processor.stop().await;
    assert!(refused >= 4, "eye_processor_alerts_refused_total {refused}");
    assert_eq!(
        setup.count("SELECT countDistinct(alert_id, status) FROM {db}.alerts FINAL"),
        4,
        "two alerts, each fired and resolved"
    );
}

/// The README's Rust snippet is the example's loop, so it compiles and stays true.
#[test]
fn readme_snippet_is_the_example_program() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = &readme[readme.find("### Alerts").expect("an Alerts section")..];
    let snippet = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a Rust block");
    let example = std::fs::read_to_string(repo("processor/examples/follow_alerts.rs")).unwrap();
    assert!(example.contains(snippet), "{snippet}");
}
