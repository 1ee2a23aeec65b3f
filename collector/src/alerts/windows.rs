//! The calendar of the alert engine: tumbling windows aligned to the operator's local time
//! of day, weekday slots and calendar months, all in one IANA time zone.
//!
//! A window is an interval of real time `[start, end)`. Its boundaries are the instants at
//! which the local clock shows a multiple of the window length after midnight, so 30-minute
//! windows start at :00 and :30 local time whatever the zone's offset. Across a
//! daylight-saving change that keeps working: when clocks spring forward from 02:00 to
//! 03:00, the window that starts at 01:30 ends at 03:00 (it lasts 30 real minutes) and the
//! slots 02:00 and 02:30 never exist that day, so nothing is compared with their
//! thresholds; when clocks fall back, the slots of the repeated hour occur twice, as two
//! windows of their own.

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

/// Windows, slots and months in one time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
}

/// A calendar month, e.g. 2026-11.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    /// Year.
    pub year: i16,
    /// 1–12.
    pub month: i8,
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl std::str::FromStr for Month {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a month like 2026-11");
        let (year, month) = text.split_once('-').ok_or_else(bad)?;
        let year: i16 = year.parse().map_err(|_| bad())?;
        let month: i8 = month.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Self { year, month })
    }
}

/// A window's place in the week: weekday and minutes after local midnight of its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Local weekday of the window's start.
    pub weekday: Weekday,
    /// Minutes after local midnight of the window's start.
    pub minute_of_day: u16,
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let day = match self.weekday {
            Weekday::Monday => "mon",
            Weekday::Tuesday => "tue",
            Weekday::Wednesday => "wed",
            Weekday::Thursday => "thu",
            Weekday::Friday => "fri",
            Weekday::Saturday => "sat",
            Weekday::Sunday => "sun",
        };
        write!(
            f,
            "{day} {:02}:{:02}",
            self.minute_of_day / 60,
            self.minute_of_day % 60
        )
    }
}

const DAY_SECONDS: i64 = 86_400;

impl Calendar {
    /// A calendar in `tz`.
    pub fn new(tz: TimeZone) -> Self {
        Self { tz }
    }

    /// A calendar in the IANA zone `name`.
    ///
    /// # Errors
    /// An unknown zone.
    pub fn named(name: &str) -> Result<Self, String> {
        TimeZone::get(name)
            .map(Self::new)
            .map_err(|e| format!("unknown time zone {name:?}: {e}"))
    }

    /// Seconds (with fraction, in microseconds) after local midnight at `t`.
    fn micros_of_day(&self, t: Timestamp) -> i64 {
        let local = t.to_zoned_datetime(self.tz.clone());
        let time = local.time();
        (i64::from(time.hour()) * 3600 + i64::from(time.minute()) * 60 + i64::from(time.second()))
            * 1_000_000
            + i64::from(time.subsec_nanosecond()) / 1000
    }

    /// Start of the window of length `len` (which divides a day) that contains `t`.
    pub fn window_start(&self, t: Timestamp, len: SignedDuration) -> Timestamp {
        let len_us = len
            .as_micros()
            .clamp(1_000_000, i128::from(DAY_SECONDS) * 1_000_000);
        let len_us = i64::try_from(len_us).unwrap_or(DAY_SECONDS * 1_000_000);
        let into = self.micros_of_day(t) % len_us;
        let start = t
            .checked_sub(SignedDuration::from_micros(into))
            .unwrap_or(t);
        // An offset change between the boundary and `t` (windows longer than the change's
        // granularity, or zones that change by 30 minutes) puts the subtraction off the
        // boundary; step back to the nearest instant whose local time is on one.
        if self.micros_of_day(start) % len_us == 0 {
            start
        } else {
            self.civil_floor(t, len_us)
        }
    }

    /// The boundary at or before `t` by civil arithmetic (for the rare cases above).
    fn civil_floor(&self, t: Timestamp, len_us: i64) -> Timestamp {
        let local = t.to_zoned_datetime(self.tz.clone());
        let floored = (self.micros_of_day(t) / len_us) * len_us;
        let midnight = local.date().to_datetime(jiff::civil::Time::midnight());
        let civil = midnight
            .checked_add(SignedDuration::from_micros(floored))
            .unwrap_or(midnight);
        // Of the instants the local time may denote, the latest not after `t`.
        let ambiguous = self.tz.to_ambiguous_timestamp(civil);
        match (ambiguous.earlier(), ambiguous.later()) {
            (Ok(_), Ok(later)) if later <= t => later,
            (Ok(earlier), _) if earlier <= t => earlier,
            _ => t,
        }
    }

    /// End of the window that starts at `start` (the next boundary): `len` later, except
    /// where an offset change moved the local clock.
    pub fn window_end(&self, start: Timestamp, len: SignedDuration) -> Timestamp {
        let next = start.checked_add(len).unwrap_or(Timestamp::MAX);
        let end = self.window_start(next, len);
        if end > start { end } else { next }
    }

    /// The weekday and local time of day at which a window starting at `start` begins.
    pub fn slot(&self, start: Timestamp) -> Slot {
        let local = start.to_zoned_datetime(self.tz.clone());
        let time = local.time();
        Slot {
            weekday: local.weekday(),
            minute_of_day: u16::try_from(i32::from(time.hour()) * 60 + i32::from(time.minute()))
                .unwrap_or(0),
        }
    }

    /// The local calendar month of `t`.
    pub fn month(&self, t: Timestamp) -> Month {
        let date = t.to_zoned_datetime(self.tz.clone()).date();
        Month {
            year: date.year(),
            month: date.month(),
        }
    }

    /// The first instant of the month after `month` (its end, exclusive).
    pub fn month_end(&self, month: Month) -> Timestamp {
        let first = Date::new(month.year, month.month, 1)
            .ok()
            .and_then(|d| d.checked_add(1.month()).ok());
        match first.and_then(|d| d.to_zoned_datetime(self.tz.clone()).ok()) {
            Some(zoned) => zoned.timestamp(),
            None => Timestamp::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    const HALF_HOUR: SignedDuration = SignedDuration::from_mins(30);

    #[test]
    fn windows_start_on_local_half_hours() {
        let sp = Calendar::named("America/Sao_Paulo").expect("zone");
        let t = ts("2026-11-25T14:03:27.512-03:00");
        let start = sp.window_start(t, HALF_HOUR);
        assert_eq!(start, ts("2026-11-25T14:00:00-03:00"));
        assert_eq!(
            sp.window_end(start, HALF_HOUR),
            ts("2026-11-25T14:30:00-03:00")
        );
        assert_eq!(sp.slot(start).to_string(), "wed 14:00");
        // Kathmandu is UTC+05:45: local half hours are not UTC half hours.
        let ktm = Calendar::named("Asia/Kathmandu").expect("zone");
        let start = ktm.window_start(ts("2026-11-25T10:20:00+05:45"), HALF_HOUR);
        assert_eq!(start, ts("2026-11-25T10:00:00+05:45"));
    }

    #[test]
    fn spring_forward_skips_the_missing_slots() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT.
        let ny = Calendar::named("America/New_York").expect("zone");
        let start = ny.window_start(ts("2026-03-08T01:45:00-05:00"), HALF_HOUR);
        assert_eq!(start, ts("2026-03-08T01:30:00-05:00"));
        let end = ny.window_end(start, HALF_HOUR);
        assert_eq!(end, ts("2026-03-08T03:00:00-04:00"));
        assert_eq!(end.duration_since(start), HALF_HOUR);
        assert_eq!(ny.slot(end).to_string(), "sun 03:00");
        // Walking the day's windows never meets 02:00 or 02:30.
        let mut w = ny.window_start(ts("2026-03-08T00:00:00-05:00"), HALF_HOUR);
        let mut slots = Vec::new();
        while w < ts("2026-03-09T00:00:00-04:00") {
            slots.push(ny.slot(w).to_string());
            w = ny.window_end(w, HALF_HOUR);
        }
        assert_eq!(slots.len(), 46);
        assert!(!slots.iter().any(|s| s == "sun 02:00" || s == "sun 02:30"));
    }

    #[test]
    fn fall_back_repeats_the_slots_of_the_repeated_hour() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST.
        let ny = Calendar::named("America/New_York").expect("zone");
        let first = ny.window_start(ts("2026-11-01T01:10:00-04:00"), HALF_HOUR);
        let second = ny.window_start(ts("2026-11-01T01:10:00-05:00"), HALF_HOUR);
        assert_eq!(first, ts("2026-11-01T01:00:00-04:00"));
        assert_eq!(second, ts("2026-11-01T01:00:00-05:00"));
        assert_eq!(ny.slot(first), ny.slot(second));
        assert_eq!(
            ny.window_end(ts("2026-11-01T01:30:00-04:00"), HALF_HOUR),
            second
        );
        let mut w = ny.window_start(ts("2026-11-01T00:00:00-04:00"), HALF_HOUR);
        let mut count = 0;
        while w < ts("2026-11-02T00:00:00-05:00") {
            count += 1;
            w = ny.window_end(w, HALF_HOUR);
        }
        assert_eq!(count, 50);
    }

    #[test]
    fn daily_windows_follow_local_midnight_across_dst() {
        let ny = Calendar::named("America/New_York").expect("zone");
        let day = SignedDuration::from_hours(24);
        let start = ny.window_start(ts("2026-03-08T12:00:00-04:00"), day);
        assert_eq!(start, ts("2026-03-08T00:00:00-05:00"));
        assert_eq!(ny.window_end(start, day), ts("2026-03-09T00:00:00-04:00"));
    }

    #[test]
    fn months_are_local() {
        let sp = Calendar::named("America/Sao_Paulo").expect("zone");
        // 02:30 UTC on Dec 1st is still November in São Paulo.
        let m = sp.month(ts("2026-12-01T02:30:00Z"));
        assert_eq!(m.to_string(), "2026-11");
        assert_eq!(sp.month_end(m), ts("2026-12-01T00:00:00-03:00"));
        assert_eq!("2026-11".parse::<Month>(), Ok(m));
        assert!("2026-13".parse::<Month>().is_err());
        let dec = Month {
            year: 2026,
            month: 12,
        };
        assert_eq!(sp.month_end(dec), ts("2027-01-01T00:00:00-03:00"));
    }
}
