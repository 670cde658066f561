//! The bridge's per-event verdicts (`?verdicts=true`) against what the processor then records:
//! for every failure kind an event sent through the bridge can have, and for a generated mix.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// The ways an event sent through the bridge can be wrong (and one that is right).
const DAMAGES: [&str; 17] = [
    "none",
    "no session_id",
    "no category",
    "no name",
    "no timestamp",
    "no data",
    "session_id a number",
    "data a string",
    "an extra top-level key",
    "session_id not a UUID",
    "timestamp in no accepted form",
    "an unknown type",
    "data.path a number",
    "an extra key in data",
    "data.host missing",
    "timestamp far in the future",
    "timestamp RFC 3339 with an offset",
];

fn damaged(reference_name: &str, damage: &str, rng: &mut StdRng) -> Value {
    let mut event = reference(reference_name);
    event["event_id"] = json!(Uuid::new_v4());
    event["session_id"] = json!(Uuid::new_v4());
    // Text of every kind in the payload: quotes, escapes, non-ASCII, long.
    let texts = [
        "/",
        "/a\"b\\c",
        "/ünïcødé/😀",
        "/tab\there",
        "/\u{0}",
        &"x".repeat(300),
    ];
    event["data"]["path"] = json!(texts[rng.random_range(0..texts.len())]);
    let object = event.as_object_mut().unwrap();
    match damage {
        "none" => {}
        "no session_id" => {
            object.remove("session_id");
        }
        "no category" => {
            object.remove("category");
        }
        "no name" => {
            object.remove("name");
        }
        "no timestamp" => {
            object.remove("timestamp");
        }
        "no data" => {
            object.remove("data");
        }
        "session_id a number" => {
            object.insert("session_id".into(), json!(42));
        }
        "data a string" => {
            object.insert("data".into(), json!("data"));
        }
        "an extra top-level key" => {
            object.insert("extra".into(), json!(1));
        }
        "session_id not a UUID" => {
            object.insert("session_id".into(), json!("s-1"));
        }
        "timestamp in no accepted form" => {
            object.insert("timestamp".into(), json!("yesterday"));
        }
        "an unknown type" => {
            object.insert("name".into(), json!("no such type"));
        }
        "data.path a number" => event["data"]["path"] = json!(404),
        "an extra key in data" => event["data"]["extra"] = json!("x"),
        "data.host missing" => {
            event["data"].as_object_mut().unwrap().remove("host");
        }
        "timestamp far in the future" => event["timestamp"] = json!("2100-01-01 00:00:00"),
        "timestamp RFC 3339 with an offset" => {
            event["timestamp"] = json!("2021-01-01T10:15:27.5+01:00")
        }
        other => unreachable!("{other}"),
    }
    event
}

/// Sends `events` with `?verdicts=true` and returns each event's verdict by its id.
async fn verdicts_of(url: &str, events: &[Value]) -> HashMap<String, Value> {
    let http = reqwest::Client::new();
    let mut verdicts = HashMap::new();
    for chunk in events.chunks(100) {
        let reply = http
            .post(format!("{url}/v1/events?verdicts=true"))
            .bearer_auth("verdict-key")
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
        let reply: Value = reply.json().await.unwrap();
        for (id, verdict) in reply["event_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(reply["verdicts"].as_array().unwrap())
        {
            verdicts.insert(id.as_str().unwrap().to_string(), verdict.clone());
        }
    }
    verdicts
}

/// What the processor recorded for each event, as a verdict.
fn recorded(setup: &Setup, expected: usize) -> HashMap<String, Value> {
    let mut recorded = HashMap::new();
    for row in setup.rows("SELECT toString(event_id) AS id FROM {db}.events FINAL") {
        recorded.insert(
            row["id"].as_str().unwrap().to_string(),
            json!({"verdict": "valid"}),
        );
    }
    for row in setup.rows(
        "SELECT toString(event_id) AS id, error_type, field_path, reason FROM {db}.event_errors FINAL",
    ) {
        recorded.insert(
            row["id"].as_str().unwrap().to_string(),
            json!({
                "verdict": "invalid",
                "error_type": row["error_type"],
                "field_path": row["field_path"],
                "reason": row["reason"],
            }),
        );
    }
    assert_eq!(recorded.len(), expected);
    recorded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridges_verdict_is_what_the_processor_records_for_every_kind_and_a_generated_mix() {
    let setup = Setup::shared().await;
    let bridge = setup.bridge("verdicts", "verdict-key").await;
    let processor = Processor::start(setup.config()).await;
    let url = format!("http://{}", bridge.api_addr);
    let mut rng = StdRng::seed_from_u64(15);

    let types = ["pageview", "cta_click", "form_submit"];
    let mut events: Vec<Value> = types
        .iter()
        .flat_map(|name| DAMAGES.iter().map(move |damage| (*name, *damage)))
        .map(|(name, damage)| damaged(name, damage, &mut StdRng::seed_from_u64(1)))
        .collect();
    for _ in 0..500 {
        let name = types[rng.random_range(0..types.len())];
        let damage = DAMAGES[rng.random_range(0..DAMAGES.len())];
        events.push(damaged(name, damage, &mut rng));
    }
    let verdicts = verdicts_of(&url, &events).await;

    setup
        .wait_for_count(
            "SELECT (SELECT count() FROM {db}.events FINAL) + (SELECT count() FROM {db}.event_errors FINAL)",
            events.len() as u64,
            Duration::from_secs(120),
        )
        .await;
    let recorded = recorded(&setup, events.len());
    for (id, verdict) in &verdicts {
        assert_eq!(Some(verdict), recorded.get(id), "event {id}");
    }
    let kinds: BTreeSet<&str> = verdicts
        .values()
        .map(|verdict| verdict["error_type"].as_str().unwrap_or("valid"))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "valid",
            "missing_field",
            "invalid_type",
            "unexpected_field",
            "invalid_session_id",
            "invalid_timestamp",
            "unknown_event_type",
            "invalid_data",
            "future_timestamp",
        ]),
        "every kind an event through the bridge can have"
    );
    processor.stop().await;
    bridge.shutdown().await.unwrap();
}
