//! The engine of one stream: window aggregates, monthly totals and the watermark, and the
//! decision of what fires.
//!
//! Records are fed in WAL order ([`Engine::process`]); the watermark then advances to the
//! newest event time seen minus the allowed lateness and every window whose end it passed
//! is closed ([`Engine::advance`]). When the stream has been idle for the idle timeout, the
//! watermark follows the wall clock instead ([`Engine::tick`]), so windows of keys that
//! sent nothing still close (with count 0) and fire.
//!
//! * **Windowed rules** are evaluated when a window closes, for every key that had records
//!   in it and, with reference thresholds, every key the reference lists for the window's
//!   slot. A record whose window already closed is late: counted, never folded in.
//! * **Monthly rules** keep a running total per key and calendar month and are evaluated at
//!   each record, so a customer hears about the crossing charge at once. A key fires once
//!   per month, and again only for a higher threshold (a raised limit). A month is closed
//!   once the watermark passes its end; a record for a closed month is late.
//!
//! Everything the engine decides is a function of the records in WAL order and the
//! thresholds, except the idle advance, which reads the wall clock; ids are deterministic,
//! so a replay after a crash recomputes the same alerts and the outbox drops the repeats.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::Alert;
use super::rules::{Rule, Span, Threshold, format_scaled};
use super::windows::{Calendar, Month, Slot};
use crate::config::{Aggregate, Comparison};
use crate::schema::{Schema, Value};

/// Where thresholds that are not constants come from.
pub trait Thresholds: Send + Sync + 'static {
    /// The reference threshold of `key` for `slot` under `rule` (scaled like the rule).
    fn reference(&self, rule: &Rule, key: &str, slot: Slot) -> Option<i64>;
    /// Every key with a reference threshold for `slot` under `rule`.
    fn reference_keys(&self, rule: &Rule, slot: Slot) -> Vec<(String, i64)>;
    /// The key's limit from the limits store (scaled like the rule).
    fn limit(&self, key: &str) -> Option<i64>;
}

/// Running aggregate of one key in one window or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acc {
    /// Records.
    pub count: u64,
    /// Sum of values (scaled).
    pub sum: i128,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
}

impl Acc {
    fn add(&mut self, value: Option<i64>) {
        if let Some(v) = value {
            if self.count == 0 {
                self.min = v;
                self.max = v;
            } else {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
            self.sum += i128::from(v);
        }
        self.count += 1;
    }

    /// The aggregate's value (scaled); `None` for min/max/avg of nothing.
    pub fn value(&self, aggregate: Aggregate) -> Option<i128> {
        match aggregate {
            Aggregate::Count => Some(i128::from(self.count)),
            Aggregate::Sum => Some(self.sum),
            _ if self.count == 0 => None,
            Aggregate::Min => Some(i128::from(self.min)),
            Aggregate::Max => Some(i128::from(self.max)),
            Aggregate::Avg => {
                let n = i128::from(self.count);
                // Half away from zero.
                let twice = self.sum * 2;
                Some(if twice >= 0 {
                    (twice + n) / (2 * n)
                } else {
                    (twice - n) / (2 * n)
                })
            }
        }
    }
}

/// A key's running total in one month.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MonthAcc {
    /// The running aggregate.
    pub acc: Acc,
    /// Thresholds that fired this month, in order (each higher than the one before).
    pub fired: Vec<i64>,
    /// Changed since the last checkpoint (and listed in [`RuleState::dirty`]).
    pub dirty: bool,
}

/// State of one rule.
#[derive(Debug)]
pub struct RuleState {
    /// The rule.
    pub rule: Rule,
    /// Windowed rules: open windows by start, then by key.
    pub windows: BTreeMap<Timestamp, HashMap<String, Acc>>,
    /// Windowed rules: start of the oldest window not yet closed.
    pub next_close: Option<Timestamp>,
    /// Monthly rules: totals by (month, key).
    pub months: HashMap<(Month, String), MonthAcc>,
    /// Monthly rules: the oldest month still open.
    pub open_from: Option<Month>,
    /// Monthly totals changed since the last checkpoint (each listed once).
    pub dirty: Vec<(Month, String)>,
    /// Months closed since the last checkpoint (their rows can go).
    pub closed_months: Vec<Month>,
}

impl RuleState {
    /// A rule with no state yet.
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            windows: BTreeMap::new(),
            next_close: None,
            months: HashMap::new(),
            open_from: None,
            dirty: Vec::new(),
            closed_months: Vec::new(),
        }
    }
}

/// Counters the engine keeps (exported as metrics by the consumer).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Lines evaluated.
    pub records: u64,
    /// Lines that did not parse (they are rejected by the warehouse too).
    pub malformed: u64,
}

/// Event-time settings.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How late a record may be (behind the newest event time).
    pub lateness: SignedDuration,
    /// Wall-clock silence after which the watermark follows the wall clock.
    pub idle_timeout: SignedDuration,
    /// Records dated further ahead of the wall clock are ignored (counted as future).
    pub max_future: SignedDuration,
}

/// Window aggregates, monthly totals and the watermark of one stream.
pub struct Engine {
    /// The stream.
    pub stream: String,
    schema: Arc<Schema>,
    calendar: Calendar,
    timing: Timing,
    thresholds: Arc<dyn Thresholds>,
    /// One per rule of the stream, in config order.
    pub rules: Vec<RuleState>,
    /// Newest event time seen.
    pub max_event: Option<Timestamp>,
    /// Windows ending at or before it are closed.
    pub watermark: Option<Timestamp>,
    /// When (wall clock) the last record was processed, or the engine started.
    pub last_record_wall: Timestamp,
    /// Parsed fields of the current line.
    record: Vec<Value>,
    /// Counters.
    pub counts: Counts,
    /// Late records per rule (index as `rules`).
    pub late: Vec<u64>,
    /// Records dated beyond `max_future` per rule (index as `rules`).
    pub future: Vec<u64>,
    /// Windows and months closed so far (the consumer checkpoints after an idle close).
    pub closes: u64,
}

impl Engine {
    /// An engine for `rules` (all of `stream`), with no state.
    pub fn new(
        stream: &str,
        schema: Arc<Schema>,
        calendar: Calendar,
        timing: Timing,
        thresholds: Arc<dyn Thresholds>,
        rules: Vec<Rule>,
        now: Timestamp,
    ) -> Self {
        let late = vec![0; rules.len()];
        let future = vec![0; rules.len()];
        Self {
            stream: stream.to_owned(),
            schema,
            calendar,
            timing,
            thresholds,
            rules: rules.into_iter().map(RuleState::new).collect(),
            max_event: None,
            watermark: None,
            last_record_wall: now,
            record: Vec::new(),
            counts: Counts::default(),
            late,
            future,
            closes: 0,
        }
    }

    /// The calendar in use.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// Folds every line of one WAL record (`data`, lines separated by `\n`) into the state,
    /// then advances the watermark; alerts that fire are appended to `out`.
    pub fn process(&mut self, data: &[u8], now: Timestamp, out: &mut Vec<Alert>) {
        for line in data.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            self.line(line, now, out);
        }
        self.last_record_wall = now;
        if let Some(newest) = self.max_event {
            self.advance(
                newest.checked_sub(self.timing.lateness).unwrap_or(newest),
                now,
                out,
            );
        }
    }

    fn line(&mut self, line: &[u8], now: Timestamp, out: &mut Vec<Alert>) {
        self.counts.records += 1;
        if self.schema.parse(line, &mut self.record).is_err() {
            self.counts.malformed += 1;
            return;
        }
        // Every record moves the watermark (filters only decide what a rule counts), so a
        // filtered rule's silent keys still see their windows close. A record dated further
        // ahead of the wall clock than `max_future` moves nothing and counts nowhere: one
        // bad clock must not close weeks of windows at once.
        let horizon = now
            .checked_add(self.timing.max_future)
            .unwrap_or(Timestamp::MAX);
        let mut newest = self.max_event;
        let watermark = self.watermark;
        for (i, state) in self.rules.iter_mut().enumerate() {
            let rule = &state.rule;
            let Some(Value::Timestamp(t)) = self.record.get(rule.time).cloned() else {
                continue;
            };
            if t > horizon {
                self.future[i] += 1;
                continue;
            }
            newest = newest.max(Some(t));
            if !rule.filter.iter().all(|c| c.holds(&self.record)) {
                continue;
            }
            let key = match self.record.get(rule.key) {
                Some(Value::Text(text)) => text.clone(),
                Some(Value::Integer(n)) => n.to_string(),
                Some(Value::Boolean(b)) => b.to_string(),
                Some(Value::Timestamp(ts)) => ts.to_string(),
                _ => continue,
            };
            let value = match rule.value.and_then(|at| self.record.get(at)) {
                Some(Value::Integer(v)) => Some(*v),
                // A value aggregate skips records without a value; count counts them.
                Some(_) => continue,
                None => None,
            };
            // A rule without state starts where a record still counts: the lateness behind
            // this record, but not before the stream's watermark.
            let from = t
                .checked_sub(self.timing.lateness)
                .unwrap_or(t)
                .max(watermark.unwrap_or(Timestamp::MIN));
            let late = match rule.span {
                Span::Window(len) => fold_window(state, &self.calendar, len, t, from, key, value),
                Span::Month => fold_month(
                    state,
                    &self.calendar,
                    self.thresholds.as_ref(),
                    &self.stream,
                    (t, from),
                    key,
                    value,
                    now,
                    out,
                ),
            };
            if late {
                self.late[i] += 1;
            }
        }
        self.max_event = newest;
    }

    /// When the stream has had no record for the idle timeout, moves the watermark to the
    /// wall clock minus the allowed lateness and closes what that passes.
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<Alert>) {
        let idle_since = self
            .last_record_wall
            .checked_add(self.timing.idle_timeout)
            .unwrap_or(Timestamp::MAX);
        if now >= idle_since {
            let to = now.checked_sub(self.timing.lateness).unwrap_or(now);
            self.advance(to, now, out);
        }
    }

    /// Moves the watermark forward to `to` (never back) and closes windows and months it
    /// passed, in time order.
    pub fn advance(&mut self, to: Timestamp, now: Timestamp, out: &mut Vec<Alert>) {
        if self.watermark.is_some_and(|w| w >= to) {
            return;
        }
        self.watermark = Some(to);
        for state in &mut self.rules {
            let (next, open) = (state.next_close, state.open_from);
            match state.rule.span {
                Span::Window(len) => close_windows(
                    state,
                    &self.calendar,
                    self.thresholds.as_ref(),
                    &self.stream,
                    len,
                    to,
                    now,
                    out,
                ),
                Span::Month => close_months(state, &self.calendar, to),
            }
            if (next, open) != (state.next_close, state.open_from) {
                self.closes += 1;
            }
        }
    }

    /// The key's running total for the month of the newest event (or of `now`) under the
    /// first monthly rule whose threshold is the limits store.
    pub fn month_to_date(&self, key: &str, now: Timestamp) -> Option<super::MonthToDate> {
        let state = self
            .rules
            .iter()
            .find(|s| s.rule.span == Span::Month && s.rule.threshold == Threshold::Limits)?;
        let month = self.calendar.month(self.max_event.unwrap_or(now));
        let total = state.months.get(&(month, key.to_owned()))?;
        let scale = state.rule.scale;
        Some(super::MonthToDate {
            rule: state.rule.name.clone(),
            month: month.to_string(),
            spend: format_scaled(total.acc.value(state.rule.aggregate).unwrap_or(0), scale),
            records: total.acc.count,
            notified: total
                .fired
                .iter()
                .map(|t| format_scaled(i128::from(*t), scale))
                .collect(),
        })
    }
}

/// Adds a record to its window; `true` when the window already closed (late).
fn fold_window(
    state: &mut RuleState,
    calendar: &Calendar,
    len: SignedDuration,
    t: Timestamp,
    from: Timestamp,
    key: String,
    value: Option<i64>,
) -> bool {
    let start = calendar.window_start(t, len);
    if state.next_close.is_none() {
        state.next_close = Some(calendar.window_start(from, len));
    }
    if state.next_close.is_some_and(|next| start < next) {
        return true;
    }
    state
        .windows
        .entry(start)
        .or_default()
        .entry(key)
        .or_default()
        .add(value);
    false
}

/// Adds a record to its month and fires when the running total crosses the threshold;
/// `true` when the month already closed (late).
#[allow(clippy::too_many_arguments)]
fn fold_month(
    state: &mut RuleState,
    calendar: &Calendar,
    thresholds: &dyn Thresholds,
    stream: &str,
    (t, from): (Timestamp, Timestamp),
    key: String,
    value: Option<i64>,
    now: Timestamp,
    out: &mut Vec<Alert>,
) -> bool {
    let month = calendar.month(t);
    if state.open_from.is_none() {
        state.open_from = Some(calendar.month(from));
    }
    if state.open_from.is_some_and(|open| month < open) {
        return true;
    }
    let rule = &state.rule;
    let threshold = match &rule.threshold {
        Threshold::Constant(v) => Some(*v),
        Threshold::Limits => thresholds.limit(&key),
        Threshold::Reference(_) => None, // Refused by the rule compiler.
    };
    let entry_key = (month, key);
    let total = match state.months.get_mut(&entry_key) {
        Some(total) => total,
        None => state.months.entry(entry_key.clone()).or_default(),
    };
    total.acc.add(value);
    if !total.dirty {
        total.dirty = true;
        state.dirty.push(entry_key.clone());
    }
    let (Some(threshold), Some(current)) = (threshold, total.acc.value(rule.aggregate)) else {
        return false;
    };
    let crossed = match rule.when {
        Comparison::Above => current > i128::from(threshold),
        Comparison::Below => current < i128::from(threshold),
    };
    let higher = total.fired.last().is_none_or(|last| threshold > *last);
    if crossed && higher {
        total.fired.push(threshold);
        let (month, key) = entry_key;
        out.push(Alert {
            alert_id: alert_id(&[&rule.name, &key, &month.to_string(), &threshold.to_string()]),
            rule: rule.name.clone(),
            key,
            stream: stream.to_owned(),
            window_start: None,
            window_end: None,
            slot: None,
            month: Some(month.to_string()),
            value: format_scaled(current, rule.scale),
            threshold: format_scaled(i128::from(threshold), rule.scale),
            comparison: rule.when,
            fired_at: now,
            event_time: Some(t),
            records: total.acc.count,
        });
    }
    false
}

/// The longest gap of windows closed one by one when the watermark jumps.
const MAX_CATCH_UP: SignedDuration = SignedDuration::from_hours(7 * 24);

/// Closes, oldest first, every window of a windowed rule whose end is at or before `to`.
#[allow(clippy::too_many_arguments)]
fn close_windows(
    state: &mut RuleState,
    calendar: &Calendar,
    thresholds: &dyn Thresholds,
    stream: &str,
    len: SignedDuration,
    to: Timestamp,
    now: Timestamp,
    out: &mut Vec<Alert>,
) {
    let next = match state.next_close {
        Some(next) => next,
        // Nothing seen yet: start with the window the watermark is in (only reference keys
        // can fire there).
        None => {
            let start = calendar.window_start(to, len);
            state.next_close = Some(start);
            start
        }
    };
    let mut start = next;
    // A gap longer than this (a collector stopped for weeks, a bad first record) is not
    // evaluated window by window: that would fire for every expected key in every window.
    if to.duration_since(start) > MAX_CATCH_UP {
        let resume = calendar.window_start(to - MAX_CATCH_UP, len);
        tracing::error!(rule = %state.rule.name, from = %start, to = %resume, "The watermark jumped further than the catch-up limit; windows in between are not evaluated.");
        state.windows.retain(|w, _| *w >= resume);
        start = resume;
        state.next_close = Some(start);
    }
    loop {
        let end = calendar.window_end(start, len);
        if end > to {
            break;
        }
        let counted = state.windows.remove(&start).unwrap_or_default();
        close_window(
            state, calendar, thresholds, stream, start, end, counted, now, out,
        );
        start = end;
        state.next_close = Some(start);
    }
}

#[allow(clippy::too_many_arguments)]
fn close_window(
    state: &RuleState,
    calendar: &Calendar,
    thresholds: &dyn Thresholds,
    stream: &str,
    start: Timestamp,
    end: Timestamp,
    counted: HashMap<String, Acc>,
    now: Timestamp,
    out: &mut Vec<Alert>,
) {
    let rule = &state.rule;
    let slot = calendar.slot(start);
    // Keys to evaluate with their thresholds: those with records, and those the reference
    // expects in this slot (with nothing counted).
    let mut keys: Vec<(String, Acc, Option<i64>)> = Vec::new();
    match &rule.threshold {
        Threshold::Reference(_) => {
            let expected = thresholds.reference_keys(rule, slot);
            let mut seen = HashSet::with_capacity(expected.len());
            for (key, threshold) in expected {
                let acc = counted.get(&key).copied().unwrap_or_default();
                seen.insert(key.clone());
                keys.push((key, acc, Some(threshold)));
            }
            for (key, acc) in counted {
                if !seen.contains(&key) {
                    let threshold = thresholds.reference(rule, &key, slot);
                    keys.push((key, acc, threshold));
                }
            }
        }
        Threshold::Constant(v) => keys.extend(counted.into_iter().map(|(k, a)| (k, a, Some(*v)))),
        Threshold::Limits => keys.extend(counted.into_iter().map(|(k, a)| {
            let limit = thresholds.limit(&k);
            (k, a, limit)
        })),
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, acc, threshold) in keys {
        let (Some(threshold), Some(value)) = (threshold, acc.value(rule.aggregate)) else {
            continue;
        };
        let fires = match rule.when {
            Comparison::Above => value > i128::from(threshold),
            Comparison::Below => value < i128::from(threshold),
        };
        if !fires {
            continue;
        }
        out.push(Alert {
            alert_id: alert_id(&[&rule.name, &key, &start.as_second().to_string()]),
            rule: rule.name.clone(),
            key,
            stream: stream.to_owned(),
            window_start: Some(start),
            window_end: Some(end),
            slot: Some(slot.to_string()),
            month: None,
            value: format_scaled(value, rule.scale),
            threshold: format_scaled(i128::from(threshold), rule.scale),
            comparison: rule.when,
            fired_at: now,
            event_time: None,
            records: acc.count,
        });
    }
}

/// Drops totals of months the watermark passed.
fn close_months(state: &mut RuleState, calendar: &Calendar, to: Timestamp) {
    let open = match state.open_from {
        Some(open) => open,
        None => {
            state.open_from = Some(calendar.month(to));
            return;
        }
    };
    let mut month = open;
    while calendar.month_end(month) <= to {
        state.months.retain(|(m, _), _| *m != month);
        state.dirty.retain(|(m, _)| *m != month);
        state.closed_months.push(month);
        month = calendar.month(calendar.month_end(month));
    }
    state.open_from = Some(month);
}

/// A deterministic id from the parts that identify an alert: the first 16 bytes of their
/// SHA-256, as 32 hex digits.
pub fn alert_id(parts: &[&str]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part.as_bytes());
        context.update(&[0]);
    }
    let digest = context.finish();
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
