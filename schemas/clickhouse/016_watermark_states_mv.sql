CREATE MATERIALIZED VIEW IF NOT EXISTS watermark_states_mv TO watermark_states
AS SELECT
    topic,
    partition,
    maxState(next_offset) AS committed_offset,
    maxState(high_watermark) AS high_watermark,
    argMaxState(lag, next_offset) AS lag,
    maxState(event_time) AS event_time,
    maxState(received_time) AS received_time,
    maxState(updated_at) AS updated_at
FROM watermark_updates
GROUP BY topic, partition
