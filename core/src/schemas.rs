//! The event schemas in `schemas/avro/`: one file per event type and version, each a record for
//! the type's `data` with `eye.category`, `eye.name` and `eye.version` attributes, plus the
//! envelope every event shares. Adding an event type is adding a file.
//!
//! Each type's *event schema* is the envelope with `data` replaced by the type's record. Its
//! CRC-64-AVRO (Rabin) fingerprint identifies the type in Avro single-object encoding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value as Avro;
use apache_avro::{GenericSingleObjectWriter, Schema};
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::convert::{json_to_avro, ConversionError};

/// The Avro single-object encoding marker.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{first} and {second} both define {category:?}/{name:?} version {version}")]
    DuplicateVersion {
        first: PathBuf,
        second: PathBuf,
        category: String,
        name: String,
        version: u32,
    },
    #[error("{first} and {second} have the same fingerprint")]
    DuplicateFingerprint { first: PathBuf, second: PathBuf },
}

/// One version of one event type.
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub category: String,
    pub name: String,
    pub version: u32,
    pub file: PathBuf,
    /// The type's `data` record.
    pub data: Schema,
    /// The envelope with this type's `data`.
    pub event: Schema,
    /// The 10-byte single-object header: marker and fingerprint of `event`.
    pub single_object_header: [u8; 10],
}

/// An event's envelope fields, for encoding it as Avro.
#[derive(Debug, Clone)]
pub struct EventEnvelope {
    pub event_id: Uuid,
    pub application: String,
    pub session_id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("data does not match the schema: {0}")]
    Data(#[from] ConversionError),
    #[error(transparent)]
    Avro(#[from] apache_avro::Error),
}

impl EventSchema {
    /// The event in Avro single-object encoding: marker, fingerprint, binary datum.
    pub fn encode_single_object(
        &self,
        envelope: &EventEnvelope,
        data: &Json,
    ) -> Result<Vec<u8>, EncodeError> {
        let data = json_to_avro(data, &self.data, &mut String::from("data"))?;
        let record = Avro::Record(vec![
            ("event_id".into(), Avro::Uuid(envelope.event_id)),
            (
                "application".into(),
                Avro::String(envelope.application.clone()),
            ),
            ("session_id".into(), Avro::Uuid(envelope.session_id)),
            ("category".into(), Avro::String(self.category.clone())),
            ("name".into(), Avro::String(self.name.clone())),
            (
                "timestamp".into(),
                Avro::TimestampMicros(envelope.timestamp.timestamp_micros()),
            ),
            (
                "received_at".into(),
                Avro::TimestampMicros(envelope.received_at.timestamp_micros()),
            ),
            ("data".into(), data),
        ]);
        let mut bytes = self.single_object_header.to_vec();
        bytes.extend(apache_avro::to_avro_datum(&self.event, record)?);
        Ok(bytes)
    }
}

/// The schema of a topic we publish (alerts, session updates): one `.avsc` file, messages in
/// Avro single-object encoding.
pub struct TopicSchema {
    pub file: PathBuf,
    pub schema: Schema,
    /// The 10-byte single-object header: marker and fingerprint of `schema`.
    pub single_object_header: [u8; 10],
    /// Resolves the schema once, not on every message (as `to_avro_datum` does).
    writer: Mutex<GenericSingleObjectWriter>,
    /// The same schema, for [`TopicSchema::encode_fields`].
    fields_schema: serde_avro_fast::Schema,
}

/// Why a record does not encode as its topic's schema.
#[derive(Debug, thiserror::Error)]
pub enum TopicEncodeError {
    #[error(transparent)]
    Value(#[from] apache_avro::Error),
    #[error(transparent)]
    Fields(#[from] serde_avro_fast::ser::SerError),
}

impl std::fmt::Debug for TopicSchema {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TopicSchema")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not this schema's single-object encoding (header {0:02x?})")]
    Header(Vec<u8>),
    #[error(transparent)]
    Avro(#[from] apache_avro::Error),
}

impl TopicSchema {
    pub fn load(file: &Path) -> Result<Self, SchemaError> {
        let json = read_json(file)?;
        let schema = Schema::parse(&json).map_err(|err| invalid(file, err))?;
        let fields_schema = json.to_string().parse().map_err(|err| invalid(file, err))?;
        let single_object_header = RabinFingerprintHeader::from_schema(&schema)
            .build_header()
            .try_into()
            .map_err(|_| invalid(file, "unexpected single-object header length"))?;
        let writer = single_object_writer(&schema).map_err(|err| invalid(file, err))?;
        Ok(Self {
            file: file.to_path_buf(),
            schema,
            single_object_header,
            writer: Mutex::new(writer),
            fields_schema,
        })
    }

    /// `value` in single-object encoding; fails when it does not match the schema.
    pub fn encode(&self, value: &Avro) -> Result<Vec<u8>, apache_avro::Error> {
        let mut bytes = Vec::with_capacity(256);
        let mut writer = match self.writer.lock() {
            Ok(writer) => writer,
            // A panic while writing may have left a partial datum in the writer's buffer.
            Err(poisoned) => {
                let mut writer = poisoned.into_inner();
                *writer = single_object_writer(&self.schema)?;
                writer
            }
        };
        let written = writer.write_value_ref(value, &mut bytes);
        if written.is_err() {
            // So does a failed write: the next message must not start with it.
            *writer = single_object_writer(&self.schema)?;
        }
        written.map(|_| bytes)
    }

    /// `record` in single-object encoding, serialized straight from its fields, with no `Avro`
    /// value between (no tree to build, validate and walk). serde_avro_fast writes each field
    /// where the schema puts it, by name, and refuses a record that lacks one; a round trip
    /// through [`TopicSchema::decode`] is its test.
    pub fn encode_fields(
        &self,
        record: &impl serde::Serialize,
    ) -> Result<Vec<u8>, TopicEncodeError> {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&self.single_object_header);
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.fields_schema);
        Ok(serde_avro_fast::to_datum(record, bytes, &mut config)?)
    }

    /// A message of this schema back into a value.
    pub fn decode(&self, bytes: &[u8]) -> Result<Avro, DecodeError> {
        match bytes.split_at_checked(10) {
            Some((header, mut datum)) if header == self.single_object_header => Ok(
                apache_avro::from_avro_datum(&self.schema, &mut datum, None)?,
            ),
            _ => Err(DecodeError::Header(
                bytes.iter().take(10).copied().collect(),
            )),
        }
    }
}

/// Every event type's schemas, by (category, name) and by fingerprint.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    /// Each type's versions, oldest first.
    by_type: HashMap<(String, String), Vec<EventSchema>>,
    by_header: HashMap<[u8; 10], (String, String, u32)>,
}

impl SchemaRegistry {
    /// Loads `dir/envelope.avsc` and every `dir/events/*.avsc`.
    pub fn load(dir: &Path) -> Result<Self, SchemaError> {
        let envelope_path = dir.join("envelope.avsc");
        let envelope = read_json(&envelope_path)?;
        let events_dir = dir.join("events");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&events_dir)
            .map_err(|source| SchemaError::Io {
                path: events_dir.clone(),
                source,
            })?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "avsc"))
            .collect();
        files.sort();

        let mut by_type: HashMap<(String, String), Vec<EventSchema>> = HashMap::new();
        let mut by_header: HashMap<[u8; 10], (String, String, u32)> = HashMap::new();
        for file in files {
            let schema = event_schema(&envelope, &file)?;
            let key = (schema.category.clone(), schema.name.clone());
            let versions = by_type.entry(key.clone()).or_default();
            if let Some(existing) = versions
                .iter()
                .find(|other| other.version == schema.version)
            {
                return Err(SchemaError::DuplicateVersion {
                    first: existing.file.clone(),
                    second: schema.file,
                    category: key.0,
                    name: key.1,
                    version: existing.version,
                });
            }
            if let Some((category, name, version)) = by_header.insert(
                schema.single_object_header,
                (key.0.clone(), key.1.clone(), schema.version),
            ) {
                let first = by_type[&(category, name)]
                    .iter()
                    .find(|other| other.version == version)
                    .map(|other| other.file.clone())
                    .unwrap_or_default();
                return Err(SchemaError::DuplicateFingerprint {
                    first,
                    second: schema.file,
                });
            }
            versions.push(schema);
            versions.sort_by_key(|schema| schema.version);
        }
        Ok(Self { by_type, by_header })
    }

    /// The newest version of a type: what JSON events are validated against.
    pub fn latest(&self, category: &str, name: &str) -> Option<&EventSchema> {
        self.by_type
            .get(&(category.to_string(), name.to_string()))
            .and_then(|versions| versions.last())
    }

    /// The schema whose single-object header `bytes` start with.
    pub fn by_single_object_header(&self, bytes: &[u8]) -> Option<&EventSchema> {
        let header: [u8; 10] = bytes.get(..10)?.try_into().ok()?;
        let (category, name, version) = self.by_header.get(&header)?;
        self.by_type[&(category.clone(), name.clone())]
            .iter()
            .find(|schema| schema.version == *version)
    }

    /// Every type's versions, oldest first, types in (category, name) order.
    pub fn types(&self) -> Vec<&[EventSchema]> {
        let mut types: Vec<&[EventSchema]> = self.by_type.values().map(Vec::as_slice).collect();
        types.sort_by(|a, b| (&a[0].category, &a[0].name).cmp(&(&b[0].category, &b[0].name)));
        types
    }
}

/// Resolves `schema` once for every message it writes.
fn single_object_writer(schema: &Schema) -> Result<GenericSingleObjectWriter, apache_avro::Error> {
    GenericSingleObjectWriter::new_with_capacity(schema, 256)
}

fn read_json(path: &Path) -> Result<Json, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| invalid(path, err))
}

fn invalid(path: &Path, message: impl ToString) -> SchemaError {
    SchemaError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn event_schema(envelope: &Json, file: &Path) -> Result<EventSchema, SchemaError> {
    let data_json = read_json(file)?;
    let attribute = |key: &str| {
        data_json
            .get(key)
            .ok_or_else(|| invalid(file, format!("missing \"{key}\"")))
    };
    let category = attribute("eye.category")?
        .as_str()
        .ok_or_else(|| invalid(file, "eye.category is not a string"))?;
    let name = attribute("eye.name")?
        .as_str()
        .ok_or_else(|| invalid(file, "eye.name is not a string"))?;
    let version = attribute("eye.version")?
        .as_u64()
        .and_then(|version| u32::try_from(version).ok())
        .ok_or_else(|| invalid(file, "eye.version is not a positive integer"))?;
    let data = Schema::parse(&data_json).map_err(|err| invalid(file, err))?;
    if !matches!(data, Schema::Record(RecordSchema { .. })) {
        return Err(invalid(file, "an event type's schema must be a record"));
    }

    let mut event_json = envelope.clone();
    let record_name = data_json["name"].as_str().unwrap_or_default();
    // One name across versions: Avro resolution matches named types by name.
    event_json["name"] = Json::from(format!("{record_name}Event"));
    let data_field = event_json["fields"]
        .as_array_mut()
        .and_then(|fields| fields.iter_mut().find(|field| field["name"] == "data"))
        .ok_or_else(|| invalid(file, "the envelope has no `data` field"))?;
    data_field["type"] = data_json.clone();
    let event = Schema::parse(&event_json).map_err(|err| invalid(file, err))?;
    let header: [u8; 10] = RabinFingerprintHeader::from_schema(&event)
        .build_header()
        .try_into()
        .map_err(|_| invalid(file, "unexpected single-object header length"))?;

    Ok(EventSchema {
        category: category.to_string(),
        name: name.to_string(),
        version,
        file: file.to_path_buf(),
        data,
        event,
        single_object_header: header,
    })
}
