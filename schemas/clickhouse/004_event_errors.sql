-- Events that failed, one row per failed event with its typed reason and the message value exactly
-- as received. Sorted by (error_type, event_id) so that every copy of a failure collapses, like
-- `events` (the copy at the higher offset stays): a redelivery and also a client's retry through
-- the bridge, which carries the same event_id with a new received_at. Time-range queries prune by
-- the monthly partitions (or read `error_counts`).
CREATE TABLE IF NOT EXISTS event_errors
(
    event_id UUID,
    application String,
    -- The event's session when it names a valid one, else the nil UUID.
    session_id UUID,
    error_type String,
    reason String,
    field_path String,
    category String,
    name String,
    raw String,
    received_at DateTime('UTC'),
    received_at_us UInt32,
    kafka_partition Int32,
    kafka_offset UInt64
)
ENGINE = ReplacingMergeTree(kafka_offset)
PARTITION BY toYYYYMM(received_at)
ORDER BY (error_type, event_id)
