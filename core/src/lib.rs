//! The model both services share: how an event travels on the raw topic ([`raw`]), the event
//! schemas ([`schemas`]), and how a service loads its typed configuration ([`settings`]).

pub mod raw;
pub mod schemas;
pub mod settings;
