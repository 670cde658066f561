//! The Grafana dashboard (docker/grafana/dashboards/the-eye.json) shows what the services export
//! and what the tables hold.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// Counters that move only on a fault (ClickHouse or a broker away, a coordinator silent): a
/// healthy run never exports them, so for these the test asks that the code registers them.
const ON_FAULT_ONLY: [&str; 2] = [
    "eye_processor_sink_retries_total",
    "eye_processor_partitions_lost_total",
];

/// Every metric a Prometheus panel queries is on the services' `/metrics` after ordinary traffic
/// (valid, invalid and unauthorized requests through the bridge and the processor), and every
/// ClickHouse panel's SQL runs on the tables and finds that traffic.
#[tokio::test]
async fn every_metric_and_table_the_dashboard_queries_is_there() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("docker/grafana/dashboards/the-eye.json")).unwrap(),
    )
    .unwrap();
    let mut metrics = Vec::new();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                metrics.extend(metric_names(expr));
            }
            if let Some(sql) = target["rawSql"].as_str() {
                queries.push((
                    panel["title"].as_str().unwrap().to_string(),
                    sql.to_string(),
                ));
            }
        }
    }
    metrics.sort();
    metrics.dedup();
    assert!(metrics.len() >= 10, "{metrics:?}");
    assert!(queries.len() >= 3, "{queries:?}");

    let setup = Setup::shared().await;
    let bridge = setup.bridge("shop", "shop-key").await;
    let events_url = format!("http://{}/v1/events", bridge.api_addr);
    let processor = Processor::start(setup.config()).await;

    let mut invalid = reference("pageview");
    invalid["data"]["path"] = json!(404);
    let events = [
        reference("pageview"),
        reference("cta_click"),
        reference("form_submit"),
        invalid,
    ];
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .post(&events_url)
        .bearer_auth("shop-key")
        .json(&events)
        .send()
        .await
        .map_or(true, |response| {
            response.status() != reqwest::StatusCode::ACCEPTED
        })
    {
        assert!(Instant::now() < deadline, "the bridge accepts no event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unauthorized = http
        .post(&events_url)
        .bearer_auth("no-such-key")
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), reqwest::StatusCode::UNAUTHORIZED);
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors",
            1,
            Duration::from_secs(60),
        )
        .await;

    // Gauges come with the clients' statistics, every second.
    let scrape_urls = [
        format!("{}/metrics", processor.health_url),
        format!("http://{}/metrics", bridge.operations_addr),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let mut exported = String::new();
        for url in &scrape_urls {
            exported.push_str(&http.get(url).send().await.unwrap().text().await.unwrap());
        }
        let missing: Vec<&String> = metrics
            .iter()
            .filter(|name| !ON_FAULT_ONLY.contains(&name.as_str()))
            .filter(|name| !exports(&exported, name))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(missing.is_empty(), "not exported: {missing:?}");
    for name in ON_FAULT_ONLY {
        assert!(metrics.iter().any(|metric| metric == name), "{name} unused");
        assert!(
            registered_in(&repo("processor/src"), name),
            "{name} is not registered by the processor"
        );
    }

    for (title, sql) in &queries {
        let sql = runnable(sql).replace("eye.", "{db}.");
        let rows = setup.query(&format!("{sql} FORMAT JSONEachRow"));
        // Nothing fires on four events; the other panels show them.
        if title != "Alerts firing" {
            assert!(!rows.is_empty(), "{title} shows nothing:\n{sql}");
        }
    }
    let (title, sql) = &queries[0];
    assert_eq!(title, "Failures by type");
    let failures: Value = serde_json::from_str(&setup.query(&format!(
        "SELECT error_type, toString(failures) AS failures FROM ({}) FORMAT JSONEachRow",
        runnable(sql).replace("eye.", "{db}.")
    )))
    .unwrap();
    assert_eq!(
        failures,
        json!({"error_type": "invalid_data", "failures": "1"})
    );

    processor.stop().await;
    bridge.shutdown().await.unwrap();
}

/// The Grafana macros of a panel's SQL, over all time.
fn runnable(sql: &str) -> String {
    let mut sql = sql.to_string();
    while let Some(start) = sql.find("$__timeFilter(") {
        let end = start + sql[start..].find(')').unwrap();
        let column = &sql[start + "$__timeFilter(".len()..end];
        sql = format!(
            "{}({column} >= toDateTime(0)){}",
            &sql[..start],
            &sql[end + 1..]
        );
    }
    sql
}

/// The `eye_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("eye_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.push(name);
    }
    names
}

/// Whether a Prometheus exposition has a sample of `name`.
fn exports(exposition: &str, name: &str) -> bool {
    exposition.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// Whether a source file under `dir` names the metric.
fn registered_in(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            registered_in(&path, name)
        } else {
            std::fs::read_to_string(&path).is_ok_and(|text| text.contains(&format!("\"{name}\"")))
        }
    })
}
