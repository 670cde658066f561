//! The timestamp parser: any text gives a time ClickHouse's DateTime holds, or none; stored
//! seconds and microseconds never wrap.
#![no_main]

use eye_core::timestamp::{in_datetime_range, parse_event_time, split_seconds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some(at) = parse_event_time(text) {
        assert!(in_datetime_range(at), "{text:?} → {at}");
        let (seconds, micros) = split_seconds(at);
        assert_eq!(i64::from(seconds), at.timestamp());
        assert_eq!(micros, at.timestamp_subsec_micros());
    }
});
