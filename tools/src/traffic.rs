//! Realistic traffic: sessions of the three reference event types, a chosen share of each
//! failure kind, events out of order and sent twice. `eye load` sends it; `eye chaos` sends it
//! through faults and checks what landed against what it generated.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

/// Failure kinds the generator can produce, each the processor's `error_type` of that name.
pub const FAILURE_KINDS: [&str; 9] = [
    "malformed_json",
    "missing_field",
    "invalid_type",
    "unexpected_field",
    "invalid_session_id",
    "invalid_timestamp",
    "unknown_event_type",
    "invalid_data",
    "future_timestamp",
];
const EVENT_TYPES: [&str; 3] = ["pageview", "cta_click", "submit"];

/// `name=percent` pairs, comma-separated.
#[derive(Debug, Clone, Default)]
pub struct Shares(pub BTreeMap<String, f64>);

impl FromStr for Shares {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut shares = BTreeMap::new();
        for pair in text
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
        {
            let (name, percent) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not name=percent"))?;
            let percent: f64 = percent
                .parse()
                .map_err(|_| format!("{percent:?} is not a number"))?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!("{name}: {percent} is not a percentage"));
            }
            shares.insert(name.trim().to_string(), percent);
        }
        Ok(Shares(shares))
    }
}

/// What traffic to generate.
#[derive(Args, Debug, Clone)]
pub struct TrafficArgs {
    /// Sessions open at once; a session ends after --events-per-session events and a new one
    /// takes its place.
    #[arg(long, default_value_t = 1_000)]
    pub sessions: usize,
    #[arg(long, default_value_t = 20)]
    pub events_per_session: u64,
    /// Relative shares of the reference event types.
    #[arg(long, default_value = "pageview=60,cta_click=25,submit=15")]
    pub mix: Shares,
    /// Percent of events made to fail, per kind, e.g. `invalid_data=2,future_timestamp=1`.
    /// Kinds: malformed_json (refused with 400 by the bridge; reaches the topic only with
    /// --target kafka), missing_field, invalid_type, unexpected_field, invalid_session_id,
    /// invalid_timestamp, unknown_event_type, invalid_data, future_timestamp.
    #[arg(long, default_value = "")]
    pub failures: Shares,
    /// Percent of events stamped before the previous event of their session.
    #[arg(long, default_value_t = 0.0)]
    pub out_of_order: f64,
    /// Percent of sends that repeat an event already sent (same event_id).
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Seed of the generator: the same seed and arguments generate the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What was generated, by kind.
#[derive(Debug, Default, Clone)]
pub struct Generated {
    pub valid: u64,
    pub failures: BTreeMap<String, u64>,
    pub out_of_order: u64,
    pub duplicates: u64,
}

/// One generated event: its identity, what it should become, and the bytes to send.
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    pub event_id: Uuid,
    pub session_id: Uuid,
    /// The failure kind it was made to fail as; None for a valid event.
    pub failure: Option<&'static str>,
    pub bytes: Vec<u8>,
}

struct OpenSession {
    id: Uuid,
    sent: u64,
    last_us: i64,
}

/// The event source shared by the clients.
pub struct Generator {
    rng: StdRng,
    sessions: Vec<OpenSession>,
    events_per_session: u64,
    mix: Vec<(&'static str, f64)>,
    failures: Vec<(&'static str, f64)>,
    out_of_order: f64,
    duplicates: f64,
    /// Events already generated, for duplicates (bounded).
    recent: Vec<GeneratedEvent>,
    pub generated: Generated,
}

impl Generator {
    pub fn new(args: &TrafficArgs, started: DateTime<Utc>) -> anyhow::Result<Self> {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let mix = EVENT_TYPES
            .iter()
            .map(|kind| (*kind, args.mix.0.get(*kind).copied().unwrap_or(0.0)))
            .collect::<Vec<_>>();
        if let Some(unknown) = args
            .mix
            .0
            .keys()
            .find(|kind| !EVENT_TYPES.contains(&kind.as_str()))
        {
            bail!("--mix: unknown event type {unknown:?} (known: {EVENT_TYPES:?})");
        }
        if mix.iter().map(|(_, share)| share).sum::<f64>() <= 0.0 {
            bail!("--mix gives no event type a share");
        }
        if let Some(unknown) = args
            .failures
            .0
            .keys()
            .find(|kind| !FAILURE_KINDS.contains(&kind.as_str()))
        {
            bail!("--failures: unknown kind {unknown:?} (known: {FAILURE_KINDS:?})");
        }
        let failures = FAILURE_KINDS
            .iter()
            .map(|kind| (*kind, args.failures.0.get(*kind).copied().unwrap_or(0.0)))
            .collect::<Vec<_>>();
        if failures.iter().map(|(_, share)| share).sum::<f64>() > 100.0 {
            bail!("--failures add up to more than 100%");
        }
        // Sessions began a while ago, so their events lie in the past.
        let span_us = args.events_per_session as i64 * 2_000_000;
        let sessions = (0..args.sessions.max(1))
            .map(|_| OpenSession {
                id: Uuid::from_u128(rng.random()),
                sent: 0,
                last_us: started.timestamp_micros() - span_us,
            })
            .collect();
        Ok(Self {
            rng,
            sessions,
            events_per_session: args.events_per_session.max(1),
            mix,
            failures,
            out_of_order: args.out_of_order,
            duplicates: args.duplicates,
            recent: Vec::new(),
            generated: Generated::default(),
        })
    }

    fn pick<'a>(rng: &mut StdRng, shares: &[(&'a str, f64)], total: f64) -> Option<&'a str> {
        let mut point = rng.random::<f64>() * total;
        for (name, share) in shares {
            if point < *share {
                return Some(name);
            }
            point -= share;
        }
        None
    }

    /// The next event (a repeat of an earlier one for --duplicates).
    pub fn next(&mut self) -> GeneratedEvent {
        if !self.recent.is_empty() && self.rng.random::<f64>() * 100.0 < self.duplicates {
            self.generated.duplicates += 1;
            let index = self.rng.random_range(0..self.recent.len());
            return self.recent[index].clone();
        }
        let slot = self.rng.random_range(0..self.sessions.len());
        if self.sessions[slot].sent >= self.events_per_session {
            let last_us = self.sessions[slot].last_us;
            self.sessions[slot] = OpenSession {
                id: Uuid::from_u128(self.rng.random()),
                sent: 0,
                last_us: last_us - self.events_per_session as i64 * 2_000_000,
            };
        }
        let step_us = self.rng.random_range(1_000_000..2_000_000);
        let session = &mut self.sessions[slot];
        session.sent += 1;
        let out_of_order = session.sent > 1 && self.rng.random::<f64>() * 100.0 < self.out_of_order;
        let at_us = if out_of_order {
            session.last_us - step_us
        } else {
            session.last_us += step_us;
            session.last_us
        };
        let session_id = session.id;
        let mix_total = self.mix.iter().map(|(_, share)| share).sum();
        let kind = Self::pick(&mut self.rng, &self.mix, mix_total).unwrap_or("pageview");
        let failure = Self::pick(&mut self.rng, &self.failures, 100.0);
        let event_id = Uuid::from_u128(self.rng.random());
        let bytes = event(kind, failure, event_id, session_id, at_us, &mut self.rng);
        match failure {
            Some(failure) => {
                *self
                    .generated
                    .failures
                    .entry(failure.to_string())
                    .or_default() += 1
            }
            None => self.generated.valid += 1,
        }
        if out_of_order {
            self.generated.out_of_order += 1;
        }
        let generated = GeneratedEvent {
            event_id,
            session_id,
            failure,
            bytes,
        };
        if self.duplicates > 0.0 {
            if self.recent.len() < 10_000 {
                self.recent.push(generated.clone());
            } else {
                let index = self.rng.random_range(0..self.recent.len());
                self.recent[index] = generated.clone();
            }
        }
        generated
    }
}

/// One event as JSON bytes, made to fail as `failure` says.
fn event(
    kind: &str,
    failure: Option<&str>,
    event_id: Uuid,
    session_id: Uuid,
    at_us: i64,
    rng: &mut StdRng,
) -> Vec<u8> {
    let path = ["/", "/pricing", "/reviews", "/contact", "/blog"][rng.random_range(0..5)];
    let (category, name, data) = match kind {
        "cta_click" => (
            "page interaction",
            "cta click",
            json!({"host": "www.example.com", "path": path, "element": "chat bubble"}),
        ),
        "submit" => (
            "form interaction",
            "submit",
            json!({"host": "www.example.com", "path": path, "form": {"first_name": "John", "last_name": "Doe"}}),
        ),
        _ => (
            "page interaction",
            "pageview",
            json!({"host": "www.example.com", "path": path}),
        ),
    };
    let timestamp = |micros: i64| {
        DateTime::from_timestamp_micros(micros)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string()
    };
    let mut event = json!({
        "event_id": event_id.to_string(),
        "session_id": session_id.to_string(),
        "category": category,
        "name": name,
        "data": data,
        "timestamp": timestamp(at_us),
    });
    match failure {
        Some("malformed_json") => {
            let text = event.to_string();
            return text.as_bytes()[..text.len() / 2].to_vec();
        }
        Some("missing_field") => {
            event.as_object_mut().map(|fields| fields.remove("name"));
        }
        Some("invalid_type") => event["category"] = json!(7),
        Some("unexpected_field") => event["data"]["colour"] = json!("blue"),
        Some("invalid_session_id") => event["session_id"] = json!("not-a-session"),
        Some("invalid_timestamp") => event["timestamp"] = json!("yesterday at noon"),
        Some("unknown_event_type") => event["name"] = json!("hover"),
        Some("invalid_data") => event["data"]["path"] = json!(404),
        Some("future_timestamp") => {
            event["timestamp"] = json!(timestamp(Utc::now().timestamp_micros() + 86_400_000_000))
        }
        _ => {}
    }
    event.to_string().into_bytes()
}

/// One event as it is, several as a JSON array: a request body for the bridge.
pub fn request_body(events: &[GeneratedEvent]) -> Vec<u8> {
    if let [event] = events {
        return event.bytes.clone();
    }
    let mut body = b"[".to_vec();
    for (index, event) in events.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&event.bytes);
    }
    body.push(b']');
    body
}
