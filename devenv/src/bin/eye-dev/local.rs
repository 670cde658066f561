//! The local services: ClickHouse and the broker, then the ingest bridge and the processor,
//! started detached and tracked by pid files in the state directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use eye_devenv::broker::{Broker, Storage};
use eye_devenv::clickhouse::ClickHouseServer;
use eye_devenv::install;
use eye_devenv::process::{
    http_get_ok, running_pid, stop_by_pid_file, wait_until, Launch, StopOutcome,
};

use crate::workspace::{cargo, workspace_root};

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

#[derive(Args, Clone)]
pub struct Ports {
    #[arg(long, default_value_t = 9092)]
    pub kafka_port: u16,
    #[arg(long, default_value_t = 8123)]
    pub clickhouse_http_port: u16,
    #[arg(long, default_value_t = 9000)]
    pub clickhouse_tcp_port: u16,
    /// HTTP port of the ingest bridge's API (`run` only).
    #[arg(long, default_value_t = 8080)]
    pub ingest_port: u16,
    /// Port of the ingest bridge's health and metrics endpoints (`run` only).
    #[arg(long, default_value_t = 8082)]
    pub ingest_operations_port: u16,
    /// Port of the processor's health and metrics endpoints (`run` only).
    #[arg(long, default_value_t = 8081)]
    pub processor_port: u16,
    /// Partitions of the raw topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Where the broker keeps its log: `sqlite` (durable, in the state directory), `memory`
    /// (fast, lost on restart) or a `postgres://…` URL of a running PostgreSQL.
    #[arg(long, default_value = "sqlite")]
    pub broker_storage: Storage,
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

/// Builds the services (and the broker, if missing, beside them: together they take less than
/// one after the other on two cores), brings the services up and starts the pipeline.
pub fn run(state: &Path, ports: &Ports) -> Result<()> {
    fs::create_dir_all(state)?;
    let broker = install::start_broker_install(Some(&state.join("nisshi-install.log")))?;
    cargo(&PIPELINE_RELEASE_BUILD)?;
    broker.finish()?;
    up(state, ports)?;
    start_pipeline(state, ports)
}

pub fn up(state: &Path, ports: &Ports) -> Result<()> {
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
    // The source of truth: kept whole, as the processor would create it.
    broker.create_topics(
        &[RAW_TOPIC],
        &eye_core::kafka::TopicSettings {
            properties: eye_core::kafka::unbounded_retention(),
            ..eye_core::kafka::TopicSettings::with_partitions(ports.partitions)
        },
    )?;
    Ok(())
}

pub fn start_pipeline(state: &Path, ports: &Ports) -> Result<()> {
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
                (
                    "EYE_SCHEMAS_DIR",
                    root.join("schemas").display().to_string(),
                ),
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

pub fn down(state: &Path) -> Result<()> {
    for service in ALL {
        match stop_by_pid_file(&service.pid_file(state), service.program, STOP_GRACE)? {
            StopOutcome::Stopped(pid) => println!("{:<10} stopped (pid {pid})", service.name),
            StopOutcome::NotRunning => println!("{:<10} not running", service.name),
        }
    }
    Ok(())
}

pub fn status(state: &Path) {
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
