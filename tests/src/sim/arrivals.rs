//! Arrival times of the ordinary traffic: a Poisson process that follows the daily curve.
//!
//! Each booth's traffic is a Poisson process with rate `base × curve(local hour, weekday)`.
//! The curve is a step function over local hours and the silent booth switches off at fixed
//! instants, so the total rate is constant between those boundaries: each gap is drawn exactly
//! as an exponential variate, and when it would cross a boundary the draw restarts from the
//! boundary (the process is memoryless, so this is exact, not an approximation).
//!
//! Determinism: `ln` is computed with plain arithmetic (see [`det_ln`]) so the output does not
//! depend on the platform's libm.

use fastrand::Rng;
use jiff::tz::TimeZone;

use super::curve::DailyCurve;
use super::localtime::LocalClock;

const MS_PER_HOUR: f64 = 3_600_000.0;

/// A booth that sends nothing from `from_ms` (inclusive) to `until_ms` (exclusive).
#[derive(Debug, Clone)]
pub(crate) struct Silent {
    pub(crate) booth: usize,
    pub(crate) from_ms: i64,
    pub(crate) until_ms: i64,
}

impl Silent {
    fn covers(&self, time_ms: i64) -> bool {
        (self.from_ms..self.until_ms).contains(&time_ms)
    }
}

/// The arrival clock of the ordinary traffic over all booths.
#[derive(Debug, Clone)]
pub(crate) struct Arrivals {
    curve: DailyCurve,
    rate_per_booth_per_ms: f64,
    booths: usize,
    silent: Option<Silent>,
    /// Its own cache: the arrival clock runs ahead of the lines being formatted.
    clock: LocalClock,
    /// Unix ms with a sub-millisecond fraction.
    now_ms: f64,
    /// No arrivals at or after this time.
    limit_ms: f64,
}

impl Arrivals {
    /// Arrivals from `start_ms` until `limit_ms` at `rate_per_booth_per_hour × curve` per booth.
    pub(crate) fn new(
        curve: DailyCurve,
        rate_per_booth_per_hour: f64,
        booths: usize,
        silent: Option<Silent>,
        tz: TimeZone,
        start_ms: i64,
        limit_ms: i64,
    ) -> Self {
        Arrivals {
            curve,
            rate_per_booth_per_ms: rate_per_booth_per_hour / MS_PER_HOUR,
            booths,
            silent,
            clock: LocalClock::new(tz),
            now_ms: start_ms as f64,
            limit_ms: limit_ms as f64,
        }
    }

    /// Advances to the next arrival and returns its time (Unix ms), or `None` at the limit.
    pub(crate) fn next(&mut self, rng: &mut Rng) -> Option<f64> {
        loop {
            let t = self.now_ms;
            if t >= self.limit_ms {
                return None;
            }
            let ms = t.floor() as i64;
            // The rate is constant until `end`: the local hour, the weekday and the set of
            // active booths only change at clock-segment or silence boundaries.
            let mut end = self.clock.segment_end(ms) as f64;
            let mut active = self.booths as f64;
            if let Some(s) = &self.silent {
                if ms < s.from_ms {
                    end = end.min(s.from_ms as f64);
                } else if ms < s.until_ms {
                    end = end.min(s.until_ms as f64);
                    active -= 1.0;
                }
            }
            let (hour, weekend) = self.clock.hour_and_weekend(ms);
            let rate = self.rate_per_booth_per_ms * self.curve.weight(hour, weekend) * active;
            if rate > 0.0 {
                // Exponential gap; 1 - u is in (0, 1], so the logarithm is finite.
                let gap = -det_ln(1.0 - rng.f64()) / rate;
                if t + gap < end {
                    self.now_ms = t + gap;
                    return Some(self.now_ms);
                }
            }
            // No arrival before the boundary: by memorylessness, start afresh from there.
            self.now_ms = end;
        }
    }
}

/// A booth for a passage at `time_ms`, uniformly among the booths not silent then.
pub(crate) fn pick_booth(
    rng: &mut Rng,
    booths: usize,
    silent: Option<&Silent>,
    time_ms: i64,
) -> usize {
    // Drawn as u32 (booths <= 999): `Rng::usize` depends on the pointer width, and the output
    // must not.
    let draw = |rng: &mut Rng, n: usize| rng.u32(0..n as u32) as usize;
    match silent {
        Some(s) if s.covers(time_ms) => {
            // `SimConfig::validate` guarantees at least two booths when one is silent.
            let i = draw(rng, booths - 1);
            if i >= s.booth { i + 1 } else { i }
        }
        _ => draw(rng, booths),
    }
}

/// Natural logarithm of `x` in `(0, 1]` using only IEEE basic operations, which are exactly
/// rounded everywhere, unlike `f64::ln` whose last bit may differ between libms. The error is
/// a few ulp, far below the millisecond that event times are cut to.
fn det_ln(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    // x = m · 2^k with m in [1, 2); scaling by 2 is exact.
    let (mut m, mut k) = (x, 0i32);
    while m < 1.0 {
        m *= 2.0;
        k -= 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1) in [0, 1/3): 20 terms reach 1e-19.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let (mut term, mut sum, mut n) = (s, 0.0, 1.0);
    while n < 40.0 {
        sum += term / n;
        term *= s2;
        n += 2.0;
    }
    2.0 * sum + f64::from(k) * LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(x: f64) -> bool {
        (det_ln(x) - x.ln()).abs() <= 1e-14 * x.ln().abs().max(1.0)
    }

    #[test]
    fn det_ln_matches_libm_closely() {
        for x in [1.0, 0.5, 0.1, 1e-9, f64::EPSILON, 0.999_999] {
            assert!(close(x), "{x}");
        }
        let mut rng = Rng::with_seed(3);
        for _ in 0..10_000 {
            let x = 1.0 - rng.f64();
            assert!(close(x), "{x}");
        }
    }

    #[test]
    fn arrivals_stop_at_the_limit_and_skip_zero_rate_hours() {
        let tz = TimeZone::get("UTC").unwrap();
        let mut hourly = [0.0; 24];
        hourly[5] = 1.0;
        let curve = DailyCurve {
            hourly,
            weekend_factor: 1.0,
        };
        // One day from midnight UTC; only 05:00–06:00 has traffic.
        let mut arrivals = Arrivals::new(curve, 3600.0, 1, None, tz, 0, 86_400_000);
        let mut rng = Rng::with_seed(9);
        let mut times = Vec::new();
        while let Some(t) = arrivals.next(&mut rng) {
            times.push(t);
        }
        assert!((3_300..3_900).contains(&times.len()), "{}", times.len());
        assert!(
            times
                .iter()
                .all(|t| (5.0 * MS_PER_HOUR..6.0 * MS_PER_HOUR).contains(t))
        );
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn picked_booths_avoid_the_silent_one_only_during_its_span() {
        let silent = Silent {
            booth: 1,
            from_ms: 100,
            until_ms: 200,
        };
        let mut rng = Rng::with_seed(5);
        assert!((0..1000).all(|_| pick_booth(&mut rng, 3, Some(&silent), 150) != 1));
        assert!((0..1000).any(|_| pick_booth(&mut rng, 3, Some(&silent), 200) == 1));
    }
}
