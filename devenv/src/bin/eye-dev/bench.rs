//! `cargo dev bench`: every `eye bench` scenario in turn against the local services.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::local::Ports;
use crate::workspace::{cargo, workspace_root};

/// Runs each `eye bench` scenario against the services `ports` names, printing its command first.
pub fn run_all(ports: &Ports) -> Result<()> {
    let root = workspace_root();
    cargo(&["build", "--release", "--bin", "eye"])?;
    let kafka = format!("127.0.0.1:{}", ports.kafka_port);
    let clickhouse = format!("http://127.0.0.1:{}", ports.clickhouse_http_port);
    let ingest = format!("http://127.0.0.1:{}/v1/events", ports.ingest_port);
    let clickhouse_tcp_port = ports.clickhouse_tcp_port.to_string();
    let scenarios: [Vec<&str>; 7] = [
        vec!["ingest", "--brokers", &kafka],
        vec!["ingest", "--mock-broker"],
        vec!["overload", "--brokers", &kafka],
        vec![
            "processor",
            "--brokers",
            &kafka,
            "--clickhouse-url",
            &clickhouse,
            "--clickhouse-tcp-port",
            &clickhouse_tcp_port,
        ],
        vec!["e2e", "--url", &ingest, "--clickhouse-url", &clickhouse],
        // #14's second end-to-end target, as a batching client (browser snippet, service) sends.
        vec![
            "e2e",
            "--url",
            &ingest,
            "--clickhouse-url",
            &clickhouse,
            "--rate",
            "10000",
            "--seconds",
            "30",
            "--batch-size",
            "100",
        ],
        vec!["queries", "--clickhouse-url", &clickhouse],
    ];
    for args in scenarios {
        println!("\n$ target/release/eye bench {}", args.join(" "));
        let status = Command::new(root.join("target/release/eye"))
            .current_dir(&root)
            .arg("bench")
            .args(&args)
            .status()
            .context("running eye bench")?;
        if !status.success() {
            bail!("eye bench {} failed: {status}", args[0]);
        }
    }
    Ok(())
}
