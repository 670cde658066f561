//! Ingest: batched and single-event requests to a running bridge, beside a plain producer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use eye_core::kafka::create_topics;
use hdrhistogram::Histogram;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value as Json;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::reference_events;

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

struct Figures {
    latency_us: Histogram<u64>,
    accepted_events: u64,
    requests: u64,
    refused: u64,
}

pub async fn run(args: IngestBench) -> anyhow::Result<()> {
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
