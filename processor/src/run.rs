//! The live processor: the consumer group's member, its alert rules and its operations
//! endpoints, until the stop signal.

use std::future::Future;

use eye_core::schemas::TopicSchema;
use tokio::net::TcpListener;
use tracing::info;

use crate::alerts::AlertJudge;
use crate::config::ProcessorConfig;
use crate::dead_letter::DeadLetterSink;
use crate::pipeline::Outputs;
use crate::source::Source;
use crate::start::{self, Health, StartError};

/// Loads the schemas, creates the ClickHouse tables, then processes until `shutdown` resolves.
/// Health, readiness and metrics are served on `listener`.
pub async fn run(
    config: ProcessorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (validator, sink) = start::prepare(&config).await?;
    let topics = &config.topics;
    eye_core::kafka::create_topics(
        &config.kafka,
        &[&config.consumer.topic],
        &topics.settings(topics.raw_partitions, &topics.raw),
    )
    .await?;
    start::check_raw_retention(&config).await;
    eye_core::kafka::create_topics(
        &config.kafka,
        &[&config.dead_letter.topic],
        &topics.settings(config.dead_letter.partitions, &topics.dead_letter),
    )
    .await?;
    eye_core::kafka::create_topics(
        &config.kafka,
        &[&config.alerts.topic],
        &topics.settings(config.alerts.partitions, &topics.alerts),
    )
    .await?;
    let session_updates =
        start::session_updates(&config, &sink, start::SessionChangelog::Kept).await?;
    let alert_schema = TopicSchema::load(&config.schemas_dir.join("avro/topics/alert.avsc"))?;
    let dead_letters =
        DeadLetterSink::new(&config.kafka, &config.dead_letter, &config.consumer.topic).map_err(
            |source| StartError::Producer {
                topic: config.dead_letter.topic.clone(),
                source,
            },
        )?;
    let readiness = start::readiness(&config);
    let health = Health {
        readiness: readiness.clone(),
        metrics: eye_core::telemetry::prometheus()?,
    };
    info!(address = %listener.local_addr()?, topic = %config.consumer.topic, "processor starting");
    let alerts = (!config.alerts.rules.is_empty())
        .then(|| {
            AlertJudge::new(
                config.alerts.clone(),
                &config.kafka,
                &config.consumer.topic,
                sink.client(),
                sink.request_timeout(),
                alert_schema,
            )
        })
        .transpose()?;
    let pipeline = start::pipeline(
        &config,
        Source::Group,
        validator,
        sink,
        Outputs {
            dead_letters: Some(dead_letters),
            session_updates,
        },
        readiness,
    )?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let alerts = alerts.map(|alerts| {
        let alerts = alerts.owned_by(pipeline.owns_first_partition());
        let mut stop_rx = stop_rx;
        tokio::spawn(alerts.run(async move {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
        }))
    });
    let operations = eye_core::operations::spawn(listener, health.router())?;
    pipeline.run(shutdown).await;
    let _ = stop_tx.send(true);
    operations.stop().await?;
    if let Some(alerts) = alerts {
        let _ = alerts.await;
    }
    Ok(())
}
