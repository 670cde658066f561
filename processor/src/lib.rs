//! The stream processor: consumes the raw topic, decides for each message whether it is a valid
//! event or a typed failure, and writes each to exactly one ClickHouse table.

pub mod config;
pub mod sink;
pub mod timestamp;
pub mod validate;
