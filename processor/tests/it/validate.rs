//! Every failure reason, decided from the message alone, against the repository's schemas.

use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use eye_core::schemas::{EventEnvelope, SchemaRegistry};
use eye_core::validate::{Envelope, ErrorType, FailedEvent, Validator};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::avro_long;

pub(crate) fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

pub(crate) fn validator() -> Validator {
    let registry = SchemaRegistry::load(&repo("schemas/avro")).unwrap();
    Validator::new(registry, Duration::seconds(300))
}

pub(crate) fn envelope() -> Envelope {
    Envelope {
        event_id: Some(Uuid::now_v7()),
        derived_event_id: Uuid::new_v4(),
        received_at: "2021-01-01T09:20:00Z".parse().unwrap(),
        application: "shop".into(),
        fault: None,
    }
}

pub(crate) fn reference(name: &str) -> Value {
    let path = repo(&format!("examples/events/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub(crate) fn failure_of(bytes: &[u8]) -> FailedEvent {
    validator()
        .validate(bytes, &envelope())
        .expect_err("the event fails")
}

pub(crate) fn assert_fails(event: Value, error_type: ErrorType, path: &str) {
    let failed = failure_of(event.to_string().as_bytes());
    assert_eq!(
        failed.failure.error_type, error_type,
        "{event} → {:?}",
        failed.failure
    );
    assert_eq!(failed.failure.field_path, path, "{:?}", failed.failure);
    if !path.is_empty() {
        assert!(
            failed.failure.reason.contains(path),
            "reason names {path}: {}",
            failed.failure.reason
        );
    }
}

#[test]
fn reference_events_are_valid_with_their_exact_payload_and_time() {
    for name in ["pageview", "cta_click", "form_submit"] {
        let event = reference(name);
        let valid = validator()
            .validate(event.to_string().as_bytes(), &envelope())
            .unwrap_or_else(|failed| panic!("{name}: {:?}", failed.failure));
        assert_eq!(
            serde_json::from_str::<Value>(&valid.data).unwrap(),
            event["data"]
        );
        assert_eq!(
            valid.timestamp,
            "2021-01-01T09:15:27.243860Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
        );
        assert_eq!(valid.session_id.to_string(), event["session_id"]);
        assert_eq!(valid.schema_version, 1);
    }
}

#[test]
fn offset_timestamps_are_converted_to_utc() {
    let mut event = reference("pageview");
    event["timestamp"] = json!("2021-01-01T11:15:27.243860+02:00");
    let valid = validator()
        .validate(event.to_string().as_bytes(), &envelope())
        .unwrap();
    assert_eq!(
        valid.timestamp.to_rfc3339(),
        "2021-01-01T09:15:27.243860+00:00"
    );
}

#[test]
fn future_is_judged_against_received_at_not_processing_time() {
    let mut event = reference("pageview");
    let received_at: DateTime<Utc> = "2021-01-01T09:15:28.243860Z".parse().unwrap();
    let envelope = Envelope {
        received_at,
        ..envelope()
    };
    // Stamped 1 s before it was received, processed years later: valid.
    assert!(validator()
        .validate(event.to_string().as_bytes(), &envelope)
        .is_ok());
    event["timestamp"] = json!("2021-01-01 09:30:00");
    let failed = validator()
        .validate(event.to_string().as_bytes(), &envelope)
        .unwrap_err();
    assert_eq!(failed.failure.error_type, ErrorType::FutureTimestamp);
}

#[test]
fn malformed_json_keeps_the_identity_from_the_headers() {
    let envelope = envelope();
    for bytes in [&b"\x00\xffgarbage"[..], b"[1,2]", b"\"text\""] {
        let failed = validator().validate(bytes, &envelope).unwrap_err();
        assert_eq!(failed.failure.error_type, ErrorType::MalformedJson);
        assert_eq!(Some(failed.stamp.event_id), envelope.event_id);
    }
}

#[test]
fn each_failure_reason_names_its_field() {
    let base = reference("form_submit");
    let with = |key: &str, value: Value| {
        let mut event = base.clone();
        event[key] = value;
        event
    };
    let without = |key: &str| {
        let mut event = base.clone();
        event.as_object_mut().unwrap().remove(key);
        event
    };
    assert_fails(without("session_id"), ErrorType::MissingField, "session_id");
    assert_fails(without("data"), ErrorType::MissingField, "data");
    assert_fails(
        with("category", json!(7)),
        ErrorType::InvalidType,
        "category",
    );
    assert_fails(with("data", json!("x")), ErrorType::InvalidType, "data");
    assert_fails(
        with("session_id", json!("not-a-uuid")),
        ErrorType::InvalidSessionId,
        "session_id",
    );
    assert_fails(
        with("timestamp", json!("01/01/2021")),
        ErrorType::InvalidTimestamp,
        "timestamp",
    );
    assert_fails(
        with("name", json!("doubleclick")),
        ErrorType::UnknownEventType,
        "",
    );
    assert_fails(
        with("colour", json!("red")),
        ErrorType::UnexpectedField,
        "colour",
    );

    let mut data_extra = base.clone();
    data_extra["data"]["referrer"] = json!("/home");
    assert_fails(data_extra, ErrorType::UnexpectedField, "data.referrer");
    let mut form_number = base.clone();
    form_number["data"]["form"]["first_name"] = json!(42);
    assert_fails(form_number, ErrorType::InvalidData, "data.form.first_name");
    let mut missing_host = base.clone();
    missing_host["data"].as_object_mut().unwrap().remove("host");
    assert_fails(missing_host, ErrorType::InvalidData, "data.host");
}

#[test]
fn precedence_reports_the_first_problem_only() {
    // Missing name and a bad session id: missing_field wins.
    let mut event = reference("pageview");
    event.as_object_mut().unwrap().remove("name");
    event["session_id"] = json!("nope");
    assert_fails(event, ErrorType::MissingField, "name");
}

#[test]
fn client_event_id_is_used_when_no_header_carries_one() {
    let client_id = Uuid::new_v4();
    let mut event = reference("pageview");
    event["event_id"] = json!(client_id.to_string());
    let direct = Envelope {
        event_id: None,
        ..envelope()
    };
    let valid = validator()
        .validate(event.to_string().as_bytes(), &direct)
        .unwrap();
    assert_eq!(valid.stamp.event_id, client_id);
    event.as_object_mut().unwrap().remove("event_id");
    let valid = validator()
        .validate(event.to_string().as_bytes(), &direct)
        .unwrap();
    assert_eq!(valid.stamp.event_id, direct.derived_event_id);
}

fn avro_bytes(name: &str) -> (Vec<u8>, Uuid) {
    let event = reference(name);
    let registry = SchemaRegistry::load(&repo("schemas/avro")).unwrap();
    let schema = registry
        .latest(
            event["category"].as_str().unwrap(),
            event["name"].as_str().unwrap(),
        )
        .unwrap();
    let event_id = Uuid::new_v4();
    let envelope = EventEnvelope {
        event_id,
        application: "billing".into(),
        session_id: Uuid::parse_str(event["session_id"].as_str().unwrap()).unwrap(),
        timestamp: "2021-01-01T09:15:27.243860Z".parse().unwrap(),
        received_at: "2021-01-01T09:15:28Z".parse().unwrap(),
    };
    (
        schema
            .encode_single_object(&envelope, &event["data"])
            .unwrap(),
        event_id,
    )
}

#[test]
fn avro_single_object_events_decode_to_the_same_event() {
    for name in ["pageview", "cta_click", "form_submit"] {
        let (bytes, event_id) = avro_bytes(name);
        let valid = validator()
            .validate(&bytes, &envelope())
            .unwrap_or_else(|failed| panic!("{name}: {:?}", failed.failure));
        assert_eq!(
            serde_json::from_str::<Value>(&valid.data).unwrap(),
            reference(name)["data"]
        );
        assert_eq!(valid.stamp.event_id, event_id);
        assert_eq!(valid.stamp.application, "billing");
        assert_eq!(
            valid.timestamp.to_rfc3339(),
            "2021-01-01T09:15:27.243860+00:00"
        );
    }
}

#[test]
fn avro_with_an_unknown_fingerprint_or_a_broken_datum_fails() {
    let (mut bytes, _) = avro_bytes("pageview");
    bytes[5] ^= 0xff;
    assert_eq!(
        failure_of(&bytes).failure.error_type,
        ErrorType::UnknownSchema
    );
    let (bytes, _) = avro_bytes("pageview");
    assert_eq!(
        failure_of(&bytes[..bytes.len() - 3]).failure.error_type,
        ErrorType::InvalidAvro
    );
    let mut trailing = avro_bytes("pageview").0;
    trailing.push(0);
    assert_eq!(
        failure_of(&trailing).failure.error_type,
        ErrorType::InvalidAvro
    );
}

fn avro_string(text: &str) -> Vec<u8> {
    let mut bytes = avro_long(text.len() as i64);
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// A form_submit single object written field by field: the envelope, then `data` from `tail`
/// (host, path, form map), so a test can declare any length it likes.
fn hand_written_form_submit(timestamp_us: i64, tail: &[u8]) -> Vec<u8> {
    let (reference_bytes, _) = avro_bytes("form_submit");
    let mut bytes = reference_bytes[..10].to_vec();
    for text in [
        &Uuid::from_u128(7).to_string(),
        "billing",
        &Uuid::from_u128(8).to_string(),
        "form interaction",
        "submit",
    ] {
        bytes.extend(avro_string(text));
    }
    bytes.extend(avro_long(timestamp_us));
    bytes.extend(avro_long(1_609_492_528_000_000));
    bytes.extend_from_slice(tail);
    bytes
}

#[test]
fn a_hand_written_avro_event_is_valid() {
    let mut tail = avro_string("example.com");
    tail.extend(avro_string("/signup"));
    tail.extend(avro_long(1));
    tail.extend(avro_string("email"));
    tail.extend(avro_string("a@example.com"));
    tail.extend(avro_long(0));
    let valid = validator()
        .validate(
            &hand_written_form_submit(1_609_492_527_000_000, &tail),
            &envelope(),
        )
        .unwrap_or_else(|failed| panic!("{:?}", failed.failure));
    let data: Value = serde_json::from_str(&valid.data).unwrap();
    assert_eq!(data["form"]["email"], "a@example.com");
}

#[test]
fn avro_lengths_far_beyond_the_message_fail_without_allocating_them() {
    let huge_string = avro_long(400_000_000);
    let mut huge_map = avro_string("example.com");
    huge_map.extend(avro_string("/signup"));
    huge_map.extend(avro_long(400_000_000));
    let mut negative_map = avro_string("example.com");
    negative_map.extend(avro_string("/signup"));
    // A negative block count is followed by the block's size in bytes.
    negative_map.extend(avro_long(-400_000_000));
    negative_map.extend(avro_long(i64::MAX));
    for tail in [huge_string, huge_map, negative_map, avro_long(i64::MAX)] {
        let failed = validator()
            .validate(
                &hand_written_form_submit(1_609_492_527_000_000, &tail),
                &envelope(),
            )
            .unwrap_err();
        assert_eq!(
            failed.failure.error_type,
            ErrorType::InvalidAvro,
            "{:?}",
            failed.failure
        );
    }
}

#[test]
fn avro_timestamps_beyond_clickhouse_datetime_fail_and_its_edges_pass() {
    let mut tail = avro_string("example.com");
    tail.extend(avro_string("/signup"));
    tail.extend(avro_long(0));
    let last = i64::from(u32::MAX) * 1_000_000 + 999_999;
    let validator = validator();
    let late_envelope = Envelope {
        received_at: DateTime::from_timestamp_micros(last).unwrap(),
        ..envelope()
    };
    // The datum's own received_at (2021) judges "future": only times up to it pass.
    assert!(validator
        .validate(&hand_written_form_submit(0, &tail), &late_envelope)
        .is_ok());
    for timestamp_us in [-1, last + 1, i64::MAX, i64::MIN] {
        let failed = validator
            .validate(
                &hand_written_form_submit(timestamp_us, &tail),
                &late_envelope,
            )
            .unwrap_err();
        assert_eq!(
            failed.failure.error_type,
            ErrorType::InvalidAvro,
            "{timestamp_us}"
        );
        assert_eq!(failed.failure.field_path, "timestamp");
    }
}
