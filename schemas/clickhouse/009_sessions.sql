-- Sessions: one row per (application, session_id) once merged, as aggregate states that are
-- idempotent by event_id (a redelivered event changes nothing) and order-free (a late event
-- corrects first/last/entry/exit). Failed events are counted in `session_errors`; read both
-- through `session_summary`.
CREATE TABLE IF NOT EXISTS sessions
(
    application String,
    session_id UUID,
    first_event_us AggregateFunction(min, UInt64),
    last_event_us AggregateFunction(max, UInt64),
    events AggregateFunction(uniqExact, UUID),
    typed_events AggregateFunction(groupUniqArray, Tuple(String, String, UUID)),
    entry_path AggregateFunction(argMinIf, String, Tuple(UInt64, UUID), UInt8),
    exit_path AggregateFunction(argMaxIf, String, Tuple(UInt64, UUID), UInt8),
    pages AggregateFunction(uniqExactIf, String, UInt8),
    form_submitted AggregateFunction(max, UInt8),
    last_received_us AggregateFunction(max, UInt64)
)
ENGINE = AggregatingMergeTree()
ORDER BY (application, session_id)
-- Small granules: the processor reads back each batch's sessions (the session topic), scattered
-- over the key range, and reads a granule per session (5,000 of 1M sessions: 1.0 s at 64 rows,
-- 2.2 s at 256, near the whole table at the default 8192).
SETTINGS index_granularity = 64
