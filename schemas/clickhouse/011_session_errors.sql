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
-- Small granules: the processor reads back the few sessions of each batch (the session topic),
-- scattered over the key range; 8192-row granules would make that read nearly the whole table.
SETTINGS index_granularity = 256
