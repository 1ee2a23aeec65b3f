//! The expected alerts of a replay, computed independently of the collector: a plain,
//! obviously-correct model of the two shipped rules that the end-to-end tests compare the
//! collector's alerts with.
//!
//! * `billing-limit`: per customer and local calendar month, a running sum of amounts in
//!   file order; an alert when it goes above the customer's limit, once per month, and
//!   again for a higher limit.
//! * `booth-traffic-drop`: per booth, counts in 30-minute windows aligned to local :00 and
//!   :30 (each window 30 real minutes, so a day with a DST change has 46 or 50); when a
//!   window has closed, an alert for every booth whose reference threshold for the window's
//!   weekday and local start time is above its count (0 when it sent nothing).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::sim::Transaction;

/// One alert as the tests compare them (ids and delivery details aside).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    /// Rule name.
    pub rule: String,
    /// Customer or booth.
    pub key: String,
    /// `YYYY-MM`, or the window start as RFC 3339 UTC with seconds (`…Z`).
    pub period: String,
    /// Exact decimal text.
    pub value: String,
    /// Exact decimal text.
    pub threshold: String,
}

/// The model.
pub struct Oracle {
    tz: TimeZone,
    /// Threshold per (booth, weekday, minute of day).
    reference: HashMap<(String, Weekday, u16), i64>,
    limits: HashMap<String, i64>,
    /// (customer, month) → (running total in cents, highest limit fired).
    totals: HashMap<(String, String), (i64, Option<i64>)>,
    counts: BTreeMap<(Timestamp, String), u64>,
    first_window: Option<Timestamp>,
    /// What fired so far.
    pub expected: BTreeSet<Expected>,
}

const HALF_HOUR: SignedDuration = SignedDuration::from_mins(30);

/// The collector's `alerts.allowed_lateness` in the tests.
pub const LATENESS: SignedDuration = SignedDuration::from_mins(2);

impl Oracle {
    /// A model in `tz` with no thresholds yet.
    pub fn new(tz: TimeZone) -> Self {
        Self {
            tz,
            reference: HashMap::new(),
            limits: HashMap::new(),
            totals: HashMap::new(),
            counts: BTreeMap::new(),
            first_window: None,
            expected: BTreeSet::new(),
        }
    }

    /// Sets a booth's threshold for one weekday and local slot (`"14:30"`).
    pub fn set_reference(&mut self, booth: &str, weekday: Weekday, slot: &str, min: i64) {
        let (h, m) = slot.split_once(':').expect("HH:MM");
        let minute = h.parse::<u16>().expect("hour") * 60 + m.parse::<u16>().expect("minute");
        self.reference.insert((booth.into(), weekday, minute), min);
    }

    /// Sets (or replaces) a customer's monthly limit, in cents.
    pub fn set_limit(&mut self, customer: &str, cents: i64) {
        self.limits.insert(customer.into(), cents);
    }

    /// A customer's total so far in `month` (cents).
    pub fn total(&self, customer: &str, month: &str) -> i64 {
        self.totals
            .get(&(customer.to_owned(), month.to_owned()))
            .map_or(0, |t| t.0)
    }

    /// Start of the local half hour that contains `t`.
    pub fn window_start(&self, t: Timestamp) -> Timestamp {
        let local = t.to_zoned_datetime(self.tz.clone());
        let into = i64::from(local.minute() % 30) * 60_000_000
            + i64::from(local.second()) * 1_000_000
            + i64::from(local.subsec_nanosecond()) / 1000;
        t - SignedDuration::from_micros(into)
    }

    /// Folds in one transaction, in file order.
    pub fn feed(&mut self, tx: &Transaction) {
        let local = tx.event_time.to_zoned_datetime(self.tz.clone());
        let month = format!("{:04}-{:02}", local.year(), local.month());
        let entry = self
            .totals
            .entry((tx.customer_id.clone(), month.clone()))
            .or_insert((0, None));
        entry.0 += tx.amount_cents;
        if let Some(&limit) = self.limits.get(&tx.customer_id)
            && entry.0 > limit
            && entry.1.is_none_or(|fired| limit > fired)
        {
            entry.1 = Some(limit);
            self.expected.insert(Expected {
                rule: "billing-limit".into(),
                key: tx.customer_id.clone(),
                period: month,
                value: cents(entry.0),
                threshold: cents(limit),
            });
        }
        let window = self.window_start(tx.event_time);
        // Evaluation starts where a record still counts: the lateness behind the first.
        if self.first_window.is_none() {
            self.first_window = Some(self.window_start(tx.event_time - LATENESS));
        }
        *self
            .counts
            .entry((window, tx.booth_id.clone()))
            .or_default() += 1;
    }

    /// Closes every window that ends at or before `watermark`, from the one the lateness
    /// before the first record falls in.
    pub fn close_until(&mut self, watermark: Timestamp) {
        let Some(mut start) = self.first_window else {
            return;
        };
        while start + HALF_HOUR <= watermark {
            let local = start.to_zoned_datetime(self.tz.clone());
            let weekday = local.weekday();
            let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute()))
                .expect("minute of day");
            let booths: Vec<(String, i64)> = self
                .reference
                .iter()
                .filter(|((_, d, m), _)| *d == weekday && *m == minute)
                .map(|((b, _, _), v)| (b.clone(), *v))
                .collect();
            for (booth, min) in booths {
                let count = self
                    .counts
                    .get(&(start, booth.clone()))
                    .copied()
                    .unwrap_or(0);
                if i64::try_from(count).unwrap_or(i64::MAX) < min {
                    self.expected.insert(Expected {
                        rule: "booth-traffic-drop".into(),
                        key: booth,
                        period: start.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        value: count.to_string(),
                        threshold: min.to_string(),
                    });
                }
            }
            start += HALF_HOUR;
        }
        self.first_window = Some(start);
    }

    /// Records in one booth's window (for choosing thresholds).
    pub fn count(&self, window: Timestamp, booth: &str) -> u64 {
        self.counts
            .get(&(window, booth.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// Cents as BRL text: `15120` → `151.20`.
pub fn cents(value: i64) -> String {
    format!("{}.{:02}", value / 100, value % 100)
}

/// The comparable form of an alert document as the collector sends it.
///
/// # Errors
/// A document without the fields of an alert.
pub fn from_document(doc: &serde_json::Value) -> anyhow::Result<Expected> {
    let text = |field: &str| {
        doc.get(field)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("alert without {field}: {doc}"))
    };
    let period = match doc.get("month").and_then(|v| v.as_str()) {
        Some(month) => month.to_owned(),
        None => {
            let start: Timestamp = text("window_start")?.parse()?;
            start.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        }
    };
    Ok(Expected {
        rule: text("rule")?,
        key: text("key")?,
        period,
        value: text("value")?,
        threshold: text("threshold")?,
    })
}
