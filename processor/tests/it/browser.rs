//! What a person and a web page do in a real browser (Debian's headless Chromium, driven by the
//! playwright-core scripts in `browser/`), through the bridge and the processor into ClickHouse.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const KEY: &str = "browser-key";

/// Runs `browser/<script>` under node with `env`, and returns the JSON line it prints last.
async fn run_script(script: &str, env: Vec<(&'static str, String)>) -> Value {
    let script = repo("browser").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .envs(env)
            .output()
            .expect("node runs (cargo dev test installs playwright-core and chromium)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|err| panic!("{err}: {stdout}"))
}

/// A person opens the API reference, pastes a key, sends the reference pageview with a click, and
/// the event is a row of `events`; the page loads nothing from outside the bridge. The
/// screenshot is the README's (`docs/api-reference.png`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_page_sends_a_pageview_that_lands_in_events() {
    let setup = Setup::shared().await;
    let bridge = setup.bridge("docs-reader", KEY).await;
    let processor = Processor::start(setup.config()).await;
    let screenshot = tempfile::tempdir().unwrap();
    let screenshot_path = screenshot.path().join("api-reference.png");

    let reply = run_script(
        "docs_page.mjs",
        vec![
            ("EYE_DOCS_URL", format!("http://{}/docs/", bridge.api_addr)),
            ("EYE_API_KEY", KEY.to_string()),
            ("EYE_SCREENSHOT", screenshot_path.display().to_string()),
        ],
    )
    .await;
    assert_eq!(reply["status"], 202, "{reply}");
    assert_eq!(reply["outside"], Value::Array(vec![]), "{reply}");
    let event_id = reply["body"]["event_ids"][0].as_str().expect("an event id");
    setup
        .wait_for_count(
            &format!(
                "SELECT count() FROM {{db}}.events WHERE event_id = '{event_id}' \
                 AND name = 'pageview' AND application = 'docs-reader'"
            ),
            1,
            Duration::from_secs(60),
        )
        .await;
    assert!(std::fs::metadata(&screenshot_path).unwrap().len() > 10_000);
    if std::env::var_os("EYE_SAVE_SCREENSHOTS").is_some() {
        std::fs::copy(&screenshot_path, repo("docs/api-reference.png")).unwrap();
    }
    processor.stop().await;
    bridge.shutdown().await.unwrap();
}

/// A visitor's whole visit through the browser snippet served by the bridge: a pageview, a
/// call-to-action, a form submitted while the bridge refuses connections, the next page, the
/// bridge back, one more click and the page left. Every event the page made is in `events` once,
/// of one session, with its type and `data` as the page gave them, in the order they happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippet_loses_nothing_and_duplicates_nothing_across_an_outage_and_a_page_exit() {
    let setup = Setup::shared().await;
    let site_port = eye_devenv::process::free_port();
    let mut ingest = setup.bridge_config("website", KEY);
    ingest.cors_allowed_origins = vec![format!("http://127.0.0.1:{site_port}")];
    let bridge = start_bridge(ingest).await;
    let processor = Processor::start(setup.config()).await;

    let visit = run_script(
        "snippet.mjs",
        vec![
            ("EYE_BRIDGE_URL", format!("http://{}", bridge.api_addr)),
            ("EYE_API_KEY", KEY.to_string()),
            ("EYE_SITE_PORT", site_port.to_string()),
            ("EYE_OUTAGE_MS", "4000".to_string()),
        ],
    )
    .await;
    let made = visit["events"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = made
        .iter()
        .map(|event| {
            (
                event["name"].as_str().unwrap(),
                event["data"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("pageview", "/"),
            ("cta click", "/"),
            ("submit", "/"),
            ("pageview", "/thanks"),
            ("cta click", "/thanks"),
        ],
        "{visit}"
    );
    assert_eq!(visit["sessions"].as_array().unwrap().len(), 1, "{visit}");
    let session_id = visit["sessions"][0].as_str().unwrap();

    setup
        .wait_for_count(
            &format!("SELECT count() FROM {{db}}.events FINAL WHERE session_id = '{session_id}'"),
            made.len() as u64,
            Duration::from_secs(60),
        )
        .await;
    // Resent copies (the exit beacon's, or a retry's) collapse into one row each; the order is
    // that of each event's first copy on the topic (one session, one partition).
    let order: Vec<Value> = setup
        .rows(&format!(
            "SELECT toString(event_id) AS event_id FROM {{db}}.events \
         WHERE session_id = '{session_id}' GROUP BY event_id ORDER BY min(kafka_offset)"
        ))
        .into_iter()
        .map(|row| row["event_id"].clone())
        .collect();
    let stored: Vec<Value> = setup.rows(&format!(
        "SELECT toString(event_id) AS event_id, category, name, data FROM {{db}}.events FINAL \
         WHERE session_id = '{session_id}'"
    ));
    let stored: Vec<Value> = order
        .iter()
        .map(|id| {
            let row = stored.iter().find(|row| &row["event_id"] == id).unwrap();
            serde_json::json!({
                "event_id": row["event_id"],
                "category": row["category"],
                "name": row["name"],
                "data": serde_json::from_str::<Value>(row["data"].as_str().unwrap()).unwrap(),
            })
        })
        .collect();
    let expected: Vec<Value> = made
        .iter()
        .map(|event| {
            serde_json::json!({
                "event_id": event["event_id"],
                "category": event["category"],
                "name": event["name"],
                "data": event["data"],
            })
        })
        .collect();
    assert_eq!(stored, expected);
    assert_eq!(
        setup.count(&format!(
            "SELECT count() FROM {{db}}.event_errors WHERE session_id = '{session_id}'"
        )),
        0
    );
    processor.stop().await;
    bridge.shutdown().await.unwrap();
}

/// Over the application's rate limit (429, `Retry-After`) the snippet sends the same events again
/// until all are in; an event made offline waits and goes once the browser is online; after its
/// idle time a tab starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippet_gets_every_event_through_a_rate_limit_and_offline_and_rotates_an_idle_session()
{
    let setup = Setup::shared().await;
    let site_port = eye_devenv::process::free_port();
    let mut ingest = setup.bridge_config("limited-site", KEY);
    ingest.cors_allowed_origins = vec![format!("http://127.0.0.1:{site_port}")];
    ingest.limits.max_batch_events = 5;
    ingest.applications[0].rate_limit = Some(eye_ingest::config::RateLimit {
        events_per_second: 3,
        burst_events: 5,
    });
    let bridge = start_bridge(ingest).await;
    let processor = Processor::start(setup.config()).await;

    let visit = run_script(
        "snippet_limits.mjs",
        vec![
            ("EYE_BRIDGE_URL", format!("http://{}", bridge.api_addr)),
            ("EYE_API_KEY", KEY.to_string()),
            ("EYE_SITE_PORT", site_port.to_string()),
            ("EYE_CLICKS", "12".to_string()),
        ],
    )
    .await;
    assert!(visit["statuses"]["429"].as_u64() > Some(0), "{visit}");
    assert!(visit["queuedOffline"].as_u64() > Some(0), "{visit}");
    let made = visit["events"].as_array().unwrap();
    assert_eq!(made.len(), 15, "{visit}");
    let sessions: Vec<&str> = made
        .iter()
        .map(|event| event["session_id"].as_str().unwrap())
        .collect();
    assert!(
        sessions[..14].iter().all(|id| *id == sessions[0]),
        "{visit}"
    );
    assert_ne!(sessions[14], sessions[0], "{visit}");

    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            15,
            Duration::from_secs(60),
        )
        .await;
    let stored = setup.query(&format!(
        "SELECT arrayStringConcat(groupArray(toString(event_id)), ',') FROM \
         (SELECT event_id FROM {{db}}.events WHERE session_id = '{}' \
          GROUP BY event_id ORDER BY min(kafka_offset))",
        sessions[0]
    ));
    let expected: Vec<&str> = made[..14]
        .iter()
        .map(|event| event["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(stored, expected.join(","));
    assert_eq!(
        setup.count(&format!(
            "SELECT count() FROM {{db}}.events FINAL WHERE session_id = '{}'",
            sessions[14]
        )),
        1
    );
    processor.stop().await;
    bridge.shutdown().await.unwrap();
}
