//! Services for integration tests: each test binary starts its own broker and ClickHouse on free
//! ports the first time a test asks, and they stop when the test process exits. Tests isolate
//! themselves with [`unique_name`] topics and databases.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
pub use nix::sys::signal::Signal;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::broker::{Broker, Storage};
use crate::clickhouse::ClickHouseServer;
use crate::install;
use crate::process::{free_port, Supervised};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The broker and ClickHouse shared by the tests of one test binary.
#[derive(Debug)]
pub struct SharedServices {
    pub broker: Broker,
    pub clickhouse: ClickHouseServer,
    // Never dropped (a static); the supervisors stop the servers when the process exits.
    _processes: Vec<Supervised>,
}

/// Starts the shared services on first use.
pub fn services() -> &'static SharedServices {
    static SHARED: OnceLock<SharedServices> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (clickhouse, clickhouse_process) = on_free_ports("ClickHouse for tests", || {
            let dir = scratch_dir("clickhouse");
            let clickhouse = ClickHouseServer {
                state_dir: dir.clone(),
                http_port: free_port(),
                tcp_port: free_port(),
            };
            let process = start_clickhouse(&clickhouse, Some(&dir))?;
            Ok((clickhouse, process))
        });
        let (broker, broker_process) = on_free_ports("the broker for tests", || {
            let dir = scratch_dir("broker");
            // In memory: the shared broker is never restarted, and memory is the fastest engine;
            // tests of durability start a sqlite broker of their own ([`OwnedBroker::start`]).
            let broker = Broker {
                state_dir: dir.clone(),
                port: free_port(),
                storage: Storage::Memory,
            };
            let process = start_broker(&broker, Some(&dir))?;
            Ok((broker, process))
        });
        SharedServices {
            broker,
            clickhouse,
            _processes: vec![clickhouse_process, broker_process],
        }
    })
}

/// A broker of one test's own, for tests that stop and restart it or load it heavily; the port
/// stays the same across restarts.
#[derive(Debug)]
pub struct OwnedBroker {
    pub broker: Broker,
    process: Option<Supervised>,
    _dir: tempfile::TempDir,
}

impl OwnedBroker {
    /// Durable (sqlite) storage: a restart keeps the log.
    pub fn start() -> Self {
        // A fresh directory for each attempt: a broker that lost its port may have written one.
        let (broker, process, dir) = on_free_ports("the broker", || {
            let dir = tempfile::Builder::new()
                .prefix("eye-test-broker-")
                .tempdir()
                .context("creating a broker state dir")?;
            let broker = Broker {
                state_dir: dir.path().to_path_buf(),
                port: free_port(),
                storage: Storage::Sqlite,
            };
            let process = start_broker(&broker, None)?;
            Ok((broker, process, dir))
        });
        OwnedBroker {
            broker,
            process: Some(process),
            _dir: dir,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    /// Stops the broker process; its data stays.
    pub fn halt(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Sends `signal` to the broker process (SIGKILL, SIGSTOP, SIGCONT).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("the broker is not running")?
            .signal(signal)
    }

    /// Starts the broker again on the same port and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.process.is_none(), "broker already running");
        let process = start_broker(&self.broker, None).expect("restarting the broker");
        self.process = Some(process);
    }
}

impl Drop for OwnedBroker {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A ClickHouse server of one test's own, for tests that stop and restart it; ports and data stay
/// the same across restarts.
#[derive(Debug)]
pub struct OwnedClickHouse {
    pub server: ClickHouseServer,
    process: Option<Supervised>,
    _dir: tempfile::TempDir,
}

impl OwnedClickHouse {
    pub fn start() -> Self {
        let (server, process, dir) = on_free_ports("ClickHouse", || {
            let dir = tempfile::Builder::new()
                .prefix("eye-test-clickhouse-")
                .tempdir()
                .context("creating a ClickHouse state dir")?;
            let server = ClickHouseServer {
                state_dir: dir.path().to_path_buf(),
                http_port: free_port(),
                tcp_port: free_port(),
            };
            let process = start_clickhouse(&server, None)?;
            Ok((server, process, dir))
        });
        OwnedClickHouse {
            server,
            process: Some(process),
            _dir: dir,
        }
    }

    /// Stops the server; its data stays.
    pub fn halt(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Sends `signal` to the server process (SIGKILL, SIGSTOP, SIGCONT).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("ClickHouse is not running")?
            .signal(signal)
    }

    /// Starts the server again on the same ports and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.process.is_none(), "ClickHouse already running");
        let process = start_clickhouse(&self.server, None).expect("restarting ClickHouse");
        self.process = Some(process);
    }
}

impl Drop for OwnedClickHouse {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Another process listens on a port chosen for a service: it was free when chosen and taken
/// before the service bound it, so the service's readiness probe reached the other process.
#[derive(Debug, thiserror::Error)]
#[error("port {port} is served by another process, not the one just started")]
pub struct PortTaken {
    pub port: u16,
}

/// Starts the broker and waits until it answers on its own port (see [`PortTaken`]).
pub fn start_broker(
    broker: &Broker,
    remove_after_exit: Option<&Path>,
) -> anyhow::Result<Supervised> {
    let process = broker
        .prepare(&broker_binary())?
        .spawn_supervised(remove_after_exit)?;
    broker.wait_ready(READY_TIMEOUT)?;
    serving_on(&process, &[broker.port])?;
    Ok(process)
}

/// Starts ClickHouse and waits until it answers on its own ports (see [`PortTaken`]).
pub fn start_clickhouse(
    server: &ClickHouseServer,
    remove_after_exit: Option<&Path>,
) -> anyhow::Result<Supervised> {
    let process = server
        .prepare(&clickhouse_server_binary())?
        .spawn_supervised(remove_after_exit)?;
    server.wait_ready(READY_TIMEOUT)?;
    serving_on(&process, &[server.http_port, server.tcp_port])?;
    Ok(process)
}

/// After a readiness probe was answered: whether `process` itself holds `ports` (see
/// [`PortTaken`]).
pub fn serving_on(process: &Supervised, ports: &[u16]) -> Result<(), PortTaken> {
    for &port in ports {
        // A service that exited after the probe was answered lost its port to that answer.
        if !process.listens_on(port).unwrap_or(false) {
            return Err(PortTaken { port });
        }
    }
    Ok(())
}

/// Runs `start` with fresh ports until no other process took one of them first.
fn on_free_ports<T>(service: &str, mut start: impl FnMut() -> anyhow::Result<T>) -> T {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        match start() {
            Ok(started) => return started,
            Err(error) if error.is::<PortTaken>() => continue,
            Err(error) => panic!("starting {service}: {error:#}"),
        }
    }
    panic!("starting {service}: another process took its port {ATTEMPTS} times")
}

/// A name no other test (or earlier run) uses: `prefix_<pid>_<time>_<n>`, valid as a Kafka topic
/// and as a ClickHouse identifier.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!(
        "{prefix}_{}_{micros}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A topic of the test's own on the broker at `bootstrap`: a [`unique_name`] with `prefix`,
/// created with `partitions` partitions.
pub async fn new_topic(bootstrap: &str, prefix: &str, partitions: i32) -> String {
    let topic = unique_name(prefix);
    eye_core::kafka::create_topics(
        &eye_core::settings::KafkaSettings::for_brokers(bootstrap),
        &[&topic],
        &eye_core::kafka::TopicSettings::with_partitions(partitions),
    )
    .await
    .unwrap_or_else(|error| panic!("creating topic {topic}: {error}"));
    topic
}

fn scratch_dir(service: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("eye-test-{service}-"))
        .tempdir()
        .expect("creating a scratch dir")
        .keep()
}

fn broker_binary() -> PathBuf {
    install::broker().unwrap_or_else(|| {
        panic!(
            "nisshi {} is not installed: run the tests with `cargo dev test`, which installs it",
            install::BROKER_VERSION
        )
    })
}

fn clickhouse_server_binary() -> PathBuf {
    install::clickhouse_server().expect(
        "clickhouse-server is not installed: run the tests with `cargo dev test`, which installs it",
    )
}

/// Every message of `topic` (its partitions `0..partitions`) once `expected` have arrived, and a
/// moment more, so that extra messages would be seen too; what arrived after a minute otherwise.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut settle_until = None;
    loop {
        let now = std::time::Instant::now();
        if now > deadline || settle_until.is_some_and(|until| now > until) {
            break;
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            messages.push(message.unwrap().detach());
        }
        if messages.len() >= expected && settle_until.is_none() {
            settle_until = Some(std::time::Instant::now() + Duration::from_millis(1500));
        }
    }
    messages
}
