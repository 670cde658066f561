//! The envelope a message's transport gives its event (headers, Kafka timestamp) at and beyond
//! their edges, and a replay deciding every message the same.

use chrono::DateTime;
use eye_core::validate::{Envelope, ErrorType, FailedEvent, Transport};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use crate::validate::{envelope, reference, validator};

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
fn decide(transport: &Transport<'_>) -> Result<eye_core::validate::ValidEvent, FailedEvent> {
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
