//! What every part of The Eye shares: how an event travels on the raw topic ([`raw`]), the event
//! schemas ([`schemas`]) and how JSON maps onto them ([`convert`]), the verdict on every message
//! ([`validate`], in the [`failure`] vocabulary: the processor records it, the bridge can answer
//! it ahead), event time ([`timestamp`]), topic set-up ([`kafka`]),
//! and a service's configuration ([`settings`]), logs and metrics ([`telemetry`]), operations
//! endpoints ([`operations`]) and stop signal ([`shutdown`]).

pub mod convert;
pub mod failure;
pub mod kafka;
pub mod operations;
pub mod raw;
pub mod schemas;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod timestamp;
pub mod validate;
