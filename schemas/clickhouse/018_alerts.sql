-- Every message the alert rules published to the error-alert topic: a `firing` row when an alert
-- opens and a `resolved` row (same alert_id) when it closes. Rebuilt identically by a replay.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id UUID,
    status String,
    rule String,
    application String,
    category String,
    name String,
    error_type String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    failures UInt64,
    events UInt64,
    rate Float64,
    sample_event_ids Array(String)
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (rule, application, category, name, alert_id, status)
