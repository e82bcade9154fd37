//! The ways producers and operators reach a hub.
//!
//! * [`http`]: `POST /v1/publish`, status, metrics and health over HTTP/1.1 (axum).
//! * [`resp`]: the Redis protocol: any Redis client publishes its write commands.
//! * [`admin`]: dead-letter admin under `/v1/regions/{region}/dead-letters`.
//! * [`lease`]: the lease API remote workers consume a region's queue through.
//! * [`auth`]: per-role bearer tokens for all of the above and the RESP `AUTH`.

pub mod admin;
pub mod auth;
pub mod http;
pub mod lease;
pub mod resp;
