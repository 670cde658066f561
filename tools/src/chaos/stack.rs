//! The whole pipeline on free ports in a scratch directory — ClickHouse, the broker, the ingest
//! bridge and the processor, each a supervised process that a fault can kill, stop or restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use eye_devenv::broker::{Broker, Storage};
use eye_devenv::clickhouse::ClickHouseServer;
use eye_devenv::install;
use eye_devenv::process::{free_port, Launch, Supervised};
use eye_devenv::testing::{serving_on, PortTaken, Signal};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts on fresh ports after another process took one of the chosen ports first.
const START_ATTEMPTS: usize = 5;
pub const RAW_TOPIC: &str = "eye.events.raw";
pub const PARTITIONS: i32 = 4;
pub const PROCESSOR_GROUP: &str = "eye-processor";

/// The binaries and settings files the stack runs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// A Kafka-protocol broker taking tansu's and nisshi's command line.
    pub broker_bin: PathBuf,
    pub ingest_bin: PathBuf,
    pub processor_bin: PathBuf,
    pub ingest_config: PathBuf,
    pub processor_config: PathBuf,
    pub schemas_dir: PathBuf,
    /// The processor's `consumer.session_timeout_ms`: how long its group waits for a killed
    /// member before giving the partitions to its successor.
    pub session_timeout_ms: u64,
    /// The processor's `consumer.stalled_after_ms` (its readiness).
    pub stalled_after_ms: u64,
}

/// One service: how to start it and the running process, if any.
pub struct Service {
    pub name: &'static str,
    launch: Launch,
    process: Option<Supervised>,
}

impl Service {
    fn new(name: &'static str, launch: Launch) -> Self {
        Self {
            name,
            launch,
            process: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "{} is running already", self.name);
        self.process = Some(self.launch.spawn_supervised(None)?);
        Ok(())
    }

    /// SIGKILL: the service dies at once, as in a crash or an OOM kill.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut process = self
            .process
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        process.signal(Signal::SIGKILL)?;
        process.stop();
        Ok(())
    }

    /// SIGSTOP or SIGCONT: the service hangs, or goes on.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .with_context(|| format!("{} is not running", self.name))?
            .signal(signal)
    }

    pub fn log_file(&self) -> &Path {
        &self.launch.log_file
    }

    /// Whether the running process itself serves `ports`, not another that took them first.
    fn serving_on(&self, ports: &[u16]) -> anyhow::Result<()> {
        let process = self
            .process
            .as_ref()
            .with_context(|| format!("{} is not running", self.name))?;
        Ok(serving_on(process, ports)?)
    }
}

pub struct Stack {
    pub clickhouse_server: ClickHouseServer,
    pub broker: Broker,
    pub ingest_url: String,
    pub ingest_ready_url: String,
    pub processor_ready_url: String,
    pub clickhouse: Service,
    pub kafka: Service,
    pub ingest: Service,
    pub processor: Service,
}

impl Stack {
    /// Starts every service in `state_dir` and waits until each answers on its own ports.
    pub async fn start(
        state_dir: &Path,
        programs: &Programs,
        storage: Storage,
    ) -> anyhow::Result<Self> {
        let mut attempt_dir = state_dir.to_path_buf();
        for attempt in 1..START_ATTEMPTS {
            match Self::start_on_free_ports(&attempt_dir, programs, storage.clone()).await {
                Err(error) if error.is::<PortTaken>() => {
                    eprintln!("{error}; starting the stack again on other ports");
                    // Afresh: the first attempt's broker may hold topics already.
                    attempt_dir = state_dir.join(format!("attempt-{}", attempt + 1));
                }
                started => return started,
            }
        }
        Self::start_on_free_ports(&attempt_dir, programs, storage).await
    }

    async fn start_on_free_ports(
        state_dir: &Path,
        programs: &Programs,
        storage: Storage,
    ) -> anyhow::Result<Self> {
        let clickhouse_server = ClickHouseServer {
            state_dir: state_dir.join("clickhouse"),
            http_port: free_port(),
            tcp_port: free_port(),
        };
        let clickhouse_binary =
            install::clickhouse_server().context("clickhouse-server is not installed")?;
        let clickhouse = Service::new("clickhouse", clickhouse_server.prepare(&clickhouse_binary)?);
        let broker = Broker {
            state_dir: state_dir.join("kafka"),
            port: free_port(),
            storage,
        };
        let kafka = Service::new("broker", broker.prepare(&programs.broker_bin)?);

        let (ingest_port, ingest_operations_port, processor_port) =
            (free_port(), free_port(), free_port());
        let ingest_listen = format!("127.0.0.1:{ingest_port}");
        let ingest_operations_listen = format!("127.0.0.1:{ingest_operations_port}");
        let processor_listen = format!("127.0.0.1:{processor_port}");
        let launch = |program: &Path, config: &Path, log: &str, envs: Vec<(&str, String)>| Launch {
            program: program.to_path_buf(),
            args: vec!["--config".into(), config.into()],
            envs: envs
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            log_file: state_dir.join(log),
        };
        let ingest = Service::new(
            "ingest",
            launch(
                &programs.ingest_bin,
                &programs.ingest_config,
                "ingest.log",
                vec![
                    ("EYE_LISTEN", ingest_listen.clone()),
                    ("EYE_OPERATIONS_LISTEN", ingest_operations_listen.clone()),
                    ("EYE_KAFKA__BROKERS", broker.bootstrap()),
                    ("EYE_PRODUCER__TOPIC", RAW_TOPIC.into()),
                    (
                        "EYE_SCHEMAS_DIR",
                        programs.schemas_dir.display().to_string(),
                    ),
                ],
            ),
        );
        let processor = Service::new(
            "processor",
            launch(
                &programs.processor_bin,
                &programs.processor_config,
                "processor.log",
                vec![
                    ("EYE_LISTEN", processor_listen.clone()),
                    ("EYE_KAFKA__BROKERS", broker.bootstrap()),
                    ("EYE_CONSUMER__TOPIC", RAW_TOPIC.into()),
                    ("EYE_CONSUMER__GROUP_ID", PROCESSOR_GROUP.into()),
                    (
                        "EYE_CONSUMER__SESSION_TIMEOUT_MS",
                        programs.session_timeout_ms.to_string(),
                    ),
                    (
                        "EYE_CONSUMER__STALLED_AFTER_MS",
                        programs.stalled_after_ms.to_string(),
                    ),
                    ("EYE_CLICKHOUSE__URL", clickhouse_server.url()),
                    ("EYE_CLICKHOUSE__DATABASE", "eye".into()),
                    (
                        "EYE_SCHEMAS_DIR",
                        programs.schemas_dir.display().to_string(),
                    ),
                ],
            ),
        );
        let mut stack = Stack {
            ingest_url: format!("http://{ingest_listen}/v1/events"),
            ingest_ready_url: format!("http://{ingest_operations_listen}/readyz"),
            processor_ready_url: format!("http://{processor_listen}/readyz"),
            clickhouse_server,
            broker,
            clickhouse,
            kafka,
            ingest,
            processor,
        };
        stack.clickhouse.start()?;
        stack.kafka.start()?;
        stack.wait_clickhouse()?;
        stack.wait_broker()?;
        let clickhouse_ports = [
            stack.clickhouse_server.http_port,
            stack.clickhouse_server.tcp_port,
        ];
        stack.clickhouse.serving_on(&clickhouse_ports)?;
        stack.kafka.serving_on(&[stack.broker.port])?;
        eye_core::kafka::create_topics(
            &eye_core::settings::KafkaSettings::for_brokers(stack.broker.bootstrap()),
            &[RAW_TOPIC],
            &eye_core::kafka::TopicSettings::with_partitions(PARTITIONS),
        )
        .await?;
        stack.processor.start()?;
        stack.ingest.start()?;
        wait_ready("the processor", &stack.processor_ready_url).await?;
        wait_ready("the ingest bridge", &stack.ingest_ready_url).await?;
        stack.processor.serving_on(&[processor_port])?;
        stack
            .ingest
            .serving_on(&[ingest_port, ingest_operations_port])?;
        Ok(stack)
    }

    pub fn wait_clickhouse(&self) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.clickhouse_server.wait_ready(READY_TIMEOUT))
    }

    pub fn wait_broker(&self) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.broker.wait_ready(READY_TIMEOUT))
    }

    /// Where each service writes its log, for a failed run's report.
    pub fn logs(&self) -> Vec<(&'static str, PathBuf)> {
        [&self.clickhouse, &self.kafka, &self.ingest, &self.processor]
            .iter()
            .map(|service| (service.name, service.log_file().to_path_buf()))
            .collect()
    }
}

/// Waits until `url` answers 2xx.
async fn wait_ready(what: &str, url: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let status = reqwest::get(url).await.map(|response| response.status());
        match status {
            Ok(status) if status.is_success() => return Ok(()),
            _ if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("{what} not ready after {READY_TIMEOUT:?}: {status:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
