use std::path::PathBuf;

use clap::Parser;
use eye_ingest::config::IngestConfig;

/// The Eye's ingest bridge: trusted applications POST events to /v1/events; each is on the raw
/// Kafka topic before the 202 reply. Its API reference is served at /docs, its OpenAPI document at
/// /openapi.json.
#[derive(Parser)]
#[command(name = "eye-ingest", version)]
struct Cli {
    /// Configuration file (TOML); `EYE_…` environment variables override it
    /// (e.g. EYE_LISTEN, EYE_OPERATIONS_LISTEN, EYE_KAFKA__BROKERS, EYE_PRODUCER__TOPIC). The
    /// trusted applications may also come from EYE_APPLICATIONS_FILE (a TOML file of
    /// `[[applications]]`) or EYE_APPLICATION_KEYS (`id:key_sha256,…`); without one it will not
    /// start.
    #[arg(long, env = "EYE_INGEST_CONFIG")]
    config: Option<PathBuf>,
    /// Print the hex SHA-256 of an API key (for `key_sha256` in the configuration) and exit.
    #[arg(long, value_name = "API_KEY")]
    hash_key: Option<String>,
    /// Print the bridge's OpenAPI 3.1 document (also served at /openapi.json, browsable at /docs)
    /// and exit.
    #[arg(long)]
    print_openapi: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(key) = cli.hash_key {
        println!("{}", eye_ingest::auth::key_sha256(&key));
        return Ok(());
    }
    if cli.print_openapi {
        println!("{}", eye_ingest::openapi::document().to_pretty_json()?);
        return Ok(());
    }
    eye_core::telemetry::init_logging();
    let config: IngestConfig = eye_core::settings::load(cli.config.as_deref())?;
    let listeners = eye_ingest::Listeners::bind(&config).await?;
    eye_ingest::serve(config, listeners, eye_core::shutdown::signal()).await?;
    Ok(())
}
