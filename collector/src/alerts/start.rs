//! Starting the alert stage: one engine per stream that has rules, restored from its
//! checkpoint and reading the WAL from the record after it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use jiff::SignedDuration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::consumer::{AlertSink, Consumer};
use super::engine::{Engine, Thresholds, Timing};
use super::rules::Rule;
use super::state::StateStore;
use super::windows::Calendar;
use super::{CONSUMER, MonthToDate, MonthToDateView};
use crate::clock::Clock;
use crate::config::AlertsConfig;
use crate::schema::Schema;
use crate::wal::Wal;

/// What every stream's engine shares.
pub struct Shared {
    /// The operator's calendar.
    pub calendar: Calendar,
    /// Event-time settings.
    pub config: AlertsConfig,
    /// Reference data and limits.
    pub thresholds: Arc<dyn Thresholds>,
    /// The outbox.
    pub sink: Arc<dyn AlertSink>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the collector stops.
    pub stopping: CancellationToken,
}

/// A running engine of one stream.
pub struct Started {
    /// Its state, for the admin API.
    pub engine: Arc<Mutex<Engine>>,
    /// Its thread; ends after the WAL writer stops.
    pub thread: std::thread::JoinHandle<()>,
}

/// Restores the engine of `stream` from `<data_dir>/state/alerts.db` and starts its
/// consumer thread on `wal`, which must have been opened with the `alerts` consumer.
///
/// # Errors
/// The checkpoint file cannot be opened (after moving an unreadable one aside); the
/// checkpoint claims records the WAL never had.
pub fn start_stream(
    stream: &str,
    schema: Arc<Schema>,
    rules: Vec<Rule>,
    shared: &Shared,
    wal: &Wal,
    data_dir: &Path,
) -> anyhow::Result<Started> {
    let store = StateStore::open(&data_dir.join("state").join("alerts.db"))?;
    let timing = Timing {
        lateness: SignedDuration::try_from(shared.config.allowed_lateness)
            .unwrap_or(SignedDuration::MAX),
        idle_timeout: SignedDuration::try_from(shared.config.idle_timeout)
            .unwrap_or(SignedDuration::MAX),
        max_future: SignedDuration::try_from(shared.config.max_future)
            .unwrap_or(SignedDuration::MAX),
    };
    let names: Vec<String> = rules.iter().map(|r| r.name.clone()).collect();
    let (engine_schema, engine_timing, engine_rules) =
        (schema.clone(), timing.clone(), rules.clone());
    let mut engine = Engine::new(
        stream,
        schema,
        shared.calendar.clone(),
        timing,
        shared.thresholds.clone(),
        rules,
        shared.clock.now(),
    );
    let resume = store.restore(&mut engine)?;
    let durable = wal.durable();
    let wal_end = durable.borrow().seq;
    if resume.position > wal_end {
        anyhow::bail!(
            "the alert checkpoint of stream {stream} covers WAL records up to {}, but the WAL \
             ends at {wal_end}: the WAL lost acknowledged records. Restore it, or move \
             state/alerts.db aside to start the alert engines afresh.",
            resume.position
        );
    }
    let first = wal.first_seq();
    let mut position = resume.position;
    if position + 1 < first {
        warn!(
            stream,
            checkpoint = position,
            wal_first = first,
            "The WAL no longer holds every record after the alert checkpoint (the rules were added after those records were archived, or the checkpoint was reset); the alert engine starts afresh at the oldest record it holds."
        );
        // The saved windows and totals stop where the WAL's records begin: resuming them
        // would count the gap as silence. Start afresh.
        store.reset(stream)?;
        engine = Engine::new(
            stream,
            engine_schema,
            shared.calendar.clone(),
            engine_timing,
            shared.thresholds.clone(),
            engine_rules,
            shared.clock.now(),
        );
        position = first - 1;
    }
    wal.consumers().advance(CONSUMER, position);
    info!(stream, rules = ?names, position, "Alert engine resumes after WAL record {position}.");
    let engine = Arc::new(Mutex::new(engine));
    let consumer = Consumer {
        engine: engine.clone(),
        store,
        reader: wal.reader(position + 1),
        position,
        durable,
        consumers: wal.consumers(),
        sink: shared.sink.clone(),
        clock: shared.clock.clone(),
        checkpoint_interval: shared
            .config
            .checkpoint_interval
            .max(Duration::from_millis(10)),
        stopping: shared.stopping.clone(),
    };
    let runtime = tokio::runtime::Handle::current();
    let name = stream.to_owned();
    let thread = std::thread::Builder::new()
        .name(format!("alerts-{stream}"))
        .spawn(move || {
            if let Err(error) = consumer.run(runtime) {
                tracing::error!(stream = %name, error = format!("{error:#}"), "The alert engine stopped with an error; its WAL records are kept and read again at the next start.");
            }
        })
        .with_context(|| format!("starting the alert thread of stream {stream}"))?;
    Ok(Started { engine, thread })
}

/// Every stream's engine, as the admin API sees them.
pub struct Engines {
    /// The engines.
    pub engines: Vec<Arc<Mutex<Engine>>>,
    /// Wall clock (the month when no event was seen yet).
    pub clock: Arc<dyn Clock>,
}

impl MonthToDateView for Engines {
    fn month_to_date(&self, key: &str) -> Option<MonthToDate> {
        let now = self.clock.now();
        self.engines.iter().find_map(|engine| {
            engine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .month_to_date(key, now)
        })
    }
}

#[cfg(test)]
#[path = "start_tests.rs"]
mod tests;
