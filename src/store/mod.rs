//! Where state lives: Redis (the arbiter of stock) and MySQL (the durable record).

pub mod checkpoint;
pub mod cluster;
pub mod conn;
pub mod db;
pub mod journal;
pub mod models;
pub mod recent_log;
pub mod redis;
pub mod reservations;
pub mod routing;
pub mod schema;
pub mod sql_text;
pub mod supervision;
pub mod upgrade;
pub mod wire;
