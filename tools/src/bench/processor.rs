//! Processor: a pre-filled topic to rows, beside its ceilings.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use eye_core::kafka::{create_topics, TopicSettings};
use eye_core::settings::KafkaSettings;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

use super::{
    cpu_seconds, create_database, peak_rss_kib, reference_events, sql, MachineCpu, Service,
};

#[derive(Args)]
pub struct ProcessorBench {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Share of invalid events, in percent.
    #[arg(long, default_value_t = 5)]
    invalid_percent: usize,
    /// Events of each session.
    #[arg(long, default_value_t = 10)]
    events_per_session: usize,
    /// Sessions open at once: each event goes to one of them at random, so a session's events
    /// are spread over the topic as concurrent users' would be.
    #[arg(long, default_value_t = 10_000)]
    open_sessions: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value = "target/release/eye-processor")]
    processor_bin: PathBuf,
    #[arg(long, default_value = "schemas")]
    schemas_dir: PathBuf,
    /// For the insert ceiling: `clickhouse-client` and the native port of the same server.
    #[arg(long, default_value = "clickhouse-client")]
    clickhouse_client: PathBuf,
    #[arg(long, default_value_t = 9000)]
    clickhouse_tcp_port: u16,
    /// Skip the comparison with ClickHouse's own Kafka table engine.
    #[arg(long)]
    no_kafka_engine: bool,
}

const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(args: ProcessorBench) -> anyhow::Result<()> {
    if !args.processor_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release --bin eye-processor`",
            args.processor_bin.display()
        );
    }
    let run_id = Uuid::now_v7().simple().to_string();
    let topic = format!("eye.bench.{run_id}");
    let database = format!("eye_bench_{run_id}");
    create_topics(
        &KafkaSettings::for_brokers(&args.brokers),
        &[&topic],
        &TopicSettings::with_partitions(args.partitions),
    )
    .await?;

    // Fill the topic: the reference types in turn, every 1/share-th event invalid.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "4000000")
        .create()?;
    let invalid_every = 100usize
        .checked_div(args.invalid_percent)
        .filter(|&every| every > 0)
        .unwrap_or(usize::MAX);
    let template = reference_events(3);
    let mut rng = rand::rng();
    let per_session = args.events_per_session.max(1);
    let mut open: Vec<(String, usize)> = (0..args.open_sessions.max(1))
        .map(|_| (Uuid::new_v4().to_string(), per_session))
        .collect();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(args.events);
    // Key and value, as the broker stores and the processor reads them.
    let mut message_bytes = 0usize;
    for index in 0..args.events {
        let mut event = template[index % 3].clone();
        let slot = rng.random_range(0..open.len());
        let session = open[slot].0.clone();
        open[slot].1 -= 1;
        if open[slot].1 == 0 {
            open[slot] = (Uuid::new_v4().to_string(), per_session);
        }
        event["session_id"] = json!(session);
        if index % invalid_every == invalid_every - 1 {
            event["data"]["path"] = json!(index);
        }
        let payload = event.to_string();
        message_bytes += session.len() + payload.len();
        let record = FutureRecord::to(&topic).key(&session).payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(error, _)| error)?);
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery?.map_err(|(error, _)| error)?;
    }
    let produce_rate = args.events as f64 / started.elapsed().as_secs_f64();

    // Ceiling: a plain consumer reading the same messages, without processing.
    let consume_rate = consume_all(&args.brokers, &topic, args.partitions, args.events)?;

    let http = reqwest::Client::new();
    let count_sql = format!("SELECT (SELECT count() FROM {database}.events) + (SELECT count() FROM {database}.event_errors)");
    let health_port = eye_devenv::free_port();
    let group = format!("bench-{run_id}");
    let mut processor = Service::spawn(
        Command::new(&args.processor_bin)
            .env("EYE_LISTEN", format!("127.0.0.1:{health_port}"))
            .env("EYE_KAFKA__BROKERS", &args.brokers)
            .env("EYE_CONSUMER__TOPIC", &topic)
            .env("EYE_CONSUMER__GROUP_ID", &group)
            .env("EYE_CLICKHOUSE__URL", &args.clickhouse_url)
            .env("EYE_CLICKHOUSE__DATABASE", &database)
            .env("EYE_SCHEMAS_DIR", &args.schemas_dir),
    )?;
    let processed = watch_rows(
        &http,
        &args.clickhouse_url,
        &count_sql,
        args.events as u64,
        (&args.brokers, &group),
        Duration::from_secs(1800),
        || processor.check_running(),
    )
    .await?;
    let Watched::Finished(processed) = processed else {
        bail!("the processor wrote no row for 30 minutes");
    };
    let cpu_seconds = cpu_seconds(processor.pid());
    let peak_rss_kib = peak_rss_kib(processor.pid());
    drop(processor);

    let insert = insert_ceiling(&args, &http, &database).await?;
    let kafka_engine = if args.no_kafka_engine {
        None
    } else {
        Some(kafka_engine(&args, &http, &topic, &run_id).await?)
    };
    sql(
        &http,
        &args.clickhouse_url,
        format!("DROP DATABASE IF EXISTS {database}"),
    )
    .await?;

    let rate = processed.steady_rate();
    let bytes_per_event = message_bytes as f64 / args.events as f64;
    let mib_per_second = |events_per_second: f64| events_per_second * bytes_per_event / MIB;
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| events ({}% invalid), {} per session, {} sessions open at once | {} ({bytes_per_event:.0} bytes each, key and value) |",
        args.invalid_percent, per_session, args.open_sessions, args.events
    );
    println!("| fill the topic (produce) | {produce_rate:.0} events/s |");
    println!(
        "| ceiling: plain consumer | {consume_rate:.0} events/s ({:.1} MiB/s) |",
        mib_per_second(consume_rate)
    );
    println!(
        "| ceiling: clickhouse-client inserting the processor's rows (RowBinary file, same tables and views) | {:.0} rows/s ({} rows in {:.1} s) |",
        insert.rows as f64 / insert.seconds,
        insert.rows,
        insert.seconds
    );
    println!(
        "| processor: topic → ClickHouse rows, from the group's join to the last row | {rate:.0} events/s, {:.1} MiB/s ({:.1} s) |",
        mib_per_second(rate),
        processed.seconds - processed.joined_seconds
    );
    println!(
        "| processor: start to the group's join; whole run | {:.1} s; {:.1} s ({:.0} events/s with the join) |",
        processed.joined_seconds,
        processed.seconds,
        args.events as f64 / processed.seconds
    );
    println!(
        "| processor / consume ceiling | {:.0}% |",
        100.0 * rate / consume_rate
    );
    println!(
        "| processor / insert ceiling | {:.0}% |",
        100.0 * rate * insert.seconds / insert.rows as f64
    );
    println!(
        "| processor CPU | {:.1} s per million events |",
        cpu_seconds * 1e6 / args.events as f64
    );
    println!(
        "| the machine's CPU busy from the join to the last row (every service on it) | {:.0}% of {} cores |",
        processed.machine_busy_percent,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "| processor peak RSS | {:.0} MB |",
        peak_rss_kib as f64 / 1024.0
    );
    match kafka_engine {
        Some(Watched::Finished(engine)) => println!(
            "| ClickHouse Kafka engine + materialized view, no validation, from its group's join | {:.0} events/s ({:.1} s; joined after {:.1} s; machine {:.0}% busy); processor / it: {:.0}% |",
            engine.steady_rate(),
            engine.seconds - engine.joined_seconds,
            engine.joined_seconds,
            engine.machine_busy_percent,
            100.0 * rate / engine.steady_rate()
        ),
        Some(Watched::Stalled { rows, seconds }) => println!(
            "| ClickHouse Kafka engine + materialized view, no validation | stalled: {rows} of {} rows after {seconds:.0} s |",
            args.events
        ),
        None => {}
    }
    Ok(())
}

fn consume_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-ceiling-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < expected {
        if let Some(message) = consumer.poll(Duration::from_secs(10)) {
            message?;
            seen += 1;
        } else {
            bail!("the topic ran dry after {seen} of {expected} messages");
        }
    }
    Ok(expected as f64 / started.elapsed().as_secs_f64())
}

struct InsertCeiling {
    rows: u64,
    seconds: f64,
}

/// The processor's rows, exported as RowBinary files, inserted by `clickhouse-client` into a fresh
/// database with the same tables and materialized views: what ClickHouse takes without us.
async fn insert_ceiling(
    args: &ProcessorBench,
    http: &reqwest::Client,
    source: &str,
) -> anyhow::Result<InsertCeiling> {
    let target = format!("{source}_insert");
    create_database(&args.clickhouse_url, &target, &args.schemas_dir).await?;
    let files = tempfile::tempdir()?;
    let mut rows = 0;
    let mut seconds = 0.0;
    for table in ["events", "event_errors"] {
        let file = files.path().join(format!("{table}.rowbinary"));
        let body = sql(
            http,
            &args.clickhouse_url,
            format!("SELECT * FROM {source}.{table} FORMAT RowBinary"),
        )
        .await?;
        std::fs::write(&file, &body)?;
        rows += std::str::from_utf8(
            &sql(
                http,
                &args.clickhouse_url,
                format!("SELECT count() FROM {source}.{table}"),
            )
            .await?,
        )?
        .trim()
        .parse::<u64>()?;
        let started = Instant::now();
        let status = Command::new(&args.clickhouse_client)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(args.clickhouse_tcp_port.to_string())
            .args(["--database", &target, "--query"])
            .arg(format!("INSERT INTO {table} FORMAT RowBinary"))
            .stdin(std::fs::File::open(&file)?)
            .status()
            .with_context(|| format!("running {}", args.clickhouse_client.display()))?;
        seconds += started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("clickhouse-client failed inserting {table}: {status}");
        }
    }
    sql(
        http,
        &args.clickhouse_url,
        format!("DROP DATABASE {target}"),
    )
    .await?;
    Ok(InsertCeiling { rows, seconds })
}

/// How rows arrived in a table, watched from a count polled every [`ROWS_POLL`].
enum Watched {
    Finished(Arrival),
    /// No new row for the stall limit.
    Stalled {
        rows: u64,
        seconds: f64,
    },
}

struct Arrival {
    events: u64,
    /// From the start until the consumer group was formed: the broker's initial rebalance delay
    /// (3 s on nisshi and Kafka) and the join, a fixed cost of starting, not of the events.
    joined_seconds: f64,
    seconds: f64,
    /// How busy the whole machine (every service on it) was from the join to the last row.
    machine_busy_percent: f64,
}

impl Arrival {
    /// Events per second once the group was formed: both the processor and the Kafka engine
    /// join a group first, so both are timed from the join.
    fn steady_rate(&self) -> f64 {
        self.events as f64 / (self.seconds - self.joined_seconds)
    }
}

/// Starts timing, in a thread of its own, how long until `group` is formed (state `Stable`); the
/// machine's CPU time then.
fn time_group_join(
    brokers: &str,
    group: &str,
) -> anyhow::Result<std::thread::JoinHandle<(f64, MachineCpu)>> {
    let admin: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let group = group.to_string();
    let started = Instant::now();
    Ok(std::thread::spawn(move || loop {
        let formed = admin
            .fetch_group_list(Some(&group), Duration::from_secs(1))
            .is_ok_and(|list| list.groups().iter().any(|info| info.state() == "Stable"));
        if formed {
            return (started.elapsed().as_secs_f64(), MachineCpu::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }))
}

const ROWS_POLL: Duration = Duration::from_millis(100);

/// Polls `count_sql` until it reaches `expected`, or no row arrived for `stall_after`; the
/// group `consumers` is timed meanwhile.
async fn watch_rows(
    http: &reqwest::Client,
    clickhouse_url: &str,
    count_sql: &str,
    expected: u64,
    (brokers, consumers): (&str, &str),
    stall_after: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Watched> {
    let started = Instant::now();
    let join = time_group_join(brokers, consumers)?;
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(ROWS_POLL).await;
        check()?;
        // While the database is being made (the processor creates it), the count fails.
        let rows = match sql(http, clickhouse_url, count_sql.to_string()).await {
            Ok(body) => std::str::from_utf8(&body)?
                .trim()
                .parse::<u64>()
                .unwrap_or(0),
            Err(_) => 0,
        };
        let seconds = started.elapsed().as_secs_f64();
        if rows >= expected {
            // Rows are written only by a formed group, so the timer has its answer.
            let (joined_seconds, cpu_at_join) = join
                .join()
                .map_err(|_| anyhow::anyhow!("timing the group's join panicked"))?;
            return Ok(Watched::Finished(Arrival {
                events: expected,
                joined_seconds,
                seconds,
                machine_busy_percent: MachineCpu::now().busy_percent_since(&cpu_at_join),
            }));
        }
        if rows > last.0 {
            last = (rows, Instant::now());
        } else if last.1.elapsed() > stall_after {
            return Ok(Watched::Stalled { rows, seconds });
        }
    }
}

/// The zero-code alternative: ClickHouse's Kafka table engine reading the same raw topic through a
/// materialized view into a plain table, no validation. Its group's offsets are committed at the
/// start first (the engine would otherwise start at the end). ClickHouse 18.16 cannot keep the
/// nested `data` object as text, so it reads the top-level fields only.
async fn kafka_engine(
    args: &ProcessorBench,
    http: &reqwest::Client,
    topic: &str,
    run_id: &str,
) -> anyhow::Result<Watched> {
    let database = format!("eye_bench_kafka_engine_{run_id}");
    let group = format!("bench-kafka-engine-{run_id}");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &group)
        .create()?;
    let mut start = TopicPartitionList::new();
    for partition in 0..args.partitions {
        start.add_partition_offset(topic, partition, Offset::Offset(0))?;
    }
    consumer.commit(&start, CommitMode::Sync)?;
    drop(consumer);
    let columns = "session_id String, category String, name String, timestamp String";
    for statement in [
        format!("CREATE DATABASE {database}"),
        format!("CREATE TABLE {database}.raw ({columns}) ENGINE = MergeTree ORDER BY (category, timestamp)"),
        format!(
            "CREATE TABLE {database}.raw_queue ({columns}) ENGINE = Kafka('{}', '{topic}', '{group}', 'JSONEachRow')",
            args.brokers
        ),
    ] {
        sql(http, &args.clickhouse_url, statement).await?;
    }
    sql(
        http,
        &args.clickhouse_url,
        format!("CREATE MATERIALIZED VIEW {database}.raw_mv TO {database}.raw AS SELECT * FROM {database}.raw_queue"),
    )
    .await?;
    let count = format!("SELECT count() FROM {database}.raw");
    let outcome = watch_rows(
        http,
        &args.clickhouse_url,
        &count,
        args.events as u64,
        (&args.brokers, &group),
        Duration::from_secs(60),
        || Ok(()),
    )
    .await?;
    // The view first, so the engine stops consuming before its table goes.
    for statement in [
        format!("DROP TABLE {database}.raw_mv"),
        format!("DROP TABLE {database}.raw_queue"),
        format!("DROP DATABASE {database}"),
    ] {
        sql(http, &args.clickhouse_url, statement).await?;
    }
    Ok(outcome)
}
