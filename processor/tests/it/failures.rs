//! Failures: every invalid message is one row of `event_errors` with its reason, and one dead letter carrying what arrived.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

#[tokio::test]
async fn each_failure_reason_lands_in_event_errors_and_nothing_in_events() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let base = reference("form_submit");
    let with = |key: &str, value: Value| {
        let mut event = base.clone();
        event[key] = value;
        event
    };
    let mut missing_session = base.clone();
    missing_session
        .as_object_mut()
        .unwrap()
        .remove("session_id");
    let mut data_extra = base.clone();
    data_extra["data"]["referrer"] = json!("/home");
    let mut form_number = base.clone();
    form_number["data"]["form"]["first_name"] = json!(42);
    let received_at = "2021-01-01T09:15:27.000000Z".to_string();
    let cases: Vec<(&str, &str, RawMessage)> = vec![
        (
            "malformed_json",
            "",
            (b"\x00\x01\x02 not json".to_vec(), vec![]),
        ),
        ("missing_field", "session_id", direct(&missing_session)),
        (
            "invalid_type",
            "category",
            direct(&with("category", json!(3))),
        ),
        (
            "invalid_session_id",
            "session_id",
            direct(&with("session_id", json!("abc"))),
        ),
        (
            "unknown_event_type",
            "",
            direct(&with("name", json!("hover"))),
        ),
        ("invalid_data", "data.form.first_name", direct(&form_number)),
        ("unexpected_field", "data.referrer", direct(&data_extra)),
        (
            "invalid_timestamp",
            "timestamp",
            direct(&with("timestamp", json!("noon"))),
        ),
        (
            "future_timestamp",
            "timestamp",
            (
                with("timestamp", json!("2021-01-01 10:15:27"))
                    .to_string()
                    .into_bytes(),
                vec![("eye.received_at", received_at)],
            ),
        ),
        (
            "unknown_schema",
            "",
            ([&[0xC3, 0x01][..], &[7; 8], b"datum"].concat(), vec![]),
        ),
    ];
    let mut messages: Vec<RawMessage> = cases
        .iter()
        .map(|(_, _, message)| message.clone())
        .collect();
    // A valid event behind the garbage: the partition is not stalled.
    messages.push(direct(&reference("pageview")));
    setup.produce(&messages).await;

    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            cases.len() as u64,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            1,
            Duration::from_secs(30),
        )
        .await;
    let rows: Vec<Value> = setup
        .query("SELECT error_type, field_path, reason, hex(raw) AS raw_hex FROM {db}.event_errors FINAL FORMAT JSONEachRow")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_type: HashMap<&str, &Value> = rows
        .iter()
        .map(|row| (row["error_type"].as_str().unwrap(), row))
        .collect();
    for (error_type, field_path, _) in &cases {
        let row = by_type
            .get(error_type)
            .unwrap_or_else(|| panic!("no {error_type} row in {rows:#?}"));
        assert_eq!(row["field_path"], *field_path, "{error_type}");
        assert!(
            row["reason"].as_str().unwrap().contains(field_path),
            "{error_type}: {}",
            row["reason"]
        );
    }
    let garbage_hex: String = b"\x00\x01\x02 not json"
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    assert_eq!(
        by_type["malformed_json"]["raw_hex"],
        garbage_hex.as_str(),
        "raw bytes kept"
    );
    assert_eq!(
        setup.query("SELECT name FROM {db}.events FINAL"),
        "pageview"
    );
    processor.stop().await;
}

#[tokio::test]
async fn dead_letters_carry_the_original_bytes_key_headers_and_the_reason() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let mut missing_host = reference("pageview");
    missing_host["data"].as_object_mut().unwrap().remove("host");
    let bridge_id = Uuid::now_v7().to_string();
    setup
        .produce(&[
            (b"\x00garbage".to_vec(), vec![("trace", "abc".to_string())]),
            (
                missing_host.to_string().into_bytes(),
                vec![("eye.event_id", bridge_id.clone())],
            ),
            direct(&reference("cta_click")),
        ])
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            2,
            Duration::from_secs(60),
        )
        .await;

    let dead = read_topic(&setup.bootstrap, &format!("{}_dlq", setup.topic), 4, 2).await;
    assert_eq!(
        dead.len(),
        2,
        "one dead letter per failed event, none for the valid one"
    );
    let header = |message: &OwnedMessage, name: &str| -> Option<String> {
        message
            .headers()?
            .iter()
            .find(|header| header.key == name)
            .map(|header| String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned())
    };
    let garbage = dead
        .iter()
        .find(|message| message.payload() == Some(&b"\x00garbage"[..]))
        .expect("garbage, byte for byte");
    assert_eq!(
        header(garbage, "trace").as_deref(),
        Some("abc"),
        "original headers kept"
    );
    assert_eq!(
        header(garbage, "eye.error_type").as_deref(),
        Some("malformed_json")
    );
    assert_eq!(
        header(garbage, "eye.source_topic").as_deref(),
        Some(setup.topic.as_str())
    );
    assert_eq!(garbage.key(), Some(&b"key-0"[..]), "original key kept");
    let offset: i64 = header(garbage, "eye.source_offset")
        .unwrap()
        .parse()
        .unwrap();
    let partition: i32 = header(garbage, "eye.source_partition")
        .unwrap()
        .parse()
        .unwrap();
    let derived_id = header(garbage, "eye.event_id").expect("an event id even without the bridge");
    assert_eq!(
        setup.query(&format!("SELECT toString(event_id) FROM {{db}}.event_errors FINAL WHERE kafka_partition = {partition} AND kafka_offset = {offset}")),
        derived_id
    );

    let invalid = dead
        .iter()
        .find(|message| message.payload() == Some(missing_host.to_string().as_bytes()))
        .unwrap();
    assert_eq!(header(invalid, "eye.event_id"), Some(bridge_id));
    assert_eq!(
        header(invalid, "eye.error_type").as_deref(),
        Some("invalid_data")
    );
    assert_eq!(
        header(invalid, "eye.error_field").as_deref(),
        Some("data.host")
    );
    assert!(header(invalid, "eye.error_reason")
        .unwrap()
        .contains("data.host"));
    processor.stop().await;
}
