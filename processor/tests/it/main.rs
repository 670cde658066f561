//! The processor against a real broker and ClickHouse (started once for the whole binary), one
//! module per guarantee.

mod common;

mod alerts;
mod browser;
mod current_clickhouse;
mod dashboard;
mod deployment;
mod derived_state;
mod docs;
mod durability;
mod failures;
mod hangs;
mod hostile_input;
mod identity;
mod replay;
mod validate;
mod validate_envelope;
mod validate_equivalence;
mod verdicts;
