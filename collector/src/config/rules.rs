//! The `rules:`, `alerts:` and `limits:` sections: what the alert engine evaluates.
//!
//! Rules are configuration, not code: a stream, an optional filter, a group-by key, either a
//! tumbling window (evaluated when the window closes) or a running total per calendar
//! month (evaluated at each record), an aggregate, a threshold and a comparison.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// One alert rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name; part of every alert id (so renaming a rule re-arms its alerts).
    pub name: String,
    /// The stream whose records the rule reads.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Records that do not pass every condition are ignored by this rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<FilterConfig>,
    /// Column (field or warehouse name, of the stream's schema) whose value groups records,
    /// e.g. `booth_id`.
    pub key: String,
    /// Timestamp column that gives the event time; default: the schema's first timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Tumbling window length (e.g. `30m`), aligned to the local time of day in `timezone`;
    /// must divide a day. Exactly one of `window` and `period` is given.
    #[serde(
        default,
        with = "super::duration_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// Running accumulation per calendar period (in `timezone`), compared at each record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// What is computed per key and window (or period).
    pub aggregate: Aggregate,
    /// The column `sum`, `min`, `max` and `avg` read (integer or decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Where the threshold comes from.
    pub threshold: ThresholdConfig,
    /// Fire when the value is `above` or `below` the threshold (strictly).
    pub when: Comparison,
    /// Webhooks (names under `notify.webhooks`) that receive this rule's alerts; default:
    /// all of them. Every alert also goes to the alert log and the `alerts` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<String>>,
}

fn default_stream() -> String {
    "toll-transactions".into()
}

/// A calendar period for running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// The calendar month in the operator's time zone.
    Month,
}

/// The aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Number of records.
    Count,
    /// Sum of `column`.
    Sum,
    /// Smallest `column`.
    Min,
    /// Largest `column`.
    Max,
    /// Mean of `column`, rounded half away from zero at the column's scale.
    Avg,
}

/// Above or below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    /// Fire when value > threshold.
    Above,
    /// Fire when value < threshold.
    Below,
}

/// Where a rule's threshold comes from. In YAML: `{ constant: "100" }` (or a number),
/// `{ reference: FILE }`, or `limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThresholdConfig {
    /// The same value for every key.
    Constant(String),
    /// A reference CSV (`<key>,weekday,slot_start,<value>` with a header), per key,
    /// weekday and slot (window start, local time); keys listed there are evaluated even
    /// when they sent nothing. Relative to the config file. Reloaded on change and SIGHUP.
    Reference(PathBuf),
    /// The limits store, per key (`PUT /v1/customers/{id}/limit`); keys without a limit
    /// are not evaluated.
    Limits,
}

impl Serialize for ThresholdConfig {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::Limits => ser.serialize_str("limits"),
            Self::Constant(value) => {
                let mut map = ser.serialize_map(Some(1))?;
                map.serialize_entry("constant", value)?;
                map.end()
            }
            Self::Reference(path) => {
                let mut map = ser.serialize_map(Some(1))?;
                map.serialize_entry("reference", path)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ThresholdConfig {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        const EXPECTED: &str = "limits, { constant: VALUE } or { reference: FILE }";
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ThresholdConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "limits" => Ok(ThresholdConfig::Limits),
                    other => Err(E::custom(format!("{other:?}: expected {EXPECTED}"))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(format!("empty; expected {EXPECTED}")));
                };
                let value = match key.as_str() {
                    "constant" => ThresholdConfig::Constant(map.next_value::<Scalar>()?.0),
                    "reference" => ThresholdConfig::Reference(map.next_value()?),
                    "limits" => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        ThresholdConfig::Limits
                    }
                    other => {
                        return Err(A::Error::custom(format!(
                            "unknown threshold source {other:?}; expected {EXPECTED}"
                        )));
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(format!(
                        "give one threshold source: {EXPECTED}"
                    )));
                }
                Ok(value)
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// A YAML scalar kept as its text (`100`, `"150.00"`).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Err(E::custom(format!(
                    "{v} as a YAML float could be inexact; quote it, e.g. \"{v}\""
                )))
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// One condition on a column of the record; all of a rule's conditions must hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Column (field or warehouse name).
    pub column: String,
    /// Equal to this value (compared as the column's type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// Not equal to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<String>,
    /// One of these values.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    /// Strictly greater (integer, decimal and timestamp columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<String>,
    /// Strictly smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<String>,
}

/// Event-time settings shared by all rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How late (in event time, behind the newest event seen) a record may arrive and still
    /// count; windows close this long after their end. Default 2m.
    #[serde(with = "duration")]
    pub allowed_lateness: Duration,
    /// After this long without records on a stream (wall clock), its watermark follows the
    /// wall clock instead, so silent keys still get their windows closed. Default 1m.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// How often window state, monthly totals and the watermark are checkpointed together
    /// with the WAL position they cover. Default 1s.
    #[serde(with = "duration")]
    pub checkpoint_interval: Duration,
    /// Records dated further ahead of the collector's clock than this are ignored by the
    /// rules (counted in `tollstream_collector_alert_future_records_total`), so a booth with
    /// a wrong clock cannot close weeks of windows. Default 1d.
    #[serde(with = "duration")]
    pub max_future: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            checkpoint_interval: Duration::from_secs(1),
            max_future: Duration::from_secs(24 * 3600),
        }
    }
}
