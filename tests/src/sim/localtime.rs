//! Local time in the configured zone: RFC 3339 event times and the hour/weekday the curve needs.
//!
//! Asking the tz database and formatting through jiff for every line costs more than the rest
//! of a line together in a debug build, so this caches one *segment* at a time: a span in which
//! the UTC offset and the local date cannot change. With an offset that is a multiple of 15
//! minutes (every zone in use today), local midnights, local hour starts and DST transitions
//! all fall on UTC quarter hours, so a segment is one UTC quarter hour; for the odd historical
//! offset it is one minute. Offsets are rounded to whole minutes, as RFC 3339 cannot carry
//! seconds; the written time is computed with the rounded offset, so every line still names
//! the exact instant.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::tariff::push_padded;

const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;
const QUARTER_HOUR_MS: i64 = 900_000;

/// One span with a fixed offset and local date.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// First UTC millisecond of the segment (inclusive).
    start_ms: i64,
    /// End (exclusive).
    end_ms: i64,
    /// Local milliseconds since midnight at `start_ms`.
    local_ms_of_day: i64,
    /// `YYYY-MM-DD`.
    date: [u8; 10],
    /// `+HH:MM` / `-HH:MM`.
    offset: [u8; 6],
    /// Saturday or Sunday, locally.
    weekend: bool,
}

/// A cached view of one time zone, for timestamps that mostly move forward.
#[derive(Debug, Clone)]
pub(crate) struct LocalClock {
    tz: TimeZone,
    seg: Segment,
}

impl LocalClock {
    /// A clock for `tz`; the first lookup fills the cache.
    pub(crate) fn new(tz: TimeZone) -> Self {
        // An empty span, so that the first `locate` always computes.
        let seg = Segment {
            start_ms: 0,
            end_ms: 0,
            local_ms_of_day: 0,
            date: [b'0'; 10],
            offset: *b"+00:00",
            weekend: false,
        };
        LocalClock { tz, seg }
    }

    /// Appends `ms` (Unix milliseconds) as `YYYY-MM-DDTHH:MM:SS.mmm±HH:MM`.
    pub(crate) fn write_rfc3339(&mut self, ms: i64, out: &mut Vec<u8>) {
        let seg = *self.locate(ms);
        let t = seg.local_ms_of_day + (ms - seg.start_ms);
        out.extend_from_slice(&seg.date);
        out.push(b'T');
        push_padded(out, (t / MS_PER_HOUR) as u64, 2);
        out.push(b':');
        push_padded(out, (t % MS_PER_HOUR / MS_PER_MINUTE) as u64, 2);
        out.push(b':');
        push_padded(out, (t % MS_PER_MINUTE / 1000) as u64, 2);
        out.push(b'.');
        push_padded(out, (t % 1000) as u64, 3);
        out.extend_from_slice(&seg.offset);
    }

    /// The local hour (`0..24`) at `ms` and whether that local day is a Saturday or Sunday.
    pub(crate) fn hour_and_weekend(&mut self, ms: i64) -> (u8, bool) {
        let seg = self.locate(ms);
        let t = seg.local_ms_of_day + (ms - seg.start_ms);
        ((t / MS_PER_HOUR) as u8, seg.weekend)
    }

    /// The end of the cached span containing `ms`: the local hour and weekday stay the same
    /// until then, so the traffic rate does too.
    pub(crate) fn segment_end(&mut self, ms: i64) -> i64 {
        self.locate(ms).end_ms
    }

    fn locate(&mut self, ms: i64) -> &Segment {
        if !(self.seg.start_ms..self.seg.end_ms).contains(&ms) {
            self.seg = self.compute(ms);
        }
        &self.seg
    }

    fn compute(&self, ms: i64) -> Segment {
        // Out-of-range instants cannot come from a validated config within jiff's years
        // -9999..=9999; clamping keeps this total rather than panicking.
        let ts = Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        });
        let offset_secs = i64::from(self.tz.to_offset(ts).seconds());
        let offset_min = (offset_secs + 30).div_euclid(60);
        let len = if offset_min % 15 == 0 {
            QUARTER_HOUR_MS
        } else {
            MS_PER_MINUTE
        };
        let start_ms = ms.div_euclid(len) * len;
        let local = start_ms + offset_min * MS_PER_MINUTE;
        let days = local.div_euclid(MS_PER_DAY);
        // 1970-01-01 was a Thursday; 0 = Sunday.
        let weekday = (days + 4).rem_euclid(7);
        Segment {
            start_ms,
            end_ms: start_ms + len,
            local_ms_of_day: local.rem_euclid(MS_PER_DAY),
            date: date_text(days),
            offset: offset_text(offset_min),
            weekend: weekday == 0 || weekday == 6,
        }
    }
}

/// `YYYY-MM-DD` for days since 1970-01-01 (proleptic Gregorian; years are 0..=9999 in range).
fn date_text(days: i64) -> [u8; 10] {
    let (y, m, d) = civil_from_days(days);
    let mut out = Vec::with_capacity(10);
    push_padded(&mut out, y.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    push_padded(&mut out, u64::from(m), 2);
    out.push(b'-');
    push_padded(&mut out, u64::from(d), 2);
    let mut text = [b'0'; 10];
    text.copy_from_slice(&out);
    text
}

/// `+HH:MM` for an offset in minutes.
fn offset_text(offset_min: i64) -> [u8; 6] {
    let mut out = Vec::with_capacity(6);
    out.push(if offset_min < 0 { b'-' } else { b'+' });
    let abs = offset_min.unsigned_abs();
    push_padded(&mut out, abs / 60, 2);
    out.push(b':');
    push_padded(&mut out, abs % 60, 2);
    let mut text = *b"+00:00";
    text.copy_from_slice(&out);
    text
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) for days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jiff_text(ms: i64, tz: &TimeZone) -> String {
        let z = Timestamp::from_millisecond(ms)
            .unwrap()
            .to_zoned_datetime(tz.clone());
        z.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
    }

    #[test]
    fn matches_jiff_across_zones_and_dst_transitions() {
        let zones = [
            "America/Sao_Paulo",
            "UTC",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "America/St_Johns",
            "Australia/Lord_Howe",
            "Europe/Berlin",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        // 2017..2020 covers Brazil's last DST seasons (2018-11-04, 2019-02-17).
        let (lo, hi) = (1_483_228_800_000_i64, 1_577_836_800_000_i64);
        for name in zones {
            let tz = TimeZone::get(name).unwrap();
            let mut clock = LocalClock::new(tz.clone());
            let mut ms = lo;
            while ms < hi {
                let mut out = Vec::new();
                clock.write_rfc3339(ms, &mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    jiff_text(ms, &tz),
                    "{name} {ms}"
                );
                let z = Timestamp::from_millisecond(ms)
                    .unwrap()
                    .to_zoned_datetime(tz.clone());
                let weekend = matches!(z.weekday(), jiff::civil::Weekday::Saturday)
                    || matches!(z.weekday(), jiff::civil::Weekday::Sunday);
                assert_eq!(
                    clock.hour_and_weekend(ms),
                    (z.hour() as u8, weekend),
                    "{name} {ms}"
                );
                ms += rng.i64(1..4 * MS_PER_HOUR);
            }
        }
    }

    #[test]
    fn dst_start_in_sao_paulo_skips_midnight() {
        let tz = TimeZone::get("America/Sao_Paulo").unwrap();
        let mut clock = LocalClock::new(tz);
        // 2018-11-04T03:00:00Z: local clocks jumped from 00:00 (-03) to 01:00 (-02).
        let at = 1_541_300_400_000;
        let mut out = Vec::new();
        clock.write_rfc3339(at - 1, &mut out);
        out.push(b' ');
        clock.write_rfc3339(at, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2018-11-03T23:59:59.999-03:00 2018-11-04T01:00:00.000-02:00"
        );
    }

    #[test]
    fn civil_dates_round_trip_with_jiff() {
        for days in [-719_468, -1, 0, 59, 10_957, 11_016, 20_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            let date = jiff::civil::Date::new(y as i16, m as i8, d as i8).unwrap();
            let epoch = jiff::civil::date(1970, 1, 1);
            assert_eq!((date - epoch).get_days() as i64, days, "{y}-{m}-{d}");
        }
    }
}
