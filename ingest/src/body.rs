//! Turning a request body into the events it holds, each kept as the exact bytes the client
//! sent. Every check happens before anything is produced, so a bad request produces nothing.

use std::io::Read;

use flate2::read::GzDecoder;
use std::cell::Cell;

use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::config::Limits;

/// How the body lists its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object or a JSON array of objects (`application/json`, `text/plain`).
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is a JSON {0}; expected an event object or an array of event objects")]
    NotObjectOrArray(&'static str),
    #[error("event {index} of the array is a JSON {found}; expected an object")]
    ArrayItemNotObject { index: usize, found: &'static str },
    #[error("NDJSON line {line}: {problem}")]
    NdjsonLine { line: usize, problem: String },
    #[error("event {index}: event_id must be a UUID string, got {found}")]
    InvalidEventId { index: usize, found: String },
    #[error("event {index}: {problem}")]
    InvalidEvent { index: usize, problem: String },
    #[error("body holds no events")]
    Empty,
    #[error("body holds more than {limit} events; at most {limit} are accepted per request")]
    TooManyEvents { limit: usize },
    #[error("body is larger than {limit} bytes after decompression")]
    DecompressedTooLarge { limit: usize },
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
}

/// One event of a request: its original bytes and what the bridge needs from it.
#[derive(Debug, PartialEq, Eq)]
pub struct IncomingEvent<'a> {
    pub json: &'a [u8],
    /// The client's own `event_id`, kept so that client retries are idempotent.
    pub event_id: Option<Uuid>,
    pub session_id: Option<String>,
}

/// Gunzips `body`, refusing to produce more than `limit` bytes (a zip bomb costs nothing).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| BodyError::BadGzip(err.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

/// Splits a (decompressed) body into its events.
pub fn split_events<'a>(
    body: &'a [u8],
    format: BodyFormat,
    limits: &Limits,
) -> Result<Vec<IncomingEvent<'a>>, BodyError> {
    let limit = limits.max_batch_events;
    let objects = match format {
        BodyFormat::Json => json_objects(body, limit)?,
        BodyFormat::Ndjson => ndjson_objects(body, limit)?,
    };
    if objects.is_empty() {
        return Err(BodyError::Empty);
    }
    objects
        .into_iter()
        .enumerate()
        .map(|(index, json)| incoming_event(index, json))
        .collect()
}

fn json_objects(body: &[u8], limit: usize) -> Result<Vec<&[u8]>, BodyError> {
    let value: &RawValue =
        serde_json::from_slice(body).map_err(|err| BodyError::NotJson(err.to_string()))?;
    let text = value.get();
    match json_kind(text) {
        "object" => Ok(vec![raw_bytes(body, text)]),
        "array" => {
            let over = Cell::new(false);
            let items = BoundedItems { limit, over: &over }
                .deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|err| match over.get() {
                    true => BodyError::TooManyEvents { limit },
                    false => BodyError::NotJson(err.to_string()),
                })?;
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| match json_kind(item.get()) {
                    "object" => Ok(raw_bytes(body, item.get())),
                    found => Err(BodyError::ArrayItemNotObject { index, found }),
                })
                .collect()
        }
        other => Err(BodyError::NotObjectOrArray(other)),
    }
}

/// A JSON array's items, read up to `limit + 1`: a body of a million tiny objects costs no more
/// than one just over the limit.
struct BoundedItems<'o> {
    limit: usize,
    over: &'o Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedItems<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedItems<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.limit {
                self.over.set(true);
                return Err(A::Error::custom("too many events"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

fn ndjson_objects(body: &[u8], limit: usize) -> Result<Vec<&[u8]>, BodyError> {
    let mut objects = Vec::new();
    for (number, line) in body.split(|&byte| byte == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if objects.len() == limit {
            return Err(BodyError::TooManyEvents { limit });
        }
        let problem = |problem: String| BodyError::NdjsonLine {
            line: number + 1,
            problem,
        };
        let value: &RawValue = serde_json::from_slice(line)
            .map_err(|err| problem(format!("not valid JSON: {err}")))?;
        match json_kind(value.get()) {
            "object" => objects.push(raw_bytes(line, value.get())),
            found => return Err(problem(format!("a JSON {found}; expected an object"))),
        }
    }
    Ok(objects)
}

/// The bytes of `text` inside `body`: `RawValue` borrows from the body, so this is the client's
/// exact bytes, not a re-serialisation.
fn raw_bytes<'a>(body: &'a [u8], text: &str) -> &'a [u8] {
    let start = text.as_ptr() as usize - body.as_ptr() as usize;
    &body[start..start + text.len()]
}

/// The kind of a syntactically valid JSON value, from its first byte.
fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// The fields the bridge reads; everything else passes through untouched.
#[derive(Deserialize)]
struct RoutingFields<'a> {
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    session_id: Option<&'a RawValue>,
}

fn incoming_event(index: usize, json: &[u8]) -> Result<IncomingEvent<'_>, BodyError> {
    let fields: RoutingFields =
        serde_json::from_slice(json).map_err(|err| BodyError::InvalidEvent {
            index,
            problem: err.to_string(),
        })?;
    let event_id = match fields.event_id.map(RawValue::get) {
        None | Some("null") => None,
        Some(raw) => Some(
            serde_json::from_str::<String>(raw)
                .ok()
                .and_then(|text| Uuid::parse_str(&text).ok())
                .ok_or_else(|| BodyError::InvalidEventId {
                    index,
                    found: raw.to_string(),
                })?,
        ),
    };
    // A session_id that is not a string cannot route the event; the processor records it as
    // invalid, and the event is keyed by its event_id meanwhile.
    let session_id = fields
        .session_id
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    Ok(IncomingEvent {
        json,
        event_id,
        session_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGEVIEW: &str = r#"{"session_id":"e2085be5-9137-4e4e-80b5-f1ffddc25423","category":"page interaction","name":"pageview","data":{"host":"h","path":"/"},"timestamp":"2021-01-01 09:15:27.243860"}"#;

    fn split(body: &str, format: BodyFormat) -> Result<Vec<IncomingEvent<'_>>, BodyError> {
        split_events(body.as_bytes(), format, &Limits::default())
    }

    #[test]
    fn array_items_keep_their_exact_bytes() {
        let body = format!("[ {PAGEVIEW} ,\n  {{ \"a\" : 1 }} ]");
        let events = split(&body, BodyFormat::Json).unwrap();
        assert_eq!(events[0].json, PAGEVIEW.as_bytes());
        assert_eq!(events[1].json, b"{ \"a\" : 1 }");
        assert_eq!(
            events[0].session_id.as_deref(),
            Some("e2085be5-9137-4e4e-80b5-f1ffddc25423")
        );
    }

    #[test]
    fn ndjson_names_the_broken_line() {
        let body = format!("{PAGEVIEW}\n\n{{\"a\":\n");
        let err = split(&body, BodyFormat::Ndjson).unwrap_err();
        assert!(
            matches!(err, BodyError::NdjsonLine { line: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn array_names_the_item_that_is_not_an_object() {
        let err = split(&format!("[{PAGEVIEW}, 7]"), BodyFormat::Json).unwrap_err();
        assert_eq!(
            err,
            BodyError::ArrayItemNotObject {
                index: 1,
                found: "number"
            }
        );
    }

    #[test]
    fn scalar_body_is_rejected() {
        assert_eq!(
            split("\"hi\"", BodyFormat::Json).unwrap_err(),
            BodyError::NotObjectOrArray("string")
        );
    }

    #[test]
    fn client_event_id_must_be_a_uuid() {
        let err = split(r#"{"event_id": 12}"#, BodyFormat::Json).unwrap_err();
        assert!(matches!(err, BodyError::InvalidEventId { index: 0, .. }));
        let id = "0190b6a4-5e6f-7c3d-8a9b-0123456789ab";
        let body = format!(r#"{{"event_id": "{id}"}}"#);
        let events = split(&body, BodyFormat::Json).unwrap();
        assert_eq!(events[0].event_id, Some(Uuid::parse_str(id).unwrap()));
    }

    #[test]
    fn batch_limit_counts_events() {
        let limits = Limits {
            max_batch_events: 2,
            ..Limits::default()
        };
        let err = split_events(b"[{},{},{}]", BodyFormat::Json, &limits).unwrap_err();
        assert_eq!(err, BodyError::TooManyEvents { limit: 2 });
        let err = split_events(b"{}\n{}\n{}\n", BodyFormat::Ndjson, &limits).unwrap_err();
        assert_eq!(err, BodyError::TooManyEvents { limit: 2 });
    }

    #[test]
    fn splitting_stops_at_one_event_over_the_limit() {
        let limits = Limits {
            max_batch_events: 2,
            ..Limits::default()
        };
        // The third item is no event at all: reading had stopped before it could be judged.
        let err = split_events(b"[{},{},{},7]", BodyFormat::Json, &limits).unwrap_err();
        assert_eq!(err, BodyError::TooManyEvents { limit: 2 });
        let err = split_events(b"{}\n{}\n{}\nnot json\n", BodyFormat::Ndjson, &limits).unwrap_err();
        assert_eq!(err, BodyError::TooManyEvents { limit: 2 });
        let err = split_events(b"{}\nnot json\n{}\n", BodyFormat::Ndjson, &limits).unwrap_err();
        assert!(
            matches!(err, BodyError::NdjsonLine { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn empty_array_is_rejected() {
        assert_eq!(split("[]", BodyFormat::Json).unwrap_err(), BodyError::Empty);
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        use flate2::{write::GzEncoder, Compression};
        use std::io::Write;
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&vec![b' '; 1_000_000]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert_eq!(
            gunzip(&bomb, 1000).unwrap_err(),
            BodyError::DecompressedTooLarge { limit: 1000 }
        );
        assert_eq!(gunzip(&bomb, 1_000_000).unwrap().len(), 1_000_000);
    }
}
