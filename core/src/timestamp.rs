//! Event timestamps: the reference format `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC, no zone) and
//! RFC 3339 (`T` or space separator, `Z` or an offset, optional fraction), converted to UTC and
//! kept to the microsecond.

use std::ops::Range;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// Parses an event timestamp; `None` when it is none of the accepted forms or outside what
/// ClickHouse's `DateTime` holds (1970 to 2105).
pub fn parse_event_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    let parsed = parse_reference(text)
        .map(|naive| naive.and_utc())
        .or_else(|| {
            DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&Utc))
                .ok()
        })
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
        })?;
    let micros = parsed.timestamp_micros();
    in_datetime_range(parsed)
        .then(|| DateTime::from_timestamp_micros(micros))
        .flatten()
}

/// Whether ClickHouse's `DateTime` (UInt32 seconds) holds the time: from 1970-01-01 00:00:00
/// to 2106-02-07 06:28:15.999999 UTC. Every time stored passes this first, so none wraps.
pub fn in_datetime_range(at: DateTime<Utc>) -> bool {
    (0..=i64::from(u32::MAX)).contains(&at.timestamp())
}

/// `YYYY-MM-DD HH:MM:SS[.f…]`, parsed by hand: nearly every event uses it, and chrono's
/// format-string parser cost more than the rest of validation.
fn parse_reference(text: &str) -> Option<NaiveDateTime> {
    let bytes = text.as_bytes();
    let separators = [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':')];
    if bytes.len() < 19 || separators.iter().any(|&(at, byte)| bytes[at] != byte) {
        return None;
    }
    let number = |range: Range<usize>| -> Option<u32> {
        bytes[range].iter().try_fold(0u32, |value, &digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + u32::from(digit - b'0'))
        })
    };
    let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    let nanos = match &bytes[19..] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(20..bytes.len())? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    date.and_hms_nano_opt(number(11..13)?, number(14..16)?, number(17..19)?, nanos)
}

/// Whole seconds and the microseconds within them, as the ClickHouse tables store time; for a
/// time [`in_datetime_range`] (others saturate at the ends of the range, never wrap).
pub fn split_seconds(at: DateTime<Utc>) -> (u32, u32) {
    let seconds = at.timestamp().clamp(0, i64::from(u32::MAX)) as u32;
    let micros = if in_datetime_range(at) {
        at.timestamp_subsec_micros()
    } else {
        0
    };
    (seconds, micros)
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
    fn fractions_of_any_length_scale_to_microseconds() {
        assert_eq!(
            parse_event_time("2021-01-01 09:15:27.5"),
            Some(utc("2021-01-01T09:15:27.500Z"))
        );
        assert_eq!(
            parse_event_time("2021-01-01 09:15:27.000001"),
            Some(utc("2021-01-01T09:15:27.000001Z"))
        );
    }

    #[test]
    fn the_edges_of_clickhouse_datetime_are_in_range_and_beyond_them_not() {
        let at = |micros: i64| DateTime::from_timestamp_micros(micros).unwrap();
        let last = i64::from(u32::MAX) * 1_000_000 + 999_999;
        assert!(in_datetime_range(at(0)));
        assert!(in_datetime_range(at(last)));
        assert!(!in_datetime_range(at(last + 1)));
        assert!(!in_datetime_range(at(-1)));
        assert_eq!(split_seconds(at(last)), (u32::MAX, 999_999));
        assert_eq!(split_seconds(at(-1)), (0, 0), "saturates, never wraps");
        assert_eq!(split_seconds(at(last + 1)), (u32::MAX, 0));
        assert_eq!(
            parse_event_time("2106-02-07T06:28:15.5Z"),
            Some(at(i64::from(u32::MAX) * 1_000_000 + 500_000))
        );
        assert_eq!(parse_event_time("2106-02-07T06:28:16Z"), None);
    }

    #[test]
    fn garbage_and_out_of_range_are_rejected() {
        for text in [
            "2021-01-01 09:15:27.",
            "2021-01-01 09:15:2x",
            "2021-02-30 00:00:00",
            "2021-01-01 24:00:00",
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
