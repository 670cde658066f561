//! End to end: a steady rate through running services, 202 to visible row, one event per request
//! or a batch per request. Open loop: requests are due at the rate whatever the replies
//! ([`crate::schedule`]), and reply times count from when a request was due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use uuid::Uuid;

use super::reference_events;
use crate::schedule::{sent_late, Schedule};

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
    /// Events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Events per request: 1 sends each event alone; more sends a JSON array of them, as a
    /// batching client does (requests per second are then the rate divided by this).
    #[arg(long, default_value_t = 1)]
    batch_size: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Concurrent clients sharing the rate.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How often ClickHouse is polled for new rows: the resolution of the figures.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
}

/// POSTs a steady rate of pageviews with their own ids, and polls `events` for them.
pub async fn run(args: E2eBench) -> anyhow::Result<()> {
    use std::collections::HashMap;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    // Each accepted event: when its request was due, and when its 202 came.
    let replied: Arc<std::sync::Mutex<HashMap<Uuid, (Instant, Instant)>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let late = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let clients: Vec<_> = (0..args.clients)
        .map(|client| {
            let (http, url, key, replied, refused, late) = (
                http.clone(),
                args.url.clone(),
                args.api_key.clone(),
                replied.clone(),
                refused.clone(),
                late.clone(),
            );
            let batch_size = args.batch_size.max(1);
            let requests_per_second = args.rate.max(1) as f64 / batch_size as f64;
            let mut schedule = Schedule::new(requests_per_second, client, args.clients);
            tokio::spawn(async move {
                let mut reply_us = Histogram::<u64>::new(3).expect("histogram");
                while Instant::now() < deadline {
                    let due = schedule.next_due().await;
                    let timestamp = chrono::Utc::now()
                        .format("%Y-%m-%d %H:%M:%S%.6f")
                        .to_string();
                    let events: Vec<(Uuid, serde_json::Value)> = (0..batch_size)
                        .map(|_| {
                            let event_id = Uuid::now_v7();
                            let mut event = reference_events(1).remove(0);
                            event["event_id"] = json!(event_id.to_string());
                            event["timestamp"] = json!(timestamp);
                            (event_id, event)
                        })
                        .collect();
                    let body = match events.as_slice() {
                        [(_, event)] => event.to_string(),
                        events => serde_json::Value::Array(
                            events.iter().map(|(_, event)| event.clone()).collect(),
                        )
                        .to_string(),
                    };
                    if sent_late(due) {
                        late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let response = http
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    reply_us
                        .record(due.elapsed().as_micros() as u64)
                        .expect("an auto-resizing histogram");
                    match response {
                        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                            let reply = Instant::now();
                            let mut replied = replied.lock().unwrap_or_else(|p| p.into_inner());
                            for (event_id, _) in &events {
                                replied.insert(*event_id, (due, reply));
                            }
                        }
                        _ => {
                            refused.fetch_add(batch_size, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                reply_us
            })
        })
        .collect();

    // Poll for rows until every accepted event is seen (or 30 s after the last request).
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut due_to_row_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut seen: std::collections::HashSet<Uuid> = Default::default();
    let mut lag_series: Vec<(u64, i64)> = Vec::new();
    let mut next_lag = Instant::now();
    let since = (started_at - chrono::Duration::seconds(5))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    // Each poll asks only for rows past the offsets already seen in each partition (a batch's
    // rows become visible together), so a long run does not read every row again each time.
    let mut seen_offsets: std::collections::BTreeMap<u64, u64> = Default::default();
    let rows_sql = |seen_offsets: &std::collections::BTreeMap<u64, u64>| {
        let past_seen = seen_offsets
            .iter()
            .map(|(partition, offset)| {
                format!(" OR (kafka_partition = {partition} AND kafka_offset > {offset})")
            })
            .collect::<String>();
        let known = seen_offsets
            .keys()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "SELECT toString(event_id), kafka_partition, kafka_offset FROM {db}.events \
             WHERE category = 'page interaction' AND name = 'pageview' \
             AND timestamp >= toDateTime('{since}', 'UTC') \
             AND (kafka_partition NOT IN ({known}){past_seen}) FORMAT TSV",
            db = args.database,
            known = if known.is_empty() { "-1".into() } else { known },
        )
    };
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
        let rows = query(rows_sql(&seen_offsets)).await?;
        {
            let replied = replied.lock().unwrap_or_else(|p| p.into_inner());
            for line in rows.lines() {
                let mut fields = line.split('\t');
                let (Some(Ok(event_id)), Some(Ok(partition)), Some(Ok(offset))) = (
                    fields.next().map(Uuid::parse_str),
                    fields.next().map(str::parse::<u64>),
                    fields.next().map(str::parse::<u64>),
                ) else {
                    continue;
                };
                let highest = seen_offsets.entry(partition).or_insert(offset);
                *highest = (*highest).max(offset);
                if let Some((due, reply)) = replied.get(&event_id) {
                    if seen.insert(event_id) {
                        let since = |then: &Instant| {
                            now.saturating_duration_since(*then).as_micros().max(1) as u64
                        };
                        latency_us.saturating_record(since(reply));
                        due_to_row_us.saturating_record(since(due));
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
    let mut reply_us = Histogram::<u64>::new(3)?;
    for client in clients {
        reply_us.add(client.await?)?;
    }
    let accepted = replied.lock().unwrap_or_else(|p| p.into_inner()).len();
    let ms = |quantile: f64| latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    let lag_max = lag_series.iter().map(|(_, lag)| *lag).max().unwrap_or(0);
    let lag_end = lag_series.last().map(|(_, lag)| *lag).unwrap_or(0);
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| events/s × seconds, events per request | {} × {}, {} |",
        args.rate, args.seconds, args.batch_size
    );
    println!("| accepted (202) | {accepted} |");
    println!(
        "| refused | {} |",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "| reply (202) from when due, p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        reply_us.value_at_quantile(0.5) as f64 / 1000.0,
        reply_us.value_at_quantile(0.99) as f64 / 1000.0,
        reply_us.max() as f64 / 1000.0
    );
    println!(
        "| requests sent late (> 1 ms after due) | {} |",
        late.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("| rows seen in events | {} |", seen.len());
    println!("| 202 → row visible p50 | {:.0} ms |", ms(0.5));
    println!("| 202 → row visible p99 | {:.0} ms |", ms(0.99));
    println!(
        "| 202 → row visible max | {:.0} ms |",
        latency_us.max() as f64 / 1000.0
    );
    println!(
        "| due → row visible p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        due_to_row_us.value_at_quantile(0.5) as f64 / 1000.0,
        due_to_row_us.value_at_quantile(0.99) as f64 / 1000.0,
        due_to_row_us.max() as f64 / 1000.0
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
