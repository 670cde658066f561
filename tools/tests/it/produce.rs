//! `eye produce` speaks the direct-produce contract: its JSON and Avro messages both land in
//! `events` through the real processor.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use eye_devenv::testing::{new_topic, services, unique_name};
use eye_processor::config::ProcessorConfig;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[tokio::test]
async fn json_and_avro_files_produced_directly_land_in_events() {
    let services = services();
    let bootstrap = services.broker.bootstrap();
    let topic = new_topic(&bootstrap, "raw", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let lines: Vec<String> = ["pageview", "cta_click", "form_submit"]
        .iter()
        .map(|name| {
            let text =
                std::fs::read_to_string(repo(&format!("examples/events/{name}.json"))).unwrap();
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap()
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();

    for (format, application) in [("json", "crm"), ("avro", "billing")] {
        let status = Command::new(env!("CARGO_BIN_EXE_eye"))
            .args([
                "produce",
                "--brokers",
                &bootstrap,
                "--topic",
                &topic,
                "--format",
                format,
            ])
            .args(["--application", application, "--schemas-dir"])
            .arg(repo("schemas/avro"))
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success(), "eye produce --format {format}");
    }

    let mut config = ProcessorConfig::default();
    config.kafka.brokers = bootstrap;
    config.consumer.topic = topic;
    config.consumer.group_id = unique_name("processor");
    config.clickhouse.url = services.clickhouse.url();
    config.clickhouse.database = unique_name("eye");
    config.batch.max_wait_ms = 200;
    config.schemas_dir = repo("schemas");
    let database = config.clickhouse.database.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let processor = tokio::spawn(eye_processor::run(config, listener, async move {
        let _ = stopped.await;
    }));

    let query = format!(
        "SELECT application, count() FROM {database}.events FINAL GROUP BY application ORDER BY application FORMAT TSV"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = "billing\t3\ncrm\t3\n";
    loop {
        let result = services.clickhouse.query(&query).unwrap_or_default();
        if result == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "got {result:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let errors = services
        .clickhouse
        .query(&format!("SELECT count() FROM {database}.event_errors"))
        .unwrap();
    assert_eq!(errors.trim(), "0");
    let _ = stop.send(());
    processor.await.unwrap().unwrap();
}
