-- The heartbeats of `eye-processor replay`: while a replay's latest heartbeat is under a minute old
-- and it has not finished, the live alert judge waits, because the counts are being rebuilt.
CREATE TABLE IF NOT EXISTS replays
(
    replay_id UUID,
    started_at DateTime('UTC'),
    heartbeat_at DateTime('UTC'),
    finished UInt8
)
ENGINE = MergeTree()
ORDER BY (replay_id, heartbeat_at)
