//! The schemas in `schemas/avro` parse, cover the reference event types, evolve compatibly, and
//! released versions are never edited in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apache_avro::schema_compatibility::SchemaCompatibility;
use eye_core::schemas::{SchemaRegistry, SINGLE_OBJECT_MARKER};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn reference_event_types_have_schemas() {
    let registry = SchemaRegistry::load(&schemas_dir()).unwrap();
    for (category, name) in [
        ("page interaction", "pageview"),
        ("page interaction", "cta click"),
        ("form interaction", "submit"),
    ] {
        let schema = registry
            .latest(category, name)
            .unwrap_or_else(|| panic!("{category}/{name}"));
        assert_eq!(schema.single_object_header[..2], SINGLE_OBJECT_MARKER);
        let found = registry
            .by_single_object_header(&schema.single_object_header)
            .unwrap();
        assert_eq!(
            (found.category.as_str(), found.name.as_str()),
            (category, name)
        );
    }
}

/// Checks that each version of every type can read data written with the version before it.
fn incompatible_steps(registry: &SchemaRegistry) -> Vec<String> {
    let mut problems = Vec::new();
    for versions in registry.types() {
        for pair in versions.windows(2) {
            let (older, newer) = (&pair[0], &pair[1]);
            if let Err(err) = SchemaCompatibility::can_read(&older.event, &newer.event) {
                problems.push(format!(
                    "{}/{} v{} cannot read v{} data: {err}",
                    newer.category, newer.name, newer.version, older.version
                ));
            }
        }
    }
    problems
}

#[test]
fn every_newer_version_reads_data_written_with_the_previous_one() {
    let registry = SchemaRegistry::load(&schemas_dir()).unwrap();
    assert_eq!(incompatible_steps(&registry), Vec::<String>::new());
}

#[test]
fn the_compatibility_check_catches_a_careless_new_version() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("events")).unwrap();
    std::fs::copy(
        schemas_dir().join("envelope.avsc"),
        dir.path().join("envelope.avsc"),
    )
    .unwrap();
    let version = |version: u32, fields: &str| {
        format!(
            r#"{{"type":"record","name":"Thing","namespace":"eye.data","eye.category":"c","eye.name":"n","eye.version":{version},"fields":[{fields}]}}"#
        )
    };
    let write = |file: &str, text: String| {
        std::fs::write(dir.path().join("events").join(file), text).unwrap()
    };
    write(
        "c.n.v1.avsc",
        version(1, r#"{"name":"host","type":"string"}"#),
    );
    // v2 adds an optional field with a default: compatible.
    write(
        "c.n.v2.avsc",
        version(
            2,
            r#"{"name":"host","type":"string"},{"name":"ref","type":["null","string"],"default":null}"#,
        ),
    );
    assert!(incompatible_steps(&SchemaRegistry::load(dir.path()).unwrap()).is_empty());
    // v3 adds a required field without a default: v1/v2 data cannot be read.
    write(
        "c.n.v3.avsc",
        version(
            3,
            r#"{"name":"host","type":"string"},{"name":"ref","type":["null","string"],"default":null},{"name":"size","type":"int"}"#,
        ),
    );
    let problems = incompatible_steps(&SchemaRegistry::load(dir.path()).unwrap());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("v3 cannot read v2"), "{problems:?}");
}

/// `schemas/avro/fingerprints.lock` pins every released schema: editing one in place (instead of
/// adding a version) changes its fingerprint and fails here.
#[test]
fn released_schemas_match_their_pinned_fingerprints() {
    let registry = SchemaRegistry::load(&schemas_dir()).unwrap();
    let actual: BTreeMap<String, String> = registry
        .types()
        .into_iter()
        .flatten()
        .map(|schema| {
            (
                file_name(&schema.file),
                hex(&schema.single_object_header[2..]),
            )
        })
        .collect();
    let lock =
        std::fs::read_to_string(schemas_dir().join("fingerprints.lock")).unwrap_or_else(|err| {
            panic!("reading fingerprints.lock ({err}); the current fingerprints are {actual:#?}")
        });
    let pinned: BTreeMap<String, String> = lock
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (file, fingerprint) = line.split_once(' ').unwrap();
            (file.to_string(), fingerprint.trim().to_string())
        })
        .collect();
    for (file, fingerprint) in &pinned {
        assert_eq!(
            actual.get(file),
            Some(fingerprint),
            "{file} changed after release: add a new version instead of editing it"
        );
    }
    for file in actual.keys() {
        assert!(
            pinned.contains_key(file),
            "{file} is not pinned in fingerprints.lock"
        );
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_record_the_topic_schema_refuses_leaves_the_next_message_intact() {
    use apache_avro::types::Value as Avro;
    use eye_core::schemas::TopicSchema;
    let schema = TopicSchema::load(&schemas_dir().join("topics/session.avsc")).unwrap();
    let refused = Avro::Record(vec![("application".into(), Avro::Long(1))]);
    assert!(schema.encode(&refused).is_err());
    let session = Avro::Record(vec![
        ("application".into(), Avro::String("shop".into())),
        ("session_id".into(), Avro::Uuid(uuid::Uuid::from_u128(5))),
        ("start_time".into(), Avro::TimestampMicros(1)),
        ("end_time".into(), Avro::TimestampMicros(2)),
        ("duration_us".into(), Avro::Long(1)),
        ("events".into(), Avro::Long(2)),
        ("events_by_category".into(), Avro::Map(Default::default())),
        ("events_by_type".into(), Avro::Map(Default::default())),
        ("entry_path".into(), Avro::Union(0, Box::new(Avro::Null))),
        (
            "exit_path".into(),
            Avro::Union(1, Box::new(Avro::String("/".into()))),
        ),
        ("distinct_pages".into(), Avro::Long(1)),
        ("form_submitted".into(), Avro::Boolean(false)),
        ("errors".into(), Avro::Long(0)),
        ("last_update".into(), Avro::TimestampMicros(3)),
    ]);
    for _ in 0..2 {
        let bytes = schema.encode(&session).unwrap();
        assert_eq!(bytes[..10], schema.single_object_header);
        let decoded = schema.decode(&bytes).unwrap();
        let Avro::Record(fields) = decoded else {
            panic!("not a record");
        };
        assert_eq!(
            fields[0],
            ("application".to_string(), Avro::String("shop".into()))
        );
        assert_eq!(
            fields[13],
            ("last_update".to_string(), Avro::TimestampMicros(3))
        );
    }
}
