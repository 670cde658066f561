//! JSON text read without building a value: a value's kind from its first byte, an object's
//! members as (key, raw text), a string's text borrowed when it has no escapes, and the strict
//! parse that confirms a whole message is JSON exactly as `serde_json::Value` would read it.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The JSON kind of a value's text, from its first byte (serde_json's raw values start at the
/// value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Null,
    Boolean,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub(super) fn of(raw: &str) -> Kind {
        match raw.as_bytes().first() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Boolean,
            Some(b'n') => Kind::Null,
            _ => Kind::Number,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }
}

/// An object's members as (key, raw value), keys in byte order, a repeated key's last value
/// kept: the members `serde_json::Map` holds.
pub(super) struct Entries<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// A repeated key's earlier value was dropped unread (so not yet known to be JSON).
    pub(super) dropped_repeated_keys: bool,
}

impl<'a> Entries<'a> {
    /// An object's members (`raw` is a JSON value's text).
    pub(super) fn parse(raw: &'a str) -> Result<Entries<'a>, serde_json::Error> {
        let mut entries: Entries<'a> = serde_json::from_str(raw)?;
        entries.dropped_repeated_keys = entries.sort_keeping_last();
        Ok(entries)
    }

    /// A whole message's object (bytes, as the raw topic holds them).
    pub(super) fn parse_message(bytes: &'a [u8]) -> Result<Entries<'a>, serde_json::Error> {
        // Checked once as a whole, the text's raw values need no UTF-8 check each; bytes that are
        // not UTF-8 are read as before, for serde_json to say where.
        let mut entries: Entries<'a> = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text)?,
            Err(_) => serde_json::from_slice(bytes)?,
        };
        entries.dropped_repeated_keys = entries.sort_keeping_last();
        Ok(entries)
    }

    /// True when a repeated key's earlier value was dropped.
    fn sort_keeping_last(&mut self) -> bool {
        let entries = &mut self.members;
        if entries.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            return false;
        }
        let before = entries.len();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        entries.len() < before
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members
            .binary_search_by(|(candidate, _)| candidate.as_ref().cmp(key))
            .ok()
            .map(|at| self.members[at].1)
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, (Cow<'a, str>, &'a RawValue)> {
        self.members.iter()
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }
}

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Text(key)) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries {
                    members: entries,
                    dropped_repeated_keys: false,
                })
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A JSON string's text, borrowed when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_string())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A string value's text (`raw` is a JSON string).
pub(super) fn parse_string(raw: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    // A raw value has been read as JSON (control characters refused), so a string without
    // escapes is its text between the quotes.
    if let Some(text) = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        if !text.contains('\\') {
            return Ok(Cow::Borrowed(text));
        }
    }
    serde_json::from_str::<Text<'_>>(raw).map(|Text(text)| text)
}

/// The message's top-level kind, by the parse `serde_json::Value` makes (the same errors,
/// limits and number ranges), without building the value.
pub(super) fn top_level_kind(bytes: &[u8]) -> Result<Kind, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|Strict(kind)| kind)
}

struct Strict(Kind);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict(Kind::Boolean))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict(Kind::Number))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict(Kind::Number))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict(Kind::Number))
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict(Kind::String))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Kind::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict(Kind::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_key::<Strict>()?.is_some() {
            map.next_value::<Strict>()?;
        }
        Ok(Strict(Kind::Object))
    }
}
