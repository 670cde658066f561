//! The services started for tests really serve what the pipeline needs: Kafka produce, group
//! consume with a committed offset, and ClickHouse DDL, inserts and reads with the `clickhouse`
//! crate.

use std::time::Duration;

use clickhouse::Row;
use eye_core::kafka::{
    compacted, create_topics, finite_retention, unbounded_retention, TopicSettings,
};
use eye_core::settings::KafkaSettings;
use eye_devenv::broker::{Broker, Storage};
use eye_devenv::testing::{services, start_broker, unique_name, OwnedBroker, PortTaken, Signal};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// On a TLS or SASL cluster the security settings are overrides: topic creation must use them as
/// every client does. Here the only way to the broker is an override.
#[tokio::test]
async fn topics_are_created_with_the_operators_overrides() {
    let mut kafka = KafkaSettings::for_brokers("127.0.0.1:1");
    kafka
        .librdkafka
        .insert("bootstrap.servers".into(), services().broker.bootstrap());
    let topic = unique_name("overrides");
    create_topics(&kafka, &[&topic], &TopicSettings::with_partitions(1))
        .await
        .unwrap();
}

/// A topic is created with its properties, and a raw topic that bounds its log is seen as such
/// (the processor warns of it at start).
#[tokio::test]
async fn topics_keep_the_properties_they_were_created_with() {
    let kafka = KafkaSettings::for_brokers(services().broker.bootstrap());
    let whole = unique_name("whole_log");
    let bounded = unique_name("bounded_log");
    let sessions = unique_name("compacted");
    let settings = |properties| TopicSettings {
        properties,
        ..TopicSettings::with_partitions(1)
    };
    create_topics(&kafka, &[&whole], &settings(unbounded_retention()))
        .await
        .unwrap();
    let week = [("retention.ms".to_string(), "604800000".to_string())].into();
    create_topics(&kafka, &[&bounded], &settings(week))
        .await
        .unwrap();
    create_topics(&kafka, &[&sessions], &settings(compacted()))
        .await
        .unwrap();
    assert_eq!(finite_retention(&kafka, &whole).await.unwrap(), None);
    assert_eq!(
        finite_retention(&kafka, &bounded).await.unwrap().as_deref(),
        Some("retention.ms=604800000")
    );
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        eye_core::kafka::client_config(&kafka, []).create().unwrap();
    let described = admin
        .describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic(&sessions)],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let policy = described[0]
        .as_ref()
        .unwrap()
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));
}

#[tokio::test]
async fn kafka_round_trip_with_committed_offset() {
    let bootstrap = services().broker.bootstrap();
    let topic = unique_name("smoke");
    let group = unique_name("smoke_group");
    create_topics(
        &KafkaSettings::for_brokers(&bootstrap),
        &[&topic],
        &TopicSettings::with_partitions(3),
    )
    .await
    .unwrap();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key("session-1").payload("hello"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    let (partition, offset) = (delivery.partition, delivery.offset);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message within 30 s")
        .unwrap();
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    assert_eq!(message.key(), Some(&b"session-1"[..]));
    assert_eq!((message.partition(), message.offset()), (partition, offset));
    consumer.commit_message(&message, CommitMode::Sync).unwrap();

    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&topic, partition);
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .unwrap();
    let committed = committed
        .find_partition(&topic, partition)
        .unwrap()
        .offset();
    assert_eq!(committed, Offset::Offset(offset + 1));
}

#[derive(Debug, Row, Serialize, Deserialize, PartialEq)]
struct SmokeRow {
    id: u32,
    name: String,
}

#[tokio::test]
async fn clickhouse_insert_and_read_back() {
    let database = unique_name("smoke");
    let client = clickhouse::Client::default()
        .with_url(services().clickhouse.url())
        .with_validation(false);
    client
        .query(&format!("CREATE DATABASE {database}"))
        .execute()
        .await
        .unwrap();
    let client = client.with_database(&database);
    client
        .query("CREATE TABLE rows (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
        .execute()
        .await
        .unwrap();

    let written = vec![
        SmokeRow {
            id: 1,
            name: "pageview".into(),
        },
        SmokeRow {
            id: 2,
            name: "cta click".into(),
        },
    ];
    let mut insert = client.insert::<SmokeRow>("rows").await.unwrap();
    for row in &written {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();

    let read: Vec<SmokeRow> = client
        .query("SELECT ?fields FROM rows ORDER BY id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(read, written);
}

#[tokio::test]
async fn sqlite_broker_keeps_log_and_committed_offsets_across_a_restart() {
    let mut broker = OwnedBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_name("durable");
    let group = unique_name("durable_group");
    create_topics(
        &KafkaSettings::for_brokers(&bootstrap),
        &[&topic],
        &TopicSettings::with_partitions(1),
    )
    .await
    .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for payload in ["first", "second"] {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }
    drop(producer);
    let consumer = |group: &str| -> StreamConsumer {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        consumer
    };
    {
        let first = consumer(&group);
        let message = tokio::time::timeout(Duration::from_secs(30), first.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.payload(), Some(&b"first"[..]));
        first.commit_message(&message, CommitMode::Sync).unwrap();
    }

    broker.halt();
    broker.resume();

    let resumed = consumer(&group);
    let message = tokio::time::timeout(Duration::from_secs(60), resumed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        message.payload(),
        Some(&b"second"[..]),
        "resumes after the committed offset"
    );
}

/// A port is free when chosen and may be taken before the service binds it; the late service
/// then exits while the other server answers its readiness probe. The test that SIGSTOPped
/// such a "broker" got 202s from the other one.
#[test]
fn a_service_whose_port_another_server_took_is_not_taken_for_ready() {
    let holder = OwnedBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let late = Broker {
        state_dir: dir.path().to_path_buf(),
        port: holder.broker.port,
        storage: Storage::Memory,
    };
    let error = start_broker(&late, None).expect_err("another broker holds the port");
    assert!(error.is::<PortTaken>(), "{error:#}");
}

/// An exited service stays its supervisor's zombie child, and a zombie takes any signal
/// silently: a test that "hangs" a crashed server must hear that it is gone.
#[test]
fn a_signal_to_a_service_that_has_exited_is_an_error() {
    let broker = OwnedBroker::start();
    broker.signal(Signal::SIGKILL).unwrap();
    let mut stopped = false;
    for _ in 0..100 {
        if broker.signal(Signal::SIGSTOP).is_err() {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stopped, "a signal to the killed broker still succeeds");
}
