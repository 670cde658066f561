-- Failed events per session (those naming a valid session_id), idempotent by event_id.
CREATE TABLE IF NOT EXISTS session_errors
(
    application String,
    session_id UUID,
    errors AggregateFunction(uniqExact, UUID),
    last_received_us AggregateFunction(max, UInt64)
)
ENGINE = AggregatingMergeTree()
ORDER BY (application, session_id)
