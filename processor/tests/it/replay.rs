//! `eye-processor replay` against a real broker and ClickHouse: after a full replay every table
//! holds what the live processor built, also when live traffic races the replay; alerts come out
//! with the same ids.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use eye_devenv::testing::unique_name;
use eye_processor::alerts::{AlertRule, GroupBy};
use eye_processor::config::ProcessorConfig;
use eye_processor::replay::replay;
use serde_json::json;
use uuid::Uuid;

use crate::common::*;

/// A reproducible mix over many sessions and the 40 minutes of `received_at` from `hour` o'clock on
/// 2021-01-01: valid events of the three types, out of order, about one in six failing (wrong
/// type, future timestamp, not JSON), one in ten produced twice.
fn traffic(seed: u64, sessions: u64, hour: i64) -> Vec<RawMessage> {
    let mut state = seed;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let received_base: i64 = 1_609_459_200 + hour * 3_600; // 2021-01-01 00:00:00 UTC + hours
    let kinds = [
        ("page interaction", "pageview"),
        ("page interaction", "cta click"),
        ("form interaction", "submit"),
    ];
    let mut messages = Vec::new();
    for session in 0..sessions {
        let session_id = Uuid::from_u128((u128::from(seed) << 64) + u128::from(session));
        let application = ["shop", "blog"][(session % 2) as usize];
        for index in 0..2 + next(8) {
            let (category, name) = kinds[next(3) as usize];
            let received_s = received_base + next(2_400) as i64;
            let occurred_us = received_s * 1_000_000 - next(600_000_000) as i64;
            let mut event = json!({
                "session_id": session_id.to_string(),
                "category": category,
                "name": name,
                "data": {"host": "h", "path": format!("/{}", next(6))},
                "timestamp": DateTime::from_timestamp_micros(occurred_us).unwrap()
                    .format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            });
            if name == "cta click" {
                event["data"]["element"] = json!("button");
            }
            if name == "submit" {
                event["data"]["form"] = json!({"email": "a@b.c"});
            }
            let mut payload = event.to_string().into_bytes();
            match next(12) {
                0 => {
                    event["data"]["path"] = json!(404);
                    payload = event.to_string().into_bytes();
                }
                1 => {
                    event["timestamp"] = json!(DateTime::from_timestamp(received_s + 7_200, 0)
                        .unwrap()
                        .to_rfc3339());
                    payload = event.to_string().into_bytes();
                }
                2 if index % 2 == 0 => payload = b"{not json".to_vec(),
                _ => {}
            }
            let event_id = Uuid::from_u128(
                (u128::from(seed) << 96) + (u128::from(session) << 32) + u128::from(index),
            );
            let message: RawMessage = (
                payload,
                vec![
                    ("eye.event_id", event_id.to_string()),
                    ("eye.application", application.to_string()),
                    (
                        "eye.received_at",
                        DateTime::from_timestamp(received_s, 0)
                            .unwrap()
                            .to_rfc3339_opts(SecondsFormat::Micros, true),
                    ),
                ],
            );
            if next(10) == 0 {
                messages.push(message.clone());
            }
            messages.push(message);
        }
    }
    for index in (1..messages.len()).rev() {
        messages.swap(index, next(index as u64 + 1) as usize);
    }
    messages
}

fn with_rules(setup: &Setup) -> ProcessorConfig {
    let mut config = setup.config();
    config.alerts.topic = format!("{}_alerts", setup.topic);
    config.alerts.judge_interval_ms = 300;
    config.alerts.rules = vec![
        AlertRule {
            name: "future timestamps".into(),
            error_type: Some("future_timestamp".into()),
            group_by: GroupBy::Application,
            window_minutes: 5,
            failures_above: Some(2),
            rate_above: None,
            min_events: 0,
        },
        AlertRule {
            name: "failure rate".into(),
            error_type: None,
            group_by: GroupBy::EventType,
            window_minutes: 10,
            failures_above: None,
            rate_above: Some(0.1),
            min_events: 5,
        },
    ];
    config
}

/// Each table's content, read so that equal content reads equal: FINAL, aggregate states
/// finalised, sorted; for `ingest_watermarks` only what the log decides (not when it was written).
fn snapshot(setup: &Setup) -> BTreeMap<String, String> {
    let reads = [
        ("events", "SELECT * FROM {db}.events FINAL ORDER BY event_id"),
        ("events_by_session", "SELECT * FROM {db}.events_by_session FINAL ORDER BY event_id"),
        ("event_errors", "SELECT * FROM {db}.event_errors FINAL ORDER BY event_id"),
        ("error_counts", "SELECT application, category, name, error_type, minute, uniqExactMerge(failures) FROM {db}.error_counts GROUP BY application, category, name, error_type, minute ORDER BY application, category, name, error_type, minute"),
        ("event_counts", "SELECT application, category, name, minute, uniqExactMerge(events) FROM {db}.event_counts GROUP BY application, category, name, minute ORDER BY application, category, name, minute"),
        ("sessions", "SELECT * FROM {db}.session_summary ORDER BY application, session_id"),
        ("session_errors", "SELECT application, session_id, uniqExactMerge(errors), maxMerge(last_received_us) FROM {db}.session_errors GROUP BY application, session_id ORDER BY application, session_id"),
        ("watermark_states", "SELECT topic, partition, committed_offset, event_time_watermark, received_time_watermark FROM {db}.ingest_watermarks ORDER BY topic, partition"),
        ("alerts", "SELECT * FROM {db}.alerts FINAL ORDER BY rule, alert_id, status"),
    ];
    let tables: BTreeSet<String> = setup
        .query("SELECT arrayStringConcat(groupArray(name), ',') FROM system.tables WHERE database = '{db}' AND engine NOT IN ('View', 'MaterializedView', 'Null') AND name != 'replays'")
        .split(',')
        .map(str::to_string)
        .collect();
    let compared: BTreeSet<String> = reads.iter().map(|(table, _)| table.to_string()).collect();
    assert_eq!(
        tables, compared,
        "every table a replay rebuilds is compared"
    );
    reads
        .iter()
        .map(|(table, sql)| {
            let sql = sql.replace("{db}", &setup.database);
            let text = setup
                .clickhouse
                .query(&sql)
                .unwrap_or_else(|err| panic!("{sql}: {err:#}"));
            (table.to_string(), text)
        })
        .collect()
}

/// Waits until the tables hold every distinct message of `messages` and the alert judge has
/// seen the complete data (two judging rounds after the last write).
async fn wait_written(setup: &Setup, messages: &[RawMessage]) {
    let distinct = messages
        .iter()
        .map(|(_, headers)| headers[0].1.clone())
        .collect::<BTreeSet<_>>()
        .len() as u64;
    setup
        .wait_for_count(
            "SELECT (SELECT count() FROM {db}.events FINAL) + (SELECT count() FROM {db}.event_errors FINAL)",
            distinct,
            Duration::from_secs(120),
        )
        .await;
    // Idle partitions report every 5 s; the judge runs every 300 ms after that.
    tokio::time::sleep(Duration::from_secs(7)).await;
}

fn assert_same(left: &BTreeMap<String, String>, right: &BTreeMap<String, String>) {
    for (table, content) in left {
        assert!(!content.is_empty() || table == "alerts", "{table} is empty");
        assert_eq!(content, &right[table], "{table} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replay_rebuilds_every_table_as_it_was_and_republishes_the_same_alerts() {
    let setup = Setup::shared().await;
    let messages = traffic(1, 120, 10);
    setup.produce(&messages).await;
    let config = with_rules(&setup);
    let live = Processor::start(config.clone()).await;
    wait_written(&setup, &messages).await;
    live.stop().await;
    let built_live = snapshot(&setup);
    let live_alerts = setup.count("SELECT count() FROM {db}.alerts FINAL");
    assert!(
        live_alerts >= 2,
        "the traffic raises alerts ({live_alerts})"
    );

    let summary = replay(config.clone(), None, |_| {}, |_| {}).await.unwrap();
    assert_eq!(summary.messages, messages.len() as i64);
    assert!(summary.tables_emptied.contains(&"events".to_string()));
    assert_same(&built_live, &snapshot(&setup));
    assert_eq!(
        setup.count("SELECT count() FROM {db}.events"),
        setup.count("SELECT uniqExact(event_id) FROM {db}.events"),
        "no event_id twice, even without FINAL"
    );
    let alerts = read_topic(
        &setup.bootstrap,
        &config.alerts.topic,
        4,
        2 * live_alerts as usize,
    )
    .await;
    let mut ids: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for alert in &alerts {
        *ids.entry(rdkafka::Message::payload(alert).unwrap().to_vec())
            .or_default() += 1;
    }
    assert_eq!(
        alerts.len(),
        2 * live_alerts as usize,
        "each alert once live, once by the replay"
    );
    assert!(
        ids.values().all(|&copies| copies == 2),
        "the replay publishes the same alerts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_racing_live_traffic_equals_a_build_from_scratch() {
    let setup = Setup::shared().await;
    let first_wave = traffic(2, 80, 10);
    setup.produce(&first_wave).await;
    let mut config = with_rules(&setup);
    // Live traffic is received now (the bridge stamps it); its windows stay unjudged in this
    // test, so both builds judge the same complete windows.
    config.alerts.allowed_lateness_seconds = 3_600;
    let live = Processor::start(config.clone()).await;
    wait_written(&setup, &first_wave).await;

    let replaying = tokio::spawn(replay(config.clone(), None, |_| {}, |_| {}));
    let mut second_wave = traffic(3, 80, 11);
    // One stamp for the wave: a duplicate is the same message twice.
    let now = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    for (_, headers) in &mut second_wave {
        headers[2].1 = now.clone();
    }
    for chunk in second_wave.chunks(second_wave.len() / 8 + 1) {
        setup.produce(chunk).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let replayed = replaying.await.unwrap().unwrap();
    let everything: Vec<RawMessage> = first_wave.iter().chain(&second_wave).cloned().collect();
    assert!(
        replayed.messages < everything.len() as i64,
        "live traffic arrived after the replay planned its ends ({} of {})",
        replayed.messages,
        everything.len()
    );
    wait_written(&setup, &everything).await;
    live.stop().await;

    let scratch = setup.with_fresh_database();
    let mut scratch_config = with_rules(&scratch);
    scratch_config.alerts.allowed_lateness_seconds = 3_600;
    scratch_config.consumer.group_id = unique_name("scratch");
    scratch_config.alerts.topic = format!("{}_scratch_alerts", setup.topic);
    let from_scratch = Processor::start(scratch_config).await;
    wait_written(&scratch, &everything).await;
    from_scratch.stop().await;
    assert_same(&snapshot(&scratch), &snapshot(&setup));
}
