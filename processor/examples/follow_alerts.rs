//! Follows the error-alert topic and prints each alert as a JSON line: all another service needs
//! to consume `eye.alerts` (the README quotes the loop).
//!
//! `cargo run -p eye-processor --example follow_alerts -- [BROKERS] [TOPIC]`, from the repository
//! root (it reads `schemas/avro/topics/alert.avsc`).

use eye_core::schemas::TopicSchema;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "eye.alerts".into());
    let schema = TopicSchema::load("schemas/avro/topics/alert.avsc".as_ref())?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "alert-follower")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    loop {
        let message = consumer.recv().await?;
        // Avro single-object encoding: 0xC3 0x01, the schema's fingerprint, the datum.
        let alert = schema.decode(message.payload().unwrap_or_default())?;
        // `firing` and `resolved` share an alert_id; a replay re-sends both: keep the first of each.
        println!("{}", serde_json::Value::try_from(alert)?);
    }
}
