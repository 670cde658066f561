//! Durability: a crash, a ClickHouse outage or a rebalance loses nothing and writes nothing twice; offsets are committed only for what is written and published.

use std::time::{Duration, Instant};

use eye_devenv::testing::{services, OwnedBroker, OwnedClickHouse};
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

use crate::common::*;

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
        spawn_processor(
            &config,
            &log_file(name),
            &[
                ("EYE_BATCH__MAX_EVENTS", "5000".into()),
                (
                    "EYE_CONSUMER__SESSION_TIMEOUT_MS",
                    SESSION_TIMEOUT.as_millis().to_string(),
                ),
            ],
        )
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
