use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use eye_processor::config::ProcessorConfig;

/// The Eye's stream processor: consumes the raw event topic, validates every event against the
/// Avro schema of its (category, name), and writes valid events and typed failures to ClickHouse.
#[derive(Parser)]
#[command(name = "eye-processor", version)]
struct Cli {
    /// Configuration file (TOML); `EYE_…` environment variables override it
    /// (e.g. EYE_KAFKA__BROKERS, EYE_CLICKHOUSE__URL, EYE_SCHEMAS_DIR).
    #[arg(long, env = "EYE_PROCESSOR_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eye_core::telemetry::init_logging();
    let config: ProcessorConfig = eye_core::settings::load(cli.config.as_deref())?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    eye_processor::run(config, listener, eye_core::shutdown::signal()).await?;
    Ok(())
}
