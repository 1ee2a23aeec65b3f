//! The toll traffic simulator: deterministic toll transaction lines for tests, demos and benches.
//!
//! Input: a [`SimConfig`] (seed, booths, customers, time zone, daily traffic curve, a booth that
//! goes silent, a customer who overspends, how many malformed lines to mix in) and a [`Mode`]
//! (exactly N lines, or every transaction between two event times). Output: lines in the toll
//! stream format of DESIGN.md, in event-time order:
//!
//! ```text
//! event_time,transaction_id,booth_id,lane,customer_id,transponder_id,vehicle_class,amount
//! 2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,PLZ-017,3,C0001234,TX-0088231,2,12.50
//! ```
//!
//! Promise: the same config, mode and seed produce byte-identical output, on any machine, so a
//! test can regenerate what it wrote instead of storing it. Money is integer cents throughout.
//!
//! Layers, bottom up:
//! * [`Simulator`] yields lines ([`Simulator::next_into`], allocation-free) or [`Record`]s (as an
//!   `Iterator`, with a typed [`Transaction`] for checks);
//! * [`Summary`] counts what was produced (per booth lines and cents), serializable to JSON;
//! * [`SimWriter`] / [`write_files`] append the lines to log files (booth `i` → file `i % n`), with
//!   optional real-time pacing and deliberately split writes, for tailers to chew on;
//! * [`parse_line`] is the simulator's strict reading of the format, used to prove that malformed
//!   lines really are malformed and to recount written files.

mod arrivals;
mod config;
mod curve;
mod files;
mod generator;
mod localtime;
mod malformed;
mod parse;
mod population;
mod summary;
mod tariff;
mod transaction;
mod writer;

pub use config::{Mode, SimConfig, SimError};
pub use curve::DailyCurve;
pub use files::FileSet;
pub use generator::Simulator;
pub use malformed::MalformedKind;
pub use parse::{LineError, parse_line};
pub use population::{booth_id, customer_id, transponder_id, transponders_of, vehicle_class_of};
pub use summary::{BoothSummary, Summary};
pub use tariff::{VEHICLE_CLASSES, format_cents, tariff_cents};
pub use transaction::{LineKind, LineMeta, Record, RecordKind, Transaction};
pub use writer::{Pacing, SimWriter, WriteOptions, write_files};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod writer_tests;
