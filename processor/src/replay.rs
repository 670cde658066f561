//! Rebuilding the derived tables from the raw log.
//!
//! A full replay empties every table of the database, then reads each raw-topic partition from its
//! first offset to the end it had when the tables were emptied, through the same validation and
//! sink as the live processor, publishing session updates (the latest message of a session is
//! its state) but no dead letters (they are on their topic already).
//! A live processor may keep running: everything it writes and everything the replay writes is
//! idempotent by event_id, and the replay covers every offset the emptying may have lost. A replay
//! `from` a time re-reads from the first offset at or after it, into the tables as they are.
//!
//! While a replay runs, its heartbeat in `replays` keeps the live alert judge from judging windows
//! whose counts are being rebuilt; the replay judges the rules itself at the end, so it publishes
//! the same alerts, with the same ids, as the live processor did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clickhouse::Row;
use eye_core::kafka::client_config;
use eye_core::schemas::TopicSchema;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tracing::info;
use uuid::Uuid;

use crate::alerts::AlertJudge;
use crate::config::ProcessorConfig;
use crate::pipeline::Outputs;
use crate::sink::ClickHouseSink;
use crate::source::{Source, WrittenOffsets};
use crate::start::{self, StartError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("recording the replay in `replays`: {0}")]
    Record(clickhouse::error::Error),
    #[error("emptying the tables before the replay: {0}")]
    EmptyTables(clickhouse::error::Error),
    #[error("reading the raw topic's offsets for the replay: {0}")]
    Plan(KafkaError),
    #[error("merging the replayed tables: {0}")]
    Merge(clickhouse::error::Error),
    #[error(transparent)]
    Schemas(#[from] eye_core::schemas::SchemaError),
    #[error("the alert rules over the replayed tables: {0}")]
    Alerts(#[from] crate::alerts::AlertError),
}

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Per partition: the first offset read, the offset the replay ends at.
pub type Plan = BTreeMap<i32, (i64, i64)>;

#[derive(Debug)]
pub struct ReplaySummary {
    pub plan: Plan,
    pub messages: i64,
    pub tables_emptied: Vec<String>,
    pub elapsed: Duration,
}

/// A row of `replays`.
#[derive(Debug, Row, Serialize)]
struct HeartbeatRow {
    #[serde(with = "clickhouse::serde::uuid")]
    replay_id: Uuid,
    started_at: u32,
    heartbeat_at: u32,
    finished: u8,
}

/// Replays the raw topic into the tables (all of it, emptying them first, or from `from` on),
/// calling `on_plan` once the offsets are known and polling `on_progress` while it runs.
pub async fn replay(
    config: ProcessorConfig,
    from: Option<DateTime<Utc>>,
    on_plan: impl FnOnce(&Plan),
    mut on_progress: impl FnMut(&BTreeMap<i32, i64>),
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let (validator, sink) = start::prepare(&config).await?;
    let client = sink.client();

    let replay_id = Uuid::now_v7();
    let started_at = Utc::now().timestamp() as u32;
    let beat = {
        let client = client.clone();
        move |finished: u8| {
            let client = client.clone();
            async move {
                let mut insert = client.insert::<HeartbeatRow>("replays").await?;
                insert
                    .write(&HeartbeatRow {
                        replay_id,
                        started_at,
                        heartbeat_at: Utc::now().timestamp() as u32,
                        finished,
                    })
                    .await?;
                insert.end().await
            }
        }
    };
    beat(0).await.map_err(ReplayError::Record)?;
    let (stop_heartbeat, mut heartbeat_stopped) = tokio::sync::watch::channel(false);
    let heartbeat = tokio::spawn({
        let beat = beat.clone();
        async move {
            loop {
                tokio::select! {
                    _ = heartbeat_stopped.wait_for(|stopped| *stopped) => return,
                    _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
                }
                if let Err(error) = beat(0).await {
                    tracing::warn!(%error, "replay heartbeat");
                }
            }
        }
    });
    // A live judge in the middle of a window finishes before the tables go.
    tokio::time::sleep(Duration::from_millis(2 * config.alerts.judge_interval_ms)).await;

    let tables_emptied = match from {
        None => empty_tables(&sink, &config.clickhouse.database).await?,
        Some(_) => Vec::new(),
    };
    let plan = plan(&config, from).await.map_err(ReplayError::Plan)?;
    on_plan(&plan);
    info!(%replay_id, ?plan, tables = ?tables_emptied, "replay starting");

    let source = Source::Range {
        start: plan.iter().map(|(&p, &(start, _))| (p, start)).collect(),
        end: plan.iter().map(|(&p, &(_, end))| (p, end)).collect(),
    };
    let mut replay_config = config.clone();
    replay_config.consumer.group_id = format!("{}-replay-{replay_id}", config.consumer.group_id);
    let pipeline = start::pipeline(
        &replay_config,
        source,
        validator,
        sink.clone(),
        Outputs {
            dead_letters: None,
            session_updates: start::session_updates(
                &config,
                &sink,
                start::SessionChangelog::Untouched,
            )
            .await?,
        },
        start::readiness(&config),
    )?;
    let written: WrittenOffsets = pipeline.written_offsets();
    let run = tokio::spawn(pipeline.run(std::future::pending()));
    while !run.is_finished() {
        on_progress(&written.get());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = run.await;
    on_progress(&written.get());

    if from.is_none() {
        // Merges what a live processor wrote twice beside the replay, so `events` holds each
        // event_id once even without FINAL.
        for table in &tables_emptied {
            client
                .query(&format!("OPTIMIZE TABLE `{table}` FINAL"))
                .execute()
                .await
                .map_err(ReplayError::Merge)?;
        }
    }
    if !config.alerts.rules.is_empty() {
        let alert_schema = TopicSchema::load(&config.schemas_dir.join("avro/topics/alert.avsc"))?;
        let judge = AlertJudge::new(
            config.alerts.clone(),
            &config.kafka,
            &config.consumer.topic,
            client.clone(),
            Duration::from_millis(config.clickhouse.request_timeout_ms),
            alert_schema,
        )?;
        judge.judge_once().await?;
    }
    let _ = stop_heartbeat.send(true);
    let _ = heartbeat.await;
    beat(1).await.map_err(ReplayError::Record)?;
    let messages = plan.values().map(|(start, end)| end - start).sum();
    Ok(ReplaySummary {
        plan,
        messages,
        tables_emptied,
        elapsed: started.elapsed(),
    })
}

/// Empties every table of the database that holds data (views hold none; `replays` is the
/// replay's own record); returns their names.
async fn empty_tables(sink: &ClickHouseSink, database: &str) -> Result<Vec<String>, ReplayError> {
    let client = sink.client();
    let tables: Vec<String> = client
        .query(
            "SELECT name FROM system.tables WHERE database = ? \
             AND engine NOT IN ('View', 'MaterializedView', 'Null') AND name != 'replays' \
             ORDER BY name",
        )
        .bind(database)
        .fetch_all()
        .await
        .map_err(ReplayError::EmptyTables)?;
    for table in &tables {
        client
            .query(&format!("TRUNCATE TABLE `{table}`"))
            .execute()
            .await
            .map_err(ReplayError::EmptyTables)?;
    }
    Ok(tables)
}

/// Per partition, where to start (the log's start, or the first offset at or after `from`) and
/// the end of the log now, from ListOffsets.
async fn plan(config: &ProcessorConfig, from: Option<DateTime<Utc>>) -> Result<Plan, KafkaError> {
    let client = client_config(
        &config.kafka,
        [
            (
                "group.id",
                format!("{}-replay-plan", config.consumer.group_id),
            ),
            ("enable.auto.commit", "false".into()),
        ],
    );
    let topic = config.consumer.topic.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), KAFKA_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|found| found.name() == topic)
            .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
            .collect();
        let mut plan = Plan::new();
        for &partition in &partitions {
            plan.insert(
                partition,
                consumer.fetch_watermarks(&topic, partition, KAFKA_TIMEOUT)?,
            );
        }
        if let Some(from) = from {
            let mut wanted = TopicPartitionList::new();
            for &partition in &partitions {
                wanted.add_partition_offset(
                    &topic,
                    partition,
                    Offset::Offset(from.timestamp_millis()),
                )?;
            }
            for element in consumer
                .offsets_for_times(wanted, KAFKA_TIMEOUT)?
                .elements()
            {
                if let Some((start, end)) = plan.get_mut(&element.partition()) {
                    *start = match element.offset() {
                        Offset::Offset(offset) => offset.clamp(*start, *end),
                        // No message at or after `from`: nothing to read.
                        _ => *end,
                    };
                }
            }
        }
        Ok(plan)
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}
