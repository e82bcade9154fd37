//! The ways producers and operators reach a hub.
//!
//! * [`http`]: `POST /v1/publish`, status, metrics and health over HTTP/1.1 (axum).
//! * [`resp`]: the Redis protocol: any Redis client publishes its write commands.
//! * [`admin`]: dead-letter admin under `/v1/regions/{region}/dead-letters`.

pub mod admin;
pub mod http;
pub mod resp;
