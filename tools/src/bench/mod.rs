//! `eye bench`: throughput and latency figures against a broker and ClickHouse (and, end to end,
//! the running pipeline). Benchmarks print figures; nothing here asserts a target.

mod bridge;
mod e2e;
mod ingest;
mod overload;
mod processor;
mod queries;

use clap::Subcommand;
use serde_json::{json, Value as Json};
use uuid::Uuid;

pub use e2e::E2eBench;
pub use ingest::IngestBench;
pub use overload::OverloadBench;
pub use processor::ProcessorBench;
pub use queries::QueriesBench;

#[derive(Subcommand)]
pub enum Bench {
    /// Start an ingest bridge (release binary) and time batched and single-event requests to it,
    /// beside a plain producer; on a broker or librdkafka's in-process mock cluster.
    Ingest(IngestBench),
    /// Fill a fresh topic, then time the processor (release binary) turning it into rows, beside
    /// a plain consumer reading the same topic, `clickhouse-client` inserting the same rows, and
    /// ClickHouse's own Kafka engine reading the topic.
    Processor(ProcessorBench),
    /// End to end through running services: a steady rate of single-event requests; the time
    /// from each 202 until its row is visible in `events`, the reply latency, and the consumer lag
    /// over time.
    E2e(E2eBench),
    /// Query latency and rows read (from `system.query_log`) of the README's questions over a
    /// fresh database filled with generated events (through the same tables and views).
    Queries(QueriesBench),
    /// Start an ingest bridge (release binary) and put it under 2,000 slow clients, then under a
    /// flood of batched requests far beyond what it can produce: its peak memory, its replies,
    /// `/healthz` latency meanwhile, and whether every accepted event is on the topic.
    Overload(OverloadBench),
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Ingest(args) => ingest::run(args).await,
        Bench::Processor(args) => processor::run(args).await,
        Bench::E2e(args) => e2e::run(args).await,
        Bench::Queries(args) => queries::run(args).await,
        Bench::Overload(args) => overload::run(args).await,
    }
}

pub(crate) fn reference_events(count: usize) -> Vec<Json> {
    let session = Uuid::new_v4().to_string();
    let kinds = [
        json!({"category": "page interaction", "name": "pageview", "data": {"host": "www.example.com", "path": "/"}}),
        json!({"category": "page interaction", "name": "cta click", "data": {"host": "www.example.com", "path": "/", "element": "chat bubble"}}),
        json!({"category": "form interaction", "name": "submit", "data": {"host": "www.example.com", "path": "/", "form": {"first_name": "John", "last_name": "Doe"}}}),
    ];
    (0..count)
        .map(|index| {
            let mut event = kinds[index % 3].clone();
            event["session_id"] = json!(session);
            event["timestamp"] = json!("2021-01-01 09:15:27.243860");
            event
        })
        .collect()
}

/// One statement over ClickHouse's HTTP interface; its body, or an error naming the statement.
pub(crate) async fn sql(
    http: &reqwest::Client,
    url: &str,
    query: String,
) -> anyhow::Result<bytes::Bytes> {
    let response = http.post(url).body(query.clone()).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        anyhow::bail!("{query}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

/// A fresh database with The Eye's tables and views, as the processor creates them: the database,
/// then each `*.sql` file of `schemas/clickhouse/` in name order (one idempotent statement each).
pub(crate) async fn create_database(
    clickhouse_url: &str,
    database: &str,
    schemas_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let http = reqwest::Client::new();
    sql(
        &http,
        clickhouse_url,
        format!("CREATE DATABASE IF NOT EXISTS `{database}`"),
    )
    .await?;
    let ddl_dir = schemas_dir.join("clickhouse");
    let mut files: Vec<_> = std::fs::read_dir(&ddl_dir)
        .with_context(|| format!("reading {}", ddl_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    let url = format!("{clickhouse_url}/?database={database}");
    for file in files {
        let statement = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        sql(&http, &url, statement).await?;
    }
    Ok(())
}

/// A benchmarked process, killed when the benchmark is done or fails.
pub(crate) struct Service(std::process::Child);

impl Service {
    pub fn spawn(command: &mut std::process::Command) -> anyhow::Result<Self> {
        let program = command.get_program().to_string_lossy().into_owned();
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(Service)
            .map_err(|error| anyhow::anyhow!("starting {program}: {error}"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) => anyhow::bail!("the benchmarked process exited early: {status}"),
            None => Ok(()),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The largest resident set of a running process so far (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The whole machine's CPU time so far, from the `cpu` line of /proc/stat (clock ticks): busy
/// (everything but idle and iowait) and total.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub(crate) fn now() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
            return Self::default();
        };
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        let total = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Self {
            busy: total - idle.min(total),
            total,
        }
    }

    /// The share of every core's time spent busy since `earlier`, in percent.
    pub(crate) fn busy_percent_since(&self, earlier: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// User plus system CPU seconds of a running process, from /proc (clock ticks of 1/100 s).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}
