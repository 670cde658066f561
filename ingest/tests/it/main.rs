//! The ingest bridge against a real broker (started once for the whole binary): what clients get
//! back, and what lands on the topic; one module per guarantee.

mod common;

mod api_reference;
mod broker;
mod deployment;
mod events;
mod operations;
mod overload;
mod refusals;
