//! `eye chaos`: the fault matrix. Starts the whole pipeline on the durable broker in a scratch
//! directory, drives steady load through the bridge with clients that retry like real ones, and
//! injects faults in turn: processor SIGKILL, ingest SIGKILL, broker SIGKILL and restart,
//! ClickHouse SIGSTOP then SIGCONT, ClickHouse SIGKILL and restart. Once the load has stopped
//! and the processor has committed the whole topic, it checks ClickHouse against what the
//! clients were acknowledged, and prints a table per fault.

mod clients;
mod report;
mod stack;
mod verdict;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use eye_devenv::broker::Storage;
use eye_devenv::install;
use eye_devenv::testing::Signal;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;
use uuid::Uuid;

use crate::traffic::{Shares, TrafficArgs};
use clients::{Clients, Ledger, LoadShape};
use stack::{Programs, Stack, PARTITIONS, PROCESSOR_GROUP, RAW_TOPIC};
use verdict::{judge, Copies, Landed, Phase};

/// How long a fault may take to heal before the run counts it as not recovered.
const RECOVERY_LIMIT: Duration = Duration::from_secs(180);

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// One of each fault (the version the test command runs) instead of the full matrix
    /// (processor SIGKILL ×5, ingest SIGKILL ×2, broker SIGKILL ×2, ClickHouse SIGSTOP,
    /// ClickHouse SIGKILL).
    #[arg(long)]
    short: bool,
    /// The broker binary (the installed nisshi when not given; tansu takes the same command
    /// line, for comparisons).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    #[arg(long, default_value = "target/release/eye-ingest")]
    ingest_bin: PathBuf,
    #[arg(long, default_value = "target/release/eye-processor")]
    processor_bin: PathBuf,
    /// The bridge's settings (its applications); the run sets addresses and topic.
    #[arg(long, default_value = "config/ingest.toml")]
    ingest_config: PathBuf,
    #[arg(long, default_value = "config/processor.toml")]
    processor_config: PathBuf,
    #[arg(long, default_value = "schemas")]
    schemas_dir: PathBuf,
    /// A key of an application in --ingest-config.
    #[arg(long, default_value = "eye-local-dev-key")]
    api_key: String,
    /// Where the broker keeps its log: sqlite, memory, or a postgres:// URL.
    #[arg(long, default_value = "sqlite")]
    broker_storage: Storage,
    /// Events per second over all clients.
    #[arg(long, default_value_t = 400)]
    rate: u64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Events per request.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Seconds of load before the first fault and after each fault has healed.
    #[arg(long, default_value_t = 10)]
    settle_seconds: u64,
    /// Seconds ClickHouse stays stopped (SIGSTOP).
    #[arg(long, default_value_t = 60)]
    clickhouse_stop_seconds: u64,
    /// Seconds the broker stays down after its SIGKILL.
    #[arg(long, default_value_t = 3)]
    broker_down_seconds: u64,
    /// The processor's `consumer.session_timeout_ms` for the run: how long the group waits for
    /// a killed member before its successor gets the partitions.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// The processor's `consumer.stalled_after_ms` for the run (its readiness).
    #[arg(long, default_value_t = 20_000)]
    stalled_after_ms: u64,
    /// Keep the scratch directory (data and logs) even when every check passes.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ProcessorKill,
    IngestKill,
    BrokerKill,
    ClickHouseStop,
    ClickHouseKill,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::ProcessorKill => "processor SIGKILL",
            Fault::IngestKill => "ingest SIGKILL",
            Fault::BrokerKill => "broker SIGKILL + restart",
            Fault::ClickHouseStop => "ClickHouse SIGSTOP + SIGCONT",
            Fault::ClickHouseKill => "ClickHouse SIGKILL + restart",
        }
    }
}

fn matrix(short: bool) -> Vec<Fault> {
    let counts = if short {
        [1, 1, 1, 1, 1]
    } else {
        [5, 2, 2, 1, 1]
    };
    [
        Fault::ProcessorKill,
        Fault::IngestKill,
        Fault::BrokerKill,
        Fault::ClickHouseStop,
        Fault::ClickHouseKill,
    ]
    .into_iter()
    .zip(counts)
    .flat_map(|(fault, count)| std::iter::repeat_n(fault, count))
    .collect()
}

/// The run's traffic: sessions of the reference events with failures the bridge accepts (a
/// malformed body would be refused with 400 and never reach the topic).
fn traffic() -> TrafficArgs {
    TrafficArgs {
        sessions: 200,
        events_per_session: 20,
        mix: "pageview=60,cta_click=25,submit=15"
            .parse()
            .unwrap_or_default(),
        failures: Shares(BTreeMap::from([
            ("invalid_data".into(), 2.0),
            ("future_timestamp".into(), 1.0),
            ("unknown_event_type".into(), 1.0),
            ("missing_field".into(), 1.0),
        ])),
        out_of_order: 5.0,
        duplicates: 0.0,
        seed: 7,
    }
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("eye-chaos-").tempdir()?;
    let canonical = |path: &PathBuf| {
        std::fs::canonicalize(path).with_context(|| format!("{} not found", path.display()))
    };
    let broker_bin = match &args.broker_bin {
        Some(path) => canonical(path)?,
        None => install::broker().with_context(|| {
            format!(
                "nisshi {} is not installed (`cargo dev install`)",
                install::BROKER_VERSION
            )
        })?,
    };
    let programs = Programs {
        broker_bin,
        ingest_bin: canonical(&args.ingest_bin)?,
        processor_bin: canonical(&args.processor_bin)?,
        ingest_config: canonical(&args.ingest_config)?,
        processor_config: canonical(&args.processor_config)?,
        schemas_dir: canonical(&args.schemas_dir)?,
        session_timeout_ms: args.session_timeout_ms,
        stalled_after_ms: args.stalled_after_ms,
    };
    println!(
        "starting ClickHouse, the broker ({:?} storage), ingest and processor in {}",
        args.broker_storage,
        scratch.path().display()
    );
    let mut stack = Stack::start(scratch.path(), &programs, args.broker_storage.clone()).await?;
    let shape = LoadShape {
        url: stack.ingest_url.clone(),
        api_key: args.api_key.clone(),
        clients: args.clients,
        batch_size: args.batch_size,
        rate: args.rate,
    };
    let load = Clients::start(&shape, &traffic())?;
    let ledger = load.ledger();
    let readiness = Readiness::watch(
        stack.ingest_ready_url.clone(),
        stack.processor_ready_url.clone(),
    );
    let settle = Duration::from_secs(args.settle_seconds);
    let run_started = Instant::now();
    let mut phases = vec![Phase {
        name: "steady load".into(),
        started: run_started,
        first_accept_seconds: Some(0.0),
        backlog_seconds: Some(0.0),
        ingest_unready_seen: false,
        processor_unready_seen: false,
    }];
    tokio::time::sleep(settle).await;
    for fault in matrix(args.short) {
        println!("{} …", fault.name());
        let started = Instant::now();
        inject(&mut stack, fault, &args).await?;
        let recovered = Instant::now();
        let backlog_end = log_ends(&stack.broker.bootstrap());
        let first_accept_seconds = first_accept_after(&ledger, recovered).await;
        let backlog_seconds = match backlog_end {
            Ok(end) => committed_up_to(&stack.broker.bootstrap(), &end, recovered)
                .await
                .map(|at| at.duration_since(recovered).as_secs_f64()),
            Err(error) => {
                println!("  the topic's ends could not be read: {error:#}");
                None
            }
        };
        phases.push(Phase {
            name: fault.name().into(),
            started,
            first_accept_seconds,
            backlog_seconds,
            ingest_unready_seen: false,
            processor_unready_seen: false,
        });
        tokio::time::sleep(settle).await;
    }
    println!("load stopping; waiting for the processor to commit the whole topic");
    let ledger = load.finish(Duration::from_secs(120)).await;
    let drained = match log_ends(&stack.broker.bootstrap()) {
        Ok(end) => committed_up_to(&stack.broker.bootstrap(), &end, Instant::now()).await,
        Err(error) => {
            println!("the topic's ends could not be read: {error:#}");
            None
        }
    };
    readiness.mark(&mut phases);
    let landed = read_landed(&stack).await?;
    let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    let verdict = judge(&ledger, &phases, &landed);
    let failed = report::print(&phases, &verdict, &ledger, drained.is_some(), run_started);
    if failed > 0 || args.keep {
        let kept = scratch.keep();
        println!("data and logs kept in {}", kept.display());
        for (service, log) in stack.logs() {
            println!("  {service}: {}", log.display());
        }
    }
    drop(stack);
    if failed > 0 {
        anyhow::bail!("{failed} fault-matrix checks failed");
    }
    Ok(())
}

async fn inject(stack: &mut Stack, fault: Fault, args: &ChaosArgs) -> anyhow::Result<()> {
    match fault {
        Fault::ProcessorKill => {
            stack.processor.kill()?;
            stack.processor.start()
        }
        Fault::IngestKill => {
            stack.ingest.kill()?;
            stack.ingest.start()
        }
        Fault::BrokerKill => {
            stack.kafka.kill()?;
            tokio::time::sleep(Duration::from_secs(args.broker_down_seconds)).await;
            stack.kafka.start()?;
            stack.wait_broker()
        }
        Fault::ClickHouseStop => {
            stack.clickhouse.signal(Signal::SIGSTOP)?;
            tokio::time::sleep(Duration::from_secs(args.clickhouse_stop_seconds)).await;
            stack.clickhouse.signal(Signal::SIGCONT)
        }
        Fault::ClickHouseKill => {
            stack.clickhouse.kill()?;
            stack.clickhouse.start()?;
            stack.wait_clickhouse()
        }
    }
}

/// Seconds from `after` to the first 202 that came after it, waiting up to the limit.
async fn first_accept_after(ledger: &Mutex<Ledger>, after: Instant) -> Option<f64> {
    let deadline = after + RECOVERY_LIMIT;
    loop {
        let first = {
            let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger
                .acknowledged
                .iter()
                .rev()
                .take_while(|acknowledged| acknowledged.at >= after)
                .last()
                .map(|acknowledged| acknowledged.at)
        };
        if let Some(at) = first {
            return Some(at.duration_since(after).as_secs_f64());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin_consumer(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", PROCESSOR_GROUP)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?)
}

/// The end of each partition of the raw topic now, retrying while the broker comes back.
fn log_ends(bootstrap: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    tokio::task::block_in_place(|| {
        let consumer = admin_consumer(bootstrap)?;
        let deadline = std::time::Instant::now() + RECOVERY_LIMIT;
        let mut ends = BTreeMap::new();
        for partition in 0..PARTITIONS {
            loop {
                match consumer.fetch_watermarks(RAW_TOPIC, partition, Duration::from_secs(5)) {
                    Ok((_, high)) => {
                        ends.insert(partition, high);
                        break;
                    }
                    Err(error) if std::time::Instant::now() > deadline => {
                        return Err(error).with_context(|| {
                            format!("ListOffsets of {RAW_TOPIC} partition {partition}")
                        })
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        Ok(ends)
    })
}

/// When the processor's committed offsets first reached `ends` on every partition, waiting up
/// to the limit from `since`; None if they did not.
async fn committed_up_to(
    bootstrap: &str,
    ends: &BTreeMap<i32, i64>,
    since: Instant,
) -> Option<Instant> {
    let consumer = admin_consumer(bootstrap).ok()?;
    let mut partitions = TopicPartitionList::new();
    for &partition in ends.keys() {
        partitions.add_partition(RAW_TOPIC, partition);
    }
    loop {
        let committed = tokio::task::block_in_place(|| {
            consumer.committed_offsets(partitions.clone(), Duration::from_secs(5))
        });
        let reached = committed.is_ok_and(|committed| {
            ends.iter().all(|(&partition, &end)| {
                end == 0
                    || committed
                        .find_partition(RAW_TOPIC, partition)
                        .is_some_and(|element| match element.offset() {
                            Offset::Offset(offset) => offset >= end,
                            _ => false,
                        })
            })
        });
        if reached {
            return Some(Instant::now());
        }
        if Instant::now() > since + RECOVERY_LIMIT {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both tables by event id (FINAL), the sessions' event counts and the failure counts.
async fn read_landed(stack: &Stack) -> anyhow::Result<Landed> {
    let query = |sql: &str| -> anyhow::Result<Vec<Vec<String>>> {
        let text = tokio::task::block_in_place(|| stack.clickhouse_server.query(sql))?;
        Ok(text
            .lines()
            .map(|line| line.split('\t').map(str::to_string).collect())
            .collect())
    };
    let number = |text: &str| text.parse::<u64>().context("a count from ClickHouse");
    let uuid = |text: &str| Uuid::parse_str(text).context("an id from ClickHouse");
    let mut landed = Landed::default();
    for row in query(
        "SELECT toString(event_id), countIf(source = 'events'), countIf(source = 'event_errors') \
         FROM (SELECT event_id, 'events' AS source FROM eye.events FINAL \
               UNION ALL SELECT event_id, 'event_errors' AS source FROM eye.event_errors FINAL) \
         GROUP BY event_id",
    )? {
        landed.copies.insert(
            uuid(&row[0])?,
            Copies {
                events: number(&row[1])?,
                event_errors: number(&row[2])?,
            },
        );
    }
    for row in query("SELECT toString(session_id), event_count FROM eye.session_summary")? {
        landed
            .session_events
            .insert(uuid(&row[0])?, number(&row[1])?);
    }
    for row in query(
        "SELECT error_type, uniqExactMerge(failures) FROM eye.error_counts GROUP BY error_type",
    )? {
        landed.error_counts.insert(row[0].clone(), number(&row[1])?);
    }
    Ok(landed)
}

/// Polls both `/readyz` endpoints, remembering when each answered anything but 200.
struct Readiness {
    unready: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Readiness {
    fn watch(ingest: String, processor: String) -> Self {
        let unready = Arc::new(Mutex::new(Vec::new()));
        let seen = unready.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap_or_default();
            loop {
                for (service, url) in [("ingest", &ingest), ("processor", &processor)] {
                    let ready = http
                        .get(url.as_str())
                        .send()
                        .await
                        .is_ok_and(|response| response.status().is_success());
                    if !ready {
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((service, Instant::now()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self { unready, task }
    }

    /// Marks in each phase whether a service was seen not ready during it.
    fn mark(self, phases: &mut [Phase]) {
        self.task.abort();
        let unready = self.unready.lock().unwrap_or_else(|p| p.into_inner());
        let starts: Vec<Instant> = phases.iter().map(|phase| phase.started).collect();
        for &(service, at) in unready.iter() {
            let Some(index) = starts.iter().rposition(|&started| started <= at) else {
                continue;
            };
            match service {
                "ingest" => phases[index].ingest_unready_seen = true,
                _ => phases[index].processor_unready_seen = true,
            }
        }
    }
}
