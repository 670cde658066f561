//! A type's `data` schema compiled once into a shape that judges JSON text directly: it walks
//! the text (no `serde_json::Value`, no Avro value), decides the first mismatch exactly as
//! `crate::convert::json_to_avro` names it, and writes the payload's canonical JSON (compact,
//! keys in byte order, a repeated key's last value) as it goes: the `events.data` column.
//!
//! Objects are read as (key, raw text) entries ([`super::raw`]), sorted and deduplicated, so a
//! record's or map's members are judged in the order the converter sees them; strings, numbers
//! and literals are parsed by serde_json itself, so what counts as a number or an escape cannot
//! differ.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::convert::{json_to_avro, ConversionError, MismatchKind};
use apache_avro::schema::RecordSchema;
use apache_avro::Schema;
use serde_json::value::RawValue;
use serde_json::{Number, Value as Json};
use uuid::Uuid;

use super::raw::{parse_string, Entries, Kind};

/// A schema node, as JSON data is checked against it.
#[derive(Debug)]
pub(super) enum Shape {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Uuid,
    Enum {
        symbols: Vec<String>,
        /// `one of a, b, c`, as a mismatch names it.
        expected: String,
    },
    Array(Box<Shape>),
    Map(Box<Shape>),
    Record(Box<RecordShape>),
    Union(Vec<Shape>),
    /// A schema type JSON events cannot carry, by its debug form (the reason quotes it).
    Unsupported(String),
}

#[derive(Debug)]
pub(super) struct RecordShape {
    name: String,
    fields: Vec<FieldShape>,
    /// Field indices by name, names in byte order.
    by_name: Vec<(String, usize)>,
    /// The field names in schema order, comma-separated.
    field_list: String,
}

#[derive(Debug)]
struct FieldShape {
    name: String,
    shape: Shape,
    default: FieldDefault,
}

#[derive(Debug)]
enum FieldDefault {
    None,
    /// A default the field's schema accepts: an absent field is fine.
    Fits,
    /// A default the field's schema refuses, kept to name the mismatch as the converter does.
    Refused(Box<(Json, Schema)>),
}

/// Why text does not pass: a mismatch with the schema, or text serde_json does not read as
/// JSON (which the caller confirms against the whole message, since malformed JSON comes
/// first).
#[derive(Debug)]
pub(super) enum Mismatch<E = ConversionError> {
    Data(E),
    NotJson(serde_json::Error),
}

impl<E> From<serde_json::Error> for Mismatch<E> {
    fn from(error: serde_json::Error) -> Self {
        Mismatch::NotJson(error)
    }
}

/// The state of one walk: the current field path, and whether a repeated key's earlier value
/// was skipped unread (the caller then confirms the whole message is JSON).
#[derive(Debug, Default)]
pub(super) struct Walk {
    pub(super) path: String,
    pub(super) skipped_repeated_keys: bool,
}

/// The payload of a valid event, as its row stores it.
#[derive(Debug)]
pub(super) struct Payload {
    /// Canonical JSON: what serde_json writes for the parsed object.
    pub(super) json: String,
    /// `host` and `path`, when strings (they have columns of their own).
    pub(super) host: String,
    pub(super) path: String,
}

impl Shape {
    pub(super) fn of(schema: &Schema) -> Shape {
        match schema {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Boolean,
            Schema::Int => Shape::Int,
            Schema::Long => Shape::Long,
            Schema::Float => Shape::Float,
            Schema::Double => Shape::Double,
            Schema::String => Shape::String,
            Schema::Bytes => Shape::Bytes,
            Schema::Uuid => Shape::Uuid,
            Schema::Enum(schema) => Shape::Enum {
                symbols: schema.symbols.clone(),
                expected: format!("one of {}", schema.symbols.join(", ")),
            },
            Schema::Array(array) => Shape::Array(Box::new(Shape::of(&array.items))),
            Schema::Map(map) => Shape::Map(Box::new(Shape::of(&map.types))),
            Schema::Record(record) => Shape::Record(Box::new(RecordShape::of(record))),
            Schema::Union(union) => Shape::Union(union.variants().iter().map(Shape::of).collect()),
            other => Shape::Unsupported(format!("{other:?}")),
        }
    }

    /// Checks `raw` (one JSON value's text) and, with `out`, appends its canonical JSON.
    ///
    /// Nesting needs no limit of its own: a schema file is JSON too, so no schema is deep enough
    /// to admit data beyond serde_json's recursion limit, and what it does not admit fails and
    /// is confirmed by the full parse.
    fn check(&self, raw: &str, walk: &mut Walk, out: Option<&mut String>) -> Result<(), Mismatch> {
        let kind = Kind::of(raw);
        let mismatch = |walk: &Walk, expected: &str| {
            Mismatch::Data(invalid(
                &walk.path,
                format!("{}: expected {expected}, got a {}", walk.path, kind.name()),
            ))
        };
        match (self, kind) {
            (Shape::Null, Kind::Null) | (Shape::Boolean, Kind::Boolean) => {
                // The literal's text is its canonical form.
                write(out, raw);
            }
            (Shape::Int | Shape::Long | Shape::Float | Shape::Double, Kind::Number) => {
                let number: Number = serde_json::from_str(raw)?;
                let fits = match self {
                    Shape::Int => number
                        .as_i64()
                        .is_some_and(|number| i32::try_from(number).is_ok()),
                    Shape::Long => number.as_i64().is_some(),
                    _ => true,
                };
                if !fits {
                    let expected = match self {
                        Shape::Int => "a 32-bit integer",
                        _ => "a 64-bit integer",
                    };
                    return Err(mismatch(walk, expected));
                }
                if let Some(out) = out {
                    // serde_json writes a number as its `Display` does.
                    let _ = write!(out, "{number}");
                }
            }
            (Shape::String | Shape::Bytes | Shape::Uuid | Shape::Enum { .. }, Kind::String) => {
                let text = parse_string(raw)?;
                match self {
                    Shape::Uuid if Uuid::parse_str(&text).is_err() => {
                        return Err(mismatch(walk, "a UUID string"));
                    }
                    Shape::Enum { symbols, expected }
                        if !symbols.iter().any(|symbol| *symbol == *text) =>
                    {
                        return Err(mismatch(walk, expected));
                    }
                    _ => {}
                }
                write_string(out, &text)?;
            }
            (Shape::Array(items), Kind::Array) => {
                let values: Vec<&RawValue> = serde_json::from_str(raw)?;
                let mut out = out;
                write(out.as_deref_mut(), "[");
                for (index, value) in values.iter().enumerate() {
                    if index > 0 {
                        write(out.as_deref_mut(), ",");
                    }
                    let length = walk.path.len();
                    push_index(&mut walk.path, index);
                    items.check(value.get(), walk, out.as_deref_mut())?;
                    walk.path.truncate(length);
                }
                write(out, "]");
            }
            (Shape::Map(values), Kind::Object) => {
                let entries = members(raw, walk)?;
                let mut out = out;
                write(out.as_deref_mut(), "{");
                for (index, (key, value)) in entries.iter().enumerate() {
                    if index > 0 {
                        write(out.as_deref_mut(), ",");
                    }
                    write_key(out.as_deref_mut(), key)?;
                    let length = walk.path.len();
                    walk.path.push('.');
                    walk.path.push_str(key);
                    values.check(value.get(), walk, out.as_deref_mut())?;
                    walk.path.truncate(length);
                }
                write(out, "}");
            }
            (Shape::Record(record), Kind::Object) => {
                let entries = members(raw, walk)?;
                record.check_entries(&entries, walk, out)?;
            }
            (Shape::Union(variants), _) => {
                let mut out = out;
                let (path_length, out_length) =
                    (walk.path.len(), out.as_deref().map_or(0, String::len));
                let mut first_mismatch = None;
                for variant in variants {
                    match variant.check(raw, walk, out.as_deref_mut()) {
                        Ok(()) => return Ok(()),
                        Err(Mismatch::Data(error)) => {
                            first_mismatch.get_or_insert(error);
                            walk.path.truncate(path_length);
                            if let Some(out) = out.as_deref_mut() {
                                out.truncate(out_length);
                            }
                        }
                        Err(not_json) => return Err(not_json),
                    }
                }
                return Err(Mismatch::Data(first_mismatch.unwrap_or_else(|| {
                    invalid(&walk.path, format!("{}: empty union", walk.path))
                })));
            }
            (Shape::Null, _) => return Err(mismatch(walk, "null")),
            (Shape::Boolean, _) => return Err(mismatch(walk, "a boolean")),
            (Shape::Int | Shape::Long | Shape::Float | Shape::Double, _) => {
                return Err(mismatch(walk, "a number"))
            }
            (Shape::String | Shape::Bytes | Shape::Uuid | Shape::Enum { .. }, _) => {
                return Err(mismatch(walk, "a string"))
            }
            (Shape::Array(_), _) => return Err(mismatch(walk, "an array")),
            (Shape::Map(_) | Shape::Record(_), _) => return Err(mismatch(walk, "an object")),
            (Shape::Unsupported(schema), _) => {
                return Err(Mismatch::Data(invalid(
                    &walk.path,
                    format!(
                        "{}: schema type {schema} is not supported for JSON events",
                        walk.path
                    ),
                )))
            }
        }
        Ok(())
    }
}

impl RecordShape {
    pub(super) fn of(record: &RecordSchema) -> RecordShape {
        let fields: Vec<FieldShape> = record
            .fields
            .iter()
            .map(|field| FieldShape {
                name: field.name.clone(),
                shape: Shape::of(&field.schema),
                default: match &field.default {
                    None => FieldDefault::None,
                    Some(value) => match json_to_avro(value, &field.schema, &mut String::new()) {
                        Ok(_) => FieldDefault::Fits,
                        Err(_) => {
                            FieldDefault::Refused(Box::new((value.clone(), field.schema.clone())))
                        }
                    },
                },
            })
            .collect();
        let mut by_name: Vec<(String, usize)> = fields
            .iter()
            .enumerate()
            .map(|(index, field)| (field.name.clone(), index))
            .collect();
        by_name.sort();
        let field_list = fields
            .iter()
            .map(|field| field.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        RecordShape {
            name: record.name.name.clone(),
            fields,
            by_name,
            field_list,
        }
    }

    /// Checks an event's `data` object (`raw`, at `walk.path`) and returns its row's payload.
    pub(super) fn check_data(&self, raw: &str, walk: &mut Walk) -> Result<Payload, Mismatch> {
        let entries = members(raw, walk)?;
        let mut json = String::with_capacity(raw.len());
        self.check_entries(&entries, walk, Some(&mut json))?;
        let text = |key: &str| -> Result<String, Mismatch> {
            Ok(match entries.get(key) {
                Some(value) if Kind::of(value.get()) == Kind::String => {
                    parse_string(value.get())?.into_owned()
                }
                _ => String::new(),
            })
        };
        Ok(Payload {
            json,
            host: text("host")?,
            path: text("path")?,
        })
    }

    /// A record's members against its fields: first a key it does not define (in key order),
    /// then each field in schema order. With `out`, members are checked in key order as they
    /// are written; only when one fails are the fields checked again in schema order, to name
    /// the mismatch the converter names.
    fn check_entries(
        &self,
        entries: &Entries<'_>,
        walk: &mut Walk,
        out: Option<&mut String>,
    ) -> Result<(), Mismatch> {
        let mut members = Vec::with_capacity(entries.len());
        for (key, value) in entries.iter() {
            match self
                .by_name
                .binary_search_by(|(name, _)| name.as_str().cmp(key))
            {
                Ok(at) => members.push((self.by_name[at].1, key, *value)),
                Err(_) => {
                    let field_path = format!("{}.{key}", walk.path);
                    return Err(Mismatch::Data(ConversionError {
                        kind: MismatchKind::UnexpectedField,
                        reason: format!(
                            "{field_path} is not a field of {} (fields: {})",
                            self.name, self.field_list
                        ),
                        path: field_path,
                    }));
                }
            }
        }
        let Some(out) = out else {
            return self.check_in_schema_order(&members, walk);
        };
        let (path_length, out_length) = (walk.path.len(), out.len());
        out.push('{');
        for (index, (field, key, value)) in members.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            write_key(Some(out), key)?;
            match self.check_field(*field, value.get(), walk, Some(out)) {
                Ok(()) => {}
                Err(Mismatch::Data(_)) => {
                    out.truncate(out_length);
                    walk.path.truncate(path_length);
                    return self.check_in_schema_order(&members, walk);
                }
                Err(not_json) => return Err(not_json),
            }
        }
        out.push('}');
        self.check_absent(&members, walk)
    }

    fn check_in_schema_order(
        &self,
        members: &[(usize, &Cow<'_, str>, &RawValue)],
        walk: &mut Walk,
    ) -> Result<(), Mismatch> {
        for (index, field) in self.fields.iter().enumerate() {
            match members.iter().find(|(member, _, _)| *member == index) {
                Some((_, _, value)) => self.check_field(index, value.get(), walk, None)?,
                None => self.check_default(field, walk)?,
            }
        }
        Ok(())
    }

    fn check_absent(
        &self,
        members: &[(usize, &Cow<'_, str>, &RawValue)],
        walk: &mut Walk,
    ) -> Result<(), Mismatch> {
        if members.len() == self.fields.len() {
            return Ok(());
        }
        for (index, field) in self.fields.iter().enumerate() {
            if !members.iter().any(|(member, _, _)| *member == index) {
                self.check_default(field, walk)?;
            }
        }
        Ok(())
    }

    fn check_field(
        &self,
        index: usize,
        raw: &str,
        walk: &mut Walk,
        out: Option<&mut String>,
    ) -> Result<(), Mismatch> {
        let field = &self.fields[index];
        let length = walk.path.len();
        walk.path.push('.');
        walk.path.push_str(&field.name);
        field.shape.check(raw, walk, out)?;
        walk.path.truncate(length);
        Ok(())
    }

    fn check_default(&self, field: &FieldShape, walk: &mut Walk) -> Result<(), Mismatch> {
        let length = walk.path.len();
        walk.path.push('.');
        walk.path.push_str(&field.name);
        let checked = match &field.default {
            FieldDefault::Fits => Ok(()),
            FieldDefault::Refused(refused) => json_to_avro(&refused.0, &refused.1, &mut walk.path)
                .map(drop)
                .map_err(Mismatch::Data),
            FieldDefault::None => Err(Mismatch::Data(invalid(
                &walk.path,
                format!("{} is missing", walk.path),
            ))),
        };
        checked?;
        walk.path.truncate(length);
        Ok(())
    }
}

/// An object's members, noting in `walk` when a repeated key's earlier value was dropped.
fn members<'a>(raw: &'a str, walk: &mut Walk) -> Result<Entries<'a>, serde_json::Error> {
    let entries = Entries::parse(raw)?;
    walk.skipped_repeated_keys |= entries.dropped_repeated_keys;
    Ok(entries)
}

fn invalid(path: &str, reason: String) -> ConversionError {
    ConversionError {
        kind: MismatchKind::InvalidData,
        path: path.to_string(),
        reason,
    }
}

fn push_index(path: &mut String, index: usize) {
    let _ = write!(path, "[{index}]");
}

fn write(out: Option<&mut String>, text: &str) {
    if let Some(out) = out {
        out.push_str(text);
    }
}

/// A string (a member's value or key) as serde_json writes it: quoted, escaping only `"`, `\\`
/// and control characters.
fn write_string(out: Option<&mut String>, text: &str) -> Result<(), Mismatch> {
    let Some(out) = out else {
        return Ok(());
    };
    if text
        .bytes()
        .any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\')
    {
        out.push_str(&serde_json::to_string(text)?);
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
    Ok(())
}

fn write_key(out: Option<&mut String>, key: &str) -> Result<(), Mismatch> {
    let Some(out) = out else {
        return Ok(());
    };
    write_string(Some(&mut *out), key)?;
    out.push(':');
    Ok(())
}
