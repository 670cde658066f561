CREATE MATERIALIZED VIEW IF NOT EXISTS session_errors_mv TO session_errors
AS SELECT
    application,
    session_id,
    uniqExactState(event_id) AS errors,
    maxState(toUInt64(received_at) * 1000000 + received_at_us) AS last_received_us
FROM event_errors
WHERE session_id != toUUID('00000000-0000-0000-0000-000000000000')
GROUP BY application, session_id
