//! `eye produce`: what a trusted service does when it skips the HTTP bridge.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use eye_core::raw::{now_micros, APPLICATION_HEADER, DEFAULT_RAW_TOPIC};
use eye_core::schemas::{EventEnvelope, SchemaRegistry};
use eye_core::timestamp::parse_event_time;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value as Json;
use uuid::Uuid;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Each event's JSON as the message value.
    Json,
    /// Avro single-object encoding of the event's newest schema in `--schemas-dir`.
    Avro,
}

#[derive(Args)]
pub struct ProduceArgs {
    /// A JSON event, a JSON array of events, or NDJSON.
    file: PathBuf,
    #[arg(long, default_value = "127.0.0.1:9092", env = "EYE_KAFKA__BROKERS")]
    brokers: String,
    #[arg(long, default_value = DEFAULT_RAW_TOPIC)]
    topic: String,
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Application id: the `eye.application` header for JSON, the envelope field for Avro.
    #[arg(long)]
    application: Option<String>,
    /// Directory of the Avro event schemas (for `--format avro`).
    #[arg(long, default_value = "schemas/avro")]
    schemas_dir: PathBuf,
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let events = parse_events(&text)?;
    let registry = match args.format {
        Format::Avro => Some(SchemaRegistry::load(&args.schemas_dir)?),
        Format::Json => None,
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let mut deliveries = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let payload = match &registry {
            Some(registry) => encode_avro(registry, event, args.application.as_deref())
                .with_context(|| format!("event {index}"))?,
            None => event.to_string().into_bytes(),
        };
        let key = event["session_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        let mut headers = OwnedHeaders::new();
        if let (Format::Json, Some(application)) = (args.format, &args.application) {
            headers = headers.insert(Header {
                key: APPLICATION_HEADER,
                value: Some(application.as_bytes()),
            });
        }
        let record = FutureRecord::to(&args.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        let delivery = producer.send_result(record).map_err(|(error, _)| error)?;
        deliveries.push(delivery);
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery?.map_err(|(error, _)| error)?;
    }
    println!("produced {} events to {}", events.len(), args.topic);
    Ok(())
}

fn parse_events(text: &str) -> anyhow::Result<Vec<Json>> {
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Array(events)) => Ok(events),
        Ok(event @ Json::Object(_)) => Ok(vec![event]),
        Ok(_) => bail!("expected a JSON object, an array of objects, or NDJSON"),
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                serde_json::from_str(line).with_context(|| format!("NDJSON line {}", number + 1))
            })
            .collect(),
    }
}

fn encode_avro(
    registry: &SchemaRegistry,
    event: &Json,
    application: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let field = |key: &str| {
        event[key]
            .as_str()
            .with_context(|| format!("{key} must be a string"))
    };
    let schema = registry
        .latest(field("category")?, field("name")?)
        .context("no schema for this category and name")?;
    let envelope = EventEnvelope {
        event_id: match event.get("event_id").and_then(Json::as_str) {
            Some(id) => Uuid::parse_str(id)?,
            None => Uuid::now_v7(),
        },
        application: application.unwrap_or("direct").to_string(),
        session_id: Uuid::parse_str(field("session_id")?)?,
        timestamp: parse_event_time(field("timestamp")?)
            .context("timestamp is in no accepted form")?,
        received_at: now_micros(),
    };
    Ok(schema.encode_single_object(&envelope, &event["data"])?)
}
