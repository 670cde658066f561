use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use eye_processor::config::ProcessorConfig;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// See [`eye_processor::allocator`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Eye's stream processor: consumes the raw event topic, validates every event against the
/// Avro schema of its (category, name), and writes valid events and typed failures to ClickHouse.
#[derive(Parser)]
#[command(name = "eye-processor", version)]
struct Cli {
    /// Configuration file (TOML); `EYE_…` environment variables override it
    /// (e.g. EYE_KAFKA__BROKERS, EYE_CLICKHOUSE__URL, EYE_SCHEMAS_DIR).
    #[arg(long, env = "EYE_PROCESSOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild the ClickHouse tables from the raw topic, then exit. Without --from: empty every
    /// table and read each partition from its first offset to its end at the start. A running
    /// processor may go on meanwhile; the tables fill up again as the replay goes.
    Replay {
        /// Re-read only from the first message at or after this time (RFC 3339, or
        /// `YYYY-MM-DD HH:MM:SS` in UTC), into the tables as they are (nothing is emptied).
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
    },
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    eye_core::timestamp::parse_event_time(text)
        .ok_or_else(|| format!("{text:?} is not RFC 3339 or YYYY-MM-DD HH:MM:SS"))
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads.
    eye_processor::allocator::return_freed_memory_sooner();
    tokio::runtime::Runtime::new()?.block_on(serve_or_replay())
}

async fn serve_or_replay() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eye_core::telemetry::init_logging();
    let config: ProcessorConfig = eye_core::settings::load(cli.config.as_deref())?;
    match cli.command {
        None => {
            let listener = tokio::net::TcpListener::bind(&config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            eye_processor::run(config, listener, eye_core::shutdown::signal()).await?;
        }
        Some(Command::Replay { from }) => replay(config, from).await?,
    }
    Ok(())
}

/// Runs a replay with a progress bar per partition: offsets done / total.
async fn replay(config: ProcessorConfig, from: Option<DateTime<Utc>>) -> anyhow::Result<()> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "partition {prefix:>3} [{bar:40}] {pos}/{len} offsets  {per_sec}  eta {eta}",
    )?
    .progress_chars("=> ");
    let by_partition: RefCell<BTreeMap<i32, (i64, ProgressBar)>> = RefCell::default();
    let summary = eye_processor::replay::replay(
        config,
        from,
        |plan| {
            for (&partition, &(start, end)) in plan {
                let bar = bars.add(ProgressBar::new((end - start) as u64));
                bar.set_style(style.clone());
                bar.set_prefix(partition.to_string());
                by_partition.borrow_mut().insert(partition, (start, bar));
            }
        },
        |written| {
            for (partition, (start, bar)) in by_partition.borrow().iter() {
                if let Some(&offset) = written.get(partition) {
                    bar.set_position((offset - start).max(0) as u64);
                }
            }
        },
    )
    .await?;
    for (_, bar) in by_partition.borrow().values() {
        bar.finish();
    }
    let seconds = summary.elapsed.as_secs_f64();
    println!(
        "replayed {} messages from {} partitions in {seconds:.1} s ({:.0} messages/s); emptied first: {}",
        summary.messages,
        summary.plan.len(),
        summary.messages as f64 / seconds.max(0.001),
        if summary.tables_emptied.is_empty() {
            "none".to_string()
        } else {
            summary.tables_emptied.join(", ")
        }
    );
    Ok(())
}
