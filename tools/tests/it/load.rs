//! `eye load` generates what it says: its events, over HTTP through the bridge and straight to
//! Kafka, reach the real processor with the generated mix of valid events and failure kinds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use eye_devenv::testing::{new_topic, services, unique_name};
use eye_ingest::auth::key_sha256;
use eye_ingest::config::{Application, IngestConfig};
use eye_processor::config::ProcessorConfig;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn load(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_eye"))
        .arg("load")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "eye load: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Failure kinds and their counts, from a summary's `generated.failures`.
fn failures(summary: &Value) -> BTreeMap<String, u64> {
    summary["generated"]["failures"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(kind, count)| (kind.clone(), count.as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_traffic_reaches_the_processor_as_generated_over_both_targets() {
    let services = services();
    let bootstrap = services.broker.bootstrap();
    let topic = new_topic(&bootstrap, "raw", 4).await;

    let mut ingest = IngestConfig::default();
    ingest.kafka.brokers = bootstrap.clone();
    ingest.producer.topic = topic.clone();
    ingest.applications = vec![Application {
        id: "shop".into(),
        key_sha256: key_sha256("shop-key"),
        ..Application::default()
    }];
    ingest.schemas_dir = repo("schemas");
    ingest.listen = "127.0.0.1:0".into();
    ingest.operations_listen = "127.0.0.1:0".into();
    let bridge = eye_ingest::Spawned::start(ingest).await.unwrap();
    let url = format!("http://{}", bridge.api_addr);
    let ready = format!("http://{}/readyz", bridge.operations_addr);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        assert!(Instant::now() < deadline, "the bridge never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = ["--target", "http", "--url", &url, "--api-key", "shop-key"];
    let over_http = load(
        &[
            &http[..],
            &[
                "--count",
                "400",
                "--clients",
                "4",
                "--batch-size",
                "10",
                "--rate",
                "2000",
                "--sessions",
                "20",
                "--events-per-session",
                "10",
                "--failures",
                "invalid_data=10,future_timestamp=5,unknown_event_type=5",
                "--out-of-order",
                "10",
                "--seed",
                "7",
            ],
        ]
        .concat(),
    );
    // Duplicates of valid events only: a failed event sent twice is stamped twice, and
    // `event_errors` keeps both (see the session note).
    let duplicated = load(
        &[
            &http[..],
            &[
                "--count",
                "200",
                "--clients",
                "2",
                "--duplicates",
                "10",
                "--seed",
                "9",
            ],
        ]
        .concat(),
    );
    let over_kafka = load(&[
        "--target",
        "kafka",
        "--brokers",
        &bootstrap,
        "--topic",
        &topic,
        "--application",
        "direct-app",
        "--count",
        "300",
        "--clients",
        "2",
        "--batch-size",
        "25",
        "--failures",
        "malformed_json=10,missing_field=5,invalid_session_id=5",
        "--seed",
        "8",
    ]);
    bridge.shutdown().await.unwrap();

    for (summary, count) in [(&over_http, 400), (&over_kafka, 300), (&duplicated, 200)] {
        assert_eq!(summary["events"], count, "{summary}");
        assert_eq!(summary["accepted_events"], count, "{summary}");
        let generated = summary["generated"]["valid"].as_u64().unwrap()
            + failures(summary).values().sum::<u64>()
            + summary["generated"]["duplicates"].as_u64().unwrap();
        assert_eq!(
            generated, count,
            "every event is valid, a failure or a duplicate"
        );
        assert!(summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    }
    assert!(over_http["generated"]["out_of_order"].as_u64().unwrap() > 0);
    assert!(duplicated["generated"]["duplicates"].as_u64().unwrap() > 0);

    let mut config = ProcessorConfig::default();
    config.kafka.brokers = bootstrap;
    config.consumer.topic = topic.clone();
    config.consumer.group_id = unique_name("processor");
    config.clickhouse.url = services.clickhouse.url();
    config.clickhouse.database = unique_name("eye");
    config.batch.max_wait_ms = 200;
    config.schemas_dir = repo("schemas");
    config.dead_letter.topic = format!("{topic}_dlq");
    config.alerts.topic = format!("{topic}_alerts");
    config.session_updates.topic = format!("{topic}_sessions");
    let database = config.clickhouse.database.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let processor = tokio::spawn(eye_processor::run(config, listener, async move {
        let _ = stopped.await;
    }));

    // What each application should hold: valid events, and failures by kind.
    let mut expected = String::new();
    let valid = |summary: &Value| summary["generated"]["valid"].as_u64().unwrap();
    for (application, summary, valid) in [
        ("direct-app", &over_kafka, valid(&over_kafka)),
        ("shop", &over_http, valid(&over_http) + valid(&duplicated)),
    ] {
        expected.push_str(&format!("{application}\tvalid\t{valid}\n"));
        for (kind, count) in failures(summary) {
            expected.push_str(&format!("{application}\t{kind}\t{count}\n"));
        }
    }
    let query = format!(
        "SELECT application, kind, n FROM ( \
           SELECT application, 'valid' AS kind, count() AS n FROM {database}.events FINAL GROUP BY application \
           UNION ALL \
           SELECT application, error_type AS kind, count() AS n FROM {database}.event_errors FINAL GROUP BY application, error_type \
         ) ORDER BY application, kind = 'valid' DESC, kind FORMAT TSV"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let found = services.clickhouse.query(&query).unwrap_or_default();
        if found == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "found:\n{found}\nexpected:\n{expected}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = stop.send(());
    processor.await.unwrap().unwrap();
}
