//! The bridge a benchmark starts for itself: the release binary on free ports, producing to a
//! topic of the benchmark's choosing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::bail;
use clap::Args;

use super::Service;

#[derive(Args)]
pub struct BridgeArgs {
    #[arg(long, default_value = "target/release/eye-ingest")]
    pub ingest_bin: PathBuf,
    /// The bridge's settings file (its applications, keys and limits); the bench sets its
    /// addresses, broker and topic.
    #[arg(long, default_value = "config/ingest.toml")]
    pub ingest_config: PathBuf,
    #[arg(long, default_value = "eye-local-dev-key")]
    pub api_key: String,
}

/// A running bridge and where it answers.
pub(crate) struct Bridge {
    pub service: Service,
    pub api_port: u16,
    /// `http://…/v1/events`.
    pub events_url: String,
    /// `http://…` of `/healthz`, `/readyz` and `/metrics`.
    pub operations_url: String,
}

impl BridgeArgs {
    /// Starts the bridge against `brokers`, producing to `topic`, and waits until it is ready.
    pub async fn start(&self, brokers: &str, topic: &str) -> anyhow::Result<Bridge> {
        if !self.ingest_bin.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release --bin eye-ingest`",
                self.ingest_bin.display()
            );
        }
        let api_port = eye_devenv::free_port();
        let operations_port = eye_devenv::free_port();
        let service = Service::spawn(
            Command::new(&self.ingest_bin)
                .arg("--config")
                .arg(&self.ingest_config)
                .env("EYE_LISTEN", format!("127.0.0.1:{api_port}"))
                .env(
                    "EYE_OPERATIONS_LISTEN",
                    format!("127.0.0.1:{operations_port}"),
                )
                .env("EYE_KAFKA__BROKERS", brokers)
                .env("EYE_PRODUCER__TOPIC", topic),
        )?;
        let bridge = Bridge {
            service,
            api_port,
            events_url: format!("http://127.0.0.1:{api_port}/v1/events"),
            operations_url: format!("http://127.0.0.1:{operations_port}"),
        };
        super::ingest::wait_ready(
            &reqwest::Client::new(),
            &format!("{}/readyz", bridge.operations_url),
        )
        .await?;
        Ok(bridge)
    }
}
