//! Queries: the README's questions over 10M generated events, rows read from `system.query_log`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use uuid::Uuid;

use super::{create_database, sql};

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

/// Fills a fresh database through `events` (the materialized views fill the rest), then times the
/// README's session, category-day and hour queries.
pub async fn run(args: QueriesBench) -> anyhow::Result<()> {
    let database = format!("eye_bench_queries_{}", Uuid::now_v7().simple());
    create_database(&args.clickhouse_url, &database, &args.schemas_dir).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/?log_queries=1", args.clickhouse_url);
    let run = |query: String| {
        let (http, url) = (&http, &url);
        async move {
            Ok::<String, anyhow::Error>(String::from_utf8(sql(http, url, query).await?.to_vec())?)
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
