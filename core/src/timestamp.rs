//! Event timestamps: the reference format `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC, no zone) and
//! RFC 3339 (`T` or space separator, `Z` or an offset, optional fraction), converted to UTC and
//! kept to the microsecond.

use chrono::{DateTime, NaiveDateTime, Utc};

/// Parses an event timestamp; `None` when it is none of the accepted forms or outside what
/// ClickHouse's `DateTime` holds (1970 to 2105).
pub fn parse_event_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
        })?;
    let micros = parsed.timestamp_micros();
    (0..=i64::from(u32::MAX) * 1_000_000)
        .contains(&micros)
        .then(|| DateTime::from_timestamp_micros(micros))
        .flatten()
}

/// Whole seconds and the microseconds within them, as the ClickHouse tables store time.
pub fn split_seconds(at: DateTime<Utc>) -> (u32, u32) {
    let micros = at.timestamp_micros();
    ((micros / 1_000_000) as u32, (micros % 1_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn reference_format_is_utc_with_microseconds() {
        assert_eq!(
            parse_event_time("2021-01-01 09:15:27.243860"),
            Some(utc("2021-01-01T09:15:27.243860Z"))
        );
        assert_eq!(
            parse_event_time("2021-01-01 09:15:27"),
            Some(utc("2021-01-01T09:15:27Z"))
        );
    }

    #[test]
    fn offsets_convert_to_utc() {
        assert_eq!(
            parse_event_time("2021-01-01T11:15:27.243860+02:00"),
            Some(utc("2021-01-01T09:15:27.243860Z"))
        );
        assert_eq!(
            parse_event_time("2021-01-01T09:15:27Z"),
            Some(utc("2021-01-01T09:15:27Z"))
        );
        assert_eq!(
            parse_event_time("2021-01-01T09:15:27.5"),
            Some(utc("2021-01-01T09:15:27.5Z"))
        );
    }

    #[test]
    fn nanoseconds_truncate_to_microseconds() {
        let at = parse_event_time("2021-01-01T09:15:27.123456789Z").unwrap();
        assert_eq!(split_seconds(at), (1_609_492_527, 123_456));
    }

    #[test]
    fn garbage_and_out_of_range_are_rejected() {
        for text in [
            "yesterday",
            "2021-13-01 00:00:00",
            "2021-01-01",
            "1969-12-31 23:59:59",
            "2200-01-01 00:00:00",
            "",
        ] {
            assert_eq!(parse_event_time(text), None, "{text}");
        }
    }
}
