//! Reference data: thresholds per key, weekday and slot from a CSV file.
//!
//! Input: a CSV file with a header, times in the operator's time zone:
//!
//! ```text
//! booth_id,weekday,slot_start,min_vehicles
//! PLZ-017,wed,14:00,100
//! PLZ-017,wed,14:30,110
//! ```
//!
//! The first and last column names are free (they name the rule's key and the value); the
//! middle two are `weekday` (`mon`..`sun` or the full English name, any case) and
//! `slot_start` (`HH:MM`, a multiple of the rule's window length from midnight). The value
//! is a non-negative number, exact, with at most the rule's scale of decimal places. Blank
//! lines and lines starting with `#` are skipped; fields may be quoted and are trimmed.
//!
//! Output: a [`ReferenceTable`], or every problem found (up to [`MAX_REPORTED_ERRORS`]) as
//! `FILE:LINE: what is wrong and what is expected`. A [`Reference`] holds the table in use
//! and swaps it whole on [`Reference::reload`]; a file that does not validate leaves the
//! table in use untouched, so a bad edit never takes thresholds away.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::civil::Weekday;

use crate::schema::parse_decimal;

mod watch;

pub use watch::Reference;

/// Most errors a validation reports (the count of the others is given).
pub const MAX_REPORTED_ERRORS: usize = 20;

/// Longest key accepted, in characters.
pub const MAX_KEY_CHARS: usize = 128;

/// How often [`Reference::watch`] looks at the file.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

const MINUTES_PER_DAY: u16 = 24 * 60;

/// Problems found in a CSV file, each tied to its line; at most [`MAX_REPORTED_ERRORS`] are
/// kept, `total` counts them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineErrors {
    /// The file.
    pub path: PathBuf,
    /// `(line, message)`, 1-based line numbers, in file order.
    pub errors: Vec<(u64, String)>,
    /// All problems found, including those not kept.
    pub total: usize,
}

impl LineErrors {
    /// No errors yet, for `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            errors: Vec::new(),
            total: 0,
        }
    }

    /// Records a problem on `line`.
    pub fn push(&mut self, line: u64, message: impl Into<String>) {
        self.total += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push((line, message.into()));
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl fmt::Display for LineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        for (i, (line, message)) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{path}:{line}: {message}")?;
        }
        let more = self.total - self.errors.len();
        if more > 0 {
            write!(f, "\n{path}: … and {more} more errors")?;
        }
        Ok(())
    }
}

/// Why a reference file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file could not be read.
    #[error("reading reference file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is invalid; every line found wrong is listed.
    #[error("{0}")]
    Invalid(LineErrors),
    /// The rule's window cannot have slots.
    #[error(
        "reference file {}: the rule's window {} is not a whole number of minutes that divides a day",
        path.display(),
        humantime::format_duration(*window)
    )]
    Window {
        /// The file.
        path: PathBuf,
        /// The window.
        window: Duration,
    },
}

/// One validated reference file: threshold per key, weekday and slot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceTable {
    key_column: String,
    value_column: String,
    window_minutes: u16,
    scale: u32,
    /// (weekday Monday = 0, slot start minute) → (key, threshold), sorted by key.
    slots: HashMap<(u8, u16), Vec<(String, i64)>>,
    /// Every key, sorted, once.
    keys: Vec<String>,
    rows: usize,
}

impl ReferenceTable {
    /// Reads and validates the file for a rule with tumbling windows of `window`; values are
    /// returned scaled by 10^`scale` (0 for counts, the column's scale for sums of
    /// decimals).
    ///
    /// # Errors
    /// [`ReferenceError::Read`] when unreadable, [`ReferenceError::Window`] for a window
    /// that is not whole minutes dividing a day, [`ReferenceError::Invalid`] listing every
    /// bad line (up to [`MAX_REPORTED_ERRORS`]).
    pub fn load(path: &Path, window: Duration, scale: u32) -> Result<Self, ReferenceError> {
        let window_minutes = window_minutes(window).ok_or_else(|| ReferenceError::Window {
            path: path.to_path_buf(),
            window,
        })?;
        let bytes = std::fs::read(path).map_err(|source| ReferenceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &bytes, window_minutes, scale).map_err(ReferenceError::Invalid)
    }

    fn parse(
        path: &Path,
        bytes: &[u8],
        window_minutes: u16,
        scale: u32,
    ) -> Result<Self, LineErrors> {
        let mut errors = LineErrors::new(path);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(bytes);
        let mut records = reader.byte_records();
        let (key_column, value_column) = match records.next() {
            None => {
                errors.push(
                    1,
                    format!("the file is empty; expected the header {HEADER_HINT}"),
                );
                return Err(errors);
            }
            Some(Err(e)) => {
                errors.push(record_line(bytes, e.position(), true), format!("{e}"));
                return Err(errors);
            }
            Some(Ok(header)) => match check_header(&header) {
                Ok(names) => names,
                Err(message) => {
                    errors.push(record_line(bytes, header.position(), true), message);
                    return Err(errors);
                }
            },
        };
        let mut table = Self {
            key_column,
            value_column,
            window_minutes,
            scale,
            slots: HashMap::new(),
            keys: Vec::new(),
            rows: 0,
        };
        // (key, weekday, slot) → line, to name the first occurrence of a duplicate.
        let mut seen: HashMap<(String, u8, u16), u64> = HashMap::new();
        for record in records {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    errors.push(record_line(bytes, e.position(), true), format!("{e}"));
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        break;
                    }
                    continue;
                }
            };
            let line = record_line(bytes, record.position(), true);
            match table.parse_row(&record) {
                Ok((key, day, minute, value)) => match seen.entry((key.clone(), day, minute)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        errors.push(
                            line,
                            format!(
                                "duplicate of line {}: {key} {} {} already has a threshold; \
                                     give each key, weekday and slot_start once",
                                first.get(),
                                WEEKDAYS[usize::from(day)].0,
                                format_minute(minute)
                            ),
                        );
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(line);
                        table
                            .slots
                            .entry((day, minute))
                            .or_default()
                            .push((key, value));
                        table.rows += 1;
                    }
                },
                Err(message) => errors.push(line, message),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for entries in table.slots.values_mut() {
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let mut keys: Vec<String> = seen.into_keys().map(|(key, _, _)| key).collect();
        keys.sort_unstable();
        keys.dedup();
        table.keys = keys;
        Ok(table)
    }

    /// One data row → (key, weekday, slot start minute, scaled value).
    fn parse_row(&self, record: &csv::ByteRecord) -> Result<(String, u8, u16, i64), String> {
        if record.len() != 4 {
            return Err(format!(
                "expected 4 fields ({},weekday,slot_start,{}), found {}",
                self.key_column,
                self.value_column,
                record.len()
            ));
        }
        let field = |i: usize| {
            std::str::from_utf8(&record[i]).map_err(|_| format!("field {} is not UTF-8", i + 1))
        };
        let key = field(0)?;
        check_key(key).map_err(|why| format!("{} {why}", self.key_column))?;
        let day = parse_weekday(field(1)?)?;
        let minute = parse_slot(field(2)?, self.window_minutes)?;
        let value = parse_value(field(3)?, self.scale)
            .map_err(|why| format!("{} {why}", self.value_column))?;
        Ok((key.to_owned(), day, minute, value))
    }

    /// The threshold of `key` for the slot that holds `minute_of_day` (minutes since local
    /// midnight; a slot start or any minute inside the slot) on `weekday`.
    pub fn threshold(&self, key: &str, weekday: Weekday, minute_of_day: u16) -> Option<i64> {
        let entries = self.slot(weekday, minute_of_day);
        entries
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| entries[i].1)
    }

    /// Every key with a threshold for the slot that holds `minute_of_day` on `weekday`,
    /// sorted by key (to close the windows of keys that sent nothing).
    pub fn slot(&self, weekday: Weekday, minute_of_day: u16) -> &[(String, i64)] {
        let start = minute_of_day - minute_of_day % self.window_minutes;
        self.slots
            .get(&(weekday_index(weekday), start))
            .map_or(&[], Vec::as_slice)
    }

    /// Every key with at least one threshold, sorted.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Data rows (thresholds) in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The header's first column name (should name the rule's `key`).
    pub fn key_column(&self) -> &str {
        &self.key_column
    }

    /// The header's last column name.
    pub fn value_column(&self) -> &str {
        &self.value_column
    }

    /// Decimal places of the scaled thresholds.
    pub fn scale(&self) -> u32 {
        self.scale
    }
}

const HEADER_HINT: &str = "`<key column>,weekday,slot_start,<value column>`, e.g. booth_id,weekday,slot_start,min_vehicles";

const WEEKDAYS: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn weekday_index(weekday: Weekday) -> u8 {
    // Monday = 0 … Sunday = 6, as WEEKDAYS.
    weekday.to_monday_zero_offset().unsigned_abs()
}

fn window_minutes(window: Duration) -> Option<u16> {
    if window.subsec_nanos() != 0 || !window.as_secs().is_multiple_of(60) {
        return None;
    }
    let minutes = u16::try_from(window.as_secs() / 60).ok()?;
    (minutes > 0 && MINUTES_PER_DAY.is_multiple_of(minutes)).then_some(minutes)
}

/// The 1-based line a record starts on in `bytes`.
///
/// The csv crate's position of a record is where its reader stood before skipping blank
/// (and, with `comments`, `#`) lines, so it is moved past them here: messages name the
/// line the record is really on.
pub(crate) fn record_line(bytes: &[u8], position: Option<&csv::Position>, comments: bool) -> u64 {
    let Some(position) = position else {
        return 0;
    };
    let mut line = position.line();
    let mut at = usize::try_from(position.byte()).unwrap_or(usize::MAX);
    while let Some(rest) = bytes.get(at..) {
        let skip = if rest.starts_with(b"\n") {
            1
        } else if rest.starts_with(b"\r\n") {
            2
        } else if comments && rest.starts_with(b"#") {
            match memchr::memchr(b'\n', rest) {
                Some(end) => end + 1,
                None => break,
            }
        } else {
            break;
        };
        at += skip;
        line += 1;
    }
    line
}

fn check_header(header: &csv::ByteRecord) -> Result<(String, String), String> {
    let names: Vec<String> = header
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let ok = names.len() == 4
        && names[1].eq_ignore_ascii_case("weekday")
        && names[2].eq_ignore_ascii_case("slot_start")
        && !names[0].is_empty()
        && !names[3].is_empty();
    if ok {
        return Ok((names[0].clone(), names[3].clone()));
    }
    let found = names.join(",");
    let looks_like_data = names.get(1).is_some_and(|w| parse_weekday(w).is_ok());
    Err(if looks_like_data {
        format!(
            "expected the header {HEADER_HINT}; found a data row ({found}): add the header line first"
        )
    } else {
        format!("expected the header {HEADER_HINT}; found {found}")
    })
}

/// Keys: 1–128 characters, no control characters.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(format!("is longer than {MAX_KEY_CHARS} characters"));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("{key:?} contains a control character"));
    }
    Ok(())
}

fn parse_weekday(raw: &str) -> Result<u8, String> {
    WEEKDAYS
        .iter()
        .position(|(short, long)| raw.eq_ignore_ascii_case(short) || raw.eq_ignore_ascii_case(long))
        .and_then(|i| u8::try_from(i).ok())
        .ok_or_else(|| {
            format!("weekday {raw:?} is not a weekday; expected mon, tue, wed, thu, fri, sat or sun (or the full name)")
        })
}

/// `HH:MM` (hour 0–23, one or two digits; minute two digits) on a slot boundary.
fn parse_slot(raw: &str, window_minutes: u16) -> Result<u16, String> {
    let parsed = raw.split_once(':').and_then(|(h, m)| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || h.len() > 2 || m.len() != 2 || !digits(m) {
            return None;
        }
        let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    });
    let Some(minute) = parsed else {
        return Err(format!(
            "slot_start {raw:?} is not a time of day; expected HH:MM from 00:00 to 23:59, e.g. 14:30"
        ));
    };
    if !minute.is_multiple_of(window_minutes) {
        let earlier = minute - minute % window_minutes;
        return Err(format!(
            "slot_start {raw} is not the start of a {window_minutes}-minute slot; slots start every \
             {window_minutes} minutes from 00:00 (e.g. {} or {})",
            format_minute(earlier),
            format_minute((earlier + window_minutes) % MINUTES_PER_DAY)
        ));
    }
    Ok(minute)
}

fn format_minute(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn parse_value(raw: &str, scale: u32) -> Result<i64, String> {
    if raw.is_empty() {
        return Err("is empty; expected a number of 0 or more".into());
    }
    if raw.starts_with('-') {
        return Err(format!("{raw} is negative; expected a number of 0 or more"));
    }
    parse_decimal(raw, scale).ok_or_else(|| {
        if scale == 0 {
            format!("{raw:?} is not a whole number; expected digits only, e.g. 100")
        } else {
            format!(
                "{raw:?} is not a number with at most {scale} decimal places; expected e.g. 100 or 12.5"
            )
        }
    })
}

/// Describes this module's metrics (call once after installing the recorder).
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "tollstream_collector_reference_rows",
        "Thresholds (data rows) in the reference file in use, by rule."
    );
    metrics::describe_counter!(
        "tollstream_collector_reference_reload_errors_total",
        "Reference file reloads refused because the file did not validate (the previous thresholds stay), by rule."
    );
}

#[cfg(test)]
mod tests;
