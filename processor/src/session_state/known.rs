//! The sessions ClickHouse may already hold: a Bloom filter of their keys, loaded from
//! `sessions` and `session_errors` when partitions are assigned and joined by every session that
//! leaves memory. A session the processor does not hold must not start from nothing when
//! ClickHouse has earlier events of it; a session the filter has never seen is new for certain.
//! A false positive costs one read of ClickHouse, never a wrong session.

use std::hash::{DefaultHasher, Hash, Hasher};

use bloomfilter::Bloom;
use clickhouse::{Client, Row};
use serde::Deserialize;
use uuid::Uuid;

use crate::sink::within;

/// The filter's false-positive rate at its capacity.
const FALSE_POSITIVE_RATE: f64 = 0.01;

#[derive(Debug, Row, Deserialize)]
struct SessionKey {
    application: String,
    #[serde(with = "clickhouse::serde::uuid")]
    session_id: Uuid,
}

pub struct KnownSessions {
    filter: Bloom<u64>,
    capacity: usize,
    /// False until a load succeeds: then any session may be in ClickHouse.
    loaded: bool,
}

impl KnownSessions {
    /// Room for `capacity` sessions at 1% false positives (about 1.2 bytes a session); past it
    /// the rate rises, and with it the sessions read back from ClickHouse.
    pub fn new(capacity: usize) -> Self {
        Self {
            filter: filter(capacity),
            capacity,
            loaded: false,
        }
    }

    /// Forgets everything, then learns every session ClickHouse holds (valid events or
    /// failures). Rows of unmerged parts repeat a key; learning it twice changes nothing. Until
    /// it succeeds, every session may be in ClickHouse.
    pub async fn reload(
        &mut self,
        client: &Client,
        request_timeout: std::time::Duration,
    ) -> Result<(), clickhouse::error::Error> {
        self.loaded = false;
        let mut filter = filter(self.capacity);
        for table in ["sessions", "session_errors"] {
            let mut cursor = client
                .query(&format!("SELECT application, session_id FROM {table}"))
                .fetch::<SessionKey>()?;
            while let Some(key) = within(request_timeout, cursor.next()).await? {
                filter.set(&key_hash(&key.application, key.session_id));
            }
        }
        self.filter = filter;
        self.loaded = true;
        Ok(())
    }

    /// Loaded from a ClickHouse that holds no session.
    #[cfg(test)]
    pub fn loaded_empty(capacity: usize) -> Self {
        Self {
            loaded: true,
            ..Self::new(capacity)
        }
    }

    pub fn learn(&mut self, application: &str, session_id: Uuid) {
        self.filter.set(&key_hash(application, session_id));
    }

    /// False only for a session ClickHouse cannot hold.
    pub fn may_hold(&self, application: &str, session_id: Uuid) -> bool {
        !self.loaded || self.filter.check(&key_hash(application, session_id))
    }
}

/// The key hashed once, so a check allocates nothing. Within one process only (the filter is
/// rebuilt at each assignment), so std's hasher will do.
fn key_hash(application: &str, session_id: Uuid) -> u64 {
    let mut hasher = DefaultHasher::new();
    (application, session_id).hash(&mut hasher);
    hasher.finish()
}

fn filter(capacity: usize) -> Bloom<u64> {
    Bloom::new_for_fp_rate(capacity.max(1), FALSE_POSITIVE_RATE)
        .expect("a positive capacity and a rate within (0, 1)")
}
