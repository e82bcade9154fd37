//! Regis replicates Redis writes to a Redis in every region through a durable message bus.
//!
//! Producers publish Redis write commands once (HTTP, or any Redis client through the RESP
//! ingress); the hub validates them, gives each message an id and a version, and
//! acknowledges only once it is on stable storage. Every region has its own queue on the bus
//! and a worker that applies batches to the region's Redis — retrying while that Redis is
//! down, dead-lettering poison — so that every region converges to the same state although
//! delivery is at-least-once and unordered. `../DESIGN.md` holds the contract.
//!
//! # Layout
//!
//! * [`clock`]: versions and the hybrid logical clock that issues them.
//! * [`command`]: which commands are replicated; checking and canonicalizing them.
//! * [`envelope`]: the message and its encoding on the bus.
//! * [`bus`]: the bus traits (publish, consume/settle, dead letters, stats) and
//!   [`bus::embedded`], the SQLite backend, and [`bus::nats`], the NATS JetStream backend;
//!   [`bus::remote`] consumes a region's queue over the hub's lease API (remote workers).
//! * [`apply`]: applying batches to a region's Redis, raw (`none`) or as versioned
//!   registers (`lww`), and sorting failures into transient and permanent.
//! * [`worker`]: a region's consumers: lease, apply, settle, back off.
//! * [`hub`]: validating, versioning and publishing.
//! * [`ingress`]: the HTTP API and the Redis-protocol (RESP) listener.
//! * [`publisher`]: the Rust `Publisher` library: batched, durable publishing over RESP.
//! * [`server`]: `regis serve` assembled: bus, hub, workers, listeners, graceful drain.
//! * [`config`]: the `regis.toml` file.
//! * [`metrics`]: every exported metric, as typed events.
//! * [`latency`]: rolling publish→applied latency per region.
//! * [`health`]: whether each region's Redis answers (worker reports and a probe).
//! * [`peak_rss`]: a child process's peak memory, for benchmarks and tests.
//! * [`redis_process`]: throwaway `redis-server`s for the demo, benchmarks and tests.
//! * [`nats_process`]: throwaway `nats-server`s (JetStream) for benchmarks and tests.
//! * [`snapshot`]: a region's whole data set as a comparable value.
//! * [`verify`]: comparing regions key by key in bounded memory, and repairing drift.
//! * [`cli`]: the `regis` command line.
//! * [`tls`]: TLS for the hub's listeners (HTTPS and RESP).
//! * [`wan`]: a TCP proxy that imitates a WAN link (latency, partitions, resets), for the
//!   remote-worker benchmark and tests.

pub mod apply;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod command;
pub mod config;
pub mod envelope;
pub mod health;
pub mod hub;
pub mod ingress;
pub mod latency;
pub mod metrics;
pub mod nats_process;
pub mod peak_rss;
pub mod publisher;
pub mod redis_process;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod verify;
pub mod wan;
pub mod worker;
