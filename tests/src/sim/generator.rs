//! The generator: transactions in event-time order from a seeded random source.
//!
//! Three streams are merged by event time: the ordinary traffic (arrival times from
//! [`Arrivals`], a Poisson process following the daily curve), the overspender's evenly spaced
//! extra passes, and, in historical mode, the malformed lines. Each line's attributes (booth,
//! lane, customer, transponder, id) are drawn when it is emitted.
//!
//! Determinism: the ordinary traffic draws from one seeded `fastrand::Rng` in a fixed order;
//! the overspender's and historical malformed lines draw from a second one, so adding them
//! leaves the ordinary traffic byte for byte as it was.

use fastrand::Rng;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::arrivals::{Arrivals, Silent, pick_booth};
use super::config::{Mode, SimConfig, SimError};
use super::localtime::LocalClock;
use super::malformed::{MalformedKind, MalformedPlan, corrupt};
use super::population::{self, Population, pick_transponder, vehicle_class_of};
use super::tariff::tariff_cents;
use super::transaction::{Event, LineKind, LineMeta, Record, RecordKind};

const MS_PER_DAY: f64 = 86_400_000.0;

/// Mixed into the seed of the side stream's generator (any constant; this one is 2^64 / φ).
const SIDE_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// When a run ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// After this many lines.
    Lines(u64),
    /// At this event time (Unix ms, exclusive).
    Until(i64),
}

impl End {
    /// No event at or after this time (Unix ms); count mode runs to the end of jiff's range.
    fn limit_ms(self) -> i64 {
        match self {
            End::Until(until) => until,
            End::Lines(_) => Timestamp::MAX.as_millisecond(),
        }
    }
}

/// Which merged stream the next line comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Regular,
    Overspender,
    Malformed,
}

#[derive(Debug, Clone)]
struct Overspender {
    customer: u32,
    interval_ms: f64,
    next_ms: f64,
}

/// Deterministic toll traffic: yields lines in event-time order.
///
/// Use [`next_into`](Self::next_into) to append lines to a buffer without allocating, or
/// iterate to get [`Record`]s with typed [`Transaction`](super::Transaction)s. Both advance
/// the same sequence.
#[derive(Debug, Clone)]
pub struct Simulator {
    booth_ids: Vec<String>,
    lanes: u8,
    population: Population,
    tariff: [i64; 9],
    tz: TimeZone,
    line_clock: LocalClock,
    /// Ordinary traffic: arrival times and attributes.
    rng: Rng,
    /// The overspender's and historical malformed lines, kept apart so that adding them does
    /// not change the ordinary traffic around them.
    side_rng: Rng,
    arrivals: Arrivals,
    /// The next ordinary arrival, drawn but not yet emitted.
    pending: Option<f64>,
    end: End,
    silent: Option<Silent>,
    overspender: Option<Overspender>,
    malformed: MalformedPlan,
    emitted: u64,
    live_started: bool,
}

impl Simulator {
    /// Builds a generator for `cfg` in `mode`.
    ///
    /// # Errors
    ///
    /// [`SimError::Invalid`] for an out-of-range config value, [`SimError::TimeZone`] for an
    /// unknown zone name.
    pub fn new(cfg: &SimConfig, mode: Mode) -> Result<Simulator, SimError> {
        cfg.validate(&mode)?;
        let tz = TimeZone::get(&cfg.time_zone).map_err(|source| SimError::TimeZone {
            name: cfg.time_zone.clone(),
            source,
        })?;
        let mut tariff = [0; 9];
        for (class, cents) in (1..).zip(tariff.iter_mut()) {
            *cents = tariff_cents(cfg.base_tariff_cents, class).unwrap_or_default();
        }
        let (start_ms, end, malformed) = match mode {
            Mode::Count { lines } => (
                cfg.start.as_millisecond(),
                End::Lines(lines),
                MalformedPlan::ByIndex {
                    lines,
                    count: cfg.malformed as u64,
                    next: 0,
                },
            ),
            Mode::Historical { from, until } => {
                let (from_ms, until_ms) = (from.as_millisecond(), until.as_millisecond());
                let plan = MalformedPlan::ByTime {
                    from_ms,
                    span_ms: until_ms - from_ms,
                    count: cfg.malformed as u64,
                    next: 0,
                };
                (from_ms, End::Until(until_ms), plan)
            }
        };
        // `validate` checked that these ids parse and are in range.
        let silent = cfg.silent_booth.as_ref().and_then(|(id, from, until)| {
            Some(Silent {
                booth: population::parse_booth_id(id)?,
                from_ms: from.as_millisecond(),
                until_ms: until.as_millisecond(),
            })
        });
        let overspender = cfg.overspender.as_ref().and_then(|(id, extra)| {
            let interval_ms = MS_PER_DAY / f64::from(*extra);
            let customer = population::parse_customer_id(id)?;
            (*extra > 0).then_some(Overspender {
                customer,
                interval_ms,
                next_ms: start_ms as f64 + interval_ms / 2.0,
            })
        });
        Ok(Simulator {
            booth_ids: (0..usize::from(cfg.booths))
                .map(population::booth_id)
                .collect(),
            lanes: cfg.lanes_per_booth,
            population: Population::new(cfg.customers),
            tariff,
            arrivals: Arrivals::new(
                cfg.curve.clone(),
                cfg.base_rate_per_booth_per_hour,
                usize::from(cfg.booths),
                silent.clone(),
                tz.clone(),
                start_ms,
                end.limit_ms(),
            ),
            line_clock: LocalClock::new(tz.clone()),
            tz,
            rng: Rng::with_seed(cfg.seed),
            side_rng: Rng::with_seed(cfg.seed ^ SIDE_SEED),
            pending: None,
            end,
            silent,
            overspender,
            malformed,
            emitted: 0,
            live_started: false,
        })
    }

    /// Appends the next line (with its `\n`) to `out` and says what it was; `None` when the
    /// run is over (and `out` is untouched).
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> Option<LineMeta> {
        let (event, kind) = self.next_event()?;
        Some(self.render(event, kind, out))
    }

    /// Like [`next_into`](Self::next_into), but the transaction happens at `event_time` instead
    /// of on the simulated clock: live mode, where a load generator stamps lines with the wall
    /// clock. The line count and malformed spreading of [`Mode::Count`] still apply, as do the
    /// silent booth's span and the overspender (whose passes start half an interval after the
    /// first live line). Returns `None` in [`Mode::Historical`], whose times are the point.
    pub fn next_into_at(&mut self, event_time: Timestamp, out: &mut Vec<u8>) -> Option<LineMeta> {
        let End::Lines(lines) = self.end else {
            return None;
        };
        if self.emitted >= lines {
            return None;
        }
        let now = event_time.as_millisecond() as f64;
        let mut source = Source::Regular;
        if let Some(o) = &mut self.overspender {
            if !self.live_started {
                o.next_ms = now + o.interval_ms / 2.0;
            }
            if o.next_ms <= now {
                o.next_ms += o.interval_ms;
                source = Source::Overspender;
            }
        }
        self.live_started = true;
        let (event, kind) = self.make_event(now, source);
        Some(self.render(event, kind, out))
    }

    /// The booth ids, index `i` being `PLZ-{i+1:03}`.
    pub fn booth_ids(&self) -> &[String] {
        &self.booth_ids
    }

    /// The configured time zone.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// How many lines have been produced so far.
    pub fn lines_emitted(&self) -> u64 {
        self.emitted
    }

    fn render(&mut self, event: Event, kind: Option<MalformedKind>, out: &mut Vec<u8>) -> LineMeta {
        let start = out.len();
        event.render(&self.booth_ids[event.booth], &mut self.line_clock, out);
        let kind = match kind {
            Some(k) => {
                corrupt(k, out, start);
                LineKind::Malformed(k)
            }
            None => LineKind::Valid {
                amount_cents: event.amount_cents,
            },
        };
        LineMeta {
            booth: event.booth,
            kind,
        }
    }

    /// The next event from whichever stream is earliest, or `None` at the end of the run.
    fn next_event(&mut self) -> Option<(Event, Option<MalformedKind>)> {
        if matches!(self.end, End::Lines(lines) if self.emitted >= lines) {
            return None;
        }
        if self.pending.is_none() {
            self.pending = self.arrivals.next(&mut self.rng);
        }
        let candidates = [
            (
                self.malformed.next_time_ms().map(|t| t as f64),
                Source::Malformed,
            ),
            (
                self.overspender.as_ref().map(|o| o.next_ms),
                Source::Overspender,
            ),
            (self.pending, Source::Regular),
        ];
        // Earliest wins; on a tie the order above decides, which keeps the output stable.
        let (time, source) = candidates
            .into_iter()
            .filter_map(|(t, s)| Some((t?, s)))
            .reduce(|best, c| if c.0 < best.0 { c } else { best })?;
        if time >= self.end.limit_ms() as f64 {
            return None;
        }
        match source {
            Source::Regular => self.pending = None,
            Source::Overspender => {
                if let Some(o) = &mut self.overspender {
                    o.next_ms += o.interval_ms;
                }
            }
            Source::Malformed => {}
        }
        Some(self.make_event(time, source))
    }

    /// Draws the attributes of a passage at `time` (Unix ms).
    fn make_event(&mut self, time: f64, source: Source) -> (Event, Option<MalformedKind>) {
        let time_ms = time.floor() as i64;
        let rng = match source {
            Source::Regular => &mut self.rng,
            Source::Overspender | Source::Malformed => &mut self.side_rng,
        };
        let booth = pick_booth(rng, self.booth_ids.len(), self.silent.as_ref(), time_ms);
        let lane = rng.u8(1..=self.lanes);
        let customer = match (&self.overspender, source) {
            (Some(o), Source::Overspender) => o.customer,
            _ => self.population.pick_customer(rng),
        };
        let transponder = pick_transponder(customer, rng);
        let class = vehicle_class_of(transponder);
        let id = uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid();
        let kind = match source {
            Source::Malformed => Some(self.malformed.take_timed()),
            _ => self.malformed.take_at_index(self.emitted),
        };
        self.emitted += 1;
        let amount_cents = self.tariff[usize::from(class - 1)];
        let event = Event {
            time_ms,
            id,
            booth,
            lane,
            customer,
            transponder,
            class,
            amount_cents,
        };
        (event, kind)
    }
}

impl Iterator for Simulator {
    type Item = Record;

    /// The next line as a [`Record`], allocating its bytes and, for a valid line, the
    /// transaction's strings.
    fn next(&mut self) -> Option<Record> {
        let (event, kind) = self.next_event()?;
        let mut bytes = Vec::with_capacity(128);
        let meta = self.render(event, kind, &mut bytes);
        let kind = match meta.kind {
            LineKind::Valid { .. } => {
                RecordKind::Valid(event.to_transaction(&self.booth_ids[event.booth]))
            }
            LineKind::Malformed(k) => RecordKind::Malformed(k),
        };
        Some(Record {
            bytes,
            booth: event.booth,
            kind,
        })
    }
}
