CREATE MATERIALIZED VIEW IF NOT EXISTS event_counts_mv TO event_counts
AS SELECT
    application,
    category,
    name,
    toStartOfMinute(received_at) AS minute,
    uniqExactState(event_id) AS events
FROM events
GROUP BY application, category, name, minute
