//! Integration tests against a real Redis and a real MariaDB (`make services`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod helpers;

mod alerts;
mod auth;
mod browser;
mod cluster;
mod config_cli;
mod console;
mod crash;
mod faults;
mod fuzz;
mod health;
mod inventory;
mod journal;
mod kafka;
mod kafka_e2e;
mod kafka_restart;
mod layout;
mod logs;
mod openapi;
mod partial_confirm;
mod reads;
mod reservations;
mod routing;
mod sim;
mod supervisor;
mod warehouses;
