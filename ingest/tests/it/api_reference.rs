//! The API's description: the OpenAPI document the bridge generates from its code, the copy in
//! `docs/`, the reference page at `/docs`, and schemathesis probing the bridge from the document.

use std::path::Path;
use std::process::Command;

use eye_devenv::testing::services;
use reqwest::StatusCode;

use crate::common::*;

fn generated_document() -> String {
    eye_ingest::openapi::document().to_pretty_json().unwrap() + "\n"
}

#[test]
fn the_checked_in_openapi_document_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated_document(),
        "docs/openapi.json differs from what the code generates; renew it with \
         `cargo run -p eye-ingest -- --print-openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn the_bridge_serves_its_document_and_a_reference_page_that_needs_no_internet() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let served = bridge
        .http
        .get(format!("{}/openapi.json", bridge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let served: serde_json::Value = served.json().await.unwrap();
    let generated: serde_json::Value = serde_json::from_str(&generated_document()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");

    let page = bridge
        .http
        .get(format!("{}/docs/", bridge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    // Every script and stylesheet the page loads comes from the bridge itself.
    let assets: Vec<&str> = page
        .split(['"', '\''])
        .filter(|part| part.ends_with(".js") || part.ends_with(".css"))
        .collect();
    assert!(assets.len() >= 3, "the page's assets: {assets:?}");
    for asset in assets {
        assert!(!asset.contains("//"), "{asset} is not the bridge's own");
        let response = bridge
            .http
            .get(format!(
                "{}/docs/{}",
                bridge.url,
                asset.trim_start_matches("./")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
    let initializer = bridge
        .http
        .get(format!("{}/docs/swagger-initializer.js", bridge.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    bridge.shutdown().await;
}

/// schemathesis generates requests from the document (valid and invalid bodies, every media type)
/// and checks every reply: no 5xx, and status, headers, content type and body as the document
/// says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_reply_outside_the_document() {
    let bridge = Bridge::start(&services().broker.bootstrap(), |_| {}).await;
    let url = bridge.url.clone();
    let report = tempfile::tempdir().unwrap();
    let report_path = report.path().join("report.xml");
    let junit = report_path.clone();
    let scratch = report.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            // schemathesis keeps a cache in its working directory.
            .current_dir(scratch)
            .env(
                "PYTHONPATH",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"),
            )
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .args(["-m", "schemathesis.cli", "run"])
            .arg(format!("{url}/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {SHOP_KEY}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
            ])
            .args(["--mode", "all", "--max-examples", "200", "--seed", "1"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--workers", "1", "--no-color"])
            .arg("--report-junit-path")
            .arg(&junit)
            .args(["--report", "junit"])
            .output()
            .expect("schemathesis runs (cargo dev test installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis failed:\n{stdout}");
    assert!(report_path.is_file(), "schemathesis wrote no report");
    bridge.shutdown().await;
}
