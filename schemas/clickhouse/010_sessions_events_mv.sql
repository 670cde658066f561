-- Event time as microseconds since the epoch; ties broken by event_id.
CREATE MATERIALIZED VIEW IF NOT EXISTS sessions_events_mv TO sessions
AS SELECT
    application,
    session_id,
    minState(toUInt64(timestamp) * 1000000 + timestamp_us) AS first_event_us,
    maxState(toUInt64(timestamp) * 1000000 + timestamp_us) AS last_event_us,
    uniqExactState(event_id) AS events,
    groupUniqArrayState((category, name, event_id)) AS typed_events,
    argMinIfState(path, (toUInt64(timestamp) * 1000000 + timestamp_us, event_id),
        toUInt8(category = 'page interaction' AND name = 'pageview')) AS entry_path,
    argMaxIfState(path, (toUInt64(timestamp) * 1000000 + timestamp_us, event_id),
        toUInt8(category = 'page interaction' AND name = 'pageview')) AS exit_path,
    uniqExactIfState(path, toUInt8(category = 'page interaction' AND name = 'pageview')) AS pages,
    maxState(toUInt8(category = 'form interaction' AND name = 'submit')) AS form_submitted,
    maxState(toUInt64(received_at) * 1000000 + received_at_us) AS last_received_us
FROM events
GROUP BY application, session_id
