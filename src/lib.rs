//! High-concurrency inventory reservation service.
//!
//! Data flow: `api` (HTTP) -> `engine` (decides, in Redis Lua scripts that journal every
//! change) -> `store` (Redis, MySQL). `events` is the Kafka side: it consumes order events
//! into the engine and publishes outcomes. `config`, `error`, `domain` and `metrics` sit
//! beside.

pub mod api;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod fault;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod telemetry;

/// glibc's malloc and free took about 30% of the service's CPU under Kafka load
/// (docs/benchmarks.md, "Kafka"): many threads (HTTP workers, shard arbiters, Kafka tasks)
/// allocate and free small buffers. Declared here, it serves every binary that links the
/// library: the service, the tests and the benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
