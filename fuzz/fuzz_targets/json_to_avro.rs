//! JSON → Avro conversion against every event type's data schema: any JSON converts or fails
//! with a typed mismatch naming a path under `data`, never a panic.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use eye_core::convert::json_to_avro;
use eye_core::schemas::SchemaRegistry;
use libfuzzer_sys::fuzz_target;

static REGISTRY: LazyLock<SchemaRegistry> = LazyLock::new(|| {
    SchemaRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro")).unwrap()
});

fuzz_target!(|bytes: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    for versions in REGISTRY.types() {
        for schema in versions {
            let mut path = String::from("data");
            match json_to_avro(&json, &schema.data, &mut path) {
                Ok(avro) => assert!(avro.resolve(&schema.data).is_ok()),
                Err(error) => assert!(error.path.starts_with("data"), "{}", error.path),
            }
        }
    }
});
