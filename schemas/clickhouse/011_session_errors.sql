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
-- Small granules: the processor reads back each batch's sessions (the session topic), scattered
-- over the key range, and reads a granule per session (5,000 of 1M sessions: 1.0 s at 64 rows,
-- 2.2 s at 256, near the whole table at the default 8192).
SETTINGS index_granularity = 64
