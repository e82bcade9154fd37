//! The ways producers and operators reach a hub.
//!
//! * [`http`]: `POST /v1/publish`, status, metrics and health over HTTP/1.1 (axum).

pub mod http;
