//! The daily traffic curve: how busy a booth is at each local hour, weekdays and weekends.
//!
//! The curve multiplies `base_rate_per_booth_per_hour`. It is a step function over local hours
//! (not interpolated) so that the arrival process has a constant rate within each hour and can
//! be sampled exactly, and so that "more traffic at 08:00 than at 03:00" is plain to check.

/// Commuter traffic: quiet nights, a morning peak at 07–08 and an evening peak at 17–18. The
/// weights average exactly 1.0, so the base rate is the mean hourly rate on a weekday.
const COMMUTER_WEEKDAY: [f64; 24] = [
    0.25, 0.15, 0.10, 0.10, 0.15, 0.40, // 00–05
    1.00, 1.80, 2.00, 1.50, 1.20, 1.20, // 06–11
    1.10, 1.10, 1.20, 1.20, 1.40, 1.90, // 12–17
    2.00, 1.50, 1.20, 0.70, 0.50, 0.35, // 18–23
];

/// Saturdays and Sundays carry this share of the weekday traffic at the same hour.
const WEEKEND_FACTOR: f64 = 0.6;

/// Hour-of-day weights (local time) applied to the base rate, with a weekend discount.
#[derive(Debug, Clone, PartialEq)]
pub struct DailyCurve {
    /// Weight of each local hour `0..24` on a weekday; 1.0 means the base rate.
    pub hourly: [f64; 24],
    /// Multiplier for Saturdays and Sundays, in `0.0..`.
    pub weekend_factor: f64,
}

impl Default for DailyCurve {
    /// Commuter traffic with morning and evening peaks and weekends at 60 %.
    fn default() -> Self {
        DailyCurve {
            hourly: COMMUTER_WEEKDAY,
            weekend_factor: WEEKEND_FACTOR,
        }
    }
}

impl DailyCurve {
    /// A curve with the same weight at every hour of every day, for tests that want steady
    /// traffic.
    pub fn flat() -> Self {
        DailyCurve {
            hourly: [1.0; 24],
            weekend_factor: 1.0,
        }
    }

    /// The rate multiplier at local `hour` (`0..24`) on a weekday or weekend day.
    ///
    /// # Panics
    ///
    /// If `hour >= 24`.
    pub fn weight(&self, hour: u8, weekend: bool) -> f64 {
        let w = self.hourly[usize::from(hour)];
        if weekend { w * self.weekend_factor } else { w }
    }

    /// Checks that all weights are finite and non-negative and that some weekday hour has
    /// traffic (otherwise a count-mode run would never end).
    ///
    /// # Errors
    ///
    /// A message saying which weight is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for (hour, w) in self.hourly.iter().enumerate() {
            if !(w.is_finite() && *w >= 0.0) {
                return Err(format!(
                    "hourly[{hour}] must be a finite number >= 0, got {w}"
                ));
            }
        }
        if !self.hourly.iter().any(|w| *w > 0.0) {
            return Err("needs at least one hourly weight > 0".to_owned());
        }
        let f = self.weekend_factor;
        if !(f.is_finite() && f >= 0.0) {
            return Err(format!(
                "weekend_factor must be a finite number >= 0, got {f}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_curve_averages_one_on_weekdays() {
        let sum: f64 = DailyCurve::default().hourly.iter().sum();
        assert!((sum - 24.0).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn rush_hour_is_busier_than_night_and_weekends_are_quieter() {
        let c = DailyCurve::default();
        assert!(c.weight(8, false) > 10.0 * c.weight(3, false));
        assert!(c.weight(18, false) > c.weight(13, false));
        assert!(c.weight(8, true) < c.weight(8, false));
    }

    #[test]
    fn validate_rejects_negative_and_all_zero_curves() {
        let mut c = DailyCurve::flat();
        c.hourly[5] = -1.0;
        assert_eq!(
            c.validate().unwrap_err(),
            "hourly[5] must be a finite number >= 0, got -1"
        );
        assert!(
            DailyCurve {
                hourly: [0.0; 24],
                weekend_factor: 1.0
            }
            .validate()
            .is_err()
        );
        assert!(
            DailyCurve {
                weekend_factor: f64::NAN,
                ..DailyCurve::flat()
            }
            .validate()
            .is_err()
        );
    }
}
