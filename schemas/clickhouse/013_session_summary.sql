-- Every session, finalised: times in UTC (DateTime plus microseconds), counts per category and per
-- (category, name), entry and exit path (first and last pageview), distinct pageview paths, whether
-- a form was submitted, failed events, and when the session last changed (latest received_at).
-- A session with failed events only is not listed (it has no valid event to place it in time).
CREATE VIEW IF NOT EXISTS session_summary AS
SELECT
    application,
    session_id,
    toDateTime(intDiv(first_us, 1000000), 'UTC') AS start_time,
    first_us % 1000000 AS start_time_us,
    toDateTime(intDiv(last_us, 1000000), 'UTC') AS end_time,
    last_us % 1000000 AS end_time_us,
    (last_us - first_us) / 1000000 AS duration_seconds,
    event_count,
    arraySort(arrayMap(category -> (category, countEqual(arrayMap(t -> tupleElement(t, 1), typed), category)),
        arrayDistinct(arrayMap(t -> tupleElement(t, 1), typed)))) AS events_by_category,
    arraySort(arrayMap(kind -> (tupleElement(kind, 1), tupleElement(kind, 2),
            countEqual(arrayMap(t -> (tupleElement(t, 1), tupleElement(t, 2)), typed), kind)),
        arrayDistinct(arrayMap(t -> (tupleElement(t, 1), tupleElement(t, 2)), typed)))) AS events_by_type,
    entry_path,
    exit_path,
    distinct_pages,
    form_submitted,
    error_count,
    toDateTime(intDiv(greatest(last_received, error_last_received), 1000000), 'UTC') AS last_update
FROM
(
    SELECT
        application,
        session_id,
        minMerge(first_event_us) AS first_us,
        maxMerge(last_event_us) AS last_us,
        uniqExactMerge(events) AS event_count,
        groupUniqArrayMerge(typed_events) AS typed,
        argMinIfMerge(entry_path) AS entry_path,
        argMaxIfMerge(exit_path) AS exit_path,
        uniqExactIfMerge(pages) AS distinct_pages,
        maxMerge(form_submitted) AS form_submitted,
        maxMerge(last_received_us) AS last_received
    FROM sessions
    GROUP BY application, session_id
) AS valid
ANY LEFT JOIN
(
    SELECT
        application,
        session_id,
        uniqExactMerge(errors) AS error_count,
        maxMerge(last_received_us) AS error_last_received
    FROM session_errors
    GROUP BY application, session_id
) AS failed USING (application, session_id)
