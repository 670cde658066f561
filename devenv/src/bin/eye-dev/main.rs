//! `eye-dev` (run as `cargo dev …`): brings The Eye's local services up and down, runs the
//! pipeline locally, and runs the test suite.
//!
//! One module per kind of command: [`local`] (install, up, run, down, status), [`bench`],
//! [`suite`] (test, chaos); [`workspace`] finds the workspace and runs cargo in it.

mod bench;
mod local;
mod suite;
mod workspace;

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use eye_devenv::broker::Storage;
use eye_devenv::{fuzz, install};

use crate::local::Ports;
use crate::workspace::{default_state_dir, workspace_root};

#[derive(Parser)]
#[command(
    name = "eye-dev",
    about = "Local services, local runs and tests for The Eye"
)]
struct Cli {
    /// Where services keep their data, logs and pid files.
    #[arg(long, env = "EYE_STATE_DIR", default_value_os_t = default_state_dir(), global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install clickhouse-server (apt) and the broker nisshi (cargo +nightly) if they are missing.
    Install,
    /// Start ClickHouse and the Kafka broker (installing them if needed) and create the topics.
    Up(Ports),
    /// Stop every process `up` and `run` started (by pid file), keeping their data.
    Down,
    /// Show which services are running and where they listen.
    Status,
    /// `up`, then build and start the ingest bridge and the processor in the background.
    Run(Ports),
    /// `run` (the broker in memory), then every benchmark of `eye bench` in turn against it:
    /// ingest beside its producer ceiling (on the broker, then on librdkafka's mock cluster), the
    /// bridge under 2,000 slow clients and a flood,
    /// processor beside its consumer and clickhouse-client insert ceilings and ClickHouse's Kafka
    /// engine, end to end at 1,000 single-event requests/s and at 10,000 events/s in requests of 100, and queries over 10M events. Each prints a table.
    Bench(Ports),
    /// Install the services the tests start, run `cargo test` for the whole workspace, then the
    /// short fault matrix (`eye chaos --short` on the debug binaries), then each fuzz target for
    /// `--fuzz-seconds`, and end with a total line `summary: N passed, M failed` over all three.
    Test {
        /// Leave out the fault matrix.
        #[arg(long)]
        skip_chaos: bool,
        /// Leave out the fuzz targets.
        #[arg(long)]
        skip_fuzz: bool,
        /// How long each fuzz target runs.
        #[arg(long, default_value_t = 60)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test`, e.g. `-- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// The fuzz targets of `fuzz/` (cargo-fuzz, nightly), each from its checked-in corpus for
    /// `--seconds`; a crash's input is kept under `.eye/fuzz/artifacts/<target>/`.
    Fuzz {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Targets to run (all when none): split_events, event_time, json_to_avro,
        /// avro_single_object, validate.
        targets: Vec<String>,
    },
    /// The fault matrix on release binaries (`eye chaos`): the whole pipeline on the durable
    /// broker under steady load from retrying clients, through processor ×5, ingest ×2 and
    /// broker ×2 SIGKILLs, ClickHouse SIGSTOP for 60 s and ClickHouse SIGKILL; a table per fault.
    Chaos {
        /// Arguments for `eye chaos`, e.g. `--short` or `--broker-storage memory` (see
        /// `cargo run --bin eye -- chaos --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        chaos_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run_cli(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("eye-dev: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> Result<ExitCode> {
    let state = cli.state_dir;
    match cli.command {
        Cmd::Install => {
            install::ensure_clickhouse()?;
            install::ensure_broker()?;
        }
        Cmd::Up(ports) => {
            local::up(&state, &ports)?;
            local::status(&state);
        }
        Cmd::Down => local::down(&state)?,
        Cmd::Status => local::status(&state),
        Cmd::Run(ports) => {
            local::run(&state, &ports)?;
            local::status(&state);
        }
        Cmd::Bench(mut ports) => {
            ports.broker_storage = Storage::Memory;
            local::up(&state, &ports)?;
            local::start_pipeline(&state, &ports)?;
            bench::run_all(&ports)?;
        }
        Cmd::Test {
            skip_chaos,
            skip_fuzz,
            fuzz_seconds,
            cargo_test_args,
        } => {
            let fuzz_seconds = (!skip_fuzz).then_some(fuzz_seconds);
            return suite::test(&state, &cargo_test_args, !skip_chaos, fuzz_seconds);
        }
        Cmd::Fuzz { seconds, targets } => {
            let targets = match targets.is_empty() {
                true => fuzz::TARGETS.map(String::from).to_vec(),
                false => targets,
            };
            fs::create_dir_all(&state)?;
            fuzz::start_build(&workspace_root(), &state.join("fuzz-build.log"))?.finish()?;
            let outcome = fuzz::run(&workspace_root(), &state, &targets, seconds)?;
            return Ok(if outcome.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::Chaos { chaos_args } => {
            install::ensure_clickhouse()?;
            install::ensure_broker()?;
            let status = suite::chaos_command(true)?
                .args(&chaos_args)
                .status()
                .context("running eye chaos")?;
            return Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
