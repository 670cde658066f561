//! Overload: a bridge of its own (the release binary) under many slow clients, then under a flood
//! of batched requests far beyond what it can produce. Prints the bridge's peak resident memory,
//! how its replies split, how fast `/healthz` answered meanwhile, and whether every accepted
//! event is on the topic.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use eye_core::kafka::{create_topics, TopicSettings};
use eye_core::raw::EVENT_ID_HEADER;
use eye_core::settings::KafkaSettings;
use eye_ingest::routes::Accepted;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::bridge::{Bridge, BridgeArgs};
use super::{peak_rss_kib, reference_events};

#[derive(Args)]
pub struct OverloadBench {
    #[command(flatten)]
    bridge: BridgeArgs,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Connections that send their headers and then a byte of body every second.
    #[arg(long, default_value_t = 2000)]
    slow_clients: usize,
    /// Requests the flood offers per second (batched: `--batch-size` events each).
    #[arg(long, default_value_t = 600)]
    flood_requests_per_second: u64,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
}

/// Replies by status and reason (`202`, `503 overloaded`, `none` for no reply), and `/healthz`
/// latency.
struct Observed {
    statuses: BTreeMap<String, u64>,
    /// The event ids of every 202.
    accepted: Vec<Uuid>,
    health_us: Histogram<u64>,
}

pub async fn run(args: OverloadBench) -> anyhow::Result<()> {
    let topic = format!("eye.bench.overload.{}", Uuid::now_v7().simple());
    create_topics(
        &KafkaSettings::for_brokers(&args.brokers),
        &[&topic],
        &TopicSettings::with_partitions(4),
    )
    .await?;
    let bridge = args.bridge.start(&args.brokers, &topic).await?;
    let idle_rss = peak_rss_kib(bridge.service.pid());
    println!("bridge peak RSS at rest: {} MiB", idle_rss / 1024);
    println!("| scenario | offered | replies by status | accepted events | /healthz p50 ms | p99 ms | max ms | bridge peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");

    let observed = slow_clients(&args, &bridge).await?;
    print_row(
        "slow clients",
        &format!("{} connections, 1 byte/s", args.slow_clients),
        &observed,
        peak_rss_kib(bridge.service.pid()),
    );
    let observed = flood(&args, &bridge).await?;
    print_row(
        "flood",
        &format!(
            "{} requests/s × {} events",
            args.flood_requests_per_second, args.batch_size
        ),
        &observed,
        peak_rss_kib(bridge.service.pid()),
    );
    let on_topic: HashSet<Uuid> = event_ids_on(&args.brokers, &topic)?.into_iter().collect();
    let lost = observed
        .accepted
        .iter()
        .filter(|id| !on_topic.contains(id))
        .count();
    println!(
        "accepted (202) events: {}, of them not on the topic: {lost}; on the topic besides them: {} \
         (events of requests answered 503 after part of them reached the broker)",
        observed.accepted.len(),
        on_topic.len().saturating_sub(observed.accepted.len() - lost)
    );
    Ok(())
}

/// Sends `/healthz` every 50 ms until `until`, recording each answer's latency (a failed one as
/// 10 s).
async fn probe_health(http: reqwest::Client, url: String, until: Instant) -> Histogram<u64> {
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    while Instant::now() < until {
        let sent = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(10), http.get(&url).send())
            .await
            .is_ok_and(|response| response.is_ok_and(|response| response.status().is_success()));
        let micros = if answered {
            sent.elapsed().as_micros() as u64
        } else {
            10_000_000
        };
        latency.record(micros.max(1)).expect("in range");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latency
}

async fn slow_clients(args: &OverloadBench, bridge: &Bridge) -> anyhow::Result<Observed> {
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let health = tokio::spawn(probe_health(
        reqwest::Client::new(),
        format!("{}/healthz", bridge.operations_url),
        until,
    ));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut clients = Vec::new();
    let port = bridge.api_port;
    for _ in 0..args.slow_clients {
        let (key, statuses) = (args.bridge.api_key.clone(), statuses.clone());
        clients.push(tokio::spawn(async move {
            let status = slow_request(port, &key, until)
                .await
                .unwrap_or_else(|_| "none".into());
            *statuses.lock().await.entry(status).or_default() += 1;
        }));
    }
    for client in clients {
        client.await?;
    }
    let statuses = statuses.lock().await.clone();
    Ok(Observed {
        statuses,
        accepted: Vec::new(),
        health_us: health.await?,
    })
}

/// One request whose body trickles in a byte a second until the bridge answers or `until`; the
/// status and reason the bridge answered, `none` if it did not.
async fn slow_request(port: u16, key: &str, until: Instant) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).await?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 1024];
    while Instant::now() < until {
        tokio::select! {
            read = stream.read(&mut buffer) => {
                let read = read?;
                reply.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&reply);
                // The reply is complete once its JSON body has closed.
                if read == 0 || text.trim_end().ends_with('}') {
                    let status = text.split(' ').nth(1).unwrap_or("none");
                    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
                    return Ok(labelled(status, body));
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if stream.write_all(b" ").await.is_err() {
                    return Ok("none".into());
                }
            }
        }
    }
    Ok("none".into())
}

/// `202`, or the status and the reply's stable reason, e.g. `503 overloaded`.
fn labelled(status: &str, body: &str) -> String {
    let reason = serde_json::from_str::<Json>(body)
        .ok()
        .and_then(|body| body["error"].as_str().map(str::to_string));
    match reason {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

async fn flood(args: &OverloadBench, bridge: &Bridge) -> anyhow::Result<Observed> {
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let health = tokio::spawn(probe_health(
        reqwest::Client::new(),
        format!("{}/healthz", bridge.operations_url),
        until,
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let body: Arc<String> = Arc::new(Json::Array(reference_events(args.batch_size)).to_string());
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let accepted = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let mut requests = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(
        1.0 / args.flood_requests_per_second as f64,
    ));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Open loop: requests are offered at the rate whatever the replies take.
    while Instant::now() < until {
        pace.tick().await;
        let (http, url, key, body, statuses, accepted) = (
            http.clone(),
            bridge.events_url.clone(),
            args.bridge.api_key.clone(),
            body.clone(),
            statuses.clone(),
            accepted.clone(),
        );
        requests.push(tokio::spawn(async move {
            let status = match http
                .post(&url)
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body.as_str().to_owned())
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16().to_string();
                    let text = response.text().await.unwrap_or_default();
                    if let Ok(reply) = serde_json::from_str::<Accepted>(&text) {
                        accepted.lock().await.extend(reply.event_ids);
                    }
                    labelled(&status, &text)
                }
                Err(_) => "none".into(),
            };
            *statuses.lock().await.entry(status).or_default() += 1;
        }));
    }
    for request in requests {
        request.await?;
    }
    let statuses = statuses.lock().await.clone();
    let accepted = accepted.lock().await.clone();
    Ok(Observed {
        statuses,
        accepted,
        health_us: health.await?,
    })
}

/// The event id of every message on the topic (read from the beginning to the end of each
/// partition).
fn event_ids_on(brokers: &str, topic: &str) -> anyhow::Result<Vec<Uuid>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("eye-bench-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    for partition in 0..4 {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        remaining += high - low;
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut ids = Vec::with_capacity(remaining as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while remaining > 0 && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        remaining -= 1;
        let id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == EVENT_ID_HEADER)
                .and_then(|header| header.value)
                .and_then(|value| Uuid::try_parse_ascii(value).ok())
        });
        ids.extend(id);
    }
    Ok(ids)
}

fn print_row(scenario: &str, offered: &str, observed: &Observed, peak_rss_kib: u64) {
    let statuses = observed
        .statuses
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    let ms = |quantile: f64| observed.health_us.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "| {scenario} | {offered} | {statuses} | {} | {:.1} | {:.1} | {:.1} | {} |",
        observed.accepted.len(),
        ms(0.5),
        ms(0.99),
        observed.health_us.max() as f64 / 1000.0,
        peak_rss_kib / 1024
    );
}
