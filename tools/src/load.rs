//! `eye load`: realistic traffic for the pipeline, over HTTP to the ingest bridge or straight to the
//! raw Kafka topic, at a fixed rate or as fast as it goes. Sessions of the three reference event
//! types, a chosen share of each failure kind, events out of order and sent twice. Prints
//! throughput and reply-latency percentiles (HDR histogram), as a table or as JSON.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value as Json};
use uuid::Uuid;

/// Failure kinds the generator can produce, each the processor's `error_type` of that name.
const FAILURE_KINDS: [&str; 9] = [
    "malformed_json",
    "missing_field",
    "invalid_type",
    "unexpected_field",
    "invalid_session_id",
    "invalid_timestamp",
    "unknown_event_type",
    "invalid_data",
    "future_timestamp",
];
const EVENT_TYPES: [&str; 3] = ["pageview", "cta_click", "submit"];

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Target {
    /// POST to the ingest bridge.
    Http,
    /// Produce straight to the raw topic (the direct-produce contract).
    Kafka,
}

/// `name=percent` pairs, comma-separated.
#[derive(Debug, Clone, Default)]
pub struct Shares(BTreeMap<String, f64>);

impl FromStr for Shares {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut shares = BTreeMap::new();
        for pair in text
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
        {
            let (name, percent) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not name=percent"))?;
            let percent: f64 = percent
                .parse()
                .map_err(|_| format!("{percent:?} is not a number"))?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!("{name}: {percent} is not a percentage"));
            }
            shares.insert(name.trim().to_string(), percent);
        }
        Ok(Shares(shares))
    }
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Where events go.
    #[arg(long, value_enum, default_value_t = Target::Http)]
    target: Target,
    /// The bridge's endpoint (`--target http`).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/events")]
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
    /// Concurrent clients, each waiting for its reply before its next request.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Events per request (a JSON array when above 1) or per produced group.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Sessions open at once; a session ends after --events-per-session events and a new one
    /// takes its place.
    #[arg(long, default_value_t = 1_000)]
    sessions: usize,
    #[arg(long, default_value_t = 20)]
    events_per_session: u64,
    /// Relative shares of the reference event types.
    #[arg(long, default_value = "pageview=60,cta_click=25,submit=15")]
    mix: Shares,
    /// Percent of events made to fail, per kind, e.g. `invalid_data=2,future_timestamp=1`.
    /// Kinds: malformed_json (refused with 400 by the bridge; reaches the topic only with
    /// --target kafka), missing_field, invalid_type, unexpected_field, invalid_session_id,
    /// invalid_timestamp, unknown_event_type, invalid_data, future_timestamp.
    #[arg(long, default_value = "")]
    failures: Shares,
    /// Percent of events stamped before the previous event of their session.
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Percent of sends that repeat an event already sent (same event_id).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Seed of the generator: the same seed and arguments generate the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// What was generated, by kind.
#[derive(Debug, Default, Clone)]
struct Generated {
    valid: u64,
    failures: BTreeMap<String, u64>,
    out_of_order: u64,
    duplicates: u64,
}

struct OpenSession {
    id: Uuid,
    sent: u64,
    last_us: i64,
}

/// The event source shared by the clients.
struct Generator {
    rng: StdRng,
    sessions: Vec<OpenSession>,
    events_per_session: u64,
    mix: Vec<(&'static str, f64)>,
    failures: Vec<(&'static str, f64)>,
    out_of_order: f64,
    duplicates: f64,
    /// Events already generated, for duplicates (bounded).
    recent: Vec<(Uuid, Vec<u8>)>,
    generated: Generated,
}

impl Generator {
    fn new(args: &LoadArgs, started: DateTime<Utc>) -> anyhow::Result<Self> {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let mix = EVENT_TYPES
            .iter()
            .map(|kind| (*kind, args.mix.0.get(*kind).copied().unwrap_or(0.0)))
            .collect::<Vec<_>>();
        if let Some(unknown) = args
            .mix
            .0
            .keys()
            .find(|kind| !EVENT_TYPES.contains(&kind.as_str()))
        {
            bail!("--mix: unknown event type {unknown:?} (known: {EVENT_TYPES:?})");
        }
        if mix.iter().map(|(_, share)| share).sum::<f64>() <= 0.0 {
            bail!("--mix gives no event type a share");
        }
        if let Some(unknown) = args
            .failures
            .0
            .keys()
            .find(|kind| !FAILURE_KINDS.contains(&kind.as_str()))
        {
            bail!("--failures: unknown kind {unknown:?} (known: {FAILURE_KINDS:?})");
        }
        let failures = FAILURE_KINDS
            .iter()
            .map(|kind| (*kind, args.failures.0.get(*kind).copied().unwrap_or(0.0)))
            .collect::<Vec<_>>();
        if failures.iter().map(|(_, share)| share).sum::<f64>() > 100.0 {
            bail!("--failures add up to more than 100%");
        }
        // Sessions began a while ago, so their events lie in the past.
        let span_us = args.events_per_session as i64 * 2_000_000;
        let sessions = (0..args.sessions.max(1))
            .map(|_| OpenSession {
                id: Uuid::from_u128(rng.random()),
                sent: 0,
                last_us: started.timestamp_micros() - span_us,
            })
            .collect();
        Ok(Self {
            rng,
            sessions,
            events_per_session: args.events_per_session.max(1),
            mix,
            failures,
            out_of_order: args.out_of_order,
            duplicates: args.duplicates,
            recent: Vec::new(),
            generated: Generated::default(),
        })
    }

    fn pick<'a>(rng: &mut StdRng, shares: &[(&'a str, f64)], total: f64) -> Option<&'a str> {
        let mut point = rng.random::<f64>() * total;
        for (name, share) in shares {
            if point < *share {
                return Some(name);
            }
            point -= share;
        }
        None
    }

    /// The next event: its id and the bytes to send.
    fn next(&mut self) -> (Uuid, Vec<u8>) {
        if !self.recent.is_empty() && self.rng.random::<f64>() * 100.0 < self.duplicates {
            self.generated.duplicates += 1;
            let index = self.rng.random_range(0..self.recent.len());
            return self.recent[index].clone();
        }
        let slot = self.rng.random_range(0..self.sessions.len());
        if self.sessions[slot].sent >= self.events_per_session {
            let last_us = self.sessions[slot].last_us;
            self.sessions[slot] = OpenSession {
                id: Uuid::from_u128(self.rng.random()),
                sent: 0,
                last_us: last_us - self.events_per_session as i64 * 2_000_000,
            };
        }
        let step_us = self.rng.random_range(1_000_000..2_000_000);
        let session = &mut self.sessions[slot];
        session.sent += 1;
        let out_of_order = session.sent > 1 && self.rng.random::<f64>() * 100.0 < self.out_of_order;
        let at_us = if out_of_order {
            session.last_us - step_us
        } else {
            session.last_us += step_us;
            session.last_us
        };
        let session_id = session.id;
        let mix_total = self.mix.iter().map(|(_, share)| share).sum();
        let kind = Self::pick(&mut self.rng, &self.mix, mix_total).unwrap_or("pageview");
        let failure = Self::pick(&mut self.rng, &self.failures, 100.0);
        let event_id = Uuid::from_u128(self.rng.random());
        let bytes = event(kind, failure, event_id, session_id, at_us, &mut self.rng);
        match failure {
            Some(failure) => {
                *self
                    .generated
                    .failures
                    .entry(failure.to_string())
                    .or_default() += 1
            }
            None => self.generated.valid += 1,
        }
        if out_of_order {
            self.generated.out_of_order += 1;
        }
        if self.duplicates > 0.0 {
            if self.recent.len() < 10_000 {
                self.recent.push((event_id, bytes.clone()));
            } else {
                let index = self.rng.random_range(0..self.recent.len());
                self.recent[index] = (event_id, bytes.clone());
            }
        }
        (event_id, bytes)
    }
}

/// One event as JSON bytes, made to fail as `failure` says.
fn event(
    kind: &str,
    failure: Option<&str>,
    event_id: Uuid,
    session_id: Uuid,
    at_us: i64,
    rng: &mut StdRng,
) -> Vec<u8> {
    let path = ["/", "/pricing", "/reviews", "/contact", "/blog"][rng.random_range(0..5)];
    let (category, name, data) = match kind {
        "cta_click" => (
            "page interaction",
            "cta click",
            json!({"host": "www.example.com", "path": path, "element": "chat bubble"}),
        ),
        "submit" => (
            "form interaction",
            "submit",
            json!({"host": "www.example.com", "path": path, "form": {"first_name": "John", "last_name": "Doe"}}),
        ),
        _ => (
            "page interaction",
            "pageview",
            json!({"host": "www.example.com", "path": path}),
        ),
    };
    let timestamp = |micros: i64| {
        DateTime::from_timestamp_micros(micros)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string()
    };
    let mut event = json!({
        "event_id": event_id.to_string(),
        "session_id": session_id.to_string(),
        "category": category,
        "name": name,
        "data": data,
        "timestamp": timestamp(at_us),
    });
    match failure {
        Some("malformed_json") => {
            let text = event.to_string();
            return text.as_bytes()[..text.len() / 2].to_vec();
        }
        Some("missing_field") => {
            event.as_object_mut().map(|fields| fields.remove("name"));
        }
        Some("invalid_type") => event["category"] = json!(7),
        Some("unexpected_field") => event["data"]["colour"] = json!("blue"),
        Some("invalid_session_id") => event["session_id"] = json!("not-a-session"),
        Some("invalid_timestamp") => event["timestamp"] = json!("yesterday at noon"),
        Some("unknown_event_type") => event["name"] = json!("hover"),
        Some("invalid_data") => event["data"]["path"] = json!(404),
        Some("future_timestamp") => {
            event["timestamp"] = json!(timestamp(Utc::now().timestamp_micros() + 86_400_000_000))
        }
        _ => {}
    }
    event.to_string().into_bytes()
}

/// Where the clients send.
#[derive(Clone)]
enum Sender {
    Http {
        client: reqwest::Client,
        url: String,
        api_key: String,
    },
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
    async fn send(&self, events: &[(Uuid, Vec<u8>)]) -> Reply {
        match self {
            Sender::Http {
                client,
                url,
                api_key,
            } => {
                let body = if events.len() == 1 {
                    events[0].1.clone()
                } else {
                    let mut body = b"[".to_vec();
                    for (index, (_, bytes)) in events.iter().enumerate() {
                        if index > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(bytes);
                    }
                    body.push(b']');
                    body
                };
                match client
                    .post(url)
                    .bearer_auth(api_key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                        Reply::Accepted
                    }
                    Ok(response) => Reply::Refused(response.status().as_u16().to_string()),
                    Err(_) => Reply::Refused("connection".into()),
                }
            }
            Sender::Kafka {
                producer,
                topic,
                application,
            } => {
                let sends = events.iter().map(|(event_id, bytes)| {
                    let headers =
                        rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                            key: eye_core::raw::APPLICATION_HEADER,
                            value: Some(application.as_bytes()),
                        });
                    let key = event_id.to_string();
                    async move {
                        producer
                            .send(
                                FutureRecord::to(topic)
                                    .key(&key)
                                    .payload(bytes)
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
    events: u64,
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
    let generator = Arc::new(Mutex::new(Generator::new(&args, Utc::now())?));
    let sender = match args.target {
        Target::Http => Sender::Http {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(args.clients)
                .build()?,
            url: args.url.clone(),
            api_key: args.api_key.clone(),
        },
        Target::Kafka => Sender::Kafka {
            producer: {
                eye_core::kafka::create_topics(&args.brokers, &[&args.topic], args.partitions)
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
    // Each client keeps its share of the rate: one request per `period`.
    let period = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.clients as f64 * batch as f64 / args.rate as f64));
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
                let mut ticks = period.map(|period| {
                    // Spread the clients over one period.
                    let start = tokio::time::Instant::now()
                        + period.mul_f64(client as f64 / client_count as f64);
                    let mut ticks = tokio::time::interval_at(start, period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticks
                });
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
                    if let Some(ticks) = ticks.as_mut() {
                        ticks.tick().await;
                    }
                    let events: Vec<(Uuid, Vec<u8>)> = {
                        let mut generator = generator.lock().unwrap_or_else(|p| p.into_inner());
                        (0..take).map(|_| generator.next()).collect()
                    };
                    let sent = Instant::now();
                    let reply = sender.send(&events).await;
                    let elapsed = sent.elapsed().as_micros() as u64;
                    latency_us
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .saturating_record(elapsed.max(1));
                    let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
                    outcome.requests += 1;
                    outcome.events += take;
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
            "the rate was not reached: each client waits for its reply; raise --clients or --batch-size"
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
