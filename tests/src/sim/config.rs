//! Simulator configuration, generation modes and the simulator's error type.
//!
//! Everything that shapes the output is here, so that "same config + seed" fully determines the
//! bytes. `validate` names the offending key and the allowed range, like the daemons' configs.

use std::path::PathBuf;

use jiff::Timestamp;

use super::curve::DailyCurve;
use super::population;

/// 2026-11-25T00:00:00-03:00, a Wednesday in São Paulo: a fixed default start keeps output
/// reproducible (the real clock would make every run different).
const DEFAULT_START: Timestamp = Timestamp::constant(1_795_575_600, 0);

/// Booth ids are `PLZ-` plus three digits.
pub(crate) const MAX_BOOTHS: u16 = 999;

/// Customer ids are `C` plus seven digits.
pub(crate) const MAX_CUSTOMERS: u32 = 9_999_999;

/// Everything that determines the generated traffic; the same value and seed give the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of the random generator (default 42).
    pub seed: u64,
    /// Number of toll booths, `PLZ-001` upwards (default 12, at most 999).
    pub booths: u16,
    /// Lanes per booth; lanes are numbered `1..=lanes_per_booth` (default 6).
    pub lanes_per_booth: u8,
    /// Number of customers, `C0000001` upwards (default 20,000).
    pub customers: u32,
    /// IANA time zone for event-time offsets and the daily curve (default `America/Sao_Paulo`).
    pub time_zone: String,
    /// Event time of the simulated clock in [`Mode::Count`] (default 2026-11-25T00:00-03:00).
    pub start: Timestamp,
    /// Hour-of-day traffic weights in the configured time zone.
    pub curve: DailyCurve,
    /// Mean transactions per booth per hour at curve weight 1.0 (default 300).
    pub base_rate_per_booth_per_hour: f64,
    /// A booth (`PLZ-003`) that sends nothing from the first time (inclusive) to the second
    /// (exclusive), in event time.
    pub silent_booth: Option<(String, Timestamp, Timestamp)>,
    /// A customer (`C0000042`) who passes this many extra times per day, evenly spaced, on top
    /// of their ordinary traffic.
    pub overspender: Option<(String, u32)>,
    /// Malformed lines to mix in, spread evenly, cycling through the [`MalformedKind`]s. In
    /// [`Mode::Count`] they are part of the N lines.
    ///
    /// [`MalformedKind`]: super::MalformedKind
    pub malformed: usize,
    /// Tariff of vehicle class 1 (a car) in cents (default 1250, that is BRL 12.50); the other
    /// classes are multiples of it (see [`tariff_cents`](super::tariff_cents)).
    pub base_tariff_cents: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            booths: 12,
            lanes_per_booth: 6,
            customers: 20_000,
            time_zone: "America/Sao_Paulo".to_owned(),
            start: DEFAULT_START,
            curve: DailyCurve::default(),
            base_rate_per_booth_per_hour: 300.0,
            silent_booth: None,
            overspender: None,
            malformed: 0,
            base_tariff_cents: 1250,
        }
    }
}

/// How much traffic to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Exactly `lines` lines in total (malformed ones included), starting at
    /// [`SimConfig::start`].
    Count {
        /// Total number of lines, valid plus malformed.
        lines: u64,
    },
    /// Every transaction with `from <= event_time < until`, following the daily curve, plus
    /// [`SimConfig::malformed`] malformed lines at evenly spaced event times.
    Historical {
        /// First event time (inclusive).
        from: Timestamp,
        /// End of the span (exclusive).
        until: Timestamp,
    },
}

/// Why the simulator could not start or write.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of range; `key` names the field.
    #[error("{key} {reason}")]
    Invalid {
        /// The offending config field, e.g. `booths` or `silent_booth`.
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The time zone name is not in the tz database.
    #[error("time_zone: unknown time zone {name:?}")]
    TimeZone {
        /// The name from the config.
        name: String,
        /// jiff's lookup error.
        #[source]
        source: jiff::Error,
    },
    /// Opening or writing an output file failed.
    #[error("writing {}", path.display())]
    Io {
        /// The file being opened or written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl SimError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> SimError {
        SimError::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

impl SimConfig {
    /// Checks every field and the mode against their allowed ranges.
    ///
    /// # Errors
    ///
    /// [`SimError::Invalid`] naming the first offending key. The time zone is checked when the
    /// [`Simulator`](super::Simulator) is built, since that needs the tz database.
    pub fn validate(&self, mode: &Mode) -> Result<(), SimError> {
        if self.booths == 0 || self.booths > MAX_BOOTHS {
            return Err(SimError::invalid(
                "booths",
                format!("must be 1..={MAX_BOOTHS}"),
            ));
        }
        if self.lanes_per_booth == 0 {
            return Err(SimError::invalid("lanes_per_booth", "must be > 0"));
        }
        if self.customers == 0 || self.customers > MAX_CUSTOMERS {
            return Err(SimError::invalid(
                "customers",
                format!("must be 1..={MAX_CUSTOMERS}"),
            ));
        }
        let rate = self.base_rate_per_booth_per_hour;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(SimError::invalid(
                "base_rate_per_booth_per_hour",
                "must be > 0",
            ));
        }
        self.curve
            .validate()
            .map_err(|reason| SimError::invalid("curve", reason))?;
        if self.base_tariff_cents <= 0 || self.base_tariff_cents > 100_000_000 {
            return Err(SimError::invalid(
                "base_tariff_cents",
                "must be 1..=100000000",
            ));
        }
        self.validate_silent_booth()?;
        self.validate_overspender()?;
        match *mode {
            Mode::Count { lines } if (self.malformed as u64) > lines => Err(SimError::invalid(
                "malformed",
                format!("is {} but the run has only {lines} lines", self.malformed),
            )),
            Mode::Historical { from, until } if from >= until => Err(SimError::invalid(
                "until",
                format!("must be after from ({from} >= {until})"),
            )),
            _ => Ok(()),
        }
    }

    fn validate_silent_booth(&self) -> Result<(), SimError> {
        let Some((booth, from, until)) = &self.silent_booth else {
            return Ok(());
        };
        match population::parse_booth_id(booth) {
            Some(index) if index < usize::from(self.booths) => {}
            _ => {
                let last = population::booth_id(usize::from(self.booths) - 1);
                return Err(SimError::invalid(
                    "silent_booth",
                    format!("{booth:?} is not one of PLZ-001..={last}"),
                ));
            }
        }
        if self.booths < 2 {
            // With one booth nothing at all could be generated during the span.
            return Err(SimError::invalid("silent_booth", "needs booths >= 2"));
        }
        if from >= until {
            return Err(SimError::invalid(
                "silent_booth",
                format!("span {from}..{until} is empty"),
            ));
        }
        Ok(())
    }

    fn validate_overspender(&self) -> Result<(), SimError> {
        let Some((customer, _)) = &self.overspender else {
            return Ok(());
        };
        match population::parse_customer_id(customer) {
            Some(n) if n >= 1 && n <= self.customers => Ok(()),
            _ => Err(SimError::invalid(
                "overspender",
                format!(
                    "{customer:?} is not one of C0000001..={}",
                    population::customer_id(self.customers)
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_starts_at_midnight_in_sao_paulo() {
        let cfg = SimConfig::default();
        cfg.validate(&Mode::Count { lines: 10 }).unwrap();
        let tz = jiff::tz::TimeZone::get(&cfg.time_zone).unwrap();
        assert_eq!(
            cfg.start.to_zoned_datetime(tz).to_string(),
            "2026-11-25T00:00:00-03:00[America/Sao_Paulo]"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let cfg = SimConfig {
            booths: 0,
            ..SimConfig::default()
        };
        let err = cfg.validate(&Mode::Count { lines: 1 }).unwrap_err();
        assert_eq!(err.to_string(), "booths must be 1..=999");

        let cfg = SimConfig {
            malformed: 5,
            ..SimConfig::default()
        };
        let err = cfg.validate(&Mode::Count { lines: 4 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed is 5 but the run has only 4 lines"
        );

        let t = SimConfig::default().start;
        let cfg = SimConfig {
            silent_booth: Some(("PLZ-013".into(), t, t)),
            ..SimConfig::default()
        };
        let err = cfg.validate(&Mode::Count { lines: 1 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "silent_booth \"PLZ-013\" is not one of PLZ-001..=PLZ-012"
        );

        let cfg = SimConfig {
            overspender: Some(("C0020001".into(), 5)),
            ..SimConfig::default()
        };
        assert!(cfg.validate(&Mode::Count { lines: 1 }).is_err());
    }
}
