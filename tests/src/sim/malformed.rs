//! Malformed lines: which kinds exist, how a valid line is broken, and where they go.
//!
//! Each malformed line is a valid line broken in exactly one way, so the reject reason is
//! unambiguous: wrong field count, bad timestamp, non-numeric amount or invalid UTF-8. None of
//! them adds or removes a `\n`, so line counts stay exact. They are spread evenly, by line index
//! in count mode and by event time in historical mode, and cycle through the four kinds.

use serde::{Deserialize, Serialize};

/// The ways a line is broken; the n-th malformed line is `MalformedKind::nth(n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// Seven fields: the amount is missing.
    WrongFieldCount,
    /// The event time is written `DD/MM/YYYY HH:MM:SS`, as a misconfigured locale would.
    BadTimestamp,
    /// The amount carries a currency symbol: `R$12.50`.
    NonNumericAmount,
    /// The customer id contains the byte `0xFF`, which never occurs in UTF-8.
    InvalidUtf8,
}

impl MalformedKind {
    /// All kinds, in the order they cycle.
    pub const ALL: [MalformedKind; 4] = [
        MalformedKind::WrongFieldCount,
        MalformedKind::BadTimestamp,
        MalformedKind::NonNumericAmount,
        MalformedKind::InvalidUtf8,
    ];

    /// The kind of the `n`-th (zero-based) malformed line.
    pub fn nth(n: u64) -> MalformedKind {
        MalformedKind::ALL[(n % 4) as usize]
    }

    /// A short snake_case name, e.g. `bad_timestamp`.
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedKind::WrongFieldCount => "wrong_field_count",
            MalformedKind::BadTimestamp => "bad_timestamp",
            MalformedKind::NonNumericAmount => "non_numeric_amount",
            MalformedKind::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// Breaks the valid line at `out[start..]` (which ends in `\n`) in the way `kind` says.
pub(crate) fn corrupt(kind: MalformedKind, out: &mut Vec<u8>, start: usize) {
    let mut line = out.split_off(start);
    line.pop(); // the `\n`, pushed back below
    let fields: Vec<&[u8]> = line.split(|b| *b == b',').collect();
    let mut broken: Vec<u8> = Vec::with_capacity(line.len() + 8);
    match kind {
        MalformedKind::WrongFieldCount => {
            broken.extend_from_slice(&fields[..fields.len() - 1].join(&b','));
        }
        MalformedKind::BadTimestamp => {
            // `2026-11-25T14:03:27.512-03:00` → `25/11/2026 14:03:27`.
            let t = fields[0];
            for part in [&t[8..10], b"/", &t[5..7], b"/", &t[0..4], b" ", &t[11..19]] {
                broken.extend_from_slice(part);
            }
            for f in &fields[1..] {
                broken.push(b',');
                broken.extend_from_slice(f);
            }
        }
        MalformedKind::NonNumericAmount => {
            let last = fields.len() - 1;
            broken.extend_from_slice(&fields[..last].join(&b','));
            broken.extend_from_slice(b",R$");
            broken.extend_from_slice(fields[last]);
        }
        MalformedKind::InvalidUtf8 => {
            broken.extend_from_slice(&line);
            // The customer id starts right after the fourth comma with `C`; the digit after
            // it becomes 0xFF, keeping the length and the field count.
            let customer_at = fields[..4].iter().map(|f| f.len() + 1).sum::<usize>();
            broken[customer_at + 1] = 0xFF;
        }
    }
    broken.push(b'\n');
    out.extend_from_slice(&broken);
}

/// Where the malformed lines of a run go.
#[derive(Debug, Clone)]
pub(crate) enum MalformedPlan {
    /// Count mode: at line indexes `floor((2j + 1) · lines / (2 · count))`, replacing the line
    /// that would have been there, so the total stays exactly `lines`.
    ByIndex { lines: u64, count: u64, next: u64 },
    /// Historical mode: extra lines at event times `from + (2j + 1) · span / (2 · count)`, so
    /// every transaction of the span is still there and the count is exact however sparse the
    /// traffic.
    ByTime {
        from_ms: i64,
        span_ms: i64,
        count: u64,
        next: u64,
    },
}

impl MalformedPlan {
    /// If line `index` is due to be malformed, its kind (and the plan moves on).
    pub(crate) fn take_at_index(&mut self, index: u64) -> Option<MalformedKind> {
        let MalformedPlan::ByIndex { lines, count, next } = self else {
            return None;
        };
        if *next >= *count {
            return None;
        }
        // u128: (2j + 1) · lines overflows u64 for absurd line counts only, but costs nothing.
        let due = (u128::from(2 * *next + 1) * u128::from(*lines)) / (2 * u128::from(*count));
        if u128::from(index) != due {
            return None;
        }
        *next += 1;
        Some(MalformedKind::nth(*next - 1))
    }

    /// The event time (Unix ms) of the next time-planned malformed line, if any is left.
    pub(crate) fn next_time_ms(&self) -> Option<i64> {
        let MalformedPlan::ByTime {
            from_ms,
            span_ms,
            count,
            next,
        } = *self
        else {
            return None;
        };
        if next >= count {
            return None;
        }
        let offset = (i128::from(2 * next + 1) * i128::from(span_ms)) / (2 * i128::from(count));
        Some(from_ms + offset as i64)
    }

    /// Takes the next time-planned malformed line.
    pub(crate) fn take_timed(&mut self) -> MalformedKind {
        match self {
            MalformedPlan::ByTime { next, .. } | MalformedPlan::ByIndex { next, .. } => {
                *next += 1;
                MalformedKind::nth(*next - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = b"2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,\
        PLZ-017,3,C0001234,TX-0088231,2,12.50\n";

    fn broken(kind: MalformedKind) -> Vec<u8> {
        let mut out = b"previous line\n".to_vec();
        out.extend_from_slice(LINE);
        corrupt(kind, &mut out, 14);
        assert!(out.starts_with(b"previous line\n"));
        out.split_off(14)
    }

    #[test]
    fn each_kind_breaks_the_line_in_one_way() {
        let id = "0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10";
        assert_eq!(
            broken(MalformedKind::WrongFieldCount),
            format!("2026-11-25T14:03:27.512-03:00,{id},PLZ-017,3,C0001234,TX-0088231,2\n")
                .into_bytes()
        );
        assert_eq!(
            broken(MalformedKind::BadTimestamp),
            format!("25/11/2026 14:03:27,{id},PLZ-017,3,C0001234,TX-0088231,2,12.50\n")
                .into_bytes()
        );
        assert_eq!(
            broken(MalformedKind::NonNumericAmount),
            format!("2026-11-25T14:03:27.512-03:00,{id},PLZ-017,3,C0001234,TX-0088231,2,R$12.50\n")
                .into_bytes()
        );
        let utf8 = broken(MalformedKind::InvalidUtf8);
        assert_eq!(utf8.len(), LINE.len());
        assert!(std::str::from_utf8(&utf8).is_err());
        assert_eq!(utf8.iter().filter(|b| **b == b',').count(), 7);
        assert!(utf8.windows(2).any(|w| w == b"C\xFF"));
    }

    #[test]
    fn index_plan_spreads_evenly_and_exactly() {
        let mut plan = MalformedPlan::ByIndex {
            lines: 10,
            count: 3,
            next: 0,
        };
        let hits: Vec<(u64, MalformedKind)> = (0..10)
            .filter_map(|i| plan.take_at_index(i).map(|k| (i, k)))
            .collect();
        assert_eq!(
            hits,
            [
                (1, MalformedKind::WrongFieldCount),
                (5, MalformedKind::BadTimestamp),
                (8, MalformedKind::NonNumericAmount)
            ]
        );
        let mut plan = MalformedPlan::ByIndex {
            lines: 7,
            count: 7,
            next: 0,
        };
        assert_eq!(
            (0..7).filter(|i| plan.take_at_index(*i).is_some()).count(),
            7
        );
    }

    #[test]
    fn time_plan_hands_out_count_lines_in_order() {
        let mut plan = MalformedPlan::ByTime {
            from_ms: 1000,
            span_ms: 400,
            count: 4,
            next: 0,
        };
        let mut times = Vec::new();
        while let Some(t) = plan.next_time_ms() {
            times.push((t, plan.take_timed()));
        }
        assert_eq!(
            times.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1050, 1150, 1250, 1350]
        );
        assert_eq!(times[3].1, MalformedKind::InvalidUtf8);
    }
}
