//! Which byte ranges of a source the WAL already holds.
//!
//! An agent may have several batches of one file in flight, so they can arrive out of
//! order: a later range is accepted before an earlier one, leaving a gap that the earlier
//! batch (or its resend) fills. Each source keeps its accepted ranges as a short sorted list
//! of disjoint intervals; once the gaps are filled it is a single interval.

use serde::{Deserialize, Serialize};

/// Most intervals kept per source. Past it the lowest gap is treated as filled (logged and
/// counted): a gap that old belongs to a batch its sender gave up on (its file vanished),
/// and keeping it would let the state of one source grow without bound.
pub const MAX_INTERVALS: usize = 64;

/// Disjoint, non-touching, sorted `[start, end)` intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Covered(Vec<(u64, u64)>);

impl Covered {
    /// Everything below `end` (how a version 1 high-water mark reads).
    pub fn below(end: u64) -> Self {
        Self(if end > 0 { vec![(0, end)] } else { Vec::new() })
    }

    /// The highest offset covered (0 when nothing is).
    pub fn high_water(&self) -> u64 {
        self.0.last().map_or(0, |&(_, end)| end)
    }

    /// The intervals.
    pub fn intervals(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// The parts of `[start, end)` not yet covered, in order.
    pub fn uncovered(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut parts = Vec::new();
        let mut at = start;
        for &(a, b) in &self.0 {
            if b <= at {
                continue;
            }
            if a >= end {
                break;
            }
            if a > at {
                parts.push((at, a.min(end)));
            }
            at = at.max(b);
            if at >= end {
                break;
            }
        }
        if at < end {
            parts.push((at, end));
        }
        parts
    }

    /// Adds `[start, end)`; returns true if the lowest gap had to be given up to stay
    /// within [`MAX_INTERVALS`].
    pub fn insert(&mut self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        let first = self.0.partition_point(|&(_, b)| b < start);
        let last = self.0.partition_point(|&(a, _)| a <= end);
        let (mut a, mut b) = (start, end);
        if first < last {
            a = a.min(self.0[first].0);
            b = b.max(self.0[last - 1].1);
        }
        self.0.splice(first..last, [(a, b)]);
        if self.0.len() > MAX_INTERVALS {
            let (lo, _) = self.0[0];
            let (_, hi) = self.0[1];
            self.0.splice(0..2, [(lo, hi)]);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_arriving_out_of_order_merge_once_the_gap_is_filled() {
        let mut covered = Covered::default();
        covered.insert(100, 200);
        assert_eq!(covered.uncovered(0, 300), vec![(0, 100), (200, 300)]);
        covered.insert(300, 400);
        assert_eq!(covered.intervals(), &[(100, 200), (300, 400)]);
        assert_eq!(covered.uncovered(150, 350), vec![(200, 300)]);
        assert_eq!(covered.uncovered(100, 200), Vec::new());
        covered.insert(200, 300);
        assert_eq!(covered.intervals(), &[(100, 400)]);
        covered.insert(0, 100);
        assert_eq!(covered.intervals(), &[(0, 400)]);
        assert_eq!(covered.high_water(), 400);
        assert_eq!(covered.uncovered(0, 500), vec![(400, 500)]);
    }

    #[test]
    fn overlapping_inserts_swallow_what_they_span() {
        let mut covered = Covered::default();
        for (a, b) in [(10, 20), (30, 40), (50, 60)] {
            covered.insert(a, b);
        }
        covered.insert(15, 55);
        assert_eq!(covered.intervals(), &[(10, 60)]);
    }

    #[test]
    fn the_number_of_gaps_is_bounded() {
        let mut covered = Covered::default();
        let mut gave_up = 0;
        for i in 0..(MAX_INTERVALS as u64 + 3) {
            gave_up += u64::from(covered.insert(i * 10, i * 10 + 5));
        }
        assert_eq!(gave_up, 3);
        assert_eq!(covered.intervals().len(), MAX_INTERVALS);
        assert_eq!(covered.intervals()[0], (0, 35));
    }
}
