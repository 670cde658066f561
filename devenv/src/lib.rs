//! The services The Eye talks to, run as plain local processes: a Kafka-protocol broker
//! (nisshi) and a ClickHouse server, each with its own state directory, on 127.0.0.1.
//!
//! The `eye-dev` binary uses this to bring services up for local runs (detached, tracked by pid
//! files); test binaries use [`testing`] to start their own on free ports, which stop when the
//! test process exits.

pub mod broker;
pub mod clickhouse;
pub mod fuzz;
pub mod install;
pub mod process;
pub mod testing;

pub use process::free_port;
