-- What the processor reports after each batch it wrote, one row per partition in the batch. The
-- Null engine stores nothing: the view in 016 folds each report into watermark_states.
CREATE TABLE IF NOT EXISTS watermark_updates
(
    topic String,
    partition Int32,
    next_offset Int64,
    high_watermark Int64,
    lag Int64,
    event_time DateTime('UTC'),
    received_time DateTime('UTC'),
    updated_at DateTime('UTC')
)
ENGINE = Null
