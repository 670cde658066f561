//! The processor's whole decision for one raw-topic message: headers, Kafka timestamp and value
//! → a valid event or one typed failure. Never a panic; the same message decides the same (a
//! replay); nothing stored is outside what ClickHouse's types hold.
//!
//! Input: lines starting with `#` are headers (`#name=value`, `#name` for a header without a
//! value; `#@ts=N` sets the Kafka timestamp in ms, default 2021-01-01 09:20 UTC); the rest is the
//! message value. So the corpus stays readable: a reference event is an input as it is.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use eye_core::schemas::SchemaRegistry;
use eye_core::timestamp::in_datetime_range;
use eye_core::validate::{Envelope, Transport, Validator, MAX_APPLICATION_BYTES};
use libfuzzer_sys::fuzz_target;

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro");
    Validator::new(
        SchemaRegistry::load(&dir).unwrap(),
        chrono::Duration::seconds(300),
    )
});

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut headers = Vec::new();
    let mut timestamp_ms = Some(1_609_492_800_000);
    while let Some(line) = rest.strip_prefix(b"#") {
        let end = line
            .iter()
            .position(|&byte| byte == b'\n')
            .unwrap_or(line.len());
        rest = line.get(end + 1..).unwrap_or_default();
        let line = &line[..end];
        if let Some(number) = line.strip_prefix(b"@ts=") {
            timestamp_ms = std::str::from_utf8(number)
                .ok()
                .and_then(|text| text.parse().ok());
            continue;
        }
        let (name, value) = match line.iter().position(|&byte| byte == b'=') {
            Some(at) => (&line[..at], Some(&line[at + 1..])),
            None => (line, None),
        };
        headers.push((String::from_utf8_lossy(name), value));
    }
    // Without any time the processor judges by the clock; that is not a replayable input.
    if timestamp_ms.is_none() {
        return;
    }
    let transport = Transport {
        topic: "eye.events.raw",
        partition: 1,
        offset: 7,
        timestamp_ms,
        headers,
    };
    let decide = || VALIDATOR.validate(rest, &Envelope::of(&transport, "direct"));
    let decision = decide();
    assert_eq!(decision, decide(), "the same message decides the same");
    match decision {
        Ok(valid) => {
            assert!(in_datetime_range(valid.timestamp));
            assert!(in_datetime_range(valid.stamp.received_at));
            assert!(!valid.stamp.application.is_empty());
            assert!(valid.stamp.application.len() <= MAX_APPLICATION_BYTES);
        }
        Err(failed) => {
            assert!(in_datetime_range(failed.stamp.received_at));
            assert!(failed.stamp.application.len() <= MAX_APPLICATION_BYTES);
        }
    }
});
