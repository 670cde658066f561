//! The processor against a real broker and a real ClickHouse: every message on the raw topic ends
//! as exactly one row, in `events` or in `event_errors`, across crashes and outages.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eye_devenv::free_port;
use eye_devenv::testing::{services, unique_name, OwnedBroker, OwnedClickHouse, Signal};
use eye_ingest::auth::key_sha256;
use eye_ingest::config::{Application, IngestConfig};
use eye_ingest::routes::Accepted;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

mod common;
use common::*;

#[tokio::test]
async fn reference_events_from_the_bridge_land_once_with_exact_payload_and_microseconds() {
    let setup = Setup::shared().await;
    let mut ingest = IngestConfig::default();
    ingest.kafka.brokers = setup.bootstrap.clone();
    ingest.producer.topic = setup.topic.clone();
    ingest.applications = vec![Application {
        id: "shop".into(),
        key_sha256: key_sha256("shop-key"),
        ..Application::default()
    }];
    ingest.listen = "127.0.0.1:0".into();
    ingest.operations_listen = "127.0.0.1:0".into();
    let listeners = eye_ingest::Listeners::bind(&ingest).await.unwrap();
    let ingest_url = format!("http://{}/v1/events", listeners.api.local_addr().unwrap());
    let (stop_ingest, ingest_stopped) = oneshot::channel::<()>();
    let ingest_task = tokio::spawn(async move {
        eye_ingest::serve(ingest, listeners, async move {
            let _ = ingest_stopped.await;
        })
        .await
        .unwrap();
    });
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
    let _ = stop_ingest.send(());
    ingest_task.await.unwrap();
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

#[tokio::test]
async fn each_failure_reason_lands_in_event_errors_and_nothing_in_events() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let base = reference("form_submit");
    let with = |key: &str, value: Value| {
        let mut event = base.clone();
        event[key] = value;
        event
    };
    let mut missing_session = base.clone();
    missing_session
        .as_object_mut()
        .unwrap()
        .remove("session_id");
    let mut data_extra = base.clone();
    data_extra["data"]["referrer"] = json!("/home");
    let mut form_number = base.clone();
    form_number["data"]["form"]["first_name"] = json!(42);
    let received_at = "2021-01-01T09:15:27.000000Z".to_string();
    let cases: Vec<(&str, &str, RawMessage)> = vec![
        (
            "malformed_json",
            "",
            (b"\x00\x01\x02 not json".to_vec(), vec![]),
        ),
        ("missing_field", "session_id", direct(&missing_session)),
        (
            "invalid_type",
            "category",
            direct(&with("category", json!(3))),
        ),
        (
            "invalid_session_id",
            "session_id",
            direct(&with("session_id", json!("abc"))),
        ),
        (
            "unknown_event_type",
            "",
            direct(&with("name", json!("hover"))),
        ),
        ("invalid_data", "data.form.first_name", direct(&form_number)),
        ("unexpected_field", "data.referrer", direct(&data_extra)),
        (
            "invalid_timestamp",
            "timestamp",
            direct(&with("timestamp", json!("noon"))),
        ),
        (
            "future_timestamp",
            "timestamp",
            (
                with("timestamp", json!("2021-01-01 10:15:27"))
                    .to_string()
                    .into_bytes(),
                vec![("eye.received_at", received_at)],
            ),
        ),
        (
            "unknown_schema",
            "",
            ([&[0xC3, 0x01][..], &[7; 8], b"datum"].concat(), vec![]),
        ),
    ];
    let mut messages: Vec<RawMessage> = cases
        .iter()
        .map(|(_, _, message)| message.clone())
        .collect();
    // A valid event behind the garbage: the partition is not stalled.
    messages.push(direct(&reference("pageview")));
    setup.produce(&messages).await;

    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            cases.len() as u64,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            1,
            Duration::from_secs(30),
        )
        .await;
    let rows: Vec<Value> = setup
        .query("SELECT error_type, field_path, reason, hex(raw) AS raw_hex FROM {db}.event_errors FINAL FORMAT JSONEachRow")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_type: HashMap<&str, &Value> = rows
        .iter()
        .map(|row| (row["error_type"].as_str().unwrap(), row))
        .collect();
    for (error_type, field_path, _) in &cases {
        let row = by_type
            .get(error_type)
            .unwrap_or_else(|| panic!("no {error_type} row in {rows:#?}"));
        assert_eq!(row["field_path"], *field_path, "{error_type}");
        assert!(
            row["reason"].as_str().unwrap().contains(field_path),
            "{error_type}: {}",
            row["reason"]
        );
    }
    let garbage_hex: String = b"\x00\x01\x02 not json"
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    assert_eq!(
        by_type["malformed_json"]["raw_hex"],
        garbage_hex.as_str(),
        "raw bytes kept"
    );
    assert_eq!(
        setup.query("SELECT name FROM {db}.events FINAL"),
        "pageview"
    );
    processor.stop().await;
}

/// 100k events, 5% invalid, produced in ordinary producer batches to a durable (sqlite) broker,
/// with the processor killed (SIGKILL) mid-stream and restarted at once: the restarted member
/// resumes from committed offsets inside record batches, and joins while the dead member is still
/// within its session.
#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_nothing() {
    const EVENTS: usize = 100_000;
    const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
    let broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let template = reference("pageview");
    let mut messages = Vec::with_capacity(EVENTS);
    let mut invalid = 0u64;
    for index in 0..EVENTS {
        let mut event = template.clone();
        event["session_id"] = json!(Uuid::new_v4().to_string());
        if index % 20 == 7 {
            event["data"]["path"] = json!(index);
            invalid += 1;
        }
        messages.push((
            event.to_string().into_bytes(),
            vec![("eye.event_id", Uuid::now_v7().to_string())],
        ));
    }
    setup.produce(&messages).await;

    let config = setup.config();
    let logs = tempfile::tempdir().unwrap();
    let log_file = |name: &str| logs.path().join(format!("{name}.log"));
    let spawn = |name: &str| -> KillOnDrop {
        let health_port = free_port();
        let log = std::fs::File::create(log_file(name)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_eye-processor"))
            .env("EYE_LISTEN", format!("127.0.0.1:{health_port}"))
            .env("EYE_KAFKA__BROKERS", &config.kafka.brokers)
            .env("EYE_CONSUMER__TOPIC", &config.consumer.topic)
            .env("EYE_CONSUMER__GROUP_ID", &config.consumer.group_id)
            .env("EYE_CLICKHOUSE__URL", &config.clickhouse.url)
            .env("EYE_CLICKHOUSE__DATABASE", &config.clickhouse.database)
            .env("EYE_BATCH__MAX_EVENTS", "5000")
            .env("EYE_SESSION_UPDATES__TOPIC", &config.session_updates.topic)
            .env(
                "EYE_CONSUMER__SESSION_TIMEOUT_MS",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .env("EYE_SCHEMAS_DIR", &config.schemas_dir)
            .env("RUST_LOG", "info,eye_processor=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    };
    let first = spawn("first");
    let deadline = Instant::now() + Duration::from_secs(120);
    while setup
        .clickhouse
        .query(&format!("SELECT count() FROM {}.events", setup.database))
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
        < 20_000
    {
        assert!(
            Instant::now() < deadline,
            "the first processor made no progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first);
    let written_before_kill = setup.count("SELECT count() FROM {db}.events")
        + setup.count("SELECT count() FROM {db}.event_errors");
    assert!(
        written_before_kill < EVENTS as u64,
        "killed mid-stream ({written_before_kill} written)"
    );
    let second = spawn("second");
    let total = "SELECT (SELECT count() FROM {db}.events FINAL) + (SELECT count() FROM {db}.event_errors FINAL)";
    let deadline = Instant::now() + Duration::from_secs(300);
    while setup.count(total) != EVENTS as u64 {
        if Instant::now() > deadline {
            let per_partition = setup.query(
                "SELECT groupArray((kafka_partition, written, last)) FROM (SELECT kafka_partition, count() AS written, \
                 max(kafka_offset) AS last FROM (SELECT kafka_partition, kafka_offset FROM {db}.events FINAL UNION ALL \
                 SELECT kafka_partition, kafka_offset FROM {db}.event_errors FINAL) GROUP BY kafka_partition ORDER BY kafka_partition)",
            );
            let tail = |name: &str| {
                let text = std::fs::read_to_string(log_file(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            let written: std::collections::HashSet<(i32, i64)> = setup
                .query("SELECT kafka_partition, kafka_offset FROM {db}.events UNION ALL SELECT kafka_partition, kafka_offset FROM {db}.event_errors")
                .lines()
                .map(|line| {
                    let (partition, offset) = line.split_once('\t').unwrap();
                    (partition.parse().unwrap(), offset.parse().unwrap())
                })
                .collect();
            let on_topic = read_topic(&setup.bootstrap, &setup.topic, PARTITIONS, EVENTS).await;
            let missing: Vec<(i32, i64)> = on_topic
                .iter()
                .map(|message| (message.partition(), message.offset()))
                .filter(|key| !written.contains(key))
                .collect();
            let readable = on_topic.len();
            panic!(
                "{} of {EVENTS} written after the restart; a plain consumer reads {readable}; missing offsets: {missing:?}; per partition (partition, rows, last offset): {per_partition}\n\
                 first processor log:\n{}\nsecond processor log:\n{}",
                setup.count(total),
                tail("first"),
                tail("second")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(
        setup.count("SELECT count() FROM {db}.events FINAL"),
        EVENTS as u64 - invalid
    );
    assert_eq!(
        setup.count("SELECT count() FROM {db}.event_errors FINAL"),
        invalid
    );
    assert_eq!(
        setup.count("SELECT uniqExact(event_id) FROM {db}.events"),
        EVENTS as u64 - invalid
    );
    assert_eq!(
        setup.count("SELECT count() FROM {db}.events FINAL WHERE event_id IN (SELECT event_id FROM {db}.event_errors)"),
        0,
        "no event in both tables"
    );

    // Every session with a valid event (one per event here) is on the session topic after the
    // kill and the restart.
    let sessions = EVENTS - invalid as usize;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let keys: std::collections::HashSet<Vec<u8>> =
            read_topic(&setup.bootstrap, &config.session_updates.topic, 4, sessions)
                .await
                .iter()
                .filter_map(|message| message.key().map(<[u8]>::to_vec))
                .collect();
        if keys.len() == sessions {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {sessions} sessions on the session topic",
            keys.len()
        );
    }
    drop(second);
}

#[tokio::test]
async fn clickhouse_down_for_30_seconds_loses_nothing_and_catches_up() {
    let mut clickhouse = OwnedClickHouse::start();
    let setup = Setup::new(&services().broker.bootstrap(), &clickhouse.server).await;
    let processor = Processor::start(setup.config()).await;
    let event = |index: usize| {
        let mut event = reference("cta_click");
        event["data"]["element"] = json!(format!("button {index}"));
        direct(&event)
    };
    setup
        .produce(&(0..500).map(event).collect::<Vec<_>>())
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            500,
            Duration::from_secs(60),
        )
        .await;

    clickhouse.halt();
    let outage = Instant::now();
    for round in 1..=3 {
        setup
            .produce(
                &(round * 500..(round + 1) * 500)
                    .map(event)
                    .collect::<Vec<_>>(),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let readiness = reqwest::get(format!("{}/readyz", processor.health_url))
        .await
        .unwrap();
    assert_eq!(readiness.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    clickhouse.resume();

    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            2000,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(setup.count("SELECT uniqExact(data) FROM {db}.events"), 2000);
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;
    processor.stop().await;
}

/// Polls the processor's `/readyz` until it answers `ready` (200) or not (503 with a body
/// containing `reason`).
async fn wait_for_readiness(processor: &Processor, ready: bool, reason: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(format!("{}/readyz", processor.health_url)).await {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() == ready && (ready || body.contains(reason)) {
                return;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "/readyz not {} within {timeout:?}: last answer {last:?}",
        if ready { "ready" } else { reason }
    );
}

/// The processor, started once one event it read is in `events`.
async fn start_with_one_event(
    setup: &Setup,
    config: eye_processor::config::ProcessorConfig,
) -> Processor {
    let processor = Processor::start(config).await;
    setup.produce(&[direct(&reference("pageview"))]).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events",
            1,
            Duration::from_secs(60),
        )
        .await;
    processor
}

#[tokio::test]
async fn readiness_is_false_while_the_broker_is_down_and_true_once_it_is_back() {
    let mut broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let processor = start_with_one_event(&setup, setup.config()).await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;

    broker.halt();
    wait_for_readiness(&processor, false, "Kafka broker", Duration::from_secs(30)).await;
    broker.resume();
    wait_for_readiness(&processor, true, "", Duration::from_secs(60)).await;
    processor.stop().await;
}

/// A broker that hangs (SIGSTOP) instead of refusing: connections stay open and nothing answers.
// Two workers: a call that blocks one (the fault looked for) leaves the time-out running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_makes_the_processor_not_ready_and_its_shutdown_is_bounded() {
    let broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let mut config = setup.config();
    // How long librdkafka waits for any answer before it drops the connection.
    config
        .kafka
        .librdkafka
        .insert("socket.timeout.ms".into(), "5000".into());
    let processor = start_with_one_event(&setup, config).await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;

    broker.signal(Signal::SIGSTOP).unwrap();
    wait_for_readiness(&processor, false, "Kafka broker", Duration::from_secs(90)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(120), processor.stop()).await;
    broker.signal(Signal::SIGCONT).unwrap();
    assert!(stopped.is_ok(), "the processor never stopped");
}

// Two workers: a call that blocks one (the fault looked for) leaves the time-out running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_right_after_the_broker_hangs_is_bounded() {
    let broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let processor = start_with_one_event(&setup, setup.config()).await;
    // Written offsets are stored by now: the shutdown commit has something to send.
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.signal(Signal::SIGSTOP).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(60), processor.stop()).await;
    broker.signal(Signal::SIGCONT).unwrap();
    assert!(stopped.is_ok(), "the processor never stopped");
}

/// Past the session time-out without an answer from the hung broker, librdkafka takes the
/// partitions away itself (assignment lost) and the rebalance callback commits what was written:
/// that commit must not wait for the broker forever, or nothing, not even shutdown, runs again.
// Two workers: a call that blocks one (the fault looked for) leaves the time-out running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_lost_to_a_hung_broker_are_let_go_and_shutdown_is_bounded() {
    const LOST: &str = "eye_processor_partitions_lost_total";
    let broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let mut config = setup.config();
    config.consumer.session_timeout_ms = 6_000;
    let processor = start_with_one_event(&setup, config).await;
    // Written offsets are stored by now: the revoke's commit has something to send.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost_before = counter_value(&processor, LOST).await;
    broker.signal(Signal::SIGSTOP).unwrap();
    let mut lost = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if counter_value(&processor, LOST).await > lost_before {
            lost = true;
            break;
        }
    }
    let stopped = tokio::time::timeout(Duration::from_secs(60), processor.stop()).await;
    broker.signal(Signal::SIGCONT).unwrap();
    assert!(lost, "the partitions were never lost to the hung broker");
    assert!(stopped.is_ok(), "the processor never stopped");
}

/// Ten pageviews with the event ids `from + 1 ..= from + 10`.
fn ten_pageviews(from: u128) -> Vec<RawMessage> {
    (from..from + 10)
        .map(|index| {
            let mut event = reference("pageview");
            event["event_id"] = json!(Uuid::from_u128(index + 1).to_string());
            direct(&event)
        })
        .collect()
}

/// A ClickHouse that hangs (SIGSTOP) instead of refusing: the write neither fails nor ends, and
/// only the standing offsets show it.
#[tokio::test]
async fn a_processor_stuck_on_a_hung_clickhouse_reports_not_ready_until_it_moves_again() {
    let clickhouse = OwnedClickHouse::start();
    let setup = Setup::new(&services().broker.bootstrap(), &clickhouse.server).await;
    let mut config = setup.config();
    config.consumer.stalled_after_ms = 3_000;
    let processor = Processor::start(config).await;
    setup.produce(&ten_pageviews(0)).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events",
            10,
            Duration::from_secs(60),
        )
        .await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;

    clickhouse.signal(Signal::SIGSTOP).unwrap();
    setup.produce(&ten_pageviews(10)).await;
    wait_for_readiness(
        &processor,
        false,
        "committed offsets have not moved",
        Duration::from_secs(30),
    )
    .await;
    clickhouse.signal(Signal::SIGCONT).unwrap();
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            20,
            Duration::from_secs(60),
        )
        .await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;
    processor.stop().await;
}

#[tokio::test]
async fn inserts_into_a_hung_clickhouse_time_out_and_are_retried_and_shutdown_is_bounded() {
    let clickhouse = OwnedClickHouse::start();
    let setup = Setup::new(&services().broker.bootstrap(), &clickhouse.server).await;
    let mut config = setup.config();
    config.clickhouse.request_timeout_ms = 1_000;
    let processor = Processor::start(config).await;
    setup.produce(&ten_pageviews(0)).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events",
            10,
            Duration::from_secs(60),
        )
        .await;
    let retries_before = counter_value(&processor, "eye_processor_sink_retries_total").await;

    clickhouse.signal(Signal::SIGSTOP).unwrap();
    setup.produce(&ten_pageviews(10)).await;
    // Without a time-out the first insert into the stopped server waits forever: no retry.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter_value(&processor, "eye_processor_sink_retries_total").await < retries_before + 2 {
        assert!(
            Instant::now() < deadline,
            "inserts into the hung server are not retried"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Stopping while ClickHouse still hangs: every step of the shutdown is bounded.
    let stopped = tokio::time::timeout(Duration::from_secs(120), processor.stop()).await;
    clickhouse.signal(Signal::SIGCONT).unwrap();
    assert!(stopped.is_ok(), "the processor never stopped");
}

/// The SQL blocks of the README, run against a database holding known events.
#[tokio::test]
async fn readme_queries_return_the_right_rows() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    // Received on 2021-01-03, so the per-minute counts are known in advance.
    let received = |event: &Value| -> RawMessage {
        (
            event.to_string().into_bytes(),
            vec![("eye.received_at", "2021-01-03T00:00:10.000000Z".to_string())],
        )
    };
    let event = |name: &str, id: u128, session: &str, timestamp: &str| {
        let mut event = reference(name);
        event["event_id"] = json!(Uuid::from_u128(id).to_string());
        event["session_id"] = json!(session);
        event["timestamp"] = json!(timestamp);
        received(&event)
    };
    let session = "e2085be5-9137-4e4e-80b5-f1ffddc25423";
    let other = "0f6b1a7e-1111-4e4e-80b5-f1ffddc25423";
    let mut bad_session = reference("pageview");
    bad_session["session_id"] = json!("nope");
    let mut unknown = reference("pageview");
    unknown["name"] = json!("scroll");
    setup
        .produce(&[
            event("form_submit", 3, session, "2021-01-01 09:15:27.243860"),
            event("pageview", 4, session, "2021-01-01 09:20:00.000001"),
            event("pageview", 1, session, "2021-01-01 09:15:27.243860"),
            event("cta_click", 2, session, "2021-01-01 09:15:27.243860"),
            event("cta_click", 5, other, "2021-01-01 10:30:00"),
            event("pageview", 6, other, "2021-01-02 08:00:00"),
            received(&bad_session),
            received(&unknown),
        ])
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            6,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            2,
            Duration::from_secs(60),
        )
        .await;
    // Progress reports are written after the rows of their batch.
    setup
        .wait_for_count(
            "SELECT sum(committed_offset) FROM {db}.ingest_watermarks",
            8,
            Duration::from_secs(60),
        )
        .await;

    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let queries: Vec<&str> = readme
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    let expected = [
        "2021-01-01 09:15:27\t243860\tpage interaction\tpageview\t/\n\
         2021-01-01 09:15:27\t243860\tpage interaction\tcta click\t/\n\
         2021-01-01 09:15:27\t243860\tform interaction\tsubmit\t/\n\
         2021-01-01 09:20:00\t1\tpage interaction\tpageview\t/\n",
        "cta click\t2\npageview\t2\n",
        "form interaction\tsubmit\t1\npage interaction\tcta click\t1\npage interaction\tpageview\t2\n",
        "direct\t0f6b1a7e-1111-4e4e-80b5-f1ffddc25423\t2021-01-01 10:30:00\t77400\t2\t/\t/\t0\t0\n\
         direct\te2085be5-9137-4e4e-80b5-f1ffddc25423\t2021-01-01 09:15:27\t272.756141\t4\t/\t/\t1\t1\n",
        "__TOPIC__\t8\t0\t2021-01-03 00:00:10\n",
        "invalid_session_id\t1\nunknown_event_type\t1\n",
        "direct\tpage interaction\tpageview\tinvalid_session_id\t2021-01-03 00:00:00\t1\t3\t0.25\n\
         direct\tpage interaction\tscroll\tunknown_event_type\t2021-01-03 00:00:00\t1\t0\t1\n",
    ];
    assert_eq!(queries.len(), expected.len(), "the README's SQL blocks");
    for (query, expected) in queries.iter().zip(expected) {
        let sql =
            format!("{} FORMAT TSV", query.trim()).replace("eye.", &format!("{}.", setup.database));
        let expected = expected.replace("__TOPIC__", &setup.topic);
        assert_eq!(setup.clickhouse.query(&sql).unwrap(), expected, "{query}");
    }
    processor.stop().await;
}

/// A processor holding unwritten rows when a second one joins its group: the rows of the
/// partitions it gives up are left to the new owner, not written twice.
#[tokio::test]
async fn rebalance_hands_over_unwritten_rows_without_writing_them_twice() {
    const EVENTS: usize = 400;
    let setup = Setup::shared().await;
    let mut holding = setup.config();
    holding.batch.max_wait_ms = 600_000;
    holding.batch.max_events = 1_000_000;
    holding.consumer.session_timeout_ms = 6_000;
    let mut joining = holding.clone();
    joining.batch.max_wait_ms = 200;
    let first = Processor::start(holding).await;
    // The tables exist once the first processor has started; keep every inserted part apart so
    // a row written twice stays visible.
    for _ in 0..100 {
        if setup
            .clickhouse
            .query(&format!("SYSTEM STOP MERGES {}.events", setup.database))
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events: Vec<RawMessage> = (0..EVENTS)
        .map(|index| {
            let mut event = reference("pageview");
            event["session_id"] = json!(Uuid::new_v4().to_string());
            event["data"]["path"] = json!(format!("/{index}"));
            direct(&event)
        })
        .collect();
    setup.produce(&events).await;
    // Let the first processor consume everything into its (unwritten) batch.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        setup.count("SELECT count() FROM {db}.events"),
        0,
        "the first processor holds its batch"
    );

    let second = Processor::start(joining).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.count("SELECT count() FROM {db}.events") == 0 {
        assert!(
            Instant::now() < deadline,
            "the second processor wrote nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.stop().await;
    setup
        .wait_for_count(
            "SELECT uniqExact(event_id) FROM {db}.events",
            EVENTS as u64,
            Duration::from_secs(60),
        )
        .await;
    second.stop().await;
    assert_eq!(
        setup.count("SELECT count() FROM {db}.events"),
        EVENTS as u64,
        "no row written twice"
    );
}

#[tokio::test]
async fn dead_letters_carry_the_original_bytes_key_headers_and_the_reason() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let mut missing_host = reference("pageview");
    missing_host["data"].as_object_mut().unwrap().remove("host");
    let bridge_id = Uuid::now_v7().to_string();
    setup
        .produce(&[
            (b"\x00garbage".to_vec(), vec![("trace", "abc".to_string())]),
            (
                missing_host.to_string().into_bytes(),
                vec![("eye.event_id", bridge_id.clone())],
            ),
            direct(&reference("cta_click")),
        ])
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            2,
            Duration::from_secs(60),
        )
        .await;

    let dead = read_topic(&setup.bootstrap, &format!("{}_dlq", setup.topic), 4, 2).await;
    assert_eq!(
        dead.len(),
        2,
        "one dead letter per failed event, none for the valid one"
    );
    let header = |message: &OwnedMessage, name: &str| -> Option<String> {
        message
            .headers()?
            .iter()
            .find(|header| header.key == name)
            .map(|header| String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned())
    };
    let garbage = dead
        .iter()
        .find(|message| message.payload() == Some(&b"\x00garbage"[..]))
        .expect("garbage, byte for byte");
    assert_eq!(
        header(garbage, "trace").as_deref(),
        Some("abc"),
        "original headers kept"
    );
    assert_eq!(
        header(garbage, "eye.error_type").as_deref(),
        Some("malformed_json")
    );
    assert_eq!(
        header(garbage, "eye.source_topic").as_deref(),
        Some(setup.topic.as_str())
    );
    assert_eq!(garbage.key(), Some(&b"key-0"[..]), "original key kept");
    let offset: i64 = header(garbage, "eye.source_offset")
        .unwrap()
        .parse()
        .unwrap();
    let partition: i32 = header(garbage, "eye.source_partition")
        .unwrap()
        .parse()
        .unwrap();
    let derived_id = header(garbage, "eye.event_id").expect("an event id even without the bridge");
    assert_eq!(
        setup.query(&format!("SELECT toString(event_id) FROM {{db}}.event_errors FINAL WHERE kafka_partition = {partition} AND kafka_offset = {offset}")),
        derived_id
    );

    let invalid = dead
        .iter()
        .find(|message| message.payload() == Some(missing_host.to_string().as_bytes()))
        .unwrap();
    assert_eq!(header(invalid, "eye.event_id"), Some(bridge_id));
    assert_eq!(
        header(invalid, "eye.error_type").as_deref(),
        Some("invalid_data")
    );
    assert_eq!(
        header(invalid, "eye.error_field").as_deref(),
        Some("data.host")
    );
    assert!(header(invalid, "eye.error_reason")
        .unwrap()
        .contains("data.host"));
    processor.stop().await;
}

/// A batch's offsets are committed only once its session updates are out: while its sessions
/// cannot be read back (a table moved aside), its rows are in ClickHouse but the group's offsets
/// stay where they were; once they can, the sessions are published and the offsets committed.
#[tokio::test]
async fn offsets_wait_for_the_batch_session_updates() {
    const EVENTS: usize = 20;
    let setup = Setup::shared().await;
    let config = setup.config();
    let processor = Processor::start(config.clone()).await;
    // The processor has applied its DDL once the last table exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup
        .clickhouse
        .query(&format!("EXISTS TABLE {}.replays", setup.database))
        .map_or(true, |exists| exists.trim() != "1")
    {
        assert!(Instant::now() < deadline, "the DDL never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.query("RENAME TABLE {db}.session_errors TO {db}.session_errors_aside");
    let events: Vec<RawMessage> = (0..EVENTS)
        .map(|_| {
            let mut event = reference("pageview");
            event["session_id"] = json!(Uuid::new_v4().to_string());
            direct(&event)
        })
        .collect();
    setup.produce(&events).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events",
            EVENTS as u64,
            Duration::from_secs(60),
        )
        .await;
    let group = committed_offsets(&config);
    // Stored offsets are committed every second (`auto.commit.interval.ms`); wait out a few.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        group(),
        0,
        "offsets committed before the batch's sessions were published"
    );

    setup.query("RENAME TABLE {db}.session_errors_aside TO {db}.session_errors");
    let deadline = Instant::now() + Duration::from_secs(60);
    while group() != EVENTS as i64 {
        assert!(
            Instant::now() < deadline,
            "offsets not committed after the sessions could be published"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let on_topic = read_topic(
        &setup.bootstrap,
        &config.session_updates.topic,
        PARTITIONS,
        EVENTS,
    )
    .await;
    assert_eq!(on_topic.len(), EVENTS, "one update per session");
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

/// A processor process that is killed (SIGKILL) when dropped, also when a test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a session should look like, computed in the test from the generated events.
#[derive(Debug, Default, PartialEq)]
struct ExpectedSession {
    first_us: u64,
    last_us: u64,
    event_ids: std::collections::BTreeSet<Uuid>,
    by_type: std::collections::BTreeMap<(String, String), u64>,
    pageviews: Vec<(u64, String)>,
    form_submitted: bool,
    failed_ids: std::collections::BTreeSet<Uuid>,
    last_received: u64,
}

/// Sessions computed independently from a generated stream (late, out-of-order, duplicated and
/// failed events) equal what `session_summary` derives.
#[tokio::test]
async fn sessions_match_an_oracle_over_late_duplicated_and_failed_events() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |bound: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    let base_us: u64 = 1_609_492_527_000_000; // 2021-01-01 09:15:27 UTC
    let kinds = [
        ("page interaction", "pageview"),
        ("page interaction", "cta click"),
        ("form interaction", "submit"),
    ];
    let paths = ["/", "/pricing", "/reviews", "/contact", "/faq"];
    let mut expected: std::collections::BTreeMap<(String, Uuid), ExpectedSession> =
        Default::default();
    let mut messages: Vec<RawMessage> = Vec::new();
    for session_index in 0..25u64 {
        let application = if session_index % 2 == 0 {
            "shop"
        } else {
            "blog"
        };
        let session_id =
            Uuid::from_u128(0x5e55_0000_0000_4000_8000_0000_0000_0000 + u128::from(session_index));
        let session = expected
            .entry((application.to_string(), session_id))
            .or_default();
        for event_index in 0..3 + next(10) {
            let (category, name) = kinds[next(3) as usize];
            let path = paths[next(5) as usize];
            // Distinct times within a session; production order is shuffled below.
            let at_us =
                base_us + session_index * 3_600_000_000 + event_index * 7_000_000 + next(999_999);
            let received_s = base_us / 1_000_000 + 86_400 + next(600);
            let event_id =
                Uuid::from_u128((u128::from(session_index) << 64) + u128::from(event_index) + 1);
            let mut event = json!({
                "session_id": session_id.to_string(),
                "category": category,
                "name": name,
                "data": {"host": "h", "path": path},
                "timestamp": chrono::DateTime::from_timestamp_micros(at_us as i64).unwrap().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            });
            if name == "cta click" {
                event["data"]["element"] = json!("button");
            }
            if name == "submit" {
                event["data"]["form"] = json!({"email": "a@b.c"});
            }
            let failing = next(8) == 0;
            if failing {
                event["data"]["path"] = json!(404);
                session.failed_ids.insert(event_id);
            } else {
                session.first_us = if session.event_ids.is_empty() {
                    at_us
                } else {
                    session.first_us.min(at_us)
                };
                session.last_us = session.last_us.max(at_us);
                session.event_ids.insert(event_id);
                *session
                    .by_type
                    .entry((category.to_string(), name.to_string()))
                    .or_default() += 1;
                if name == "pageview" {
                    session.pageviews.push((at_us, path.to_string()));
                }
                session.form_submitted |= name == "submit";
            }
            session.last_received = session.last_received.max(received_s);
            let received_at = chrono::DateTime::from_timestamp(received_s as i64, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let message: RawMessage = (
                event.to_string().into_bytes(),
                vec![
                    ("eye.event_id", event_id.to_string()),
                    ("eye.application", application.to_string()),
                    ("eye.received_at", received_at),
                ],
            );
            if next(10) == 0 {
                messages.push(message.clone()); // duplicated
            }
            messages.push(message);
        }
    }
    for index in (1..messages.len()).rev() {
        messages.swap(index, next(index as u64 + 1) as usize);
    }
    // Half now, half later: the second half holds late events for sessions already stored.
    let (first_half, second_half) = messages.split_at(messages.len() / 2);
    setup.produce(first_half).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    setup.produce(second_half).await;

    let valid: usize = expected
        .values()
        .map(|session| session.event_ids.len())
        .sum();
    let failed: usize = expected
        .values()
        .map(|session| session.failed_ids.len())
        .sum();
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            valid as u64,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            failed as u64,
            Duration::from_secs(60),
        )
        .await;

    let rows = setup.query(
        "SELECT application, toString(session_id) AS session_id, \
         toUInt64(start_time) * 1000000 + start_time_us AS first_us, toUInt64(end_time) * 1000000 + end_time_us AS last_us, \
         event_count, events_by_type, entry_path, exit_path, distinct_pages, form_submitted, error_count, \
         toUInt64(last_update) AS last_update FROM {db}.session_summary ORDER BY application, session_id FORMAT JSONEachRow",
    );
    let actual: Vec<Value> = rows
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let with_events: Vec<_> = expected
        .iter()
        .filter(|(_, session)| !session.event_ids.is_empty())
        .collect();
    assert_eq!(
        actual.len(),
        with_events.len(),
        "one row per session with valid events"
    );
    for ((application, session_id), session) in with_events {
        let row = actual
            .iter()
            .find(|row| {
                row["application"] == application.as_str()
                    && row["session_id"] == session_id.to_string()
            })
            .unwrap_or_else(|| panic!("session {application}/{session_id} missing"));
        let number = |key: &str| {
            row[key]
                .as_u64()
                .or_else(|| row[key].as_str().and_then(|text| text.parse().ok()))
                .unwrap()
        };
        let mut pageviews = session.pageviews.clone();
        pageviews.sort();
        let distinct: std::collections::BTreeSet<&String> =
            pageviews.iter().map(|(_, path)| path).collect();
        let by_type: Vec<Value> = session
            .by_type
            .iter()
            .map(|((category, name), count)| json!([category, name, count]))
            .collect();
        assert_eq!(number("first_us"), session.first_us, "{session_id} start");
        assert_eq!(number("last_us"), session.last_us, "{session_id} end");
        assert_eq!(
            number("event_count"),
            session.event_ids.len() as u64,
            "{session_id} count"
        );
        let actual_by_type: Vec<Value> = row["events_by_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                json!([
                    entry[0],
                    entry[1],
                    entry[2]
                        .as_u64()
                        .or_else(|| entry[2].as_str().and_then(|text| text.parse().ok()))
                ])
            })
            .collect();
        assert_eq!(actual_by_type, by_type, "{session_id} by type");
        assert_eq!(
            row["entry_path"],
            pageviews
                .first()
                .map(|(_, path)| path.as_str())
                .unwrap_or(""),
            "{session_id} entry"
        );
        assert_eq!(
            row["exit_path"],
            pageviews
                .last()
                .map(|(_, path)| path.as_str())
                .unwrap_or(""),
            "{session_id} exit"
        );
        assert_eq!(
            number("distinct_pages"),
            distinct.len() as u64,
            "{session_id} pages"
        );
        assert_eq!(
            number("form_submitted"),
            u64::from(session.form_submitted),
            "{session_id} form"
        );
        assert_eq!(
            number("error_count"),
            session.failed_ids.len() as u64,
            "{session_id} errors"
        );
        assert_eq!(
            number("last_update"),
            session.last_received,
            "{session_id} last update"
        );
    }

    // The session topic's latest message per session is the session.
    let schema =
        eye_core::schemas::TopicSchema::load(&repo("schemas/avro/topics/session.avsc")).unwrap();
    let mut latest: HashMap<String, Value> = HashMap::new();
    for message in read_topic(
        &setup.bootstrap,
        &format!("{}_sessions", setup.topic),
        4,
        actual.len(),
    )
    .await
    {
        let update = Value::try_from(schema.decode(message.payload().unwrap()).unwrap()).unwrap();
        latest.insert(
            String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            update,
        );
    }
    assert_eq!(
        latest.len(),
        actual.len(),
        "one key per session with valid events"
    );
    for row in &actual {
        let key = format!(
            "{}/{}",
            row["application"].as_str().unwrap(),
            row["session_id"].as_str().unwrap()
        );
        let update = &latest[&key];
        let number = |value: &Value| {
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
                .unwrap()
        };
        let by_type: serde_json::Map<String, Value> = row["events_by_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                (
                    format!(
                        "{}/{}",
                        entry[0].as_str().unwrap(),
                        entry[1].as_str().unwrap()
                    ),
                    json!(number(&entry[2])),
                )
            })
            .collect();
        let path = |value: &Value| match value.as_str() {
            Some("") | None => Value::Null,
            Some(path) => json!(path),
        };
        assert_eq!(
            (
                number(&update["start_time"]),
                number(&update["end_time"]),
                number(&update["events"]),
                update["events_by_type"].clone(),
                update["entry_path"].clone(),
                update["exit_path"].clone(),
                number(&update["distinct_pages"]),
                update["form_submitted"].as_bool().unwrap(),
                number(&update["errors"]),
                number(&update["last_update"]) / 1_000_000,
            ),
            (
                number(&row["first_us"]),
                number(&row["last_us"]),
                number(&row["event_count"]),
                Value::Object(by_type),
                path(&row["entry_path"]),
                path(&row["exit_path"]),
                number(&row["distinct_pages"]),
                number(&row["form_submitted"]) == 1,
                number(&row["error_count"]),
                number(&row["last_update"]),
            ),
            "{key}"
        );
    }
    processor.stop().await;
}

/// `ingest_watermarks` says, per partition, how far the data is written and how recent it is.
#[tokio::test]
async fn watermarks_report_written_offsets_and_latest_times_per_partition() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let messages: Vec<RawMessage> = (0..40)
        .map(|index| {
            let mut event = reference("pageview");
            event["timestamp"] = json!(format!("2021-01-01 09:00:{:02}", index));
            if index == 39 {
                event["data"]["path"] = json!(0);
            }
            let received_at = format!("2021-01-02T00:00:{:02}.000000Z", index);
            (
                event.to_string().into_bytes(),
                vec![("eye.received_at", received_at)],
            )
        })
        .collect();
    setup.produce(&messages).await;
    setup
        .wait_for_count(
            "SELECT sum(committed_offset) FROM {db}.ingest_watermarks",
            40,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            1,
            Duration::from_secs(60),
        )
        .await;
    let watermarks = setup.query(
        "SELECT partition, committed_offset, lag, event_time_watermark, received_time_watermark \
         FROM {db}.ingest_watermarks ORDER BY partition FORMAT TSV",
    );
    // The same figures computed from the rows themselves (the failed event counts for received
    // time, not for event time).
    let from_rows = setup.query(
        "SELECT kafka_partition, max(kafka_offset) + 1, 0, max(event_time), max(received) FROM \
         (SELECT kafka_partition, kafka_offset, timestamp AS event_time, received_at AS received FROM {db}.events FINAL \
          UNION ALL SELECT kafka_partition, kafka_offset, toDateTime(0, 'UTC'), received_at FROM {db}.event_errors FINAL) \
         GROUP BY kafka_partition ORDER BY kafka_partition FORMAT TSV",
    );
    assert_eq!(watermarks, from_rows);
    processor.stop().await;
}
