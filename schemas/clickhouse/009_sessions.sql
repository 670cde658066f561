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
-- Small granules: the processor reads back the few sessions of each batch (the session topic),
-- scattered over the key range; 8192-row granules would make that read nearly the whole table.
SETTINGS index_granularity = 256
