//! The alert engine of one stream as a WAL consumer, on a thread of its own.
//!
//! Reads durable WAL records from just after the checkpoint's position, feeds them to the
//! [`Engine`], puts every alert that fires into the outbox at once (durably, before any
//! checkpoint covers the record that fired it), and checkpoints every
//! `alerts.checkpoint_interval`, after which it lets the WAL delete what it covered. Every
//! quarter second it also lets an idle stream's watermark follow the wall clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::engine::{Counts, Engine};
use super::state::StateStore;
use super::{Alert, CONSUMER};
use crate::clock::Clock;
use crate::wal::{Consumers, Durable, Reader};

/// How often the idle check runs.
const TICK: Duration = Duration::from_millis(250);

/// Wait before retrying a failed outbox write or checkpoint.
const RETRY: Duration = Duration::from_secs(1);

/// Where fired alerts go: the durable outbox.
pub trait AlertSink: Send + Sync + 'static {
    /// Stores `alert` for delivery to `webhooks` (and the log and `alerts` table) unless an
    /// alert with its id exists. `Ok(true)` when it was new. Durable on return.
    ///
    /// # Errors
    /// The outbox cannot be written (a full disk); nothing was stored then.
    fn put(&self, alert: &Alert, webhooks: &[String]) -> anyhow::Result<bool>;
}

/// One stream's alert consumer.
pub struct Consumer {
    /// The engine, shared with the admin API (month-to-date view).
    pub engine: Arc<Mutex<Engine>>,
    /// Checkpoints.
    pub store: StateStore,
    /// Reads the stream's WAL.
    pub reader: Reader,
    /// Last record the engine has folded in (and the checkpoint covers, once saved).
    pub position: u64,
    /// The WAL's durable position; closes when the WAL writer stops.
    pub durable: watch::Receiver<Durable>,
    /// Where to report progress to the WAL.
    pub consumers: Arc<Consumers>,
    /// The outbox.
    pub sink: Arc<dyn AlertSink>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// How often to checkpoint.
    pub checkpoint_interval: Duration,
    /// Cancelled when the collector stops: a retry loop (outbox or checkpoint failing)
    /// gives up then; what was not checkpointed is read again at the next start.
    pub stopping: CancellationToken,
}

impl Consumer {
    /// Runs until the WAL writer stops (after ingest closed), then checkpoints and returns.
    /// Call on a thread of its own; `runtime` is used to wait for the WAL.
    ///
    /// # Errors
    /// WAL read errors.
    pub fn run(mut self, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
        let stream = self
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stream
            .clone();
        let mut saved_position = self.position;
        // Monotonic: the wall clock may stand still (a test clock) or jump.
        let mut saved_at = tokio::time::Instant::now();
        let mut dirty = false;
        let mut reported = Reported::default();
        let mut fired = Vec::new();
        loop {
            let durable = *self.durable.borrow_and_update();
            while let Some(record) = self.read(durable, &runtime) {
                let now = self.clock.now();
                {
                    let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
                    engine.process(&record.data, now, &mut fired);
                }
                self.position = record.seq;
                dirty = true;
                if !self.deliver(&mut fired, &runtime) {
                    return Ok(());
                }
                if self.due(saved_at) {
                    self.checkpoint(&mut saved_position, &mut saved_at, &mut reported);
                    dirty = self.position != saved_position;
                }
            }
            let closed = {
                let now = self.clock.now();
                let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
                let before = engine.closes;
                engine.tick(now, &mut fired);
                engine.closes != before
            };
            if !self.deliver(&mut fired, &runtime) {
                return Ok(());
            }
            // What an idle close decided (a window or month closed by the wall clock) is
            // checkpointed at once: a record read after it must be late after a crash too.
            if closed || (dirty && self.due(saved_at)) {
                self.checkpoint(&mut saved_position, &mut saved_at, &mut reported);
                dirty = self.position != saved_position;
            }
            let open = runtime.block_on(async {
                tokio::select! {
                    changed = self.durable.changed() => changed.is_ok(),
                    () = tokio::time::sleep(TICK) => true,
                }
            });
            if !open {
                // The writer stopped: read what it made durable last, then stop.
                let durable = *self.durable.borrow();
                while let Some(record) = self.read(durable, &runtime) {
                    let now = self.clock.now();
                    self.engine
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .process(&record.data, now, &mut fired);
                    self.position = record.seq;
                    if !self.deliver(&mut fired, &runtime) {
                        return Ok(());
                    }
                }
                self.checkpoint(&mut saved_position, &mut saved_at, &mut reported);
                info!(stream = %stream, position = self.position, "Alert engine stopped; state checkpointed.");
                return Ok(());
            }
        }
    }

    /// The next durable WAL record. A read error is logged and counted, and the reader
    /// starts again after the last record folded in, a second later (the engine never stops
    /// for good: its position holds the WAL's segments).
    fn read(
        &mut self,
        durable: Durable,
        runtime: &tokio::runtime::Handle,
    ) -> Option<crate::wal::WalRecord> {
        match self.reader.next(durable) {
            Ok(record) => record,
            Err(e) => {
                error!(position = self.position, error = %e, "The alert engine cannot read the WAL; retrying in a second.");
                metrics::counter!("tollstream_collector_alert_wal_errors_total").increment(1);
                runtime.block_on(async {
                    tokio::select! {
                        () = self.stopping.cancelled() => {}
                        () = tokio::time::sleep(RETRY) => {}
                    }
                });
                self.reader = Reader::new(self.reader.dir(), self.position + 1);
                None
            }
        }
    }

    fn due(&self, saved_at: tokio::time::Instant) -> bool {
        saved_at.elapsed() >= self.checkpoint_interval
    }

    /// Puts every fired alert into the outbox, retrying until it works; `false` when the
    /// collector stopped meanwhile (nothing after the last checkpoint is lost: it is read
    /// again at the next start).
    fn deliver(&self, fired: &mut Vec<Alert>, runtime: &tokio::runtime::Handle) -> bool {
        for alert in fired.drain(..) {
            let webhooks = {
                let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
                engine
                    .rules
                    .iter()
                    .find(|s| s.rule.name == alert.rule)
                    .map(|s| s.rule.webhooks.clone())
                    .unwrap_or_default()
            };
            loop {
                match self.sink.put(&alert, &webhooks) {
                    Ok(true) => {
                        info!(alert_id = %alert.alert_id, rule = %alert.rule, key = %alert.key, value = %alert.value, threshold = %alert.threshold, "Alert fired.");
                        crate::crashpoint::hit("alert-stored");
                        break;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        error!(alert_id = %alert.alert_id, error = format!("{e:#}"), "Cannot store a fired alert in the outbox; retrying (the alert engine waits, the WAL keeps its records).");
                        metrics::counter!("tollstream_collector_alert_outbox_errors_total")
                            .increment(1);
                        let stopped = runtime.block_on(async {
                            tokio::select! {
                                () = self.stopping.cancelled() => true,
                                () = tokio::time::sleep(RETRY) => false,
                            }
                        });
                        if stopped {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    fn checkpoint(
        &mut self,
        saved_position: &mut u64,
        saved_at: &mut tokio::time::Instant,
        reported: &mut Reported,
    ) {
        let now = self.clock.now();
        *saved_at = tokio::time::Instant::now();
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        match self.store.save(&mut engine, self.position, now) {
            Ok(()) => {
                *saved_position = self.position;
                self.consumers.advance(CONSUMER, self.position);
                reported.export(&engine);
            }
            Err(e) => {
                warn!(stream = %engine.stream, error = %e, "Cannot checkpoint the alert engine; retrying at the next interval (the WAL keeps what the last checkpoint does not cover).");
                metrics::counter!("tollstream_collector_alert_checkpoint_errors_total")
                    .increment(1);
            }
        }
    }
}

/// What was last exported as metrics, so counters get deltas.
#[derive(Default)]
struct Reported {
    counts: Counts,
    late: Vec<u64>,
    future: Vec<u64>,
}

impl Reported {
    fn export(&mut self, engine: &Engine) {
        let stream = engine.stream.clone();
        metrics::counter!("tollstream_collector_alert_records_total", "stream" => stream.clone())
            .increment(engine.counts.records.saturating_sub(self.counts.records));
        metrics::counter!("tollstream_collector_alert_malformed_records_total", "stream" => stream.clone())
            .increment(engine.counts.malformed.saturating_sub(self.counts.malformed));
        self.counts = engine.counts;
        self.late.resize(engine.late.len(), 0);
        self.future.resize(engine.future.len(), 0);
        for (i, state) in engine.rules.iter().enumerate() {
            let rule = state.rule.name.clone();
            metrics::counter!("tollstream_collector_alert_late_records_total", "rule" => rule.clone())
                .increment(engine.late[i].saturating_sub(self.late[i]));
            metrics::counter!("tollstream_collector_alert_future_records_total", "rule" => rule.clone())
                .increment(engine.future[i].saturating_sub(self.future[i]));
            let keys = state.months.len() + state.windows.values().map(|w| w.len()).sum::<usize>();
            metrics::gauge!("tollstream_collector_alert_keys", "rule" => rule.clone())
                .set(keys as f64);
            metrics::gauge!("tollstream_collector_alert_open_windows", "rule" => rule)
                .set(state.windows.len() as f64);
        }
        self.late.clone_from(&engine.late);
        self.future.clone_from(&engine.future);
        if let Some(watermark) = engine.watermark {
            metrics::gauge!("tollstream_collector_alert_watermark_timestamp_seconds", "stream" => stream)
                .set(watermark.as_millisecond() as f64 / 1000.0);
        }
    }
}
