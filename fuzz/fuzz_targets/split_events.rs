//! The bridge's body splitter and gunzip: any bytes give events or a typed error, never a panic,
//! and never more events than the limit.
#![no_main]

use eye_ingest::body::{gunzip, split_events, BodyFormat};
use eye_ingest::config::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let limits = Limits {
        max_batch_events: 16,
        ..Limits::default()
    };
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        if let Ok(events) = split_events(body, format, &limits) {
            assert!(!events.is_empty() && events.len() <= limits.max_batch_events);
            for event in events {
                // Each event is a slice of the body, as the client sent it.
                let start = event.json.as_ptr() as usize - body.as_ptr() as usize;
                assert_eq!(&body[start..start + event.json.len()], event.json);
            }
        }
    }
    if let Ok(decoded) = gunzip(body, 1 << 16) {
        assert!(decoded.len() <= 1 << 16);
    }
});
