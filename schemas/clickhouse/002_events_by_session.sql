-- The same events sorted for session queries: one session's events in time order read a few
-- granules. Filled from `events` by the materialized view below.
CREATE TABLE IF NOT EXISTS events_by_session
(
    event_id UUID,
    application String,
    session_id UUID,
    category String,
    name String,
    timestamp DateTime('UTC'),
    timestamp_us UInt32,
    received_at DateTime('UTC'),
    received_at_us UInt32,
    host String,
    path String,
    data String,
    schema_version UInt16,
    kafka_partition Int32,
    kafka_offset Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(timestamp)
ORDER BY (application, session_id, timestamp, timestamp_us, event_id)
