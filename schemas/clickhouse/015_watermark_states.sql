CREATE TABLE IF NOT EXISTS watermark_states
(
    topic String,
    partition Int32,
    committed_offset AggregateFunction(max, Int64),
    high_watermark AggregateFunction(max, Int64),
    lag AggregateFunction(argMax, Int64, Int64),
    event_time AggregateFunction(max, DateTime('UTC')),
    received_time AggregateFunction(max, DateTime('UTC')),
    updated_at AggregateFunction(max, DateTime('UTC'))
)
ENGINE = AggregatingMergeTree()
ORDER BY (topic, partition)
