//! JSON to Avro, guided by a schema: how a JSON event's `data` becomes the Avro value its type's
//! schema describes. Records are closed: a key the schema does not define is an error. Every
//! mismatch names its field path (`data.form.first_name`, `data.items[2]`).

use std::collections::HashMap;
use std::fmt::Write as _;

use apache_avro::schema::{RecordSchema, UnionSchema};
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

/// What kind of mismatch a [`ConversionError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// A record holds a key its schema does not define.
    UnexpectedField,
    /// Any other difference from the schema.
    InvalidData,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ConversionError {
    pub kind: MismatchKind,
    pub path: String,
    pub reason: String,
}

impl ConversionError {
    fn invalid(path: &str, reason: impl Into<String>) -> Self {
        Self {
            kind: MismatchKind::InvalidData,
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn unexpected(path: &str, reason: impl Into<String>) -> Self {
        Self {
            kind: MismatchKind::UnexpectedField,
            path: path.to_string(),
            reason: reason.into(),
        }
    }
}

/// Converts JSON to the Avro value `schema` describes, naming the first mismatch by its path.
/// Records are closed: a key the schema does not define is `unexpected_field`.
pub fn json_to_avro(
    value: &Json,
    schema: &Schema,
    path: &mut String,
) -> Result<Avro, ConversionError> {
    let mismatch = |path: &str, expected: &str| {
        ConversionError::invalid(
            path,
            format!("{path}: expected {expected}, got a {}", json_kind(value)),
        )
    };
    Ok(match (schema, value) {
        (Schema::Null, Json::Null) => Avro::Null,
        (Schema::Boolean, Json::Bool(flag)) => Avro::Boolean(*flag),
        (Schema::Int, Json::Number(number)) => number
            .as_i64()
            .and_then(|number| i32::try_from(number).ok())
            .map(Avro::Int)
            .ok_or_else(|| mismatch(path, "a 32-bit integer"))?,
        (Schema::Long, Json::Number(number)) => number
            .as_i64()
            .map(Avro::Long)
            .ok_or_else(|| mismatch(path, "a 64-bit integer"))?,
        (Schema::Float, Json::Number(number)) => {
            Avro::Float(number.as_f64().unwrap_or_default() as f32)
        }
        (Schema::Double, Json::Number(number)) => Avro::Double(number.as_f64().unwrap_or_default()),
        (Schema::String, Json::String(text)) => Avro::String(text.clone()),
        (Schema::Bytes, Json::String(text)) => Avro::Bytes(text.as_bytes().to_vec()),
        (Schema::Uuid, Json::String(text)) => {
            Avro::Uuid(Uuid::parse_str(text).map_err(|_| mismatch(path, "a UUID string"))?)
        }
        (Schema::Enum(schema), Json::String(symbol)) => {
            let index = schema
                .symbols
                .iter()
                .position(|candidate| candidate == symbol)
                .ok_or_else(|| mismatch(path, &format!("one of {}", schema.symbols.join(", "))))?;
            Avro::Enum(index as u32, symbol.clone())
        }
        (Schema::Array(array), Json::Array(items)) => {
            let mut converted = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let length = path.len();
                let _ = write!(path, "[{index}]");
                converted.push(json_to_avro(item, &array.items, path)?);
                path.truncate(length);
            }
            Avro::Array(converted)
        }
        (Schema::Map(map), Json::Object(entries)) => {
            let mut converted = HashMap::with_capacity(entries.len());
            for (key, item) in entries {
                let length = path.len();
                let _ = write!(path, ".{key}");
                converted.insert(key.clone(), json_to_avro(item, &map.types, path)?);
                path.truncate(length);
            }
            Avro::Map(converted)
        }
        (Schema::Record(record), Json::Object(entries)) => record_to_avro(record, entries, path)?,
        (Schema::Union(union), _) => union_to_avro(union, value, path)?,
        (Schema::Null, _) => return Err(mismatch(path, "null")),
        (Schema::Boolean, _) => return Err(mismatch(path, "a boolean")),
        (Schema::Int | Schema::Long | Schema::Float | Schema::Double, _) => {
            return Err(mismatch(path, "a number"))
        }
        (Schema::String | Schema::Bytes | Schema::Uuid | Schema::Enum(_), _) => {
            return Err(mismatch(path, "a string"))
        }
        (Schema::Array(_), _) => return Err(mismatch(path, "an array")),
        (Schema::Map(_) | Schema::Record(_), _) => return Err(mismatch(path, "an object")),
        (other, _) => {
            return Err(ConversionError::invalid(
                path,
                format!("{path}: schema type {other:?} is not supported for JSON events"),
            ))
        }
    })
}

fn record_to_avro(
    record: &RecordSchema,
    entries: &Map<String, Json>,
    path: &mut String,
) -> Result<Avro, ConversionError> {
    if let Some(key) = entries
        .keys()
        .find(|key| !record.lookup.contains_key(key.as_str()))
    {
        let field_path = format!("{path}.{key}");
        let known: Vec<&str> = record
            .fields
            .iter()
            .map(|field| field.name.as_str())
            .collect();
        return Err(ConversionError::unexpected(
            &field_path,
            format!(
                "{field_path} is not a field of {} (fields: {})",
                record.name.name,
                known.join(", ")
            ),
        ));
    }
    let mut fields = Vec::with_capacity(record.fields.len());
    for field in &record.fields {
        let length = path.len();
        let _ = write!(path, ".{}", field.name);
        let value = match (entries.get(&field.name), &field.default) {
            (Some(value), _) => json_to_avro(value, &field.schema, path)?,
            (None, Some(default)) => json_to_avro(default, &field.schema, path)?,
            (None, None) => {
                return Err(ConversionError::invalid(path, format!("{path} is missing")));
            }
        };
        path.truncate(length);
        fields.push((field.name.clone(), value));
    }
    Ok(Avro::Record(fields))
}

fn union_to_avro(
    union: &UnionSchema,
    value: &Json,
    path: &mut String,
) -> Result<Avro, ConversionError> {
    let mut first_error = None;
    for (index, variant) in union.variants().iter().enumerate() {
        match json_to_avro(value, variant, path) {
            Ok(converted) => return Ok(Avro::Union(index as u32, Box::new(converted))),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error
        .unwrap_or_else(|| ConversionError::invalid(path, format!("{path}: empty union"))))
}

pub fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}
