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
