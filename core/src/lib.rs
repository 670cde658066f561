//! The model both services share: how an event travels on the raw topic ([`raw`]), the event
//! schemas ([`schemas`]), how a service loads its typed configuration ([`settings`]), and its
//! logs and metrics ([`telemetry`]).

pub mod convert;
pub mod raw;
pub mod schemas;
pub mod settings;
pub mod telemetry;
pub mod timestamp;
