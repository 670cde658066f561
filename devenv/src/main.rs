//! `eye-dev` (run as `cargo dev …`): brings The Eye's local services up and down, runs the
//! pipeline locally, and runs the test suite.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use eye_devenv::broker::{Broker, Storage};
use eye_devenv::clickhouse::ClickHouseServer;
use eye_devenv::process::{
    http_get_ok, running_pid, stop_by_pid_file, wait_until, Launch, StopOutcome,
};
use eye_devenv::{fuzz, install};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);
/// The cargo arguments that build the services `run` starts.
const PIPELINE_RELEASE_BUILD: [&str; 6] = [
    "build",
    "--release",
    "--bin",
    "eye-ingest",
    "--bin",
    "eye-processor",
];
/// The topic applications produce to and the processor consumes.
const RAW_TOPIC: &str = "eye.events.raw";

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
    /// engine, end to end at 1,000 events/s, and queries over 10M events. Each prints a table.
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

#[derive(Args, Clone)]
struct Ports {
    #[arg(long, default_value_t = 9092)]
    kafka_port: u16,
    #[arg(long, default_value_t = 8123)]
    clickhouse_http_port: u16,
    #[arg(long, default_value_t = 9000)]
    clickhouse_tcp_port: u16,
    /// HTTP port of the ingest bridge's API (`run` only).
    #[arg(long, default_value_t = 8080)]
    ingest_port: u16,
    /// Port of the ingest bridge's health and metrics endpoints (`run` only).
    #[arg(long, default_value_t = 8082)]
    ingest_operations_port: u16,
    /// Port of the processor's health and metrics endpoints (`run` only).
    #[arg(long, default_value_t = 8081)]
    processor_port: u16,
    /// Partitions of the raw topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Where the broker keeps its log: `sqlite` (durable, in the state directory), `memory`
    /// (fast, lost on restart) or a `postgres://…` URL of a running PostgreSQL.
    #[arg(long, default_value = "sqlite")]
    broker_storage: Storage,
}

fn default_state_dir() -> PathBuf {
    workspace_root().join(".eye")
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fs::canonicalize(&root).unwrap_or(root)
}

/// One process `eye-dev` manages: its pid file and what its command line must contain.
struct Managed {
    name: &'static str,
    program: &'static str,
}

const CLICKHOUSE: Managed = Managed {
    name: "clickhouse",
    program: "clickhouse",
};
const KAFKA: Managed = Managed {
    name: "kafka",
    program: "nisshi",
};
const INGEST: Managed = Managed {
    name: "ingest",
    program: "eye-ingest",
};
const PROCESSOR: Managed = Managed {
    name: "processor",
    program: "eye-processor",
};
/// In stop order: consumers of a service before the service.
const ALL: [Managed; 4] = [INGEST, PROCESSOR, KAFKA, CLICKHOUSE];

impl Managed {
    fn pid_file(&self, state: &Path) -> PathBuf {
        state.join(format!("{}.pid", self.name))
    }
    fn address_file(&self, state: &Path) -> PathBuf {
        state.join(format!("{}.address", self.name))
    }
    fn running(&self, state: &Path) -> Option<u32> {
        running_pid(&self.pid_file(state), self.program)
    }
    /// Starts `launch` detached unless already running; records where it listens.
    fn start(&self, state: &Path, launch: &Launch, address: &str) -> Result<()> {
        if let Some(pid) = self.running(state) {
            println!("{:<10} already running (pid {pid})", self.name);
            return Ok(());
        }
        let pid = launch.spawn_detached(&self.pid_file(state))?;
        fs::write(self.address_file(state), address)?;
        println!(
            "{:<10} started (pid {pid}), log {}",
            self.name,
            launch.log_file.display()
        );
        Ok(())
    }
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
            up(&state, &ports)?;
            status(&state);
        }
        Cmd::Down => down(&state)?,
        Cmd::Status => status(&state),
        Cmd::Run(ports) => {
            // A missing broker builds beside the release binaries: together they take less
            // than one after the other on two cores.
            fs::create_dir_all(&state)?;
            let broker = install::start_broker_install(Some(&state.join("nisshi-install.log")))?;
            cargo(&PIPELINE_RELEASE_BUILD)?;
            broker.finish()?;
            up(&state, &ports)?;
            start_pipeline(&state, &ports)?;
            status(&state);
        }
        Cmd::Bench(mut ports) => {
            ports.broker_storage = Storage::Memory;
            up(&state, &ports)?;
            start_pipeline(&state, &ports)?;
            bench(&ports)?;
        }
        Cmd::Test {
            skip_chaos,
            skip_fuzz,
            fuzz_seconds,
            cargo_test_args,
        } => {
            let fuzz_seconds = (!skip_fuzz).then_some(fuzz_seconds);
            return test(&state, &cargo_test_args, !skip_chaos, fuzz_seconds);
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
            let status = chaos_command(true)?
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

fn up(state: &Path, ports: &Ports) -> Result<()> {
    let clickhouse_server = install::ensure_clickhouse()?;
    let broker_binary = install::ensure_broker()?;
    fs::create_dir_all(state)?;
    let state = fs::canonicalize(state)?;

    let clickhouse = ClickHouseServer {
        state_dir: state.join("clickhouse"),
        http_port: ports.clickhouse_http_port,
        tcp_port: ports.clickhouse_tcp_port,
    };
    let launch = clickhouse.prepare(&clickhouse_server)?;
    CLICKHOUSE.start(&state, &launch, &clickhouse.url())?;

    let broker = Broker {
        state_dir: state.join("kafka"),
        port: ports.kafka_port,
        storage: ports.broker_storage.clone(),
    };
    let launch = broker.prepare(&broker_binary)?;
    KAFKA.start(&state, &launch, &broker.bootstrap())?;

    clickhouse.wait_ready(READY_TIMEOUT)?;
    broker.wait_ready(READY_TIMEOUT)?;
    broker.create_topics(&[RAW_TOPIC], ports.partitions)?;
    Ok(())
}

fn start_pipeline(state: &Path, ports: &Ports) -> Result<()> {
    let root = workspace_root();
    cargo(&PIPELINE_RELEASE_BUILD)?;
    let state = fs::canonicalize(state)?;
    let bin = root.join("target/release");
    let kafka = format!("127.0.0.1:{}", ports.kafka_port);
    let clickhouse = format!("http://127.0.0.1:{}", ports.clickhouse_http_port);
    let ingest_listen = format!("127.0.0.1:{}", ports.ingest_port);
    let ingest_operations_listen = format!("127.0.0.1:{}", ports.ingest_operations_port);
    let processor_listen = format!("127.0.0.1:{}", ports.processor_port);
    // The services read their settings from the file and `EYE_…` variables; `eye-dev` passes
    // the addresses it chose through the environment.
    let launch = |program: &str, config: &str, envs: Vec<(&str, String)>| Launch {
        program: bin.join(program),
        args: vec!["--config".into(), root.join(config).into()],
        envs: envs
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect(),
        log_file: state.join(format!("{program}.log")),
    };
    INGEST.start(
        &state,
        &launch(
            "eye-ingest",
            "config/ingest.toml",
            vec![
                ("EYE_LISTEN", ingest_listen.clone()),
                ("EYE_OPERATIONS_LISTEN", ingest_operations_listen.clone()),
                ("EYE_KAFKA__BROKERS", kafka.clone()),
            ],
        ),
        &format!("http://{ingest_listen}/v1/events, http://{ingest_operations_listen}/metrics"),
    )?;
    PROCESSOR.start(
        &state,
        &launch(
            "eye-processor",
            "config/processor.toml",
            vec![
                ("EYE_LISTEN", processor_listen.clone()),
                ("EYE_KAFKA__BROKERS", kafka.clone()),
                ("EYE_CLICKHOUSE__URL", clickhouse.clone()),
                (
                    "EYE_SCHEMAS_DIR",
                    root.join("schemas").display().to_string(),
                ),
            ],
        ),
        &format!("http://{processor_listen}/metrics, consuming {RAW_TOPIC} into {clickhouse}"),
    )?;
    // Ready before `run` returns, so the first request a user sends is accepted.
    wait_until("the ingest bridge", READY_TIMEOUT, || {
        http_get_ok(&ingest_operations_listen, "/readyz")
    })?;
    wait_until("the processor", READY_TIMEOUT, || {
        http_get_ok(&processor_listen, "/readyz")
    })?;
    Ok(())
}

/// Runs each `eye bench` scenario against the services `ports` names, printing its command first.
fn bench(ports: &Ports) -> Result<()> {
    let root = workspace_root();
    cargo(&["build", "--release", "--bin", "eye"])?;
    let kafka = format!("127.0.0.1:{}", ports.kafka_port);
    let clickhouse = format!("http://127.0.0.1:{}", ports.clickhouse_http_port);
    let ingest = format!("http://127.0.0.1:{}/v1/events", ports.ingest_port);
    let clickhouse_tcp_port = ports.clickhouse_tcp_port.to_string();
    let scenarios: [Vec<&str>; 6] = [
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

fn down(state: &Path) -> Result<()> {
    for service in ALL {
        match stop_by_pid_file(&service.pid_file(state), service.program, STOP_GRACE)? {
            StopOutcome::Stopped(pid) => println!("{:<10} stopped (pid {pid})", service.name),
            StopOutcome::NotRunning => println!("{:<10} not running", service.name),
        }
    }
    Ok(())
}

fn status(state: &Path) {
    for service in ALL.iter().rev() {
        match service.running(state) {
            Some(pid) => {
                let address = fs::read_to_string(service.address_file(state)).unwrap_or_default();
                println!("{:<10} running (pid {pid})  {address}", service.name);
            }
            None => println!("{:<10} stopped", service.name),
        }
    }
}

fn test(
    state: &Path,
    cargo_test_args: &[String],
    chaos: bool,
    fuzz_seconds: Option<u64>,
) -> Result<ExitCode> {
    // A missing broker builds beside the tests (see `run`).
    fs::create_dir_all(state)?;
    let broker = install::start_broker_install(Some(&state.join("nisshi-install.log")))?;
    let fuzz_build = fuzz_seconds
        .map(|_| fuzz::start_build(&workspace_root(), &state.join("fuzz-build.log")))
        .transpose()?;
    install::ensure_clickhouse()?;
    install::ensure_chdb()?;
    // The arguments for cargo, not those after `--` for the test binaries.
    let build_args: Vec<&String> = cargo_test_args
        .iter()
        .take_while(|arg| arg.as_str() != "--")
        .collect();
    let mut build = vec!["test", "--workspace", "--no-run"];
    build.extend(build_args.iter().map(|arg| arg.as_str()));
    cargo(&build)?;
    broker.finish()?;
    let mut tests = Command::new(cargo_program());
    tests
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        // One test at a time within each binary: the tests of a binary share one ClickHouse and
        // one broker on two cores, and their timeouts assume neither is shared with another test.
        .env("RUST_TEST_THREADS", "1")
        .args(cargo_test_args);
    // Pass the output through, adding up every test binary's `test result:` line, so the run
    // ends with one total (the last binary cargo runs may hold no test at all).
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut success = run_counting(&mut tests, "test result: ", &mut passed, &mut failed)?;
    if chaos {
        // On the debug binaries `cargo test` built.
        let mut matrix = chaos_command(false)?;
        matrix.arg("--short");
        success &= run_counting(&mut matrix, "chaos: ", &mut passed, &mut failed)?;
    }
    if let (Some(seconds), Some(build)) = (fuzz_seconds, fuzz_build) {
        let targets = fuzz::TARGETS.map(String::from);
        match build.finish() {
            Ok(()) => {
                let outcome = fuzz::run(&workspace_root(), state, &targets, seconds)?;
                passed += outcome.passed;
                failed += outcome.failed;
                success &= outcome.failed == 0;
            }
            // Counted, so the summary line says the fuzz targets did not run.
            Err(error) => {
                println!("fuzz: 0 passed, {} failed ({error:#})", targets.len());
                failed += targets.len() as u64;
                success = false;
            }
        }
    }
    println!("summary: {passed} passed, {failed} failed");
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds `eye`, `eye-ingest` and `eye-processor` (release or debug) and returns `eye chaos` on
/// them.
fn chaos_command(release: bool) -> Result<Command> {
    let mut build = vec![
        "build",
        "--bin",
        "eye",
        "--bin",
        "eye-ingest",
        "--bin",
        "eye-processor",
    ];
    if release {
        build.push("--release");
    }
    cargo(&build)?;
    let bin = workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" });
    let mut command = Command::new(bin.join("eye"));
    command
        .current_dir(workspace_root())
        .arg("chaos")
        .arg("--ingest-bin")
        .arg(bin.join("eye-ingest"))
        .arg("--processor-bin")
        .arg(bin.join("eye-processor"));
    Ok(command)
}

/// Runs `command`, passing its output through and adding up the counts of its lines that start
/// with `prefix` (`… N passed; M failed …`); true if it succeeded.
fn run_counting(
    command: &mut Command,
    prefix: &str,
    passed: &mut u64,
    failed: &mut u64,
) -> Result<bool> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    for line in BufReader::new(child.stdout.take().context("child output")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix(prefix) {
            *passed += count_before(result, " passed");
            *failed += count_before(result, " failed");
        }
    }
    Ok(child.wait()?.success())
}

fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs cargo in the workspace with `args`.
fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(cargo_program())
        .current_dir(workspace_root())
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The number just before `label` in a line like `ok. 12 passed; 0 failed; …`.
fn count_before(text: &str, label: &str) -> u64 {
    text.split_once(label)
        .and_then(|(before, _)| before.rsplit(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn counts_come_from_cargo_test_result_lines() {
        let result =
            "ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.05s";
        assert_eq!(count_before(result, " passed"), 12);
        assert_eq!(count_before(result, " failed"), 3);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " passed"), 0);
    }
}
