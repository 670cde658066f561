//! What every part of The Eye shares: how an event travels on the raw topic ([`raw`]), the event
//! schemas ([`schemas`]) and how JSON maps onto them ([`convert`]), event time ([`timestamp`]),
//! topic set-up ([`kafka`]),
//! and a service's configuration ([`settings`]), logs and metrics ([`telemetry`]), operations
//! endpoints ([`operations`]) and stop signal ([`shutdown`]).

pub mod convert;
pub mod kafka;
pub mod operations;
pub mod raw;
pub mod schemas;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod timestamp;
