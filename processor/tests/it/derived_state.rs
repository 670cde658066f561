//! Derived state: sessions and watermarks are exactly what the log implies.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// What a session should look like, computed in the test from the generated events.
#[derive(Debug, Default, PartialEq)]
struct ExpectedSession {
    first_us: u64,
    last_us: u64,
    event_ids: std::collections::BTreeSet<Uuid>,
    by_type: std::collections::BTreeMap<(String, String), u64>,
    pageviews: Vec<(u64, String)>,
    form_submitted: bool,
    failed_ids: std::collections::BTreeSet<Uuid>,
    last_received: u64,
}

/// Sessions computed independently from a generated stream (late, out-of-order, duplicated and
/// failed events) equal what `session_summary` derives, and the session topic's latest message
/// of each is the session. Each message has a key of its own, so a session's events spread over
/// the partitions: the sessions are read back from ClickHouse.
#[tokio::test]
async fn sessions_match_an_oracle_over_late_duplicated_and_failed_events() {
    let published =
        sessions_match_the_oracle(|_| {}, Keys::OnePerMessage, BetweenHalves::Nothing).await;
    assert_eq!(published.from_memory, 0);
}

/// Keyed by session, as the bridge produces: the processor publishes the sessions it holds in
/// memory, and they are the sessions.
#[tokio::test]
async fn sessions_held_in_memory_match_the_oracle() {
    let published =
        sessions_match_the_oracle(|_| {}, Keys::BySession, BetweenHalves::Nothing).await;
    assert!(published.from_memory > 0);
    assert_eq!(published.from_clickhouse, 0, "no session read back");
}

/// Sessions that left memory (a bound of 3) and move again are published as ClickHouse has them.
#[tokio::test]
async fn sessions_that_left_memory_are_published_as_clickhouse_has_them() {
    let published = sessions_match_the_oracle(
        |config| config.session_updates.max_sessions_in_memory = 3,
        Keys::BySession,
        BetweenHalves::Nothing,
    )
    .await;
    assert!(published.from_memory > 0 && published.from_clickhouse > 0);
}

/// A restarted processor restores the sessions it wrote before from their changelog: their late
/// events neither start them afresh nor need ClickHouse.
#[tokio::test]
async fn a_restarted_processor_restores_its_sessions_from_the_changelog() {
    let published =
        sessions_match_the_oracle(|_| {}, Keys::BySession, BetweenHalves::Restart).await;
    assert!(published.from_memory > 0);
    assert_eq!(published.from_clickhouse, 0, "no session read back");
}

/// Killed (SIGKILL) once the first half is committed: the next processor restores every
/// session from the changelog.
#[tokio::test]
async fn a_processor_after_a_sigkill_restores_the_sessions_from_the_changelog() {
    let published = sessions_match_the_oracle(
        |_| {},
        Keys::BySession,
        BetweenHalves::Killed(KillPoint::Committed),
    )
    .await;
    assert!(
        published.from_memory > 0,
        "from memory {}, from ClickHouse {}",
        published.from_memory,
        published.from_clickhouse
    );
    assert_eq!(published.from_clickhouse, 0, "no session read back");
}

/// Killed (SIGKILL) the moment the first half is in ClickHouse, most likely before its sessions'
/// states are in the changelog and its offsets committed: the next processor restores what the
/// changelog has, reads the rest back, and every session is whole.
#[tokio::test]
async fn a_processor_killed_before_its_states_are_out_loses_no_session() {
    sessions_match_the_oracle(
        |_| {},
        Keys::BySession,
        BetweenHalves::Killed(KillPoint::Written),
    )
    .await;
}

/// Without the changelog's states (a restore that cannot finish in time), the sessions met
/// again are read back from ClickHouse and never started afresh.
#[tokio::test]
async fn a_restarted_processor_without_the_changelog_does_not_start_sessions_afresh() {
    let published = sessions_match_the_oracle(
        |config| config.session_updates.restore_timeout_ms = 0,
        Keys::BySession,
        BetweenHalves::Restart,
    )
    .await;
    assert!(
        published.from_clickhouse > 0,
        "the late events' sessions are read back"
    );
}

/// Partitions handed to a second processor: it restores their sessions from the changelog, and
/// neither publishes a session from what it alone saw.
#[tokio::test]
async fn sessions_stay_whole_when_a_second_processor_takes_partitions() {
    let published =
        sessions_match_the_oracle(|_| {}, Keys::BySession, BetweenHalves::SecondProcessorJoins)
            .await;
    assert_eq!(published.from_clickhouse, 0, "no session read back");
}

/// A full replay between the halves, beside the live processor: the tables are rebuilt, the
/// replay publishes the sessions again, and the live processor's sessions stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_whole_across_a_full_replay() {
    sessions_match_the_oracle(|_| {}, Keys::BySession, BetweenHalves::Replay).await;
}

/// The session updates published so far, from memory and from ClickHouse.
async fn counters(processor: &Processor) -> (u64, u64) {
    (
        counter_value(processor, FROM_MEMORY).await,
        counter_value(processor, FROM_CLICKHOUSE).await,
    )
}

/// How many session updates a processor published, by where it took the session from.
struct Published {
    from_memory: u64,
    from_clickhouse: u64,
}

const FROM_MEMORY: &str = "eye_processor_session_updates_total{from=\"memory\"}";
const FROM_CLICKHOUSE: &str = "eye_processor_session_updates_total{from=\"clickhouse\"}";

/// How the generated messages are keyed.
enum Keys {
    /// `key-<index>`: a session's events land in several partitions.
    OnePerMessage,
    /// The session id, as the raw topic's contract says.
    BySession,
}

/// When the first processor is killed.
#[derive(Clone, Copy, PartialEq)]
enum KillPoint {
    /// Once the first half's rows are in ClickHouse.
    Written,
    /// Once its offsets are committed too (so its sessions' states are in the changelog).
    Committed,
}

/// What happens to the processors between the two halves of the stream.
enum BetweenHalves {
    Nothing,
    /// Stopped (once the first half is written) and a new one started.
    Restart,
    /// A second processor joins the group (once the first half is written).
    SecondProcessorJoins,
    /// The first half is written by a processor process, killed (SIGKILL) at that point; the
    /// second by a new processor.
    Killed(KillPoint),
    /// A full replay runs (once the first half is written) beside the live processor.
    Replay,
}

async fn sessions_match_the_oracle(
    adjust: impl FnOnce(&mut eye_processor::config::ProcessorConfig),
    keys: Keys,
    between: BetweenHalves,
) -> Published {
    let setup = Setup::shared().await;
    let mut config = setup.config();
    adjust(&mut config);
    let logs = tempfile::tempdir().unwrap();
    let (mut processor, process) = match between {
        BetweenHalves::Killed(_) => (
            None,
            Some(spawn_processor(
                &config,
                &logs.path().join("killed.log"),
                // Its partitions pass to the next processor soon after the kill.
                &[("EYE_CONSUMER__SESSION_TIMEOUT_MS", "6000".into())],
            )),
        ),
        _ => (Some(Processor::start(config.clone()).await), None),
    };
    // The counters are the test binary's, shared by every processor it runs (one at a time).
    let mut before = None;
    if let Some(processor) = &processor {
        before = Some(counters(processor).await);
    }
    let mut joined = None;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |bound: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    let base_us: u64 = 1_609_492_527_000_000; // 2021-01-01 09:15:27 UTC
    let kinds = [
        ("page interaction", "pageview"),
        ("page interaction", "cta click"),
        ("form interaction", "submit"),
    ];
    let paths = ["/", "/pricing", "/reviews", "/contact", "/faq"];
    let mut expected: std::collections::BTreeMap<(String, Uuid), ExpectedSession> =
        Default::default();
    let mut messages: Vec<RawMessage> = Vec::new();
    for session_index in 0..25u64 {
        let application = if session_index % 2 == 0 {
            "shop"
        } else {
            "blog"
        };
        let session_id =
            Uuid::from_u128(0x5e55_0000_0000_4000_8000_0000_0000_0000 + u128::from(session_index));
        let session = expected
            .entry((application.to_string(), session_id))
            .or_default();
        for event_index in 0..3 + next(10) {
            let (category, name) = kinds[next(3) as usize];
            let path = paths[next(5) as usize];
            // Distinct times within a session; production order is shuffled below.
            let at_us =
                base_us + session_index * 3_600_000_000 + event_index * 7_000_000 + next(999_999);
            let received_s = base_us / 1_000_000 + 86_400 + next(600);
            let event_id =
                Uuid::from_u128((u128::from(session_index) << 64) + u128::from(event_index) + 1);
            let mut event = json!({
                "session_id": session_id.to_string(),
                "category": category,
                "name": name,
                "data": {"host": "h", "path": path},
                "timestamp": chrono::DateTime::from_timestamp_micros(at_us as i64).unwrap().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            });
            if name == "cta click" {
                event["data"]["element"] = json!("button");
            }
            if name == "submit" {
                event["data"]["form"] = json!({"email": "a@b.c"});
            }
            let failing = next(8) == 0;
            if failing {
                event["data"]["path"] = json!(404);
                session.failed_ids.insert(event_id);
            } else {
                session.first_us = if session.event_ids.is_empty() {
                    at_us
                } else {
                    session.first_us.min(at_us)
                };
                session.last_us = session.last_us.max(at_us);
                session.event_ids.insert(event_id);
                *session
                    .by_type
                    .entry((category.to_string(), name.to_string()))
                    .or_default() += 1;
                if name == "pageview" {
                    session.pageviews.push((at_us, path.to_string()));
                }
                session.form_submitted |= name == "submit";
            }
            session.last_received = session.last_received.max(received_s);
            let received_at = chrono::DateTime::from_timestamp(received_s as i64, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let message: RawMessage = (
                event.to_string().into_bytes(),
                vec![
                    ("eye.event_id", event_id.to_string()),
                    ("eye.application", application.to_string()),
                    ("eye.received_at", received_at),
                ],
            );
            if next(10) == 0 {
                messages.push(message.clone()); // duplicated
            }
            messages.push(message);
        }
    }
    for index in (1..messages.len()).rev() {
        messages.swap(index, next(index as u64 + 1) as usize);
    }
    // Half now, half later: the second half holds late events for sessions already stored.
    let (first_half, second_half) = messages.split_at(messages.len() / 2);
    let key_of = |index: usize, (payload, _): &RawMessage| match keys {
        Keys::OnePerMessage => format!("key-{index}"),
        Keys::BySession => serde_json::from_slice::<Value>(payload).unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_string(),
    };
    setup.produce_keyed(first_half, key_of).await;
    // The second half only once the first is written: its late events meet stored sessions.
    let written: std::collections::HashSet<&String> = first_half
        .iter()
        .flat_map(|(_, headers)| headers.iter())
        .filter(|(name, _)| *name == "eye.event_id")
        .map(|(_, id)| id)
        .collect();
    setup
        .wait_for_count(
            "SELECT uniqExact(event_id) FROM (SELECT event_id FROM {db}.events \
             UNION ALL SELECT event_id FROM {db}.event_errors)",
            written.len() as u64,
            Duration::from_secs(60),
        )
        .await;
    match between {
        BetweenHalves::Nothing => {}
        BetweenHalves::Restart => {
            processor.take().unwrap().stop().await;
            processor = Some(Processor::start(config.clone()).await);
        }
        BetweenHalves::SecondProcessorJoins => {
            joined = Some(Processor::start(config.clone()).await);
        }
        BetweenHalves::Killed(point) => {
            if point == KillPoint::Committed {
                wait_for_committed(&config, first_half.len() as i64, Duration::from_secs(60)).await;
            }
            drop(process);
            let restarted = Processor::start(config.clone()).await;
            before = Some(counters(&restarted).await);
            processor = Some(restarted);
        }
        BetweenHalves::Replay => {
            eye_processor::replay::replay(config.clone(), None, |_| {}, |_| {})
                .await
                .unwrap();
        }
    }
    let processor = processor.unwrap();
    let before = before.unwrap();
    setup.produce_keyed(second_half, key_of).await;

    let valid: usize = expected
        .values()
        .map(|session| session.event_ids.len())
        .sum();
    let failed: usize = expected
        .values()
        .map(|session| session.failed_ids.len())
        .sum();
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            valid as u64,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            failed as u64,
            Duration::from_secs(60),
        )
        .await;
    // A row of `event_errors` is visible a moment before the materialized view's row of
    // `session_errors` (the insert commits the table's part first).
    setup
        .wait_for_count(
            "SELECT toUInt64(sum(errors)) FROM (SELECT uniqExactMerge(errors) AS errors \
             FROM {db}.session_errors GROUP BY application, session_id)",
            failed as u64,
            Duration::from_secs(60),
        )
        .await;

    let rows = setup.query(
        "SELECT application, toString(session_id) AS session_id, \
         toUInt64(start_time) * 1000000 + start_time_us AS first_us, toUInt64(end_time) * 1000000 + end_time_us AS last_us, \
         event_count, events_by_type, entry_path, exit_path, distinct_pages, form_submitted, error_count, \
         toUInt64(last_update) AS last_update FROM {db}.session_summary ORDER BY application, session_id FORMAT JSONEachRow",
    );
    let actual: Vec<Value> = rows
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let with_events: Vec<_> = expected
        .iter()
        .filter(|(_, session)| !session.event_ids.is_empty())
        .collect();
    assert_eq!(
        actual.len(),
        with_events.len(),
        "one row per session with valid events"
    );
    for ((application, session_id), session) in with_events {
        let row = actual
            .iter()
            .find(|row| {
                row["application"] == application.as_str()
                    && row["session_id"] == session_id.to_string()
            })
            .unwrap_or_else(|| panic!("session {application}/{session_id} missing"));
        let number = |key: &str| {
            row[key]
                .as_u64()
                .or_else(|| row[key].as_str().and_then(|text| text.parse().ok()))
                .unwrap()
        };
        let mut pageviews = session.pageviews.clone();
        pageviews.sort();
        let distinct: std::collections::BTreeSet<&String> =
            pageviews.iter().map(|(_, path)| path).collect();
        let by_type: Vec<Value> = session
            .by_type
            .iter()
            .map(|((category, name), count)| json!([category, name, count]))
            .collect();
        assert_eq!(number("first_us"), session.first_us, "{session_id} start");
        assert_eq!(number("last_us"), session.last_us, "{session_id} end");
        assert_eq!(
            number("event_count"),
            session.event_ids.len() as u64,
            "{session_id} count"
        );
        let actual_by_type: Vec<Value> = row["events_by_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                json!([
                    entry[0],
                    entry[1],
                    entry[2]
                        .as_u64()
                        .or_else(|| entry[2].as_str().and_then(|text| text.parse().ok()))
                ])
            })
            .collect();
        assert_eq!(actual_by_type, by_type, "{session_id} by type");
        assert_eq!(
            row["entry_path"],
            pageviews
                .first()
                .map(|(_, path)| path.as_str())
                .unwrap_or(""),
            "{session_id} entry"
        );
        assert_eq!(
            row["exit_path"],
            pageviews
                .last()
                .map(|(_, path)| path.as_str())
                .unwrap_or(""),
            "{session_id} exit"
        );
        assert_eq!(
            number("distinct_pages"),
            distinct.len() as u64,
            "{session_id} pages"
        );
        assert_eq!(
            number("form_submitted"),
            u64::from(session.form_submitted),
            "{session_id} form"
        );
        assert_eq!(
            number("error_count"),
            session.failed_ids.len() as u64,
            "{session_id} errors"
        );
        assert_eq!(
            number("last_update"),
            session.last_received,
            "{session_id} last update"
        );
    }

    // The session topic's latest message per session is the session.
    let schema =
        eye_core::schemas::TopicSchema::load(&repo("schemas/avro/topics/session.avsc")).unwrap();
    let mut latest: HashMap<String, Value> = HashMap::new();
    for message in read_topic(
        &setup.bootstrap,
        &format!("{}_sessions", setup.topic),
        4,
        actual.len(),
    )
    .await
    {
        let update = Value::try_from(schema.decode(message.payload().unwrap()).unwrap()).unwrap();
        latest.insert(
            String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            update,
        );
    }
    assert_eq!(
        latest.len(),
        actual.len(),
        "one key per session with valid events"
    );
    for row in &actual {
        let key = format!(
            "{}/{}",
            row["application"].as_str().unwrap(),
            row["session_id"].as_str().unwrap()
        );
        let update = &latest[&key];
        let number = |value: &Value| {
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
                .unwrap()
        };
        let by_type: serde_json::Map<String, Value> = row["events_by_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                (
                    format!(
                        "{}/{}",
                        entry[0].as_str().unwrap(),
                        entry[1].as_str().unwrap()
                    ),
                    json!(number(&entry[2])),
                )
            })
            .collect();
        let path = |value: &Value| match value.as_str() {
            Some("") | None => Value::Null,
            Some(path) => json!(path),
        };
        assert_eq!(
            (
                number(&update["start_time"]),
                number(&update["end_time"]),
                number(&update["events"]),
                update["events_by_type"].clone(),
                update["entry_path"].clone(),
                update["exit_path"].clone(),
                number(&update["distinct_pages"]),
                update["form_submitted"].as_bool().unwrap(),
                number(&update["errors"]),
                number(&update["last_update"]) / 1_000_000,
            ),
            (
                number(&row["first_us"]),
                number(&row["last_us"]),
                number(&row["event_count"]),
                Value::Object(by_type),
                path(&row["entry_path"]),
                path(&row["exit_path"]),
                number(&row["distinct_pages"]),
                number(&row["form_submitted"]) == 1,
                number(&row["error_count"]),
                number(&row["last_update"]),
            ),
            "{key}"
        );
    }
    let published = Published {
        from_memory: counter_value(&processor, FROM_MEMORY).await - before.0,
        from_clickhouse: counter_value(&processor, FROM_CLICKHOUSE).await - before.1,
    };
    processor.stop().await;
    if let Some(joined) = joined {
        joined.stop().await;
    }
    published
}

/// `ingest_watermarks` says, per partition, how far the data is written and how recent it is.
#[tokio::test]
async fn watermarks_report_written_offsets_and_latest_times_per_partition() {
    let setup = Setup::shared().await;
    let processor = Processor::start(setup.config()).await;
    let messages: Vec<RawMessage> = (0..40)
        .map(|index| {
            let mut event = reference("pageview");
            event["timestamp"] = json!(format!("2021-01-01 09:00:{:02}", index));
            if index == 39 {
                event["data"]["path"] = json!(0);
            }
            let received_at = format!("2021-01-02T00:00:{:02}.000000Z", index);
            (
                event.to_string().into_bytes(),
                vec![("eye.received_at", received_at)],
            )
        })
        .collect();
    setup.produce(&messages).await;
    setup
        .wait_for_count(
            "SELECT sum(committed_offset) FROM {db}.ingest_watermarks",
            40,
            Duration::from_secs(60),
        )
        .await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.event_errors FINAL",
            1,
            Duration::from_secs(60),
        )
        .await;
    let watermarks = setup.query(
        "SELECT partition, committed_offset, lag, event_time_watermark, received_time_watermark \
         FROM {db}.ingest_watermarks ORDER BY partition FORMAT TSV",
    );
    // The same figures computed from the rows themselves (the failed event counts for received
    // time, not for event time).
    let from_rows = setup.query(
        "SELECT kafka_partition, max(kafka_offset) + 1, 0, max(event_time), max(received) FROM \
         (SELECT kafka_partition, kafka_offset, timestamp AS event_time, received_at AS received FROM {db}.events FINAL \
          UNION ALL SELECT kafka_partition, kafka_offset, toDateTime(0, 'UTC'), received_at FROM {db}.event_errors FINAL) \
         GROUP BY kafka_partition ORDER BY kafka_partition FORMAT TSV",
    );
    assert_eq!(watermarks, from_rows);
    processor.stop().await;
}
