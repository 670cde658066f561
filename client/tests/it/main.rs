//! The client against a real bridge and broker: what arrives on the raw topic, across outages,
//! rate limits and refusals.

mod delivery;
