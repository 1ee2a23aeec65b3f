//! Alerts: rules evaluated in event time on the streams' records.
//!
//! Input: each stream's WAL, read as its own consumer (`alerts`), from just after the
//! position the last checkpoint covers. Output: [`Alert`]s, put into the durable outbox
//! ([`crate::notify`]), which refuses a second alert with the same id.
//!
//! * [`rules`] compiles `rules:` against the streams' schemas;
//! * [`windows`] does the calendar: tumbling windows aligned to local time, months, DST;
//! * [`engine`] holds window aggregates, monthly totals and watermarks and decides what fires;
//! * [`state`] checkpoints the engine together with the WAL position it covers;
//! * [`reference`] reads the reference CSV (thresholds per key, weekday and slot);
//! * [`limits`] is the limits store (customer monthly limits) behind the admin API.

pub mod consumer;
pub mod engine;
pub mod limits;
pub mod reference;
pub mod report;
pub mod rules;
pub mod stage;
pub mod start;
pub mod state;
pub mod windows;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::Comparison;

/// The WAL consumer name of the alert engine.
pub const CONSUMER: &str = "alerts";

/// One alert, as delivered (webhook body, alert log line, `alerts.document`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic from rule, key and window (or month and threshold): the same alert
    /// computed again after a crash or a replay has the same id. Also the
    /// `Idempotency-Key` of every delivery.
    pub alert_id: String,
    /// Rule name.
    pub rule: String,
    /// The group-by key's value (e.g. the customer or booth id).
    pub key: String,
    /// The stream the rule reads.
    pub stream: String,
    /// Start of the window (windowed rules), RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Timestamp>,
    /// End of the window (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Timestamp>,
    /// Local slot of the window start, e.g. `wed 14:00` (windowed rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Calendar month, `YYYY-MM` in the operator's time zone (running-total rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<String>,
    /// The aggregate's value, exact decimal text (e.g. `151.20`, `37`).
    pub value: String,
    /// The threshold it was compared with, same format.
    pub threshold: String,
    /// `above` or `below`.
    pub comparison: Comparison,
    /// When the engine decided (collector clock).
    pub fired_at: Timestamp,
    /// Event time of the record that crossed the threshold (running-total rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<Timestamp>,
    /// Records counted in the window (or the month so far).
    pub records: u64,
}

/// A key's running total for the current calendar month, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthToDate {
    /// The rule whose total this is (the one whose threshold is the limits store).
    pub rule: String,
    /// `YYYY-MM`, the month of the newest event time the engine has seen.
    pub month: String,
    /// Exact decimal text, e.g. `151.20`.
    pub spend: String,
    /// Records counted.
    pub records: u64,
    /// Thresholds that already fired this month (exact decimal text), oldest first.
    pub notified: Vec<String>,
}

/// Read access to the engine's monthly totals (implemented by the engine, used by the
/// admin API).
pub trait MonthToDateView: Send + Sync + 'static {
    /// The key's total for the current month; `None` when it has no record this month (or
    /// no rule uses the limits store).
    fn month_to_date(&self, key: &str) -> Option<MonthToDate>;
}
