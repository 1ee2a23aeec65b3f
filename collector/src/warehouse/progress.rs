//! What each stream's loader has achieved and what it is failing at: the one source of the
//! warehouse gauges (freshness, up, backlog, last load), the lag histogram and `/readyz`'s
//! warehouse problem, so that they always agree.
//!
//! Input: the [`Loader`](super::Loader)'s outcomes — the manifest read at start, each load
//! that commits, each attempt that fails — and a tick (every second, see [`refresh_every`])
//! that keeps the freshness gauge growing while nothing is loaded. Output: gauges and a
//! readiness problem. Nothing here is durable: after a restart the freshness starts again
//! from the manifest's newest row, as `status` reads it.
//!
//! Freshness is the age of the newest loaded record's *receive* time (when the collector
//! acknowledged it), the same measure `status` prints. It grows while nothing is loaded —
//! also when nothing arrives at all — so read it together with the backlog: a high
//! freshness with an empty backlog is a quiet stream, with a backlog a stuck warehouse.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// One stream's loader as the rest of the collector sees it.
pub struct LoadProgress {
    stream: String,
    clock: Arc<dyn Clock>,
    mask: Mask,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Receive time of the newest loaded record (from the manifest at start, then loads).
    newest_received_at: Option<Timestamp>,
    /// Set from the first failed attempt until an attempt succeeds.
    failing: Option<Failing>,
}

struct Failing {
    since: Timestamp,
    attempts: u64,
    last_error: String,
}

impl LoadProgress {
    /// The progress of `stream`'s loader; error texts are passed through `mask` before
    /// they are kept (they end up in `/readyz`).
    pub fn new(stream: &str, clock: Arc<dyn Clock>, mask: Mask) -> Arc<Self> {
        Arc::new(Self {
            stream: stream.to_owned(),
            clock,
            mask,
            state: Mutex::new(State::default()),
        })
    }

    /// The stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain values, each update complete in one statement: a panic
        // elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The warehouse answered (tables prepared, manifest read): it is up. `newest` is the
    /// receive time of the newest record the manifest holds, if any.
    pub fn reached(&self, newest: Option<Timestamp>) {
        {
            let mut state = self.state();
            state.failing = None;
            if newest > state.newest_received_at {
                state.newest_received_at = newest;
            }
        }
        self.gauge("tollstream_collector_warehouse_up").set(1.0);
        self.refresh();
    }

    /// An object committed: `oldest` and `newest` are the receive times of its oldest and
    /// newest record.
    pub fn loaded(&self, oldest: Option<Timestamp>, newest: Option<Timestamp>) {
        let now = self.clock.now();
        self.reached(newest);
        self.gauge("tollstream_collector_warehouse_last_load_timestamp_seconds")
            .set(now.as_microsecond() as f64 / 1e6);
        if let Some(oldest) = oldest {
            metrics::histogram!("tollstream_collector_warehouse_load_lag_seconds", "stream" => self.stream.clone())
                .record(age_seconds(now, oldest));
        }
    }

    /// An attempt to prepare the warehouse, read its manifest or load an object failed.
    pub fn failed(&self, error: &str) {
        let now = self.clock.now();
        let error = self.mask.apply(error);
        {
            let mut state = self.state();
            let failing = state.failing.get_or_insert(Failing {
                since: now,
                attempts: 0,
                last_error: String::new(),
            });
            failing.attempts += 1;
            failing.last_error = error;
        }
        self.gauge("tollstream_collector_warehouse_up").set(0.0);
    }

    /// Archive objects written and not yet loaded.
    pub fn backlog(&self, objects: usize) {
        self.gauge("tollstream_collector_warehouse_backlog_objects")
            .set(objects as f64);
    }

    /// Sets the freshness gauge from the clock (nothing while nothing was ever loaded).
    pub fn refresh(&self) {
        if let Some(newest) = self.state().newest_received_at {
            self.gauge("tollstream_collector_warehouse_freshness_seconds")
                .set(age_seconds(self.clock.now(), newest));
        }
    }

    /// The age of the newest loaded record, in seconds; `None` before anything was loaded.
    pub fn freshness_seconds(&self) -> Option<f64> {
        let newest = self.state().newest_received_at?;
        Some(age_seconds(self.clock.now(), newest))
    }

    /// What `/readyz` says while the warehouse fails; `None` while it works.
    pub fn problem(&self) -> Option<String> {
        let state = self.state();
        let failing = state.failing.as_ref()?;
        Some(format!(
            "stream {}: warehouse unavailable since {} ({} failed {}, last error: {}); \
             ingest still accepts batches, which wait in the WAL and the archive",
            self.stream,
            failing.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            failing.attempts,
            if failing.attempts == 1 {
                "attempt"
            } else {
                "attempts"
            },
            failing.last_error
        ))
    }

    fn gauge(&self, name: &'static str) -> metrics::Gauge {
        metrics::gauge!(name, "stream" => self.stream.clone())
    }
}

fn age_seconds(now: Timestamp, then: Timestamp) -> f64 {
    // A record received "in the future" (the clock stepped back) counts as fresh, not negative.
    ((now.as_microsecond() - then.as_microsecond()) as f64 / 1e6).max(0.0)
}

/// How often [`refresh_every`] runs in the collector.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps every stream's freshness gauge current, every `interval`, until `stop`.
pub async fn refresh_every(
    progress: Vec<Arc<LoadProgress>>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => progress.iter().for_each(|p| p.refresh()),
        }
    }
}

/// Hides secrets in error texts: the warehouse password wherever it appears, and the
/// password of any `postgres://` URL (see [`crate::config::mask_url`]).
#[derive(Clone, Default)]
pub struct Mask {
    secrets: Vec<String>,
}

impl Mask {
    /// A mask for the warehouse `target`'s password, if it has one.
    pub fn for_target(target: &crate::config::WarehouseTarget) -> Self {
        let mut secrets = Vec::new();
        if let crate::config::WarehouseTarget::Postgres(pg) = target
            && let Some(password) = pg.config.get_password()
            && !password.is_empty()
        {
            secrets.push(String::from_utf8_lossy(password).into_owned());
        }
        Self { secrets }
    }

    /// `text` with every secret replaced by `***`.
    pub fn apply(&self, text: &str) -> String {
        let mut text: String = text
            .split_inclusive(char::is_whitespace)
            .map(|word| {
                let bare = word.trim_end();
                if bare.contains("postgres://") || bare.contains("postgresql://") {
                    crate::config::mask_url(bare) + &word[bare.len()..]
                } else {
                    word.to_owned()
                }
            })
            .collect();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn a_failing_warehouse_is_a_problem_until_an_attempt_succeeds() {
        let clock = FakeClock::new(at("2026-11-29T10:00:00Z"));
        let mask = Mask {
            secrets: vec!["hunter2".into()],
        };
        let progress = LoadProgress::new("toll", Arc::new(clock.clone()), mask);
        assert_eq!(progress.problem(), None, "no attempt failed yet");
        progress.failed("warehouse connect: password hunter2 refused by postgres://u:hunter2@h/db");
        clock.advance(Duration::from_secs(3));
        progress.failed("warehouse connect: connection refused");
        let problem = progress.problem().expect("a problem");
        assert_eq!(
            problem,
            "stream toll: warehouse unavailable since 2026-11-29T10:00:00Z (2 failed attempts, \
             last error: warehouse connect: connection refused); ingest still accepts batches, \
             which wait in the WAL and the archive"
        );
        progress.reached(None);
        assert_eq!(progress.problem(), None, "ready again at the first success");
        progress.failed("warehouse connect: password hunter2 refused by postgres://u:hunter2@h/db");
        let problem = progress.problem().expect("failing again");
        assert!(
            problem.contains("since 2026-11-29T10:00:03Z (1 failed attempt,"),
            "{problem}"
        );
        assert!(!problem.contains("hunter2"), "{problem}");
        assert!(problem.contains("postgres://u:***@h/db"), "{problem}");
    }

    #[test]
    fn freshness_is_the_age_of_the_newest_loaded_record_and_grows_while_nothing_loads() {
        let clock = FakeClock::new(at("2026-11-29T10:00:10Z"));
        let progress = LoadProgress::new("toll", Arc::new(clock.clone()), Mask::default());
        assert_eq!(progress.freshness_seconds(), None, "nothing loaded yet");
        progress.reached(Some(at("2026-11-29T10:00:05Z")));
        assert_eq!(progress.freshness_seconds(), Some(5.0), "from the manifest");
        clock.advance(Duration::from_secs(2));
        assert_eq!(progress.freshness_seconds(), Some(7.0), "growing");
        progress.loaded(
            Some(at("2026-11-29T10:00:08Z")),
            Some(at("2026-11-29T10:00:11.5Z")),
        );
        assert_eq!(progress.freshness_seconds(), Some(0.5));
        // An older object (a replay) never moves freshness backwards.
        progress.loaded(None, Some(at("2026-11-29T10:00:01Z")));
        assert_eq!(progress.freshness_seconds(), Some(0.5));
    }

    #[test]
    fn masking_leaves_text_without_secrets_alone() {
        let mask = Mask::default();
        let text = "warehouse load: ERROR: relation \"t\" does not exist (SQLSTATE 42P01)";
        assert_eq!(mask.apply(text), text);
        assert_eq!(
            mask.apply("cannot reach postgres://me:pw@db:5432/dw?password=x now"),
            "cannot reach postgres://me:***@db:5432/dw?password=*** now"
        );
    }
}
