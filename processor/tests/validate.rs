//! Every failure reason, decided from the message alone, against the repository's schemas.

use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use eye_core::schemas::{EventEnvelope, SchemaRegistry};
use eye_processor::validate::{Envelope, ErrorType, FailedEvent, Transport, Validator};
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

mod common;
use common::avro_long;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn validator() -> Validator {
    let registry = SchemaRegistry::load(&repo("schemas/avro")).unwrap();
    Validator::new(registry, Duration::seconds(300))
}

fn envelope() -> Envelope {
    Envelope {
        event_id: Some(Uuid::now_v7()),
        derived_event_id: Uuid::new_v4(),
        received_at: "2021-01-01T09:20:00Z".parse().unwrap(),
        application: "shop".into(),
        fault: None,
    }
}

fn reference(name: &str) -> Value {
    let path = repo(&format!("../shared/examples/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn failure_of(bytes: &[u8]) -> FailedEvent {
    validator()
        .validate(bytes, &envelope())
        .expect_err("the event fails")
}

fn assert_fails(event: Value, error_type: ErrorType, path: &str) {
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
        assert_eq!(Value::Object(valid.data), event["data"]);
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
        assert_eq!(Value::Object(valid.data), reference(name)["data"]);
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
    assert_eq!(valid.data["form"]["email"], "a@example.com");
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

fn transport<'a>(
    timestamp_ms: Option<i64>,
    headers: &[(&'a str, Option<&'a [u8]>)],
) -> Transport<'a> {
    Transport {
        topic: "eye.events.raw",
        partition: 2,
        offset: 41,
        timestamp_ms,
        headers: headers
            .iter()
            .map(|&(key, value)| (key.into(), value))
            .collect(),
    }
}

const KAFKA_TIME_MS: i64 = 1_609_492_528_000;

/// The decision for the reference pageview under these transport facts.
fn decide(transport: &Transport<'_>) -> Result<eye_processor::validate::ValidEvent, FailedEvent> {
    let envelope = Envelope::of(transport, "direct");
    validator().validate(reference("pageview").to_string().as_bytes(), &envelope)
}

#[test]
fn received_at_headers_beyond_clickhouse_datetime_are_invalid_envelopes_never_wrapped() {
    for header in [
        &b"2106-02-07T06:28:16Z"[..],
        b"1969-12-31T23:59:59.999999Z",
        b"9999-12-31T23:59:59Z",
        b"0000-01-01T00:00:00Z",
        b"yesterday",
        b"",
        b"\xff\xfe2021-01-01T09:15:28Z",
    ] {
        let failed = decide(&transport(
            Some(KAFKA_TIME_MS),
            &[("eye.received_at", Some(header))],
        ))
        .unwrap_err();
        assert_eq!(
            failed.failure.error_type,
            ErrorType::InvalidEnvelope,
            "{header:?}"
        );
        assert_eq!(failed.failure.field_path, "eye.received_at");
        // Recorded at the Kafka timestamp, the one time the message has that can be stored.
        assert_eq!(failed.stamp.received_at.timestamp_millis(), KAFKA_TIME_MS);
    }
    let edge = decide(&transport(
        None,
        &[("eye.received_at", Some(b"2106-02-07T06:28:15.999999Z"))],
    ));
    assert!(edge.is_ok(), "the last second ClickHouse holds is a time");
}

#[test]
fn kafka_timestamps_beyond_clickhouse_datetime_are_invalid_envelopes() {
    for timestamp_ms in [-1, i64::MIN, i64::MAX, (i64::from(u32::MAX) + 1) * 1000] {
        let failed = decide(&transport(Some(timestamp_ms), &[])).unwrap_err();
        assert_eq!(
            failed.failure.error_type,
            ErrorType::InvalidEnvelope,
            "{timestamp_ms}"
        );
        assert_eq!(
            failed.stamp.received_at.timestamp(),
            0,
            "stored at 1970-01-01, not wrapped"
        );
    }
    assert!(decide(&transport(Some(KAFKA_TIME_MS), &[])).is_ok());
}

#[test]
fn application_headers_that_are_not_an_id_are_invalid_envelopes_under_the_default_application() {
    let long = "a".repeat(257);
    for header in [&b"\xc3\x28"[..], b"", long.as_bytes()] {
        let failed = decide(&transport(
            Some(KAFKA_TIME_MS),
            &[("eye.application", Some(header))],
        ))
        .unwrap_err();
        assert_eq!(failed.failure.error_type, ErrorType::InvalidEnvelope);
        assert_eq!(failed.failure.field_path, "eye.application");
        assert_eq!(failed.stamp.application, "direct");
    }
    let null_value = decide(&transport(
        Some(KAFKA_TIME_MS),
        &[("eye.application", None)],
    ));
    assert_eq!(
        null_value.unwrap_err().failure.error_type,
        ErrorType::InvalidEnvelope
    );
    let longest = "a".repeat(256);
    let valid = decide(&transport(
        Some(KAFKA_TIME_MS),
        &[("eye.application", Some(longest.as_bytes()))],
    ))
    .unwrap();
    assert_eq!(valid.stamp.application, longest);
}

#[test]
fn duplicate_headers_count_first_and_unreadable_event_ids_fall_back_to_the_derived_one() {
    let first = Uuid::from_u128(1).to_string();
    let second = Uuid::from_u128(2).to_string();
    let valid = decide(&transport(
        Some(KAFKA_TIME_MS),
        &[
            ("eye.event_id", Some(first.as_bytes())),
            ("eye.event_id", Some(second.as_bytes())),
            ("eye.application", Some(b"shop")),
            ("eye.application", Some(b"blog")),
        ],
    ))
    .unwrap();
    assert_eq!(valid.stamp.event_id.to_string(), first);
    assert_eq!(valid.stamp.application, "shop");
    let derived = decide(&transport(Some(KAFKA_TIME_MS), &[]))
        .unwrap()
        .stamp
        .event_id;
    for unreadable in [&b"\xff\xff"[..], b"not-a-uuid", b""] {
        let valid = decide(&transport(
            Some(KAFKA_TIME_MS),
            &[("eye.event_id", Some(unreadable))],
        ))
        .unwrap();
        assert_eq!(
            valid.stamp.event_id, derived,
            "same message, same derived id"
        );
    }
}

#[test]
fn empty_values_invalid_utf8_and_deep_nesting_are_malformed_json() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut invalid_utf8 = reference("pageview").to_string().into_bytes();
    let at = invalid_utf8.len() - 10;
    invalid_utf8[at] = 0xff;
    for bytes in [&b""[..], deep.as_bytes(), &invalid_utf8] {
        let failed = validator().validate(bytes, &envelope()).unwrap_err();
        assert_eq!(failed.failure.error_type, ErrorType::MalformedJson);
    }
    let mut nested = reference("pageview");
    let mut value = json!("leaf");
    for _ in 0..100 {
        value = json!({ "x": value });
    }
    nested["data"]["path"] = value;
    let failed = validator()
        .validate(nested.to_string().as_bytes(), &envelope())
        .unwrap_err();
    assert_eq!(failed.failure.error_type, ErrorType::InvalidData);
}

/// Header names the decision reads, and others.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("eye.received_at".to_string()),
        Just("eye.application".to_string()),
        Just("eye.event_id".to_string()),
        "[a-z._]{0,16}",
    ]
}

/// Header values: times in and out of range, ids, and arbitrary bytes.
fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(prop_oneof![
        (-10_000_000_000i64..10_000_000_000i64).prop_map(|seconds| {
            DateTime::from_timestamp(seconds, 0)
                .map(|at| at.to_rfc3339())
                .unwrap_or_default()
                .into_bytes()
        }),
        Just(Uuid::from_u128(42).to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ])
}

/// Message values: reference events with one field replaced, and arbitrary bytes.
fn message_value() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("session_id"),
        Just("timestamp"),
        Just("category"),
        Just("name"),
        Just("event_id"),
        Just("data"),
    ];
    let replacement = prop_oneof![
        any::<i64>().prop_map(|number| json!(number)),
        "\\PC{0,40}".prop_map(|text| json!(text)),
        Just(json!(null)),
        Just(json!({"host": "h", "path": 7})),
    ];
    prop_oneof![
        (0..3usize, field, replacement).prop_map(|(which, field, replacement)| {
            let mut event = reference(["pageview", "cta_click", "form_submit"][which]);
            event[field] = replacement;
            event.to_string().into_bytes()
        }),
        proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A replay is another processor reading the same log: it must decide every message exactly
    /// as the first did, whatever the message holds.
    #[test]
    fn a_replay_decides_every_message_the_same(
        value in message_value(),
        headers in proptest::collection::vec((header_name(), header_value()), 0..5),
        timestamp_ms in prop_oneof![Just(1_609_492_800_000i64), any::<i64>()],
        offset in 0..i64::MAX,
    ) {
        let transport = Transport {
            topic: "eye.events.raw",
            partition: 3,
            offset,
            timestamp_ms: Some(timestamp_ms),
            headers: headers
                .iter()
                .map(|(name, value)| (name.as_str().into(), value.as_deref()))
                .collect(),
        };
        let first = validator().validate(&value, &Envelope::of(&transport, "direct"));
        let replay = validator().validate(&value, &Envelope::of(&transport, "direct"));
        prop_assert_eq!(&first, &replay);
        let stamp = match &first {
            Ok(valid) => &valid.stamp,
            Err(failed) => &failed.stamp,
        };
        prop_assert!(eye_core::timestamp::in_datetime_range(stamp.received_at));
    }
}
