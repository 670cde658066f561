//! A Kafka-protocol broker (nisshi, tansu's successor) on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::process::{wait_until, Launch};

/// Where the broker keeps its log and committed offsets (docs/broker.md compares them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// Durable, a file in the state directory: survives a broker restart (local runs, tests of
    /// durability).
    Sqlite,
    /// Fast and volatile (benchmarks, tests that need no restart).
    Memory,
    /// Durable, a PostgreSQL database at this URL (the broker creates its own tables).
    Postgres(String),
}

impl std::str::FromStr for Storage {
    type Err = String;

    /// `sqlite`, `memory`, or a `postgres://…` URL.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sqlite" => Ok(Storage::Sqlite),
            "memory" => Ok(Storage::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Storage::Postgres(url.to_string()))
            }
            other => Err(format!(
                "{other:?} is not a broker storage: sqlite, memory or a postgres:// URL"
            )),
        }
    }
}

/// A local nisshi broker: its port, storage and state directory.
#[derive(Debug, Clone)]
pub struct Broker {
    pub state_dir: PathBuf,
    pub port: u16,
    pub storage: Storage,
}

impl Broker {
    /// The `bootstrap.servers` value clients use.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn prepare(&self, binary: &Path) -> Result<Launch> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating {}", self.state_dir.display()))?;
        let dir = std::fs::canonicalize(&self.state_dir)?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let storage = match &self.storage {
            // The broker drops the first `/` of the path, so an absolute path needs four.
            Storage::Sqlite => format!("sqlite:///{}/nisshi.db", dir.display()),
            Storage::Memory => "memory://nisshi/".to_string(),
            Storage::Postgres(url) => url.clone(),
        };
        Ok(Launch {
            program: binary.to_path_buf(),
            args: vec![
                "broker".into(),
                "--listener-url".into(),
                listener.clone().into(),
                "--advertised-listener-url".into(),
                listener.into(),
                "--storage-engine".into(),
                storage.into(),
            ],
            envs: Vec::new(),
            log_file: dir.join("nisshi.log"),
        })
    }

    /// Waits until a metadata request answers.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()?;
        wait_until("Kafka broker", timeout, || {
            consumer
                .fetch_metadata(None, Duration::from_secs(1))
                .map(drop)
                .map_err(Into::into)
        })
    }

    /// Creates the topics that do not exist yet, as `settings` say; one that already exists is
    /// left as is. Tried a few times: a sqlite broker that has just started on an existing log
    /// can answer "database is locked" (an unknown error) while it opens it.
    pub fn create_topics(
        &self,
        topics: &[&str],
        settings: &eye_core::kafka::TopicSettings,
    ) -> Result<()> {
        const ATTEMPTS: usize = 5;
        let kafka = eye_core::settings::KafkaSettings::for_brokers(self.bootstrap());
        let mut attempt = 1;
        loop {
            let created = eye_core::kafka::create_topics(&kafka, topics, settings);
            match futures::executor::block_on(created) {
                Ok(()) => return Ok(()),
                Err(error) if attempt < ATTEMPTS => {
                    eprintln!(
                        "creating topics {topics:?} (attempt {attempt} of {ATTEMPTS}): {error}"
                    );
                    std::thread::sleep(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
