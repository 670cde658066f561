//! `eye`: tools around The Eye's pipeline.

mod bench;
mod chaos;
mod load;
mod produce;
mod schedule;
mod traffic;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "eye", version, about = "Tools for The Eye event pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce a file's events straight to the raw Kafka topic, as JSON or as Avro
    /// single-object encoding (the direct-produce contract; see the README).
    Produce(produce::ProduceArgs),
    /// Generate realistic traffic (sessions, an event mix, failures, disorder, duplicates) over
    /// HTTP or straight to Kafka; print throughput and reply-latency percentiles.
    Load(load::LoadArgs),
    /// The fault matrix: the whole pipeline on the durable broker under steady load from
    /// retrying clients, through processor, ingest, broker and ClickHouse failures; checks that
    /// nothing acknowledged is lost or duplicated and prints a table per fault.
    Chaos(chaos::ChaosArgs),
    /// Benchmarks against running services (start them with `cargo dev run`, or run them all
    /// with `cargo dev bench`).
    #[command(subcommand)]
    Bench(bench::Bench),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce(args) => produce::run(args).await,
        Command::Load(args) => load::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Bench(bench) => bench::run(bench).await,
    }
}
