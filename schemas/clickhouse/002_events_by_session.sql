-- The same events sorted for session queries: one session's events in time order read a few
-- granules. Same columns as `events`; filled from it by the materialized view in 003.
CREATE TABLE IF NOT EXISTS events_by_session AS events
ENGINE = ReplacingMergeTree(kafka_offset)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (application, session_id, timestamp, timestamp_us, event_id)
