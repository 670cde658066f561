//! The stream processor: consumes the raw topic, decides for each message whether it is a valid
//! event or a typed failure, and writes each to exactly one ClickHouse table.
//!
//! Follow an event: [`pipeline`] (the order and the guarantee) reads it from [`source`] (Kafka:
//! partitions, offsets, commits) → `eye_core::validate` (shared with the bridge's verdicts; schemas
//! from `eye_core::schemas`, the `eye_core::failure` kinds) → a row of [`rows`] in the batch →
//! [`sink`] (ClickHouse), and for failures also [`dead_letter`] (the dead-letter topic), then
//! [`session_state`] (the sessions held in memory) → [`session_updates`]. [`alerts`] judges the
//! failure counts in ClickHouse and publishes the error-alert topic.

pub mod alerts;
pub mod allocator;
pub mod avro_topic;
mod batch;
pub mod config;
pub mod dead_letter;
pub mod pipeline;
pub mod readiness;
pub mod replay;
pub mod rows;
mod run;
pub mod session_state;
pub mod session_updates;
pub mod sink;
pub mod source;
pub mod start;

pub use run::run;
pub use start::StartError;
