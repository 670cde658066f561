CREATE MATERIALIZED VIEW IF NOT EXISTS events_by_session_mv TO events_by_session
AS SELECT * FROM events
