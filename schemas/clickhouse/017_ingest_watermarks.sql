-- Per raw-topic partition: every message before `committed_offset` is in ClickHouse; `lag` is how
-- many were behind it at the last report; `event_time` and `received_time` are the latest times
-- written from that partition. The minimum `received_time` over the partitions of a topic is how
-- far its data is complete.
CREATE VIEW IF NOT EXISTS ingest_watermarks AS
SELECT
    topic,
    partition,
    maxMerge(committed_offset) AS committed_offset,
    maxMerge(high_watermark) AS high_watermark,
    argMaxMerge(lag) AS lag,
    maxMerge(event_time) AS event_time_watermark,
    maxMerge(received_time) AS received_time_watermark,
    maxMerge(updated_at) AS updated_at
FROM watermark_states
GROUP BY topic, partition
