-- Valid events. ReplacingMergeTree: a redelivered event has the same sort key and collapses into
-- one row (read with FINAL for exact counts); of copies produced twice, the one at the higher
-- offset stays, whatever order they were written in, so a replay keeps the same row. Sorted for category + time-range queries.
-- Event time is a DateTime (whole seconds, UTC) plus the microseconds within that second, because
-- ClickHouse 18.16 has no DateTime64.
CREATE TABLE IF NOT EXISTS events
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
    kafka_offset UInt64
)
ENGINE = ReplacingMergeTree(kafka_offset)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (category, name, timestamp, event_id)
