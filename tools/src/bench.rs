//! `eye bench`: throughput and latency figures against running services. Benchmarks print
//! figures; nothing here asserts a target.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use eye_core::kafka::create_topics;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value as Json};
use tokio::sync::Mutex;
use uuid::Uuid;

#[derive(Subcommand)]
pub enum Bench {
    /// POST events to a running ingest bridge: batched and single-event requests.
    Ingest(IngestBench),
    /// Fill a fresh topic, then time the processor (release binary) turning it into rows, beside
    /// a plain consumer reading the same topic.
    Processor(ProcessorBench),
    /// End to end through running services: a steady rate of single-event requests; the time
    /// from each 202 until its row is visible in `events`, and the consumer lag over time.
    E2e(E2eBench),
    /// Query latency and rows read (from `system.query_log`) of the README's questions over a
    /// fresh database filled with generated events (through the same tables and views).
    Queries(QueriesBench),
}

#[derive(Args)]
pub struct QueriesBench {
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// Events in the table: 10 per session, 30 days of January 2021, the three types in turn.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Runs of each query; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value = "schemas")]
    schemas_dir: PathBuf,
    /// Keep the database afterwards (its name is printed).
    #[arg(long)]
    keep: bool,
}

#[derive(Args)]
pub struct E2eBench {
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/events")]
    url: String,
    #[arg(long, default_value = "eye-local-dev-key")]
    api_key: String,
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    #[arg(long, default_value = "eye")]
    database: String,
    #[arg(long, default_value = eye_core::raw::DEFAULT_RAW_TOPIC)]
    topic: String,
    /// Events (requests) per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Concurrent clients sharing the rate.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How often ClickHouse is polled for new rows: the resolution of the figures.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
}

#[derive(Args)]
pub struct IngestBench {
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/events")]
    url: String,
    #[arg(long, default_value = "eye-local-dev-key")]
    api_key: String,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per request in the batched scenario.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// The broker, for the ceiling: a plain producer pushing the same bytes (to a topic of its
    /// own, with the bridge's producer settings).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
}

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
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value = "target/release/eye-processor")]
    processor_bin: PathBuf,
    #[arg(long, default_value = "schemas")]
    schemas_dir: PathBuf,
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Ingest(args) => ingest(args).await,
        Bench::Processor(args) => processor(args).await,
        Bench::E2e(args) => end_to_end(args).await,
        Bench::Queries(args) => queries(args).await,
    }
}

fn reference_events(count: usize) -> Vec<Json> {
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

struct Figures {
    latency_us: Histogram<u64>,
    accepted_events: u64,
    requests: u64,
    refused: u64,
}

async fn ingest(args: IngestBench) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    println!("| scenario | clients | requests | events/s | requests/s | p50 ms | p99 ms | max ms | not 202 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (scenario, batch) in [("batched", args.batch_size), ("single", 1)] {
        let body = if batch == 1 {
            reference_events(1)[0].to_string()
        } else {
            Json::Array(reference_events(batch)).to_string()
        };
        let figures = Arc::new(Mutex::new(Figures {
            latency_us: Histogram::new(3)?,
            accepted_events: 0,
            requests: 0,
            refused: 0,
        }));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let mut clients = Vec::new();
        for _ in 0..args.clients {
            let (http, url, key, body, figures) = (
                http.clone(),
                args.url.clone(),
                args.api_key.clone(),
                body.clone(),
                figures.clone(),
            );
            clients.push(tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let (mut accepted, mut requests, mut refused) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let response = http
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    latency
                        .record(sent.elapsed().as_micros() as u64)
                        .expect("in range");
                    requests += 1;
                    match response {
                        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                            accepted += batch as u64
                        }
                        _ => refused += 1,
                    }
                }
                let mut figures = figures.lock().await;
                figures.latency_us.add(&latency).expect("same precision");
                figures.accepted_events += accepted;
                figures.requests += requests;
                figures.refused += refused;
            }));
        }
        for client in clients {
            client.await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let figures = figures.lock().await;
        print_row(
            &format!("{scenario} ({batch}/request)"),
            args.clients,
            &figures,
            elapsed,
        );
    }
    for batch in [args.batch_size, 1] {
        let figures = producer_ceiling(&args, batch).await?;
        print_row(
            &format!("ceiling: plain producer, {batch}/send"),
            args.clients,
            &figures,
            args.seconds as f64,
        );
    }
    Ok(())
}

fn print_row(scenario: &str, clients: usize, figures: &Figures, elapsed: f64) {
    let ms = |quantile: f64| figures.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "| {scenario} | {clients} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        figures.requests,
        figures.accepted_events as f64 / elapsed,
        figures.requests as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        figures.latency_us.max() as f64 / 1000.0,
        figures.refused,
    );
}

/// The same bytes the bridge would produce, from `clients` concurrent senders each awaiting its
/// acknowledgements, with the bridge's producer settings, for the same time.
async fn producer_ceiling(args: &IngestBench, batch: usize) -> anyhow::Result<Figures> {
    let topic = format!("eye.bench.ceiling.{}", Uuid::now_v7().simple());
    create_topics(&args.brokers, &[&topic], 4).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?;
    let events: Vec<(String, String)> = reference_events(batch)
        .into_iter()
        .map(|event| {
            (
                event["session_id"].as_str().unwrap_or_default().to_string(),
                event.to_string(),
            )
        })
        .collect();
    let figures = Arc::new(Mutex::new(Figures {
        latency_us: Histogram::new(3)?,
        accepted_events: 0,
        requests: 0,
        refused: 0,
    }));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let senders: Vec<_> = (0..args.clients)
        .map(|_| {
            let (producer, topic, events, figures) = (
                producer.clone(),
                topic.clone(),
                events.clone(),
                figures.clone(),
            );
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let (mut accepted, mut sends, mut refused) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let deliveries = events.iter().map(|(key, payload)| {
                        producer.send(
                            FutureRecord::to(&topic).key(key).payload(payload),
                            Duration::from_secs(5),
                        )
                    });
                    let failed = futures::future::join_all(deliveries)
                        .await
                        .iter()
                        .any(Result::is_err);
                    latency
                        .record(sent.elapsed().as_micros() as u64)
                        .expect("in range");
                    sends += 1;
                    if failed {
                        refused += 1;
                    } else {
                        accepted += events.len() as u64;
                    }
                }
                let mut figures = figures.lock().await;
                figures.latency_us.add(&latency).expect("same precision");
                figures.accepted_events += accepted;
                figures.requests += sends;
                figures.refused += refused;
            })
        })
        .collect();
    for sender in senders {
        sender.await?;
    }
    let figures = Arc::try_unwrap(figures)
        .map_err(|_| anyhow::anyhow!("a sender still holds the figures"))?
        .into_inner();
    Ok(figures)
}

async fn processor(args: ProcessorBench) -> anyhow::Result<()> {
    if !args.processor_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release --bin eye-processor`",
            args.processor_bin.display()
        );
    }
    let run_id = Uuid::now_v7().simple().to_string();
    let topic = format!("eye.bench.{run_id}");
    let database = format!("eye_bench_{run_id}");
    create_topics(&args.brokers, &[&topic], args.partitions).await?;

    // Fill the topic: the reference types with fresh sessions, every 1/share-th event invalid.
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
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(args.events);
    for index in 0..args.events {
        let mut event = template[index % 3].clone();
        let session = Uuid::new_v4().to_string();
        event["session_id"] = json!(session);
        if index % invalid_every == invalid_every - 1 {
            event["data"]["path"] = json!(index);
        }
        let payload = event.to_string();
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
    let mut child = Command::new(&args.processor_bin)
        .env("EYE_LISTEN", format!("127.0.0.1:{health_port}"))
        .env("EYE_KAFKA__BROKERS", &args.brokers)
        .env("EYE_CONSUMER__TOPIC", &topic)
        .env("EYE_CONSUMER__GROUP_ID", format!("bench-{run_id}"))
        .env("EYE_CLICKHOUSE__URL", &args.clickhouse_url)
        .env("EYE_CLICKHOUSE__DATABASE", &database)
        .env("EYE_SCHEMAS_DIR", &args.schemas_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the processor")?;
    let started = Instant::now();
    let mut peak_rss_kib = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_rss_kib = peak_rss_kib.max(rss_kib(child.id()));
        let text = match http
            .post(&args.clickhouse_url)
            .body(count_sql.clone())
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.trim().parse::<u64>().unwrap_or(0) >= args.events as u64 {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the processor exited early: {status}");
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the processor did not finish within 30 minutes");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds(child.id());
    child.kill()?;
    child.wait()?;
    let _ = http
        .post(&args.clickhouse_url)
        .body(format!("DROP DATABASE IF EXISTS {database}"))
        .send()
        .await;

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| events ({}% invalid) | {} |",
        args.invalid_percent, args.events
    );
    println!("| fill the topic (produce) | {produce_rate:.0} events/s |");
    println!("| ceiling: plain consumer | {consume_rate:.0} events/s |");
    println!(
        "| processor: topic → ClickHouse rows | {:.0} events/s ({elapsed:.1} s) |",
        args.events as f64 / elapsed
    );
    println!(
        "| processor / consume ceiling | {:.0}% |",
        100.0 * args.events as f64 / elapsed / consume_rate
    );
    println!(
        "| processor CPU | {:.1} s per million events |",
        cpu_seconds * 1e6 / args.events as f64
    );
    println!(
        "| processor peak RSS | {:.0} MB |",
        peak_rss_kib as f64 / 1024.0
    );
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

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU seconds of a running process, from /proc (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
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

/// POSTs a steady rate of pageviews with their own ids, and polls `events` for them.
async fn end_to_end(args: E2eBench) -> anyhow::Result<()> {
    use std::collections::HashMap;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let replied: Arc<std::sync::Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let period = Duration::from_secs_f64(args.clients as f64 / args.rate.max(1) as f64);
    let clients: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, url, key, replied, refused) = (
                http.clone(),
                args.url.clone(),
                args.api_key.clone(),
                replied.clone(),
                refused.clone(),
            );
            let first =
                tokio::time::Instant::now() + period.mul_f64(client as f64 / args.clients as f64);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(first, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while Instant::now() < deadline {
                    ticks.tick().await;
                    let event_id = Uuid::now_v7();
                    let mut event = reference_events(1).remove(0);
                    event["event_id"] = json!(event_id.to_string());
                    event["timestamp"] = json!(chrono::Utc::now()
                        .format("%Y-%m-%d %H:%M:%S%.6f")
                        .to_string());
                    let response = http
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(event.to_string())
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                            replied
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(event_id, Instant::now());
                        }
                        _ => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    // Poll for rows until every accepted event is seen (or 30 s after the last request).
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut seen: std::collections::HashSet<Uuid> = Default::default();
    let mut lag_series: Vec<(u64, i64)> = Vec::new();
    let mut next_lag = Instant::now();
    let since = (started_at - chrono::Duration::seconds(5))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let rows_sql = format!(
        "SELECT toString(event_id) FROM {db}.events WHERE category = 'page interaction' \
         AND name = 'pageview' AND timestamp >= toDateTime('{since}', 'UTC') FORMAT TSV",
        db = args.database
    );
    let lag_sql = format!(
        "SELECT sum(lag) FROM {db}.ingest_watermarks WHERE topic = '{topic}'",
        db = args.database,
        topic = args.topic
    );
    let query = |sql: String| {
        let http = http.clone();
        let url = args.clickhouse_url.clone();
        async move {
            http.post(&url)
                .body(sql)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
    };
    loop {
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        let now = Instant::now();
        let rows = query(rows_sql.clone()).await?;
        {
            let replied = replied.lock().unwrap_or_else(|p| p.into_inner());
            for line in rows.lines() {
                let Ok(event_id) = Uuid::parse_str(line.trim()) else {
                    continue;
                };
                if let Some(reply) = replied.get(&event_id) {
                    if seen.insert(event_id) {
                        latency_us.saturating_record(
                            now.saturating_duration_since(*reply).as_micros().max(1) as u64,
                        );
                    }
                }
            }
        }
        if now >= next_lag {
            let lag = query(lag_sql.clone()).await?.trim().parse().unwrap_or(0);
            lag_series.push((started.elapsed().as_secs(), lag));
            next_lag = now + Duration::from_secs(1);
        }
        let accepted = replied.lock().unwrap_or_else(|p| p.into_inner()).len();
        let sending = Instant::now() < deadline;
        if !sending && seen.len() >= accepted {
            break;
        }
        if Instant::now() > deadline + Duration::from_secs(30) {
            break;
        }
    }
    for client in clients {
        client.await?;
    }
    let accepted = replied.lock().unwrap_or_else(|p| p.into_inner()).len();
    let ms = |quantile: f64| latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    let lag_max = lag_series.iter().map(|(_, lag)| *lag).max().unwrap_or(0);
    let lag_end = lag_series.last().map(|(_, lag)| *lag).unwrap_or(0);
    println!("| figure | value |");
    println!("|---|---|");
    println!("| rate × seconds | {} × {} |", args.rate, args.seconds);
    println!("| accepted (202) | {accepted} |");
    println!(
        "| refused | {} |",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("| rows seen in events | {} |", seen.len());
    println!("| 202 → row visible p50 | {:.0} ms |", ms(0.5));
    println!("| 202 → row visible p99 | {:.0} ms |", ms(0.99));
    println!(
        "| 202 → row visible max | {:.0} ms |",
        latency_us.max() as f64 / 1000.0
    );
    println!("| resolution (poll interval) | {} ms |", args.poll_ms);
    println!("| consumer lag max / at end | {lag_max} / {lag_end} |");
    let series: Vec<String> = lag_series
        .iter()
        .step_by(5)
        .map(|(second, lag)| format!("{second}s:{lag}"))
        .collect();
    println!("| consumer lag every 5 s | {} |", series.join(" "));
    Ok(())
}

/// Fills a fresh database through `events` (the materialized views fill the rest), then times the
/// README's session, category-day and hour queries.
async fn queries(args: QueriesBench) -> anyhow::Result<()> {
    let database = format!("eye_bench_queries_{}", Uuid::now_v7().simple());
    let settings = eye_processor::config::ClickHouseSettings {
        url: args.clickhouse_url.clone(),
        database: database.clone(),
        ..Default::default()
    };
    eye_processor::sink::ClickHouseSink::new(&settings)
        .apply_ddl(&database, &args.schemas_dir.join("clickhouse"))
        .await?;
    let http = reqwest::Client::new();
    let run = |sql: String| {
        let http = http.clone();
        let url = format!("{}/?log_queries=1", args.clickhouse_url);
        async move {
            let response = http.post(&url).body(sql.clone()).send().await?;
            let status = response.status();
            let text = response.text().await?;
            if !status.is_success() {
                bail!("{sql}: {text}");
            }
            Ok::<String, anyhow::Error>(text)
        }
    };
    // Event n: session n / 10, type n % 3, time spread evenly over 30 days in n order.
    let uuid = |prefix: &str, value: &str| {
        format!(
            "toUUID(concat('{prefix}', substring(hex(toUInt64({value}) + 17592186044416), 1, 12)))"
        )
    };
    let fill = format!(
        "INSERT INTO {database}.events SELECT {event_id} AS event_id, 'bench' AS application, \
         {session_id} AS session_id, \
         arrayElement(['page interaction', 'page interaction', 'form interaction'], number % 3 + 1) AS category, \
         arrayElement(['pageview', 'cta click', 'submit'], number % 3 + 1) AS name, \
         toDateTime('2021-01-01 00:00:00', 'UTC') + intDiv(number * 2592000, {n}) AS timestamp, \
         toUInt32(number % 1000000) AS timestamp_us, timestamp AS received_at, timestamp_us AS received_at_us, \
         'www.example.com' AS host, concat('/page/', toString(number % 50)) AS path, \
         concat('{{\"host\":\"www.example.com\",\"path\":\"/page/', toString(number % 50), '\"}}') AS data, \
         toUInt16(1) AS schema_version, toInt32(number % 4) AS kafka_partition, toUInt64(number) AS kafka_offset \
         FROM numbers({n})",
        event_id = uuid("00000000-0000-4000-8000-", "number"),
        session_id = uuid("5e550000-0000-4000-8000-", "intDiv(number, 10)"),
        n = args.events,
    );
    let started = Instant::now();
    run(fill).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let session = run(format!(
        "SELECT toString({}) FORMAT TSV",
        uuid("5e550000-0000-4000-8000-", &(args.events / 20).to_string())
    ))
    .await?
    .trim()
    .to_string();
    let questions = [
        (
            "a session's timeline",
            format!(
                "SELECT timestamp, timestamp_us, category, name, path FROM {database}.events_by_session FINAL \
                 WHERE session_id = toUUID('{session}') ORDER BY timestamp, timestamp_us, event_id"
            ),
            "events_by_session",
        ),
        (
            "one category over one day",
            format!(
                "SELECT name, count() AS events FROM {database}.events FINAL WHERE category = 'page interaction' \
                 AND timestamp >= toDateTime('2021-01-15 00:00:00') AND timestamp < toDateTime('2021-01-16 00:00:00') \
                 GROUP BY name ORDER BY name"
            ),
            "events",
        ),
        (
            "every event of one hour",
            format!(
                "SELECT category, name, count() AS events FROM {database}.events FINAL \
                 WHERE timestamp >= toDateTime('2021-01-15 09:00:00') AND timestamp < toDateTime('2021-01-15 10:00:00') \
                 GROUP BY category, name ORDER BY category, name"
            ),
            "events",
        ),
    ];
    println!("| query | rows returned | rows read | of the table | median ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (label, sql, table) in &questions {
        let marker = Uuid::now_v7().simple().to_string();
        let mut rows = 0;
        for _ in 0..args.runs.max(1) {
            rows = run(format!("{sql} /* {marker} */ FORMAT TSV"))
                .await?
                .lines()
                .count();
        }
        run("SYSTEM FLUSH LOGS".to_string()).await?;
        let stats = run(format!(
            "SELECT median(query_duration_ms), max(query_duration_ms), max(read_rows) FROM system.query_log \
             WHERE type = 2 AND query LIKE '%{marker}%' AND query NOT LIKE '%query_log%' FORMAT TSV"
        ))
        .await?;
        let fields: Vec<&str> = stats.trim().split('\t').collect();
        let total: u64 = run(format!("SELECT count() FROM {database}.{table} FORMAT TSV"))
            .await?
            .trim()
            .parse()?;
        let read: u64 = fields
            .get(2)
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        println!(
            "| {label} | {rows} | {read} | {:.2}% | {} | {} |",
            100.0 * read as f64 / total.max(1) as f64,
            fields.first().unwrap_or(&"?"),
            fields.get(1).unwrap_or(&"?"),
        );
    }
    println!(
        "\n{} events written through `events` and its views in {fill_seconds:.1} s; database {database}{}",
        args.events,
        if args.keep { " (kept)" } else { " (dropped)" }
    );
    if !args.keep {
        run(format!("DROP DATABASE {database}")).await?;
    }
    Ok(())
}
