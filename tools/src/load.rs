//! `eye load`: realistic traffic for the pipeline, over HTTP to the ingest bridge or straight to the
//! raw Kafka topic, at a fixed rate or as fast as it goes. Sessions of the three reference event
//! types, a chosen share of each failure kind, events out of order and sent twice. Prints
//! throughput (events/s, MiB/s) and reply-latency percentiles (HDR histogram), as a table or as
//! JSON. At a rate, latency counts from when each request was due ([`crate::schedule`]), so a
//! stall of the system under test shows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::{Args, ValueEnum};
use eye_client::SendError;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value as Json};

use crate::schedule::{sent_late, Schedule};
use crate::traffic::{GeneratedEvent, Generator, TrafficArgs};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Target {
    /// POST to the ingest bridge.
    Http,
    /// Produce straight to the raw topic (the direct-produce contract).
    Kafka,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Where events go.
    #[arg(long, value_enum, default_value_t = Target::Http)]
    target: Target,
    /// The bridge's base URL (`--target http`); requests go to its `/v1/events` through
    /// `eye-client`'s `Endpoint`, the client services use.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An application key of the bridge (`--target http`).
    #[arg(long, default_value = "eye-local-dev-key")]
    api_key: String,
    /// Bootstrap servers (`--target kafka`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The raw topic (`--target kafka`).
    #[arg(long, default_value = eye_core::raw::DEFAULT_RAW_TOPIC)]
    topic: String,
    /// Partitions of the topic when it does not exist yet (`--target kafka`).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The `eye.application` header (`--target kafka`).
    #[arg(long, default_value = "loadgen")]
    application: String,
    /// Events per second over all clients; 0 sends as fast as replies allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stop after this many seconds…
    #[arg(long)]
    duration: Option<u64>,
    /// …or after this many events (10,000 when neither is given).
    #[arg(long)]
    count: Option<u64>,
    /// Concurrent clients, each waiting for its reply before its next request; at a `--rate`,
    /// latencies count from when each request was due, so a client held up by a slow reply shows.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Events per request (a JSON array when above 1) or per produced group.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the clients send.
#[derive(Clone)]
enum Sender {
    Http(eye_client::Endpoint),
    Kafka {
        producer: FutureProducer,
        topic: String,
        application: String,
    },
}

/// How one request went.
enum Reply {
    Accepted,
    Refused(String),
}

impl Sender {
    async fn send(&self, events: &[GeneratedEvent]) -> Reply {
        match self {
            Sender::Http(endpoint) => {
                match endpoint.post(crate::traffic::request_body(events)).await {
                    Ok(_) => Reply::Accepted,
                    Err(
                        SendError::Refused { status, .. }
                        | SendError::UnexpectedReply { status, .. },
                    ) => Reply::Refused(status.to_string()),
                    Err(SendError::Transport(error)) if error.is_timeout() => {
                        Reply::Refused("timeout".into())
                    }
                    Err(SendError::Transport(_)) => Reply::Refused("connection".into()),
                }
            }
            Sender::Kafka {
                producer,
                topic,
                application,
            } => {
                let sends = events.iter().map(|event| {
                    let headers =
                        rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                            key: eye_core::raw::APPLICATION_HEADER,
                            value: Some(application.as_bytes()),
                        });
                    // The raw topic's contract: a session's events in one partition.
                    let key = event.session_id.to_string();
                    async move {
                        producer
                            .send(
                                FutureRecord::to(topic)
                                    .key(&key)
                                    .payload(&event.bytes)
                                    .headers(headers),
                                Duration::from_secs(30),
                            )
                            .await
                    }
                });
                match futures::future::join_all(sends)
                    .await
                    .into_iter()
                    .find_map(Result::err)
                {
                    None => Reply::Accepted,
                    Some((error, _)) => Reply::Refused(format!("kafka: {error}")),
                }
            }
        }
    }
}

#[derive(Default)]
struct Outcome {
    requests: u64,
    /// Sent more than [`crate::schedule::LATE_AFTER`] after they were due.
    late_requests: u64,
    events: u64,
    /// The events' own bytes (the body less JSON array punctuation).
    bytes: u64,
    accepted_events: u64,
    refused: BTreeMap<String, u64>,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let count = match (args.count, args.duration) {
        (None, None) => Some(10_000),
        (count, _) => count,
    };
    let deadline = args
        .duration
        .map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let generator = Arc::new(Mutex::new(Generator::new(&args.traffic, Utc::now())?));
    let sender = match args.target {
        // Uncompressed, as a browser or a simple client sends; one attempt per request, since
        // the figures count every reply.
        Target::Http => Sender::Http(eye_client::Endpoint::new(
            &args.url,
            &args.api_key,
            false,
            Duration::from_secs(30),
        )?),
        Target::Kafka => Sender::Kafka {
            producer: {
                eye_core::kafka::create_topics(
                    &eye_core::settings::KafkaSettings::for_brokers(&args.brokers),
                    &[&args.topic],
                    &eye_core::kafka::TopicSettings::with_partitions(args.partitions),
                )
                .await
                .context("creating the topic")?;
                ClientConfig::new()
                    .set("bootstrap.servers", &args.brokers)
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5")
                    .set("compression.type", "lz4")
                    .create()
                    .context("creating the Kafka producer")?
            },
            topic: args.topic.clone(),
            application: args.application.clone(),
        },
    };
    let progress = match (count, args.duration) {
        (Some(count), _) => ProgressBar::new(count),
        (None, Some(seconds)) => ProgressBar::new(seconds),
        (None, None) => unreachable!("a count is set when no duration is"),
    };
    progress.set_style(ProgressStyle::with_template(if count.is_some() {
        "[{elapsed_precise}] [{bar:40}] {pos}/{len} events  {per_sec}"
    } else {
        "[{elapsed_precise}] [{bar:40}] {pos}/{len} s"
    })?);

    let issued = Arc::new(AtomicU64::new(0));
    // 1 µs to an hour, 3 significant digits.
    let latency_us = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        3_600_000_000,
        3,
    )?));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let batch = args.batch_size.max(1) as u64;
    let requests_per_second = args.rate as f64 / batch as f64;
    let started = Instant::now();
    let client_count = args.clients.max(1);
    let clients: Vec<_> = (0..client_count)
        .map(|client| {
            let (generator, sender, issued, latency_us, outcome, progress) = (
                generator.clone(),
                sender.clone(),
                issued.clone(),
                latency_us.clone(),
                outcome.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                let mut schedule = Schedule::new(requests_per_second, client, client_count);
                loop {
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        return;
                    }
                    let take = match count {
                        Some(count) => {
                            let before = issued.fetch_add(batch, Ordering::Relaxed);
                            if before >= count {
                                return;
                            }
                            batch.min(count - before)
                        }
                        None => {
                            issued.fetch_add(batch, Ordering::Relaxed);
                            batch
                        }
                    };
                    let due = schedule.next_due().await;
                    let events: Vec<GeneratedEvent> = {
                        let mut generator = generator.lock().unwrap_or_else(|p| p.into_inner());
                        (0..take).map(|_| generator.next()).collect()
                    };
                    let late = sent_late(due);
                    let reply = sender.send(&events).await;
                    let elapsed = due.elapsed().as_micros() as u64;
                    latency_us
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .saturating_record(elapsed.max(1));
                    let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
                    outcome.requests += 1;
                    outcome.events += take;
                    outcome.bytes += events
                        .iter()
                        .map(|event| event.bytes.len() as u64)
                        .sum::<u64>();
                    if late {
                        outcome.late_requests += 1;
                    }
                    match reply {
                        Reply::Accepted => outcome.accepted_events += take,
                        Reply::Refused(why) => *outcome.refused.entry(why).or_default() += 1,
                    }
                    match count {
                        Some(_) => progress.inc(take),
                        None => progress.set_position(started.elapsed().as_secs()),
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await?;
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
    let latency = latency_us.lock().unwrap_or_else(|p| p.into_inner());
    let generated = generator
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .generated
        .clone();
    let ms = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
    let summary = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "clients": args.clients,
        "batch_size": batch,
        "rate": args.rate,
        "seconds": elapsed,
        "requests": outcome.requests,
        "events": outcome.events,
        "accepted_events": outcome.accepted_events,
        "refused_requests": outcome.refused,
        "events_per_second": outcome.events as f64 / elapsed,
        "requests_per_second": outcome.requests as f64 / elapsed,
        "bytes_per_event": outcome.bytes as f64 / outcome.events.max(1) as f64,
        "mib_per_second": outcome.bytes as f64 / elapsed / (1024.0 * 1024.0),
        "late_requests": outcome.late_requests,
        // Open loop: from when each request was due at the rate; closed loop: from its send.
        "latency_from": if args.rate > 0 { "due" } else { "send" },
        "latency_ms": {
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
            "max": latency.max() as f64 / 1000.0,
        },
        "generated": {
            "valid": generated.valid,
            "failures": generated.failures,
            "out_of_order": generated.out_of_order,
            "duplicates": generated.duplicates,
        },
    });
    if args.rate > 0 && (outcome.events as f64 / elapsed) < 0.9 * args.rate as f64 {
        eprintln!(
            "the rate was not reached: each client waits for its reply; raise --clients or --batch-size (latencies count from when each request was due, so they include the wait)"
        );
    }
    if args.json {
        println!("{summary}");
    } else {
        print_table(&summary);
    }
    Ok(())
}

fn print_table(summary: &Json) {
    let value = |path: &[&str]| path.iter().fold(summary, |value, key| &value[*key]).clone();
    println!("| figure | value |");
    println!("|---|---|");
    for (label, path) in [
        ("target", &["target"][..]),
        ("clients × events per request", &["clients"][..]),
        ("seconds", &["seconds"][..]),
        ("requests", &["requests"][..]),
        ("events sent", &["events"][..]),
        ("events accepted", &["accepted_events"][..]),
        ("events/s", &["events_per_second"][..]),
        ("requests/s", &["requests_per_second"][..]),
        ("bytes per event", &["bytes_per_event"][..]),
        ("MiB/s", &["mib_per_second"][..]),
        ("latency counted from", &["latency_from"][..]),
        (
            "requests sent late (> 1 ms after due)",
            &["late_requests"][..],
        ),
        ("reply p50 ms", &["latency_ms", "p50"][..]),
        ("reply p90 ms", &["latency_ms", "p90"][..]),
        ("reply p99 ms", &["latency_ms", "p99"][..]),
        ("reply p99.9 ms", &["latency_ms", "p999"][..]),
        ("reply max ms", &["latency_ms", "max"][..]),
        ("refused requests", &["refused_requests"][..]),
        ("generated", &["generated"][..]),
    ] {
        let shown = match (label, value(path)) {
            ("clients × events per request", _) => {
                format!("{} × {}", summary["clients"], summary["batch_size"])
            }
            (_, Json::Number(number)) if number.is_f64() => {
                format!("{:.2}", number.as_f64().unwrap_or_default())
            }
            (_, other) => other.to_string(),
        };
        println!("| {label} | {shown} |");
    }
}
