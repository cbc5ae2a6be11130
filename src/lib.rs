//! High-concurrency inventory reservation service.
//!
//! Data flow: `api` (HTTP) -> `engine` (decides, in Redis Lua scripts that journal every
//! change) -> `store` (Redis, MySQL). `config`, `error`, `domain` and `metrics` sit beside.

pub mod api;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod telemetry;
