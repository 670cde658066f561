//! The one-pass JSON validator decides every message exactly as the validator it replaced:
//! `serde_json::Value`, then `json_to_avro` and Avro resolution (kept here, frozen, as the
//! oracle). Generated events — valid and broken at every level, keys repeated and reordered,
//! strings escaped, numbers in every form, bytes cut or changed — must give equal verdicts:
//! the same row, or the same failure with the same reason.

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use eye_core::convert::{json_kind, json_to_avro};
use eye_core::raw::Stamp;
use eye_core::schemas::SchemaRegistry;
use eye_core::timestamp::parse_event_time;
use eye_core::validate::{Envelope, ErrorType, FailedEvent, Failure, ValidEvent, Validator};
use proptest::prelude::*;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::validate::repo;

/// Every kind of schema node a JSON event can meet, and one it cannot (a named reference).
const EVERY_KIND: &str = r#"{
  "type": "record", "name": "EveryKind", "namespace": "eye.test",
  "eye.category": "test", "eye.name": "every kind", "eye.version": 3,
  "fields": [
    {"name": "host", "type": "string"},
    {"name": "count", "type": "int"},
    {"name": "total", "type": "long"},
    {"name": "ratio", "type": "float"},
    {"name": "score", "type": "double"},
    {"name": "flag", "type": "boolean"},
    {"name": "nothing", "type": "null"},
    {"name": "blob", "type": "bytes"},
    {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["red", "green"]}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "counts", "type": {"type": "map", "values": "long"}},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
      {"name": "a", "type": "int"},
      {"name": "b", "type": ["null", "string"], "default": null}
    ]}},
    {"name": "either", "type": ["int", "string", {"type": "array", "items": "int"}]},
    {"name": "maybe", "type": ["null", "Inner"], "default": null},
    {"name": "level", "type": "int", "default": 3}
  ]
}"#;

/// A type no JSON event fits: `fixed` is not supported, and its default cannot stand in.
const UNSUPPORTED: &str = r#"{
  "type": "record", "name": "Unsupported", "namespace": "eye.test",
  "eye.category": "test", "eye.name": "unsupported", "eye.version": 1,
  "fields": [
    {"name": "host", "type": "string"},
    {"name": "fixed", "type": {"type": "fixed", "name": "Four", "size": 4}, "default": "abcd"}
  ]
}"#;

/// Arrays nested as deep as a schema file can nest them (serde_json reads it, and refuses
/// nesting at 128 levels): data of this type reaches 126 levels into its message.
const DEEPEST_ARRAYS: usize = 124;

fn deep_schema() -> String {
    let mut items = "\"int\"".to_string();
    for _ in 0..DEEPEST_ARRAYS {
        items = format!(r#"{{"type": "array", "items": {items}}}"#);
    }
    format!(
        r#"{{"type": "record", "name": "Deep", "namespace": "eye.test",
        "eye.category": "test", "eye.name": "deep", "eye.version": 1,
        "fields": [{{"name": "deep", "type": {items}}}]}}"#
    )
}

fn registry() -> SchemaRegistry {
    let dir = tempfile::tempdir().unwrap();
    let schemas = repo("schemas/avro");
    std::fs::copy(
        schemas.join("envelope.avsc"),
        dir.path().join("envelope.avsc"),
    )
    .unwrap();
    let events = dir.path().join("events");
    std::fs::create_dir(&events).unwrap();
    for entry in std::fs::read_dir(schemas.join("events")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, events.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(events.join("test.every_kind.v3.avsc"), EVERY_KIND).unwrap();
    std::fs::write(events.join("test.unsupported.v1.avsc"), UNSUPPORTED).unwrap();
    std::fs::write(events.join("test.deep.v1.avsc"), deep_schema()).unwrap();
    SchemaRegistry::load(dir.path()).unwrap()
}

static VALIDATORS: LazyLock<(Validator, Oracle)> = LazyLock::new(|| {
    let tolerance = Duration::seconds(300);
    (
        Validator::new(registry(), tolerance),
        Oracle {
            registry: registry(),
            future_tolerance: tolerance,
        },
    )
});

fn envelope(header_id: bool) -> Envelope {
    Envelope {
        event_id: header_id.then(|| Uuid::from_u128(0x11)),
        derived_event_id: Uuid::from_u128(0x22),
        received_at: "2021-01-01T09:20:00Z".parse().unwrap(),
        application: "shop".into(),
        fault: None,
    }
}

fn assert_same_verdict(validator: &Validator, oracle: &Oracle, bytes: &[u8], header_id: bool) {
    let envelope = envelope(header_id);
    assert_eq!(
        validator.validate(bytes, &envelope),
        oracle.validate(bytes, &envelope),
        "message: {}",
        String::from_utf8_lossy(bytes)
    );
}

// ---- generated messages -------------------------------------------------------------------

/// JSON as text, with what `serde_json::Value` cannot hold: repeated keys, escapes, number forms.
#[derive(Debug, Clone)]
enum Doc {
    Null,
    Bool(bool),
    Number(String),
    Str { text: String, escape_all: bool },
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl Doc {
    fn str(text: impl Into<String>) -> Doc {
        Doc::Str {
            text: text.into(),
            escape_all: false,
        }
    }

    fn render(&self, spaced: bool, out: &mut String) {
        let gap = if spaced { " " } else { "" };
        match self {
            Doc::Null => out.push_str("null"),
            Doc::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
            Doc::Number(text) => out.push_str(text),
            Doc::Str { text, escape_all } => render_string(text, *escape_all, out),
            Doc::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                        out.push_str(gap);
                    }
                    item.render(spaced, out);
                }
                out.push(']');
            }
            Doc::Object(entries) => {
                out.push('{');
                out.push_str(gap);
                for (index, (key, value)) in entries.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                        out.push_str(gap);
                    }
                    render_string(key, spaced && key.len() % 2 == 0, out);
                    out.push(':');
                    out.push_str(gap);
                    value.render(spaced, out);
                }
                out.push_str(gap);
                out.push('}');
            }
        }
    }
}

fn render_string(text: &str, escape_all: bool, out: &mut String) {
    if !escape_all {
        out.push_str(&serde_json::to_string(text).unwrap());
        return;
    }
    out.push('"');
    for unit in text.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "7",
    "-7",
    "2147483647",
    "2147483648",
    "-2147483649",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "1.0",
    "1.5e3",
    "-2.5E-3",
    "1e400",
    "0.1",
    "1e-400",
    "123456789012345678901234567890",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,6}",
        any::<String>(),
        "[a-z\"\\\\/\u{0}-\u{1f}\u{7f}é€😀]{0,6}",
        Just("page interaction".to_string()),
        Just("pageview".to_string()),
        Just(Uuid::from_u128(0xabc).to_string()),
    ]
}

fn string_doc() -> impl Strategy<Value = Doc> {
    (text(), prop::bool::weighted(0.2)).prop_map(|(text, escape_all)| Doc::Str { text, escape_all })
}

fn scalar() -> impl Strategy<Value = Doc> {
    prop_oneof![
        Just(Doc::Null),
        any::<bool>().prop_map(Doc::Bool),
        prop::sample::select(NUMBERS).prop_map(|text| Doc::Number(text.to_string())),
        any::<i64>().prop_map(|number| Doc::Number(number.to_string())),
        any::<f64>()
            .prop_filter("finite", |number| number.is_finite())
            .prop_map(|number| Doc::Number(format!("{number:e}"))),
        string_doc(),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&[
            "host", "path", "form", "element", "a", "b", "count", "tags", "inner", "x"
        ][..]).prop_map(str::to_string),
        1 => text(),
    ]
}

/// Any JSON, a few levels deep.
fn any_doc() -> BoxedStrategy<Doc> {
    scalar()
        .prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Doc::Array),
                prop::collection::vec((key(), inner), 0..4).prop_map(Doc::Object),
            ]
        })
        .boxed()
}

/// JSON that fits `schema` at most levels, and anything at some.
fn fitting(schema: &apache_avro::Schema) -> BoxedStrategy<Doc> {
    use apache_avro::Schema;
    let fits = match schema {
        Schema::Null => Just(Doc::Null).boxed(),
        Schema::Boolean => any::<bool>().prop_map(Doc::Bool).boxed(),
        Schema::Int | Schema::Long | Schema::Float | Schema::Double => prop_oneof![
            6 => (-100i64..100).prop_map(|number| Doc::Number(number.to_string())),
            1 => prop::sample::select(NUMBERS).prop_map(|text| Doc::Number(text.to_string())),
        ]
        .boxed(),
        Schema::String | Schema::Bytes => string_doc().boxed(),
        Schema::Uuid => prop_oneof![
            8 => any::<u128>().prop_map(|id| Doc::str(Uuid::from_u128(id).to_string())),
            1 => any::<u128>().prop_map(|id| Doc::str(Uuid::from_u128(id).simple().to_string())),
            1 => Just(Doc::str("not-a-uuid")),
        ]
        .boxed(),
        Schema::Enum(schema) => prop_oneof![
            8 => prop::sample::select(schema.symbols.clone()).prop_map(Doc::str),
            1 => Just(Doc::str("blue")),
        ]
        .boxed(),
        Schema::Array(array) => prop::collection::vec(fitting(&array.items), 0..4)
            .prop_map(Doc::Array)
            .boxed(),
        Schema::Map(map) => prop::collection::vec((key(), fitting(&map.types)), 0..4)
            .prop_map(Doc::Object)
            .boxed(),
        Schema::Record(record) => {
            let fields: Vec<BoxedStrategy<Option<(String, Doc)>>> = record
                .fields
                .iter()
                .map(|field| {
                    let name = field.name.clone();
                    prop::option::weighted(0.97, fitting(&field.schema))
                        .prop_map(move |value| value.map(|value| (name.clone(), value)))
                        .boxed()
                })
                .collect();
            (
                fields,
                prop::collection::vec((key(), any_doc()), 0..2),
                prop::bool::weighted(0.1),
                any::<prop::sample::Index>(),
            )
                .prop_map(|(fields, extra, with_extra, at)| {
                    let mut entries: Vec<(String, Doc)> = fields.into_iter().flatten().collect();
                    if with_extra {
                        entries.extend(extra);
                    }
                    if !entries.is_empty() {
                        // Rotate, so members are not always in schema order.
                        let by = at.index(entries.len());
                        entries.rotate_left(by);
                    }
                    Doc::Object(entries)
                })
                .boxed()
        }
        Schema::Union(union) => {
            let variants: Vec<BoxedStrategy<Doc>> = union.variants().iter().map(fitting).collect();
            prop::sample::select((0..variants.len()).collect::<Vec<_>>())
                .prop_flat_map(move |index| variants[index].clone())
                .boxed()
        }
        _ => any_doc(),
    };
    prop_oneof![60 => fits, 1 => any_doc()].boxed()
}

fn timestamp() -> impl Strategy<Value = Doc> {
    prop_oneof![
        10 => Just(Doc::str("2021-01-01 09:15:27.243860")),
        10 => Just(Doc::str("2021-01-01T11:15:27.24386+02:00")),
        10 => Just(Doc::str("2021-01-01T09:24:59Z")),
        1 => Just(Doc::str("2021-01-01T09:25:01Z")),
        1 => Just(Doc::str("2107-01-01 00:00:00")),
        1 => Just(Doc::str("yesterday at noon")),
    ]
}

/// An event of one of the registry's types (or of none), as text; maybe cut or changed.
fn message(registry: &SchemaRegistry) -> impl Strategy<Value = (Vec<u8>, bool)> {
    let types: Vec<(String, String, apache_avro::Schema)> = registry
        .types()
        .into_iter()
        .map(|versions| {
            let latest = versions.last().unwrap();
            (
                latest.category.clone(),
                latest.name.clone(),
                latest.data.clone(),
            )
        })
        .filter(|(_, name, _)| name != "deep")
        .collect();
    prop::sample::select(types)
        .prop_flat_map(|(category, name, schema)| {
            let fields = (
                prop::option::weighted(0.5, prop_oneof![
                    30 => any::<u128>().prop_map(|id| Doc::str(Uuid::from_u128(id).to_string())),
                    1 => Just(Doc::Null),
                    1 => Just(Doc::str("nope")),
                    1 => any_doc(),
                ]),
                prop_oneof![
                    40 => any::<u128>().prop_map(|id| Doc::str(Uuid::from_u128(id).to_string())),
                    1 => Just(Doc::str("not-a-session")),
                    1 => any_doc(),
                ],
                prop_oneof![40 => Just(Doc::str(category)), 1 => any_doc()],
                prop_oneof![40 => Just(Doc::str(name)), 1 => Just(Doc::str("hover")), 1 => any_doc()],
                prop_oneof![40 => timestamp(), 1 => any_doc()],
                prop_oneof![40 => fitting(&schema), 1 => any_doc()],
            );
            (
                fields,
                prop::collection::vec(prop::bool::weighted(0.99), 6),
                prop::collection::vec((key(), any_doc()), 0..2),
                prop::bool::weighted(0.05),
                any::<prop::sample::Index>(),
                any::<bool>(),
            )
        })
        .prop_map(|(fields, present, extra, with_extra, at, spaced)| {
            let (event_id, session_id, category, name, timestamp, data) = fields;
            let mut entries: Vec<(String, Doc)> = Vec::new();
            if let Some(event_id) = event_id {
                entries.push(("event_id".into(), event_id));
            }
            for (index, (key, value)) in [
                ("session_id", session_id),
                ("category", category),
                ("name", name),
                ("timestamp", timestamp),
                ("data", data),
            ]
            .into_iter()
            .enumerate()
            {
                if present[index] {
                    entries.push((key.into(), value));
                }
            }
            if with_extra {
                entries.extend(extra);
            }
            if !entries.is_empty() {
                let by = at.index(entries.len());
                entries.rotate_left(by);
            }
            let mut text = String::new();
            Doc::Object(entries).render(spaced, &mut text);
            text
        })
        .prop_flat_map(|text| {
            let length = text.len();
            (
                Just(text),
                prop_oneof![
                    40 => Just(Damage::None),
                    1 => (0..=length).prop_map(Damage::Cut),
                    1 => ((0..=length), any::<u8>()).prop_map(|(at, byte)| Damage::Insert(at, byte)),
                    1 => (0..length.max(1)).prop_map(Damage::Remove),
                    1 => any::<prop::sample::Index>().prop_map(Damage::RepeatKey),
                ],
                any::<bool>(),
            )
        })
        .prop_map(|(text, damage, header_id)| (damage.apply(text), header_id))
}

#[derive(Debug, Clone)]
enum Damage {
    None,
    Cut(usize),
    Insert(usize, u8),
    Remove(usize),
    /// The top-level object's first member again, with another value, at the end.
    RepeatKey(prop::sample::Index),
}

impl Damage {
    fn apply(self, text: String) -> Vec<u8> {
        let mut bytes = text.into_bytes();
        match self {
            Damage::None => {}
            Damage::Cut(at) => bytes.truncate(at),
            Damage::Insert(at, byte) => bytes.insert(at.min(bytes.len()), byte),
            Damage::Remove(at) => {
                if at < bytes.len() {
                    bytes.remove(at);
                }
            }
            Damage::RepeatKey(index) => {
                let Ok(Json::Object(object)) = serde_json::from_slice::<Json>(&bytes) else {
                    return bytes;
                };
                let keys: Vec<&String> = object.keys().collect();
                if keys.is_empty() {
                    return bytes;
                }
                let key = keys[index.index(keys.len())];
                let value = ["null", "1e999", "\"x\"", "{}"][index.index(4)];
                bytes.pop();
                bytes.extend(format!(",{}:{value}}}", serde_json::to_string(key).unwrap()).bytes());
            }
        }
        bytes
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6000))]

    #[test]
    fn generated_events_get_the_verdict_of_the_value_tree_validator(
        (bytes, header_id) in message(&registry())
    ) {
        let (validator, oracle) = &*VALIDATORS;
        assert_same_verdict(validator, oracle, &bytes, header_id);
    }
}

#[test]
fn repeated_keys_keep_their_last_value_at_every_level() {
    let (validator, oracle) = &*VALIDATORS;
    let session = Uuid::from_u128(5);
    let cases = [
        // The earlier value is not read as JSON but still has to be JSON.
        format!(
            r#"{{"session_id":1e999,"session_id":"{session}","category":"page interaction","name":"pageview","timestamp":"2021-01-01 09:15:27","data":{{"host":"h","path":"/"}}}}"#
        ),
        format!(
            r#"{{"session_id":"{session}","category":"page interaction","name":"pageview","timestamp":"2021-01-01 09:15:27","data":{{"host":7,"path":"/","host":"h"}}}}"#
        ),
        format!(
            r#"{{"session_id":"{session}","category":"page interaction","name":"pageview","timestamp":"2021-01-01 09:15:27","data":{{"host":"h","path":"/"}},"data":{{"host":"h2","path":"/2"}}}}"#
        ),
        format!(
            r#"{{"session_id":"{session}","category":"form interaction","name":"submit","timestamp":"2021-01-01 09:15:27","data":{{"host":"h","path":"/","form":{{"b":"1","a":"2","b":"3"}}}}}}"#
        ),
        format!(
            r#"{{"session_id":"{session}","category":"form interaction","name":"submit","timestamp":"2021-01-01 09:15:27","data":{{"host":"h","path":"/","form":{{"b":1,"b":"3"}}}}}}"#
        ),
    ];
    for case in cases {
        assert_same_verdict(validator, oracle, case.as_bytes(), false);
    }
}

#[test]
fn nesting_at_serde_jsons_limit_is_decided_as_the_value_tree_decides() {
    let (validator, oracle) = &*VALIDATORS;
    for depth in [
        1,
        DEEPEST_ARRAYS - 1,
        DEEPEST_ARRAYS,
        DEEPEST_ARRAYS + 1,
        DEEPEST_ARRAYS + 2,
        DEEPEST_ARRAYS + 3,
    ] {
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let event = format!(
            r#"{{"session_id":"{}","category":"test","name":"deep","timestamp":"2021-01-01 09:15:27","data":{{"deep":{deep}}}}}"#,
            Uuid::from_u128(5)
        );
        assert_same_verdict(validator, oracle, event.as_bytes(), false);
        let unknown = event.replace(r#""deep":"#, r#""unknown":"#);
        assert_same_verdict(validator, oracle, unknown.as_bytes(), false);
    }
}

// ---- the oracle: the validator as it was before the one-pass rewrite ----------------------

struct Oracle {
    registry: SchemaRegistry,
    future_tolerance: Duration,
}

const ENVELOPE_KEYS: [&str; 6] = [
    "event_id",
    "session_id",
    "category",
    "name",
    "timestamp",
    "data",
];

fn failure(error_type: ErrorType, field_path: &str, reason: impl Into<String>) -> Failure {
    Failure {
        error_type,
        reason: reason.into(),
        field_path: field_path.to_string(),
    }
}

impl Oracle {
    fn validate(&self, bytes: &[u8], envelope: &Envelope) -> Result<ValidEvent, FailedEvent> {
        let header_or_derived = Stamp {
            event_id: envelope.event_id.unwrap_or(envelope.derived_event_id),
            received_at: envelope.received_at,
            application: envelope.application.clone(),
        };
        let fail = |stamp: Stamp, object: Option<&Map<String, Json>>, failure: Failure| {
            let text = |key: &str| {
                object
                    .and_then(|object| object.get(key))
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            FailedEvent {
                session_id: Uuid::parse_str(&text("session_id")).ok(),
                category: text("category"),
                name: text("name"),
                stamp,
                failure,
            }
        };
        let object = match serde_json::from_slice::<Json>(bytes) {
            Ok(Json::Object(object)) => object,
            Ok(other) => {
                let failure = failure(
                    ErrorType::MalformedJson,
                    "",
                    format!("the message is a JSON {}, not an object", json_kind(&other)),
                );
                return Err(fail(header_or_derived, None, failure));
            }
            Err(err) => {
                let failure = failure(ErrorType::MalformedJson, "", format!("not JSON: {err}"));
                return Err(fail(header_or_derived, None, failure));
            }
        };
        let mut stamp = header_or_derived;
        let body_event_id = match object.get("event_id") {
            None | Some(Json::Null) => None,
            Some(Json::String(text)) => match Uuid::parse_str(text) {
                Ok(id) => Some(id),
                Err(_) => {
                    let failure = failure(
                        ErrorType::InvalidType,
                        "event_id",
                        "event_id must be a UUID",
                    );
                    return Err(fail(stamp, Some(&object), failure));
                }
            },
            Some(other) => {
                let failure = failure(
                    ErrorType::InvalidType,
                    "event_id",
                    format!("event_id must be a UUID string, got a {}", json_kind(other)),
                );
                return Err(fail(stamp, Some(&object), failure));
            }
        };
        if envelope.event_id.is_none() {
            if let Some(id) = body_event_id {
                stamp.event_id = id;
            }
        }
        match self.check(&object, &stamp) {
            Ok(valid) => Ok(valid),
            Err(failure) => Err(fail(stamp, Some(&object), failure)),
        }
    }

    fn check(&self, object: &Map<String, Json>, stamp: &Stamp) -> Result<ValidEvent, Failure> {
        for key in ["session_id", "category", "name", "timestamp", "data"] {
            if !object.contains_key(key) {
                return Err(failure(
                    ErrorType::MissingField,
                    key,
                    format!("{key} is missing"),
                ));
            }
        }
        let string = |key: &str| -> Result<&str, Failure> {
            object[key].as_str().ok_or_else(|| {
                failure(
                    ErrorType::InvalidType,
                    key,
                    format!("{key} must be a string, got a {}", json_kind(&object[key])),
                )
            })
        };
        let (session_id, category, name, timestamp) = (
            string("session_id")?,
            string("category")?,
            string("name")?,
            string("timestamp")?,
        );
        let Json::Object(data) = &object["data"] else {
            return Err(failure(
                ErrorType::InvalidType,
                "data",
                format!(
                    "data must be an object, got a {}",
                    json_kind(&object["data"])
                ),
            ));
        };
        if let Some(key) = object
            .keys()
            .find(|key| !ENVELOPE_KEYS.contains(&key.as_str()))
        {
            return Err(failure(
                ErrorType::UnexpectedField,
                key,
                format!(
                    "{key} is not an event field (expected only {})",
                    ENVELOPE_KEYS.join(", ")
                ),
            ));
        }
        let session_id = Uuid::parse_str(session_id).map_err(|_| {
            failure(
                ErrorType::InvalidSessionId,
                "session_id",
                format!("session_id {session_id:?} is not a UUID"),
            )
        })?;
        let timestamp = parse_event_time(timestamp).ok_or_else(|| {
            failure(
                ErrorType::InvalidTimestamp,
                "timestamp",
                format!("timestamp {timestamp:?} is not `YYYY-MM-DD HH:MM:SS[.ffffff]` or RFC 3339 between 1970 and 2106-02-07"),
            )
        })?;
        let schema = self.registry.latest(category, name).ok_or_else(|| {
            failure(
                ErrorType::UnknownEventType,
                "",
                format!("no schema for category {category:?} and name {name:?}"),
            )
        })?;
        let mut path = String::from("data");
        let avro = json_to_avro(&object["data"], &schema.data, &mut path).map_err(Failure::from)?;
        avro.resolve(&schema.data).map_err(|err| {
            failure(
                ErrorType::InvalidData,
                "data",
                format!("data does not match its schema: {err}"),
            )
        })?;
        self.check_not_future(timestamp, stamp)?;
        let text = |key: &str| {
            data.get(key)
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(ValidEvent {
            stamp: stamp.clone(),
            session_id,
            category: category.to_string(),
            name: name.to_string(),
            timestamp,
            data: Json::Object(data.clone()).to_string(),
            host: text("host"),
            path: text("path"),
            schema_version: schema.version,
        })
    }

    fn check_not_future(&self, timestamp: DateTime<Utc>, stamp: &Stamp) -> Result<(), Failure> {
        if timestamp > stamp.received_at + self.future_tolerance {
            return Err(failure(
                ErrorType::FutureTimestamp,
                "timestamp",
                format!(
                    "timestamp {} is more than {} s after received_at {}",
                    timestamp.to_rfc3339(),
                    self.future_tolerance.num_seconds(),
                    stamp.received_at.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }
}

/// The one deliberate difference: serde_json's `Value` parser (built with `raw_value`, as here)
/// reads an object whose first key is its private raw-value token as the JSON inside that
/// key's string, so the old validator took such a wrapped event for the event inside. The
/// one-pass validator reads the object as written.
#[test]
fn a_wrapped_event_is_read_as_the_object_it_is() {
    let inner = serde_json::to_string(&crate::validate::reference("pageview")).unwrap();
    let wrapped = format!(
        r#"{{"$serde_json::private::RawValue":{}}}"#,
        serde_json::to_string(&inner).unwrap()
    );
    let (validator, oracle) = &*VALIDATORS;
    assert!(oracle.validate(wrapped.as_bytes(), &envelope(true)).is_ok());
    let failed = validator
        .validate(wrapped.as_bytes(), &envelope(true))
        .unwrap_err();
    assert_eq!(failed.failure.error_type, ErrorType::MissingField);
}
