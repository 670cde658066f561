//! One message can never stop a partition: after each hostile input, produced straight to Kafka
//! as any producer could, the processor records it (as an event or a failure, once), the group's
//! committed offsets reach the end of the topic, and a normal event sent next lands.

use std::time::Duration;

use eye_processor::config::ProcessorConfig;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// A message as a producer may send it: any key, value, headers and timestamp.
#[derive(Default, Clone)]
struct Hostile {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(&'static str, Option<Vec<u8>>)>,
    timestamp_ms: Option<i64>,
}

impl Hostile {
    fn value(value: impl Into<Vec<u8>>) -> Self {
        Hostile {
            value: Some(value.into()),
            ..Hostile::default()
        }
    }

    fn with_header(mut self, key: &'static str, value: Option<&[u8]>) -> Self {
        self.headers.push((key, value.map(<[u8]>::to_vec)));
        self
    }
}

async fn produce(setup: &Setup, messages: &[Hostile]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &setup.bootstrap)
        .create()
        .unwrap();
    for message in messages {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &message.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&setup.topic).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        if let Some(value) = &message.value {
            record = record.payload(value);
        }
        if let Some(timestamp_ms) = message.timestamp_ms {
            record = record.timestamp(timestamp_ms);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .expect("produced");
    }
}

/// A message with a header whose name is not UTF-8, which rdkafka's safe API cannot send (its
/// names are `&str`): produced through librdkafka's own `rd_kafka_produceva`.
#[allow(unsafe_code)]
fn produce_with_a_binary_header_name(setup: &Setup, value: &[u8]) {
    use rdkafka::bindings::{rd_kafka_vtype_t, rd_kafka_vu_t};
    use rdkafka::producer::{BaseProducer, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &setup.bootstrap)
        .create()
        .unwrap();
    let topic = std::ffi::CString::new(setup.topic.as_str()).unwrap();
    let name = b"\xff\xfeeye.application\0";
    let header_value = b"shop";
    let vus = [
        rd_kafka_vu_t {
            vtype: rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
            u: rdkafka::bindings::rd_kafka_vu_s__bindgen_ty_1 {
                cstr: topic.as_ptr(),
            },
        },
        rd_kafka_vu_t {
            vtype: rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
            u: rdkafka::bindings::rd_kafka_vu_s__bindgen_ty_1 {
                mem: rdkafka::bindings::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
                    ptr: value.as_ptr() as *mut std::ffi::c_void,
                    size: value.len(),
                },
            },
        },
        rd_kafka_vu_t {
            vtype: rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADER,
            u: rdkafka::bindings::rd_kafka_vu_s__bindgen_ty_1 {
                header: rdkafka::bindings::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr().cast(),
                    val: header_value.as_ptr().cast(),
                    size: header_value.len() as isize,
                },
            },
        },
    ];
    // SAFETY: every pointer is to data alive until the call returns; librdkafka copies the
    // value (no RD_KAFKA_MSG_F_FREE) and the header.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_produceva(
            producer.client().native_ptr(),
            vus.as_ptr(),
            vus.len(),
        )
    };
    assert!(error.is_null(), "produceva refused the message");
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Every message recorded once, offsets committed to the end, and then a normal event lands.
async fn assert_partition_moves_on(setup: &Setup, config: &ProcessorConfig, produced: i64) {
    wait_for_committed(config, produced, Duration::from_secs(120)).await;
    assert_eq!(
        setup.count("SELECT count() FROM {db}.events FINAL")
            + setup.count("SELECT count() FROM {db}.event_errors FINAL"),
        produced as u64,
        "every message is one event or one failure"
    );
    let mut next = reference("cta_click");
    next["session_id"] = json!(Uuid::new_v4().to_string());
    setup.produce(&[direct(&next)]).await;
    wait_for_committed(config, produced + 1, Duration::from_secs(60)).await;
    assert_eq!(
        setup.count(&format!(
            "SELECT count() FROM {{db}}.events FINAL WHERE session_id = toUUID('{}')",
            next["session_id"].as_str().unwrap()
        )),
        1,
        "the normal event after the hostile one lands"
    );
}

#[tokio::test]
async fn a_valid_event_whose_session_update_would_exceed_the_message_size_moves_on() {
    let setup = Setup::shared().await;
    let config = setup.config();
    let processor = Processor::start(config.clone()).await;
    let mut pageview = reference("pageview");
    pageview["session_id"] = json!(Uuid::new_v4().to_string());
    let long_path = format!("/{}", "p".repeat(600_000));
    pageview["data"]["path"] = json!(long_path);
    setup.produce(&[direct(&pageview)]).await;

    assert_partition_moves_on(&setup, &config, 1).await;
    assert_eq!(
        setup.count("SELECT length(path) FROM {db}.events FINAL WHERE name = 'pageview'"),
        600_001,
        "the event keeps its path"
    );
    let updates = read_topic(
        &setup.bootstrap,
        &config.session_updates.topic,
        PARTITIONS,
        2,
    )
    .await;
    let long_session = updates
        .iter()
        .find(|update| {
            update.key().unwrap_or_default()
                == format!("direct/{}", pageview["session_id"].as_str().unwrap()).as_bytes()
        })
        .expect("the long session's update is published");
    let payload = long_session.payload().unwrap();
    assert!(payload.len() < 10_000, "{} bytes", payload.len());
    assert!(
        payload
            .windows("…".len())
            .any(|window| window == "…".as_bytes()),
        "the path carries the truncation marker"
    );
    processor.stop().await;
}

#[tokio::test]
async fn a_failure_whose_dead_letter_would_exceed_the_message_size_is_cut_to_fit_and_moves_on() {
    let setup = Setup::shared().await;
    let config = setup.config();
    let processor = Processor::start(config.clone()).await;
    // 999,000 bytes of not-JSON: the dead letter adds the reason and the source to it.
    let value = vec![b'x'; 999_000];
    let big_header = vec![b'h'; 500];
    produce(
        &setup,
        &[Hostile::value(value.clone()).with_header("trace", Some(&big_header))],
    )
    .await;

    assert_partition_moves_on(&setup, &config, 1).await;
    assert_eq!(
        setup.count("SELECT length(raw) FROM {db}.event_errors FINAL"),
        999_000,
        "event_errors keeps the value whole"
    );
    let letters = read_topic(&setup.bootstrap, &config.dead_letter.topic, PARTITIONS, 1).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = &letters[0];
    let header = |name: &str| {
        letter
            .headers()
            .and_then(|headers| headers.iter().find(|header| header.key == name))
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    };
    let kept = letter.payload().unwrap().len();
    assert!(kept < 999_000 && kept > 990_000, "{kept} bytes kept");
    assert_eq!(
        header("eye.truncated"),
        Some(format!("value {kept} of 999000 bytes"))
    );
    assert_eq!(header("eye.error_type").as_deref(), Some("malformed_json"));
    assert_eq!(header("trace").map(|value| value.len()), Some(500));
    processor.stop().await;
}

/// The single-object header of the form_submit schema, then a datum declaring a map of 400
/// million entries (it aborted the processor before apache-avro's allocation bound was set).
fn avro_with_a_huge_map() -> Vec<u8> {
    let registry = eye_core::schemas::SchemaRegistry::load(&repo("schemas/avro")).unwrap();
    let schema = registry.latest("form interaction", "submit").unwrap();
    let envelope = eye_core::schemas::EventEnvelope {
        event_id: Uuid::new_v4(),
        application: "billing".into(),
        session_id: Uuid::new_v4(),
        timestamp: "2021-01-01T09:15:27Z".parse().unwrap(),
        received_at: "2021-01-01T09:15:28Z".parse().unwrap(),
    };
    let valid = schema
        .encode_single_object(&envelope, &json!({"host": "h", "path": "/", "form": {}}))
        .unwrap();
    // The empty map is the datum's last byte (a zero block count).
    let mut bytes = valid[..valid.len() - 1].to_vec();
    bytes.extend(avro_long(400_000_000));
    bytes
}

#[tokio::test]
async fn hostile_messages_straight_to_kafka_are_each_recorded_once_and_the_partition_moves_on() {
    let setup = Setup::shared().await;
    let config = setup.config();
    let processor = Processor::start(config.clone()).await;
    let pageview = |session: Uuid, timestamp: &str| -> Vec<u8> {
        let mut event: Value = reference("pageview");
        event["session_id"] = json!(session.to_string());
        event["timestamp"] = json!(timestamp);
        event.to_string().into_bytes()
    };
    let mut messages = vec![
        // Times at and beyond what ClickHouse's DateTime holds.
        Hostile::value(pageview(Uuid::new_v4(), "2021-01-01 09:15:27"))
            .with_header("eye.received_at", Some(b"2106-02-07T06:28:16Z")),
        Hostile::value(pageview(Uuid::new_v4(), "2021-01-01 09:15:27"))
            .with_header("eye.received_at", Some(b"1969-12-31T23:59:59Z")),
        // (Kafka timestamps beyond DateTime are refused by the broker itself, InvalidTimestamp;
        // the validator's own tests cover them.)
        Hostile::value(pageview(Uuid::new_v4(), "1970-01-01 00:00:00")),
        // Avro declaring a huge map; invalid UTF-8 in the value, key and headers.
        Hostile::value(avro_with_a_huge_map()),
        Hostile {
            key: Some(vec![0xff, 0xfe]),
            ..Hostile::value(b"{\"session_id\": \"\xff\"}".to_vec())
        }
        .with_header("eye.application", Some(b"\xc3\x28"))
        .with_header("\u{7f}", Some(b"\xff")),
        Hostile::value(pageview(Uuid::new_v4(), "2021-01-01 09:15:27"))
            .with_header("eye.application", Some(&[b'a'; 5000])),
        // Empty and missing values, null keys, headers without values, duplicated headers.
        Hostile::value(Vec::new()),
        Hostile::default(),
        Hostile::value(pageview(Uuid::new_v4(), "2021-01-01 09:15:27"))
            .with_header("eye.event_id", None)
            .with_header("eye.event_id", Some(b"not a uuid"))
            .with_header("eye.application", Some(b"shop"))
            .with_header("eye.application", Some(b"blog")),
        // Deep nesting.
        Hostile::value(format!("{}{}", "[".repeat(50_000), "]".repeat(50_000))),
    ];
    // One batch of events over 200 months: ClickHouse 25 refuses an insert spanning more than
    // 100 partitions (252), so the sink inserts a partition at a time.
    let session = Uuid::new_v4();
    for month in 0..200 {
        let (year, month) = (2000 + month / 12, month % 12 + 1);
        messages.push(Hostile::value(pageview(
            session,
            &format!("{year}-{month:02}-15 12:00:00"),
        )));
    }
    produce(&setup, &messages).await;
    produce_with_a_binary_header_name(&setup, &pageview(Uuid::new_v4(), "2021-01-01 09:15:27"));

    assert_partition_moves_on(&setup, &config, messages.len() as i64 + 1).await;
    assert_eq!(
        setup.count(&format!(
            "SELECT count() FROM {{db}}.events FINAL WHERE session_id = toUUID('{session}')"
        )),
        200
    );
    assert_eq!(
        setup
            .query(
                "SELECT arrayStringConcat(groupArray(error_type), ',') FROM \
             (SELECT error_type FROM {db}.event_errors FINAL ORDER BY kafka_offset)"
            )
            .split(',')
            .filter(|error_type| *error_type == "invalid_envelope")
            .count(),
        4,
        "both out-of-range received_at headers, both application headers"
    );
    assert_eq!(
        setup
            .count("SELECT count() FROM {db}.event_errors FINAL WHERE error_type = 'invalid_avro'"),
        1
    );
    assert_eq!(
        setup.count(
            "SELECT count() FROM {db}.events FINAL WHERE application = 'shop' AND toYear(timestamp) = 2021"
        ),
        1,
        "the first of duplicated headers counts"
    );
    assert_eq!(
        setup.count("SELECT min(toUInt32(timestamp)) FROM {db}.events FINAL"),
        0,
        "1970-01-01 00:00:00 is stored as itself"
    );
    processor.stop().await;
}
