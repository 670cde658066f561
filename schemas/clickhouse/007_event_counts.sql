-- Valid events per application and event type, per minute of `received_at`: the denominator of
-- failure rates. Exact under redelivery like error_counts. Read with uniqExactMerge(events).
CREATE TABLE IF NOT EXISTS event_counts
(
    application String,
    category String,
    name String,
    minute DateTime('UTC'),
    events AggregateFunction(uniqExact, UUID)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (application, category, name, minute)
