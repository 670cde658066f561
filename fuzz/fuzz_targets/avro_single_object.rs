//! Avro single-object decoding: the first byte picks an event type, the rest is its datum. Any
//! datum gives a valid event or a typed failure, with no panic and no allocation of the lengths
//! it declares (apache-avro's bound is set by the validator).
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use eye_core::schemas::SchemaRegistry;
use eye_core::validate::{Envelope, Transport, Validator};
use libfuzzer_sys::fuzz_target;

static SCHEMAS: LazyLock<(Validator, Vec<[u8; 10]>)> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro");
    let registry = SchemaRegistry::load(&dir).unwrap();
    let headers = registry
        .types()
        .iter()
        .flat_map(|versions| versions.iter().map(|schema| schema.single_object_header))
        .collect();
    (
        Validator::new(registry, chrono::Duration::seconds(300)),
        headers,
    )
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datum)) = data.split_first() else {
        return;
    };
    let (validator, headers) = &*SCHEMAS;
    let mut message = headers[usize::from(selector) % headers.len()].to_vec();
    message.extend_from_slice(datum);
    let transport = Transport {
        topic: "eye.events.raw",
        timestamp_ms: Some(1_609_492_800_000),
        ..Transport::default()
    };
    let envelope = Envelope::of(&transport, "direct");
    if let Ok(valid) = validator.validate(&message, &envelope) {
        assert!(eye_core::timestamp::in_datetime_range(valid.timestamp));
        assert!(eye_core::timestamp::in_datetime_range(
            valid.stamp.received_at
        ));
    }
});
