//! End-to-end tests: the real `tollstream-collector` and `tollstream-agent` binaries, real
//! files written by the simulator, a real HTTP connection, a real SQLite warehouse.
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo test --workspace`.

mod alerts;
mod config;
mod crashes;
mod delivery;
mod disk;
mod faults;
mod files;
mod firehose;
mod fixture;
mod ingest;
mod logrotate;
mod metrics;
mod model;
mod pipeline;
mod postgres;
mod reload;
mod scale;
mod schemas;
mod systemd;
