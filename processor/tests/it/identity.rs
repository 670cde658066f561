//! Identity: every event lands once, with exactly its payload, identity and time, however it arrives and however often.

use std::time::Duration;

use eye_devenv::testing::unique_name;
use eye_ingest::routes::Accepted;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

#[tokio::test]
async fn reference_events_from_the_bridge_land_once_with_exact_payload_and_microseconds() {
    let setup = Setup::shared().await;
    let bridge = setup.bridge("shop", "shop-key").await;
    let ingest_url = format!("http://{}/v1/events", bridge.api_addr);
    let processor = Processor::start(setup.config()).await;

    let events: Vec<Value> = ["pageview", "cta_click", "form_submit"]
        .map(reference)
        .to_vec();
    let http = reqwest::Client::new();
    let mut accepted = None;
    for _ in 0..100 {
        let response = http
            .post(&ingest_url)
            .bearer_auth("shop-key")
            .json(&events)
            .send()
            .await
            .unwrap();
        if response.status() == reqwest::StatusCode::ACCEPTED {
            accepted = Some(response.json::<Accepted>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = accepted.expect("the bridge accepted the events");

    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            3,
            Duration::from_secs(60),
        )
        .await;
    for (event, event_id) in events.iter().zip(&accepted.event_ids) {
        let row: Value = serde_json::from_str(&setup.query(&format!(
            "SELECT application, toString(session_id) AS session_id, category, name, toString(timestamp) AS timestamp, \
             timestamp_us, host, path, data FROM {{db}}.events FINAL WHERE event_id = toUUID('{event_id}') FORMAT JSONEachRow"
        )))
        .unwrap();
        assert_eq!(row["application"], "shop");
        assert_eq!(row["session_id"], event["session_id"]);
        assert_eq!(
            (&row["category"], &row["name"]),
            (&event["category"], &event["name"])
        );
        assert_eq!(row["timestamp"], "2021-01-01 09:15:27");
        assert_eq!(row["timestamp_us"], 243860);
        assert_eq!(row["host"], event["data"]["host"]);
        assert_eq!(
            serde_json::from_str::<Value>(row["data"].as_str().unwrap()).unwrap(),
            event["data"]
        );
    }
    assert_eq!(setup.count("SELECT count() FROM {db}.event_errors"), 0);
    // The session table holds the same events. Waited for: ClickHouse makes an insert's rows
    // visible in `events` before its materialized views have written theirs.
    let session_id = events[0]["session_id"].as_str().unwrap();
    setup
        .wait_for_count(
            &format!("SELECT count() FROM {{db}}.events_by_session FINAL WHERE session_id = toUUID('{session_id}')"),
            3,
            Duration::from_secs(10),
        )
        .await;

    processor.stop().await;
    bridge.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_produced_straight_to_kafka_land_with_derived_identity() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let mut with_offset = reference("pageview");
    with_offset["timestamp"] = json!("2021-01-01T11:15:27.243860+02:00");
    let client_id = Uuid::new_v4();
    let mut with_client_id = reference("cta_click");
    with_client_id["event_id"] = json!(client_id.to_string());
    setup
        .produce(&[
            direct(&with_offset),
            direct(&with_client_id),
            (
                reference("form_submit").to_string().into_bytes(),
                vec![("eye.application", "billing".to_string())],
            ),
        ])
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            3,
            Duration::from_secs(60),
        )
        .await;

    assert_eq!(
        setup.query("SELECT concat(toString(timestamp), '.', toString(timestamp_us)) FROM {db}.events FINAL WHERE name = 'pageview'"),
        "2021-01-01 09:15:27.243860"
    );
    assert_eq!(
        setup.query("SELECT application FROM {db}.events FINAL WHERE name = 'pageview'"),
        "direct"
    );
    assert_eq!(
        setup.query("SELECT application FROM {db}.events FINAL WHERE name = 'submit'"),
        "billing"
    );
    assert_eq!(
        setup.query("SELECT toString(event_id) FROM {db}.events FINAL WHERE name = 'cta click'"),
        client_id.to_string()
    );
    processor.stop().await;

    // A replay with a fresh group into fresh tables derives the same ids.
    let ids = setup.query("SELECT groupArray(toString(event_id)) FROM (SELECT event_id FROM {db}.events FINAL ORDER BY event_id)");
    let replay_db = unique_name("replay");
    let mut replay = setup.config();
    replay.clickhouse.database = replay_db.clone();
    let processor = Processor::start(replay).await;
    let replayed = Setup {
        database: replay_db,
        topic: setup.topic.clone(),
        bootstrap: setup.bootstrap.clone(),
        clickhouse: setup.clickhouse.clone(),
    };
    replayed
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            3,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(replayed.query("SELECT groupArray(toString(event_id)) FROM (SELECT event_id FROM {db}.events FINAL ORDER BY event_id)"), ids);
    processor.stop().await;
}

/// Per-minute failure and event counts stay exact when every message arrives twice.
#[tokio::test]
async fn error_and_event_counts_are_exact_under_redelivery() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let message = |event: &Value, application: &str, received_at: &str| -> RawMessage {
        let headers = vec![
            ("eye.event_id", Uuid::now_v7().to_string()),
            ("eye.application", application.to_string()),
            ("eye.received_at", received_at.to_string()),
        ];
        (event.to_string().into_bytes(), headers)
    };
    let mut invalid = reference("pageview");
    invalid["data"]["path"] = json!(7);
    let mut unknown = reference("pageview");
    unknown["name"] = json!("scroll");
    let mut messages = Vec::new();
    for _ in 0..30 {
        messages.push(message(&invalid, "shop", "2021-01-03T10:00:01.000000Z"));
    }
    for _ in 0..10 {
        messages.push(message(
            &reference("pageview"),
            "shop",
            "2021-01-03T10:00:59.999999Z",
        ));
    }
    for _ in 0..5 {
        messages.push(message(&unknown, "blog", "2021-01-03T10:01:00.000000Z"));
    }
    // Every message twice, as a redelivery would: same bytes, same headers.
    let twice: Vec<RawMessage> = messages.iter().chain(messages.iter()).cloned().collect();
    setup.produce(&twice).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            35,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            10,
            Duration::from_secs(60),
        )
        .await;

    let failures = setup.clickhouse.query(&format!(
        "SELECT application, category, name, error_type, minute, uniqExactMerge(failures) FROM {}.error_counts \
         GROUP BY application, category, name, error_type, minute ORDER BY application FORMAT TSV",
        setup.database
    ));
    assert_eq!(
        failures.unwrap(),
        "blog\tpage interaction\tscroll\tunknown_event_type\t2021-01-03 10:01:00\t5\n\
         shop\tpage interaction\tpageview\tinvalid_data\t2021-01-03 10:00:00\t30\n"
    );
    let events = setup.clickhouse.query(&format!(
        "SELECT application, category, name, minute, uniqExactMerge(events) FROM {}.event_counts \
         GROUP BY application, category, name, minute FORMAT TSV",
        setup.database
    ));
    assert_eq!(
        events.unwrap(),
        "shop\tpage interaction\tpageview\t2021-01-03 10:00:00\t10\n"
    );
    processor.stop().await;
}

/// A client's retry through the bridge: the same event, same event_id, a later received_at.
#[tokio::test]
async fn a_failed_event_retried_with_a_new_received_at_is_one_failure() {
    let setup = Setup::shared().await;
    let config = setup.config();
    let processor = Processor::start(config.clone()).await;
    let mut invalid = reference("pageview");
    invalid["data"]["path"] = json!(7);
    let event_id = Uuid::now_v7().to_string();
    let copy = |received_at: &str| -> RawMessage {
        (
            invalid.to_string().into_bytes(),
            vec![
                ("eye.event_id", event_id.clone()),
                ("eye.application", "shop".to_string()),
                ("eye.received_at", received_at.to_string()),
            ],
        )
    };
    // The second a minute later: its own minute in `error_counts`, and a later sort position.
    setup
        .produce(&[
            copy("2021-01-03T10:00:01.000000Z"),
            copy("2021-01-03T10:01:30.000000Z"),
        ])
        .await;
    wait_for_committed(&config, 2, Duration::from_secs(60)).await;
    assert_eq!(
        setup.count("SELECT count() FROM {db}.event_errors FINAL"),
        1,
        "a retried failure is kept once"
    );
    // Which copy stays depends on their offsets (here on two partitions); either is the event.
    let kept = setup.query("SELECT toString(received_at) FROM {db}.event_errors FINAL");
    assert!(
        ["2021-01-03 10:00:01", "2021-01-03 10:01:30"].contains(&kept.as_str()),
        "{kept}"
    );
    assert_eq!(
        setup.count("SELECT uniqExactMerge(failures) FROM {db}.error_counts"),
        1,
        "counted once over both minutes"
    );
    processor.stop().await;
}
