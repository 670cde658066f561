//! `eye`: tools around The Eye's pipeline.

mod bench;
mod produce;

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
    /// Benchmarks against running services (start them with `cargo dev run`).
    #[command(subcommand)]
    Bench(bench::Bench),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce(args) => produce::run(args).await,
        Command::Bench(bench) => bench::run(bench).await,
    }
}
