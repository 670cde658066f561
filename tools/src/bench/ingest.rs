//! Ingest: batched and single-event requests to a bridge of its own (the release binary), beside
//! a plain producer, against a broker or librdkafka's in-process mock cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use eye_core::kafka::{create_topics, TopicSettings};
use eye_core::settings::KafkaSettings;
use eye_ingest::config::IngestConfig;
use eye_ingest::producer::client_config;
use hdrhistogram::Histogram;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use serde_json::Value as Json;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::bridge::BridgeArgs;
use super::{cpu_seconds, peak_rss_kib, reference_events};

/// Sessions the requests come from, each request from one of them in turn: their keys spread the
/// events over the partitions as many users' would (one session would put them all on one).
const SESSIONS: usize = 64;

#[derive(Args)]
pub struct IngestBench {
    #[command(flatten)]
    bridge: BridgeArgs,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per request in the batched scenario.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// The broker the bridge and the ceiling (a plain producer with the bridge's settings,
    /// pushing the same bytes) produce to, each to a fresh topic.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Produce to librdkafka's in-process mock cluster instead of `--brokers`: our own cost,
    /// without a broker's.
    #[arg(long)]
    mock_broker: bool,
}

/// Where the bench's topics live.
enum Broker {
    External(String),
    Mock(MockCluster<'static, DefaultProducerContext>),
}

impl Broker {
    fn bootstrap(&self) -> String {
        match self {
            Broker::External(brokers) => brokers.clone(),
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
        }
    }

    /// A fresh topic of four partitions (the mock cluster has no CreateTopics).
    async fn create_topic(&self, purpose: &str) -> anyhow::Result<String> {
        let topic = format!("eye.bench.{purpose}.{}", Uuid::now_v7().simple());
        match self {
            Broker::External(brokers) => {
                create_topics(
                    &KafkaSettings::for_brokers(brokers),
                    &[&topic],
                    &TopicSettings::with_partitions(4),
                )
                .await?
            }
            Broker::Mock(cluster) => cluster.create_topic(&topic, 4, 1)?,
        }
        Ok(topic)
    }
}

struct Figures {
    latency_us: Histogram<u64>,
    accepted_events: u64,
    requests: u64,
    refused: u64,
}

impl Figures {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency_us: Histogram::new(3)?,
            accepted_events: 0,
            requests: 0,
            refused: 0,
        })
    }
}

pub async fn run(args: IngestBench) -> anyhow::Result<()> {
    let broker = if args.mock_broker {
        Broker::Mock(MockCluster::new(1)?)
    } else {
        Broker::External(args.brokers.clone())
    };
    let bootstrap = broker.bootstrap();
    let bridge = args
        .bridge
        .start(&bootstrap, &broker.create_topic("ingest").await?)
        .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let url = bridge.events_url.clone();
    println!(
        "broker: {}",
        if args.mock_broker {
            "librdkafka mock cluster (in the bench process)"
        } else {
            &args.brokers
        }
    );
    println!("| scenario | clients | requests | events/s | requests/s | p50 ms | p99 ms | max ms | not 202 | bridge CPU s per M events |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (scenario, batch) in [("batched", args.batch_size), ("single", 1)] {
        let bodies: Arc<Vec<String>> = Arc::new(
            (0..SESSIONS)
                .map(|_| {
                    if batch == 1 {
                        reference_events(1)[0].to_string()
                    } else {
                        Json::Array(reference_events(batch)).to_string()
                    }
                })
                .collect(),
        );
        let figures = Arc::new(Mutex::new(Figures::new()?));
        let cpu_before = cpu_seconds(bridge.service.pid());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let mut clients = Vec::new();
        for client in 0..args.clients {
            let (http, url, key, bodies, figures) = (
                http.clone(),
                url.clone(),
                args.bridge.api_key.clone(),
                bodies.clone(),
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
                        .body(bodies[(client + requests as usize) % bodies.len()].clone())
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
        let cpu_per_million = (cpu_seconds(bridge.service.pid()) - cpu_before) * 1e6
            / figures.accepted_events.max(1) as f64;
        print_row(
            &format!("{scenario} ({batch}/request)"),
            args.clients,
            &figures,
            elapsed,
            &format!("{cpu_per_million:.1}"),
        );
    }
    let peak_rss = peak_rss_kib(bridge.service.pid());
    let mut ceiling_settings: IngestConfig =
        eye_core::settings::load(Some(&args.bridge.ingest_config))?;
    ceiling_settings.kafka.brokers = bootstrap.clone();
    for batch in [args.batch_size, 1] {
        let topic = broker.create_topic("ceiling").await?;
        let figures = producer_ceiling(&args, &ceiling_settings, &topic, batch).await?;
        print_row(
            &format!("ceiling: plain producer, {batch}/send"),
            args.clients,
            &figures,
            args.seconds as f64,
            "—",
        );
    }
    println!("\nbridge peak RSS: {:.0} MB", peak_rss as f64 / 1024.0);
    Ok(())
}

pub(crate) async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the bridge was not ready at {url} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_row(scenario: &str, clients: usize, figures: &Figures, elapsed: f64, cpu: &str) {
    let ms = |quantile: f64| figures.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "| {scenario} | {clients} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {cpu} |",
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
/// acknowledgements, with the bridge's producer settings (from its settings file and `EYE_…`
/// variables, as the bridge reads them), for the same time.
async fn producer_ceiling(
    args: &IngestBench,
    settings: &IngestConfig,
    topic: &str,
    batch: usize,
) -> anyhow::Result<Figures> {
    let producer: FutureProducer = client_config(&settings.kafka, &settings.producer).create()?;
    let requests: Arc<Vec<Vec<(String, String)>>> = Arc::new(
        (0..SESSIONS)
            .map(|_| {
                reference_events(batch)
                    .into_iter()
                    .map(|event| {
                        (
                            event["session_id"].as_str().unwrap_or_default().to_string(),
                            event.to_string(),
                        )
                    })
                    .collect()
            })
            .collect(),
    );
    let figures = Arc::new(Mutex::new(Figures::new()?));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let senders: Vec<_> = (0..args.clients)
        .map(|client| {
            let (producer, topic, requests, figures) = (
                producer.clone(),
                topic.to_string(),
                requests.clone(),
                figures.clone(),
            );
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let (mut accepted, mut sends, mut refused) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    let events = &requests[(client + sends as usize) % requests.len()];
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
