//! What the README promises: its queries return the right rows.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// The SQL blocks of the README, run against a database holding known events.
#[tokio::test]
async fn readme_queries_return_the_right_rows() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    // Received on 2021-01-03, so the per-minute counts are known in advance.
    let received = |event: &Value| -> RawMessage {
        (
            event.to_string().into_bytes(),
            vec![("eye.received_at", "2021-01-03T00:00:10.000000Z".to_string())],
        )
    };
    let event = |name: &str, id: u128, session: &str, timestamp: &str| {
        let mut event = reference(name);
        event["event_id"] = json!(Uuid::from_u128(id).to_string());
        event["session_id"] = json!(session);
        event["timestamp"] = json!(timestamp);
        received(&event)
    };
    let session = "e2085be5-9137-4e4e-80b5-f1ffddc25423";
    let other = "0f6b1a7e-1111-4e4e-80b5-f1ffddc25423";
    let mut bad_session = reference("pageview");
    bad_session["session_id"] = json!("nope");
    let mut unknown = reference("pageview");
    unknown["name"] = json!("scroll");
    setup
        .produce(&[
            event("form_submit", 3, session, "2021-01-01 09:15:27.243860"),
            event("pageview", 4, session, "2021-01-01 09:20:00.000001"),
            event("pageview", 1, session, "2021-01-01 09:15:27.243860"),
            event("cta_click", 2, session, "2021-01-01 09:15:27.243860"),
            event("cta_click", 5, other, "2021-01-01 10:30:00"),
            event("pageview", 6, other, "2021-01-02 08:00:00"),
            received(&bad_session),
            received(&unknown),
        ])
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            6,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            2,
            Duration::from_secs(60),
        )
        .await;
    // Progress reports are written after the rows of their batch.
    setup
        .wait_for_count(
            "SELECT sum(committed_offset) FROM {db}.ingest_watermarks",
            8,
            Duration::from_secs(60),
        )
        .await;

    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let queries: Vec<&str> = readme
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    let expected = [
        "2021-01-01 09:15:27\t243860\tpage interaction\tpageview\t/\n\
         2021-01-01 09:15:27\t243860\tpage interaction\tcta click\t/\n\
         2021-01-01 09:15:27\t243860\tform interaction\tsubmit\t/\n\
         2021-01-01 09:20:00\t1\tpage interaction\tpageview\t/\n",
        "cta click\t2\npageview\t2\n",
        "form interaction\tsubmit\t1\npage interaction\tcta click\t1\npage interaction\tpageview\t2\n",
        "direct\t0f6b1a7e-1111-4e4e-80b5-f1ffddc25423\t2021-01-01 10:30:00\t77400\t2\t/\t/\t0\t0\n\
         direct\te2085be5-9137-4e4e-80b5-f1ffddc25423\t2021-01-01 09:15:27\t272.756141\t4\t/\t/\t1\t1\n",
        "__TOPIC__\t8\t0\t2021-01-03 00:00:10\n",
        "invalid_session_id\t1\nunknown_event_type\t1\n",
        "direct\tpage interaction\tpageview\tinvalid_session_id\t2021-01-03 00:00:00\t1\t3\t0.25\n\
         direct\tpage interaction\tscroll\tunknown_event_type\t2021-01-03 00:00:00\t1\t0\t1\n",
    ];
    assert_eq!(queries.len(), expected.len(), "the README's SQL blocks");
    for (query, expected) in queries.iter().zip(expected) {
        let sql =
            format!("{} FORMAT TSV", query.trim()).replace("eye.", &format!("{}.", setup.database));
        let expected = expected.replace("__TOPIC__", &setup.topic);
        assert_eq!(setup.clickhouse.query(&sql).unwrap(), expected, "{query}");
    }
    processor.stop().await;
}

/// The event the README shows is the reference pageview the examples send.
#[test]
fn the_readme_shows_the_reference_pageview() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let shown = readme
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a JSON block in the README");
    let shown: Value = serde_json::from_str(shown).expect("the README's event is JSON");
    assert_eq!(shown, reference("pageview"));
}
