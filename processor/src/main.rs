//! The stream processor's entry point. Validation, sessions and the ClickHouse sink are not built
//! yet (issue 4): this binary answers `--help` and says so when started.

use std::path::PathBuf;

use clap::Parser;

/// Consumes the raw event topic, validates every event against the Avro schema of its
/// (category, name), and writes valid events and recorded failures to ClickHouse.
#[derive(Parser)]
#[command(name = "eye-processor", version)]
struct Cli {
    /// Configuration file (TOML); `EYE_…` environment variables override it.
    #[arg(long, env = "EYE_PROCESSOR_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    eprintln!("eye-processor: event processing is not built yet; nothing to do");
    Ok(())
}
