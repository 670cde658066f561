//! Servers that stop answering: a broker or ClickHouse that is down or hangs (SIGSTOP) makes the processor not ready, every wait on it is bounded, and so is shutdown.

use std::time::{Duration, Instant};

use eye_devenv::testing::{services, OwnedBroker, OwnedClickHouse, Signal};
use serde_json::json;
use uuid::Uuid;

use crate::common::*;

/// The processor, started once one event it read is in `events`.
async fn start_with_one_event(
    setup: &Setup,
    config: eye_processor::config::ProcessorConfig,
) -> Processor {
    let processor = Processor::start(config).await;
    setup.produce(&[direct(&reference("pageview"))]).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events",
            1,
            Duration::from_secs(60),
        )
        .await;
    processor
}

#[tokio::test]
async fn readiness_is_false_while_the_broker_is_down_and_true_once_it_is_back() {
    let mut broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let processor = start_with_one_event(&setup, setup.config()).await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;

    broker.halt();
    wait_for_readiness(&processor, false, "Kafka broker", Duration::from_secs(30)).await;
    broker.resume();
    wait_for_readiness(&processor, true, "", Duration::from_secs(60)).await;
    processor.stop().await;
}

/// A broker that hangs (SIGSTOP) instead of refusing: connections stay open and nothing answers.
// Two workers: a call that blocks one (the fault looked for) leaves the time-out running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_makes_the_processor_not_ready_and_its_shutdown_is_bounded() {
    let broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let mut config = setup.config();
    // How long librdkafka waits for any answer before it drops the connection.
    config
        .kafka
        .librdkafka
        .insert("socket.timeout.ms".into(), "5000".into());
    let processor = start_with_one_event(&setup, config).await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;

    broker.signal(Signal::SIGSTOP).unwrap();
    wait_for_readiness(&processor, false, "Kafka broker", Duration::from_secs(90)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(120), processor.stop()).await;
    broker.signal(Signal::SIGCONT).unwrap();
    assert!(stopped.is_ok(), "the processor never stopped");
}

// Two workers: a call that blocks one (the fault looked for) leaves the time-out running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_right_after_the_broker_hangs_is_bounded() {
    let broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let processor = start_with_one_event(&setup, setup.config()).await;
    // Written offsets are stored by now: the shutdown commit has something to send.
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.signal(Signal::SIGSTOP).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(60), processor.stop()).await;
    broker.signal(Signal::SIGCONT).unwrap();
    assert!(stopped.is_ok(), "the processor never stopped");
}

/// Past the session time-out without an answer from the hung broker, librdkafka takes the
/// partitions away itself (assignment lost) and the rebalance callback commits what was written:
/// that commit must not wait for the broker forever, or nothing, not even shutdown, runs again.
// Two workers: a call that blocks one (the fault looked for) leaves the time-out running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_lost_to_a_hung_broker_are_let_go_and_shutdown_is_bounded() {
    const LOST: &str = "eye_processor_partitions_lost_total";
    let broker = OwnedBroker::start();
    let setup = Setup::new(&broker.bootstrap(), &services().clickhouse).await;
    let mut config = setup.config();
    config.consumer.session_timeout_ms = 6_000;
    let processor = start_with_one_event(&setup, config).await;
    // Written offsets are stored by now: the revoke's commit has something to send.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost_before = counter_value(&processor, LOST).await;
    broker.signal(Signal::SIGSTOP).unwrap();
    let mut lost = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if counter_value(&processor, LOST).await > lost_before {
            lost = true;
            break;
        }
    }
    let stopped = tokio::time::timeout(Duration::from_secs(60), processor.stop()).await;
    broker.signal(Signal::SIGCONT).unwrap();
    assert!(lost, "the partitions were never lost to the hung broker");
    assert!(stopped.is_ok(), "the processor never stopped");
}

/// Ten pageviews with the event ids `from + 1 ..= from + 10`.
fn ten_pageviews(from: u128) -> Vec<RawMessage> {
    (from..from + 10)
        .map(|index| {
            let mut event = reference("pageview");
            event["event_id"] = json!(Uuid::from_u128(index + 1).to_string());
            direct(&event)
        })
        .collect()
}

/// A ClickHouse that hangs (SIGSTOP) instead of refusing: the write neither fails nor ends, and
/// only the standing offsets show it.
#[tokio::test]
async fn a_processor_stuck_on_a_hung_clickhouse_reports_not_ready_until_it_moves_again() {
    let clickhouse = OwnedClickHouse::start();
    let setup = Setup::new(&services().broker.bootstrap(), &clickhouse.server).await;
    let mut config = setup.config();
    config.consumer.stalled_after_ms = 3_000;
    let processor = Processor::start(config).await;
    setup.produce(&ten_pageviews(0)).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events",
            10,
            Duration::from_secs(60),
        )
        .await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;

    clickhouse.signal(Signal::SIGSTOP).unwrap();
    setup.produce(&ten_pageviews(10)).await;
    wait_for_readiness(
        &processor,
        false,
        "committed offsets have not moved",
        Duration::from_secs(30),
    )
    .await;
    clickhouse.signal(Signal::SIGCONT).unwrap();
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events FINAL",
            20,
            Duration::from_secs(60),
        )
        .await;
    wait_for_readiness(&processor, true, "", Duration::from_secs(30)).await;
    processor.stop().await;
}

#[tokio::test]
async fn inserts_into_a_hung_clickhouse_time_out_and_are_retried_and_shutdown_is_bounded() {
    let clickhouse = OwnedClickHouse::start();
    let setup = Setup::new(&services().broker.bootstrap(), &clickhouse.server).await;
    let mut config = setup.config();
    config.clickhouse.request_timeout_ms = 1_000;
    let processor = Processor::start(config).await;
    setup.produce(&ten_pageviews(0)).await;
    setup
        .wait_for_count(
            "SELECT count() FROM {db}.events",
            10,
            Duration::from_secs(60),
        )
        .await;
    let retries_before = counter_value(&processor, "eye_processor_sink_retries_total").await;

    clickhouse.signal(Signal::SIGSTOP).unwrap();
    setup.produce(&ten_pageviews(10)).await;
    // Without a time-out the first insert into the stopped server waits forever: no retry.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter_value(&processor, "eye_processor_sink_retries_total").await < retries_before + 2 {
        assert!(
            Instant::now() < deadline,
            "inserts into the hung server are not retried"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Stopping while ClickHouse still hangs: every step of the shutdown is bounded.
    let stopped = tokio::time::timeout(Duration::from_secs(120), processor.stop()).await;
    clickhouse.signal(Signal::SIGCONT).unwrap();
    assert!(stopped.is_ok(), "the processor never stopped");
}
