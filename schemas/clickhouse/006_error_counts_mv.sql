CREATE MATERIALIZED VIEW IF NOT EXISTS error_counts_mv TO error_counts
AS SELECT
    application,
    category,
    name,
    error_type,
    toStartOfMinute(received_at) AS minute,
    uniqExactState(event_id) AS failures
FROM event_errors
GROUP BY application, category, name, error_type, minute
