-- Failures per application, event type and error type, per minute of `received_at`. Exact under
-- redelivery: each failure counts once per event_id (uniqExact states), however often it arrives.
-- Read with uniqExactMerge(failures).
CREATE TABLE IF NOT EXISTS error_counts
(
    application String,
    category String,
    name String,
    error_type String,
    minute DateTime('UTC'),
    failures AggregateFunction(uniqExact, UUID)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (application, error_type, category, name, minute)
