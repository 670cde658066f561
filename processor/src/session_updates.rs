//! The session topic (default `eye.sessions`): after each batch, every session it touched, as
//! `session_summary` then has it, in Avro single-object encoding
//! (`schemas/avro/topics/session.avsc`), keyed `application/session_id`, so other services can
//! follow sessions without ClickHouse. Sessions the processor holds in memory
//! ([`crate::session_state`]) are published from there; the others are read from ClickHouse
//! (`sessions` and `session_errors`) after the batch's rows are in. Either way the latest
//! message of a session is the session.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use clickhouse::{Client, Row};
use eye_core::schemas::{TopicEncodeError, TopicSchema};
use eye_core::settings::KafkaSettings;
use metrics::counter;
use rdkafka::error::KafkaError;
use rdkafka::producer::future_producer::DeliveryFuture;
use serde::{Deserialize, Serialize};
use tracing::{error, warn};
use uuid::Uuid;

use crate::avro_topic::{AvroTopic, PublishError, TopicRecord};
use crate::rows::SessionSummary;
use crate::sink::{within, ClickHouseSink};

/// Sessions read per query. The ids travel as one string literal, split in ClickHouse: a list of
/// literals takes ClickHouse ~15 µs each to parse (0.7 s for 47,000). The text still exceeds the
/// default `max_query_size`, raised for it.
const SESSIONS_PER_QUERY: usize = 100_000;
const MAX_QUERY_SIZE: &str = "16777216";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionUpdateSettings {
    /// Publish session updates at all.
    pub enabled: bool,
    pub topic: String,
    /// Partitions the topic is created with when it does not exist.
    pub partitions: i32,
    /// Sessions held in memory at most (about 1 KB each at 10 events); past it the least
    /// recently written leave memory and are read back from ClickHouse when they move again.
    pub max_sessions_in_memory: usize,
    /// A session with no event received for this long (against the newest `received_at` seen)
    /// leaves memory.
    pub idle_seconds: u64,
    /// Sessions the filter of those ClickHouse may hold is sized for (about 1.2 bytes each).
    pub known_sessions_capacity: usize,
    /// The changelog of the sessions in memory: compacted, a partition for each of the raw
    /// topic's; a processor assigned a partition restores its sessions from it. Absent:
    /// `<consumer.group_id>-<consumer.topic>-session-state`, one for each group and raw topic
    /// (as a Kafka Streams application's changelog is its own).
    pub state_topic: Option<String>,
    /// How long restoring an assignment's sessions may take; past it they are read back from
    /// ClickHouse instead.
    pub restore_timeout_ms: u64,
}

impl Default for SessionUpdateSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "eye.sessions".into(),
            partitions: 4,
            max_sessions_in_memory: 1_000_000,
            idle_seconds: 3_600,
            known_sessions_capacity: 10_000_000,
            state_topic: None,
            restore_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionUpdateError {
    #[error("reading sessions: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("publishing sessions: {0}")]
    Publish(#[from] PublishError),
}

/// One session as ClickHouse holds it.
#[derive(Debug, Row, Deserialize)]
struct SessionRow {
    application: String,
    session: String,
    first_us: u64,
    last_us: u64,
    event_count: u64,
    /// Valid events per (category, name).
    by_type: Vec<(String, String, u64)>,
    entry: String,
    exit: String,
    distinct_pages: u64,
    submitted: u8,
    last_received: u64,
    error_count: u64,
    error_last_received: u64,
}

/// Session updates handed to the producer and not yet acknowledged, and those to send again.
pub struct InFlight {
    messages: Vec<(SessionSummary, Result<DeliveryFuture, PublishError>)>,
    pub retry: Vec<SessionSummary>,
}

/// A session's key on the topic: `application/session_id`.
fn key_of(summary: &SessionSummary) -> String {
    format!("{}/{}", summary.application, summary.session_id)
}

/// Never retried: the same session would fail the same way. `record` bounds the sizes, so this is
/// a defect to report.
fn refused(summary: &SessionSummary, error: &PublishError) {
    counter!("eye_processor_session_updates_refused_total").increment(1);
    error!(application = %summary.application, session = %summary.session_id, %error, "a session update is not published; the session is in ClickHouse only");
}

impl SessionRow {
    fn into_summary(self) -> SessionSummary {
        SessionSummary {
            application: self.application,
            session_id: Uuid::parse_str(&self.session).unwrap_or_default(),
            first_us: self.first_us,
            last_us: self.last_us,
            event_count: self.event_count,
            by_type: self.by_type,
            entry_path: self.entry,
            exit_path: self.exit,
            distinct_pages: self.distinct_pages,
            form_submitted: self.submitted > 0,
            last_received_us: self.last_received,
            error_count: self.error_count,
            error_last_received_us: self.error_last_received,
        }
    }
}

pub struct SessionUpdates {
    topic: AvroTopic,
    client: Client,
    request_timeout: Duration,
}

impl SessionUpdates {
    pub fn new(
        settings: &SessionUpdateSettings,
        kafka: &KafkaSettings,
        sink: &ClickHouseSink,
        schema: TopicSchema,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            topic: AvroTopic::new(
                eye_core::kafka::acknowledged_producer(kafka)?,
                &settings.topic,
                schema,
            ),
            client: sink.client(),
            request_timeout: sink.request_timeout(),
        })
    }

    /// The topic's producer: the session changelog writes through it, so one flush covers both.
    pub fn producer(&self) -> rdkafka::producer::FutureProducer {
        self.topic.producer()
    }

    /// Hands the messages of `summaries` to the producer now, before the raw topic is read on
    /// (so a rebalance's flush covers them); [`SessionUpdates::complete`] waits for them.
    pub fn enqueue(&self, summaries: Vec<SessionSummary>) -> InFlight {
        let messages = summaries
            .into_iter()
            .map(|summary| {
                let delivery = self.topic.enqueue(&key_of(&summary), &record(&summary));
                (summary, delivery)
            })
            .collect();
        InFlight {
            messages,
            retry: Vec::new(),
        }
    }

    /// Waits for the enqueued messages; those not acknowledged for a reason that may pass are
    /// left in `in_flight` for [`SessionUpdates::publish`].
    pub async fn complete(&self, in_flight: &mut InFlight) {
        let mut retry = Vec::new();
        for (summary, delivery) in in_flight.messages.drain(..) {
            let outcome = match delivery {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(PublishError::from(error)),
                    Err(_) => Err(PublishError::Unacknowledged(KafkaError::Canceled)),
                },
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    counter!("eye_processor_session_updates_total", "from" => "memory")
                        .increment(1);
                }
                Err(error) if error.is_permanent() => refused(&summary, &error),
                Err(_) => retry.push(summary),
            }
        }
        in_flight.retry = retry;
    }

    /// Waits until every message handed to the producer is acknowledged or `timeout` passes: a
    /// processor giving up partitions lets their next owner publish only after it.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.topic.flush(timeout) {
            warn!(%error, "session updates not acknowledged before partitions were given up");
        }
    }

    /// Publishes each session, as `summaries` say and as ClickHouse holds those of `read_back`
    /// (sessions the processor does not hold in memory), and waits for the broker's
    /// acknowledgements.
    pub async fn publish(
        &self,
        summaries: &[SessionSummary],
        read_back: &BTreeSet<(String, Uuid)>,
    ) -> Result<(), SessionUpdateError> {
        self.publish_summaries(summaries).await?;
        counter!("eye_processor_session_updates_total", "from" => "memory")
            .increment(summaries.len() as u64);
        let read_back: Vec<&(String, Uuid)> = read_back.iter().collect();
        for chunk in read_back.chunks(SESSIONS_PER_QUERY) {
            let rows = self.read(chunk).await?;
            let summaries: Vec<SessionSummary> =
                rows.into_iter().map(SessionRow::into_summary).collect();
            self.publish_summaries(&summaries).await?;
            counter!("eye_processor_session_updates_total", "from" => "clickhouse")
                .increment(summaries.len() as u64);
        }
        Ok(())
    }

    async fn publish_summaries(
        &self,
        summaries: &[SessionSummary],
    ) -> Result<(), SessionUpdateError> {
        let messages = summaries
            .iter()
            .map(|summary| (key_of(summary), record(summary)))
            .collect();
        let outcomes = self.topic.publish_all(messages).await;
        for (summary, (_, outcome)) in summaries.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {}
                Err(error) if error.is_permanent() => refused(summary, &error),
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    async fn read(
        &self,
        sessions: &[&(String, Uuid)],
    ) -> Result<Vec<SessionRow>, SessionUpdateError> {
        // Session ids only: the applications are matched below.
        let ids = sessions
            .iter()
            .map(|(_, session_id)| session_id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let wanted = format!("SELECT toUUID(arrayJoin(splitByChar(',', '{ids}')))");
        // Aliases differ from the state columns: ClickHouse would read an alias named like its
        // column as an aggregate inside another. Counts are made in ClickHouse: a long session's
        // event list stays there.
        let sql = format!(
            "SELECT application, toString(session_id) AS session, first_us, last_us, event_count, \
             arrayMap(kind -> (tupleElement(kind, 1), tupleElement(kind, 2), toUInt64(countEqual(kinds, kind))), \
               arrayDistinct(kinds)) AS by_type, \
             entry, exit, distinct_pages, submitted, last_received, error_count, error_last_received FROM ( \
               SELECT application, session_id, minMerge(first_event_us) AS first_us, \
                 maxMerge(last_event_us) AS last_us, uniqExactMerge(events) AS event_count, \
                 arrayMap(t -> (tupleElement(t, 1), tupleElement(t, 2)), groupUniqArrayMerge(typed_events)) AS kinds, \
                 argMinIfMerge(entry_path) AS entry, argMaxIfMerge(exit_path) AS exit, \
                 uniqExactIfMerge(pages) AS distinct_pages, maxMerge(form_submitted) AS submitted, \
                 maxMerge(last_received_us) AS last_received \
               FROM sessions WHERE session_id IN ({wanted}) \
               GROUP BY application, session_id \
             ) ANY LEFT JOIN ( \
               SELECT application, session_id, uniqExactMerge(errors) AS error_count, \
                 maxMerge(last_received_us) AS error_last_received \
               FROM session_errors WHERE session_id IN ({wanted}) \
               GROUP BY application, session_id \
             ) USING (application, session_id)"
        );
        let rows: Vec<SessionRow> = within(
            self.request_timeout,
            self.client
                .query(&sql)
                .with_setting("max_query_size", MAX_QUERY_SIZE)
                .fetch_all(),
        )
        .await?;
        let keys: HashSet<(&str, Uuid)> = sessions
            .iter()
            .map(|(application, session_id)| (application.as_str(), *session_id))
            .collect();
        Ok(rows
            .into_iter()
            .filter(|row| {
                Uuid::parse_str(&row.session)
                    .is_ok_and(|session_id| keys.contains(&(row.application.as_str(), session_id)))
            })
            .collect())
    }
}

/// The longest entry or exit path a session update carries, in bytes: a session's message must fit
/// the broker's message size whatever paths its events had (a valid path can be near 1 MB).
pub const MAX_PATH_BYTES: usize = 2048;
/// Ends a path cut to [`MAX_PATH_BYTES`].
pub const TRUNCATION_MARKER: &str = "…";

/// No pageview's path is null on the topic.
fn optional_path(path: &str) -> Option<Cow<'_, str>> {
    (!path.is_empty()).then(|| bounded_path(path))
}

/// The path, or its first [`MAX_PATH_BYTES`] bytes (less the marker) and the marker.
pub fn bounded_path(path: &str) -> Cow<'_, str> {
    if path.len() <= MAX_PATH_BYTES {
        return Cow::Borrowed(path);
    }
    let cut = path.floor_char_boundary(MAX_PATH_BYTES - TRUNCATION_MARKER.len());
    Cow::Owned(format!("{}{TRUNCATION_MARKER}", &path[..cut]))
}

/// A session's message: the fields of `session.avsc`, in its order (see
/// [`TopicSchema::encode_fields`]).
#[derive(Debug, Serialize)]
struct SessionRecord<'a> {
    application: &'a str,
    #[serde(serialize_with = "hyphenated")]
    session_id: Uuid,
    start_time: i64,
    end_time: i64,
    duration_us: i64,
    events: i64,
    events_by_category: BTreeMap<&'a str, i64>,
    /// Keyed `category/name`.
    events_by_type: BTreeMap<String, i64>,
    entry_path: Option<Cow<'a, str>>,
    exit_path: Option<Cow<'a, str>>,
    distinct_pages: i64,
    form_submitted: bool,
    errors: i64,
    last_update: i64,
}

/// The schema's `uuid` is a string: the hyphenated form, written without allocating.
fn hyphenated<S: serde::Serializer>(id: &Uuid, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
}

impl TopicRecord for SessionRecord<'_> {
    fn encode(&self, schema: &TopicSchema) -> Result<Vec<u8>, TopicEncodeError> {
        schema.encode_fields(self)
    }
}

fn record(session: &SessionSummary) -> SessionRecord<'_> {
    let micros = |value: u64| value as i64;
    let mut by_category: BTreeMap<&str, i64> = BTreeMap::new();
    let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
    for (category, name, count) in &session.by_type {
        *by_category.entry(category).or_default() += *count as i64;
        *by_type.entry(format!("{category}/{name}")).or_default() += *count as i64;
    }
    SessionRecord {
        application: &session.application,
        session_id: session.session_id,
        start_time: micros(session.first_us),
        end_time: micros(session.last_us),
        duration_us: micros(session.last_us) - micros(session.first_us),
        events: session.event_count as i64,
        events_by_category: by_category,
        events_by_type: by_type,
        entry_path: optional_path(&session.entry_path),
        exit_path: optional_path(&session.exit_path),
        distinct_pages: session.distinct_pages as i64,
        form_submitted: session.form_submitted,
        errors: session.error_count as i64,
        last_update: micros(session.last_received_us.max(session.error_last_received_us)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record's fields are written in the order it gives them, unchecked: read back with
    /// the schema, each must land in its own field.
    #[test]
    fn a_session_record_reads_back_field_for_field_with_the_topic_schema() {
        use apache_avro::types::Value as Avro;
        let schema = TopicSchema::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../schemas/avro/topics/session.avsc"),
        )
        .unwrap();
        let session = SessionSummary {
            application: "shop".into(),
            session_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            first_us: 1_000,
            last_us: 5_000,
            event_count: 3,
            by_type: vec![
                ("pageview".into(), "page_view".into(), 2),
                ("interaction".into(), "cta_click".into(), 1),
            ],
            entry_path: String::new(),
            exit_path: "/é".repeat(2_000),
            distinct_pages: 2,
            form_submitted: true,
            last_received_us: 7_000,
            error_count: 4,
            error_last_received_us: 9_000,
        };
        let bytes = record(&session).encode(&schema).unwrap();
        let long = |value: i64| Avro::Long(value);
        let expected = Avro::Record(vec![
            ("application".into(), Avro::String("shop".into())),
            ("session_id".into(), Avro::Uuid(session.session_id)),
            ("start_time".into(), Avro::TimestampMicros(1_000)),
            ("end_time".into(), Avro::TimestampMicros(5_000)),
            ("duration_us".into(), long(4_000)),
            ("events".into(), long(3)),
            (
                "events_by_category".into(),
                Avro::Map(
                    [
                        ("pageview".into(), long(2)),
                        ("interaction".into(), long(1)),
                    ]
                    .into(),
                ),
            ),
            (
                "events_by_type".into(),
                Avro::Map(
                    [
                        ("pageview/page_view".into(), long(2)),
                        ("interaction/cta_click".into(), long(1)),
                    ]
                    .into(),
                ),
            ),
            ("entry_path".into(), Avro::Union(0, Box::new(Avro::Null))),
            (
                "exit_path".into(),
                Avro::Union(
                    1,
                    Box::new(Avro::String(bounded_path(&session.exit_path).into())),
                ),
            ),
            ("distinct_pages".into(), long(2)),
            ("form_submitted".into(), Avro::Boolean(true)),
            ("errors".into(), long(4)),
            ("last_update".into(), Avro::TimestampMicros(9_000)),
        ]);
        assert_eq!(schema.decode(&bytes).unwrap(), expected);
    }

    #[test]
    fn a_long_path_is_cut_to_its_bound_with_a_marker() {
        let long = "/é".repeat(400_000);
        let bounded = bounded_path(&long);
        assert!(bounded.len() <= MAX_PATH_BYTES);
        assert!(bounded.ends_with(TRUNCATION_MARKER));
        assert!(long.starts_with(bounded.trim_end_matches(TRUNCATION_MARKER)));
        assert_eq!(bounded_path("/checkout"), "/checkout");
    }
}
