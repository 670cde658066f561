-- Events that failed, one row per failed event with its typed reason and the message value exactly
-- as received. Sorted for error-type + time-range queries; redeliveries collapse like `events`
-- (the copy at the higher offset stays).
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
ORDER BY (error_type, received_at, event_id)
