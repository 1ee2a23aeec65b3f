//! Notify: the durable outbox and delivery of alerts (webhooks, alert log, `alerts` table).
//!
//! Input: [`Alert`]s the engine puts into the [`Outbox`] (durable when `insert` returns; a
//! second alert with the same id is refused). Output: each alert delivered to each of its
//! targets — its webhooks (`notify.webhook`, `notify.webhooks`), the JSON-lines alert log
//! (`log`) and the warehouse's `alerts` table (`warehouse`).
//!
//! Every target has one deliverer task, which delivers that target's alerts one after the
//! other in fired order and marks each done in the outbox only after the target has it:
//!
//! * **webhook** — at least once: a `POST` answered 2xx and not yet marked when the collector
//!   dies is sent again after the restart, with the same `Idempotency-Key` (the alert id),
//!   so the receiver can drop it;
//! * **log** — exactly once: see [`log`] for the recovery that finds lines written but not
//!   marked;
//! * **warehouse** — exactly once: the insert is `ON CONFLICT (alert_id) DO NOTHING`.
//!
//! A target that fails is retried forever with capped exponential backoff and jitter; the
//! alerts wait in the outbox and the other targets go on. While one alert fails, the later
//! alerts of that target wait behind it (fired order is kept). On shutdown the deliverers
//! stop at once; pending deliveries stay in the outbox for the next start.

pub mod log;
pub mod outbox;
#[cfg(test)]
mod tests;
pub mod webhook;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use outbox::{
    LOG_TARGET, Outbox, OutboxError, OutboxStatus, Pending, TargetStatus, WAREHOUSE_TARGET,
    read_status,
};

use crate::alerts::Alert;
use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::warehouse::Warehouse;
use log::AlertLog;
use webhook::Webhook;

/// The shared warehouse handle the `warehouse` target writes through.
pub type SharedWarehouse = Arc<Mutex<Box<dyn Warehouse>>>;

/// First retry delay of the built-in targets (log, warehouse).
pub const BUILTIN_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest retry delay of the built-in targets.
pub const BUILTIN_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often delivered alerts past `notify.retention` are deleted from the outbox.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Why notification could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A setting or a file it names is unusable; the message names the key.
    #[error("{0}")]
    Config(String),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// A failed delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, for the log and the outbox's `last_error`.
    pub error: String,
    /// The target asked to wait this long (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// Retrying soon will not help (a 4xx): logged at ERROR once per alert, still retried.
    pub refused: bool,
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Delays from `initial`, doubling per failed attempt, up to `max`.
    ///
    /// # Errors
    /// `initial` is zero, or `max < initial`.
    pub fn try_new(initial: Duration, max: Duration) -> Result<Self, String> {
        if initial.is_zero() {
            return Err("initial_backoff must be > 0".into());
        }
        if max < initial {
            return Err("max_backoff must not be less than initial_backoff".into());
        }
        Ok(Self { initial, max })
    }

    /// Delay after failed attempt number `attempt` (0-based): with `c = min(initial ×
    /// 2^attempt, max)`, uniform in `[max(c/2, initial), c]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << attempt.min(30))
            .min(self.max);
        let floor = (ceiling / 2).max(self.initial);
        floor + (ceiling - floor).mul_f64(fastrand::f64())
    }
}

/// Re-reads the webhooks' secret files (on SIGHUP).
#[derive(Debug, Clone)]
pub struct SecretReloader(Vec<Arc<Webhook>>);

impl SecretReloader {
    /// Reads every `secret_file` again; one that fails keeps its previous secret (WARN).
    pub fn reload(&self) {
        for hook in &self.0 {
            if let Err(error) = hook.reload_secret() {
                warn!(webhook = hook.name(), %error, "Webhook secret not reloaded; the previous one stays in use.");
            }
        }
    }
}

/// Delivers the outbox's alerts to every target until shutdown.
pub struct Notifier {
    outbox: Arc<Outbox>,
    webhooks: Vec<(Arc<Webhook>, Backoff)>,
    log: Arc<AlertLog>,
    warehouse: SharedWarehouse,
    clock: Arc<dyn Clock>,
    retention: Duration,
    builtin_backoff: Backoff,
}

impl Notifier {
    /// Checks the configuration, reads the webhooks' secrets and opens the alert log.
    ///
    /// # Errors
    /// A webhook named like a built-in target, an invalid URL or backoff, a secret file
    /// that cannot be read, an alert log that cannot be created; the message names the key.
    pub fn new(
        outbox: Arc<Outbox>,
        config: &NotifyConfig,
        warehouse: SharedWarehouse,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NotifyError> {
        let mut webhooks = Vec::new();
        for (name, hook) in config.all_webhooks() {
            if name == LOG_TARGET || name == WAREHOUSE_TARGET {
                return Err(OutboxError::ReservedName(name).into());
            }
            if !outbox.targets().any(|t| t == name) {
                return Err(NotifyError::Config(format!(
                    "notify.webhooks.{name}: the outbox was opened without this target"
                )));
            }
            let backoff = Backoff::try_new(hook.initial_backoff, hook.max_backoff)
                .map_err(|e| NotifyError::Config(format!("notify.webhooks.{name}: {e}")))?;
            webhooks.push((Arc::new(Webhook::new(&name, &hook)?), backoff));
        }
        Ok(Self {
            outbox,
            webhooks,
            log: Arc::new(AlertLog::open(&config.log)?),
            warehouse,
            clock,
            retention: config.retention,
            builtin_backoff: Backoff::try_new(BUILTIN_INITIAL_BACKOFF, BUILTIN_MAX_BACKOFF)
                .map_err(NotifyError::Config)?,
        })
    }

    /// Uses `backoff` for the log and warehouse targets instead of
    /// [`BUILTIN_INITIAL_BACKOFF`]…[`BUILTIN_MAX_BACKOFF`] (tests).
    #[must_use]
    pub fn with_builtin_backoff(mut self, backoff: Backoff) -> Self {
        self.builtin_backoff = backoff;
        self
    }

    /// What re-reads the webhooks' secret files.
    pub fn secrets(&self) -> SecretReloader {
        SecretReloader(self.webhooks.iter().map(|(w, _)| w.clone()).collect())
    }

    /// Runs one deliverer per target, and the pruning of old alerts, until `shutdown`;
    /// returns once all have stopped.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let mut deliverers = vec![
            self.deliverer(
                LOG_TARGET,
                Sink::Log(self.log.clone()),
                self.builtin_backoff,
            ),
            self.deliverer(
                WAREHOUSE_TARGET,
                Sink::Warehouse(self.warehouse.clone()),
                self.builtin_backoff,
            ),
        ];
        for (hook, backoff) in &self.webhooks {
            deliverers.push(self.deliverer(hook.name(), Sink::Webhook(hook.clone()), *backoff));
        }
        for deliverer in deliverers {
            tasks.spawn(deliverer.run(shutdown.clone()));
        }
        tasks.spawn(prune(
            self.outbox.clone(),
            self.clock.clone(),
            self.retention,
            shutdown.clone(),
        ));
        tasks.close();
        tasks.wait().await;
    }

    fn deliverer(&self, target: &str, sink: Sink, backoff: Backoff) -> Deliverer {
        Deliverer {
            target: target.to_owned(),
            sink,
            backoff,
            outbox: self.outbox.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// Builds a [`Notifier`] and runs it until `shutdown`.
///
/// # Errors
/// As [`Notifier::new`]; delivery failures are retried, never returned.
pub async fn run(
    outbox: Arc<Outbox>,
    config: &NotifyConfig,
    warehouse: SharedWarehouse,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), NotifyError> {
    Notifier::new(outbox, config, warehouse, clock)?
        .run(shutdown)
        .await;
    Ok(())
}

/// Deletes delivered alerts past `retention`, at start and then hourly.
async fn prune(
    outbox: Arc<Outbox>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (outbox, now) = (outbox.clone(), clock.now());
        match tokio::task::spawn_blocking(move || outbox.prune(now, retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => info!(
                pruned,
                "Delivered alerts past notify.retention removed from the outbox."
            ),
            Ok(Err(error)) => warn!(%error, "Pruning the outbox failed; retrying later."),
            Err(error) => warn!(%error, "Pruning the outbox panicked; retrying later."),
        }
    }
}

/// Where a deliverer delivers.
enum Sink {
    Webhook(Arc<Webhook>),
    Log(Arc<AlertLog>),
    Warehouse(SharedWarehouse),
}

/// Delivers one target's pending alerts in fired order.
struct Deliverer {
    target: String,
    sink: Sink,
    backoff: Backoff,
    outbox: Arc<Outbox>,
    clock: Arc<dyn Clock>,
}

impl Deliverer {
    async fn run(self, shutdown: CancellationToken) {
        let mut wake = self.outbox.subscribe();
        let mut failures = 0u32;
        // The alert whose refusal was logged at ERROR (once per alert).
        let mut refusal_logged = None;
        while !shutdown.is_cancelled() {
            // Seen before reading: an insert after this point changes it again.
            wake.borrow_and_update();
            let batch = match self.read().await {
                Ok(batch) => batch,
                Err(error) => {
                    warn!(target = %self.target, %error, "Reading the outbox failed; retrying.");
                    failures = failures.saturating_add(1);
                    if !sleep_or_shutdown(self.backoff.delay(failures), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    // The sender lives in the outbox this task holds: never closed.
                    _ = wake.changed() => continue,
                }
            }
            let Some(result) = self.attempt(&batch, &shutdown).await else {
                return;
            };
            let delay = match result {
                Ok(done) => {
                    self.delivered(&batch, &done);
                    failures = 0;
                    continue;
                }
                Err(failure) => {
                    let first = &batch[0];
                    let delay = failure
                        .retry_after
                        .unwrap_or_else(|| self.backoff.delay(failures));
                    self.failed(first, &failure, delay, &mut refusal_logged)
                        .await;
                    delay
                }
            };
            failures = failures.saturating_add(1);
            if !sleep_or_shutdown(delay, &shutdown).await {
                return;
            }
        }
    }

    /// The next pending deliveries, and the pending gauge set from the outbox.
    async fn read(&self) -> Result<Vec<Pending>, String> {
        let (outbox, target) = (self.outbox.clone(), self.target.clone());
        let limit = match self.sink {
            Sink::Log(_) => log::BATCH,
            Sink::Webhook(_) | Sink::Warehouse(_) => 1,
        };
        let (batch, pending) = tokio::task::spawn_blocking(move || {
            Ok::<_, OutboxError>((
                outbox.pending(&target, limit)?,
                outbox.pending_count(&target)?,
            ))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        metrics::gauge!("tollstream_collector_alert_delivery_pending", "target" => self.target.clone())
            .set(pending as f64);
        Ok(batch)
    }

    /// One attempt at `batch`; returns the seqs now marked delivered, or `None` on shutdown.
    async fn attempt(
        &self,
        batch: &[Pending],
        shutdown: &CancellationToken,
    ) -> Option<Result<Vec<i64>, Failure>> {
        let now = self.clock.now();
        let outbox = self.outbox.clone();
        let target = self.target.clone();
        let mark = move |seqs: Vec<i64>, at: Timestamp| {
            outbox
                .mark_delivered(&target, &seqs, at)
                .map(|()| seqs)
                .map_err(|e| Failure {
                    error: e.to_string(),
                    retry_after: None,
                    refused: false,
                })
        };
        match &self.sink {
            Sink::Log(log) => {
                // Not cancelled: a short append and fsync, and a task still writing after
                // `run` returned could race the recovery of the next start.
                let (log, outbox, batch) = (log.clone(), self.outbox.clone(), batch.to_vec());
                Some(joined(
                    tokio::task::spawn_blocking(move || log.deliver(&outbox, &batch, now)).await,
                ))
            }
            Sink::Webhook(hook) => {
                let first = &batch[0];
                let sent = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    sent = hook.send(first, now) => sent,
                };
                if let Err(failure) = sent {
                    return Some(Err(failure));
                }
                // The receiver has it; a crash before this mark sends it again after the
                // restart, with the same Idempotency-Key.
                let (seq, at) = (first.seq, self.clock.now());
                Some(joined(
                    tokio::task::spawn_blocking(move || mark(vec![seq], at)).await,
                ))
            }
            Sink::Warehouse(warehouse) => {
                let (warehouse, first) = (warehouse.clone(), batch[0].clone());
                let clock = self.clock.clone();
                // Cancelling leaves the blocking call running to its end; the insert is
                // idempotent, so a record the outbox does not mark is only repeated.
                let task = tokio::task::spawn_blocking(move || {
                    record(&warehouse, &first)?;
                    mark(vec![first.seq], clock.now())
                });
                tokio::select! {
                    () = shutdown.cancelled() => None,
                    done = task => Some(joined(done)),
                }
            }
        }
    }

    /// Metrics and logs for the deliveries of `batch` now done (`done`, by seq).
    fn delivered(&self, batch: &[Pending], done: &[i64]) {
        let now = self.clock.now();
        for pending in batch.iter().filter(|p| done.contains(&p.seq)) {
            let seconds =
                (now.as_microsecond() - pending.fired_at.as_microsecond()).max(0) as f64 / 1e6;
            metrics::counter!("tollstream_collector_alert_deliveries_total", "target" => self.target.clone(), "outcome" => "delivered")
                .increment(1);
            metrics::histogram!("tollstream_collector_alert_delivery_seconds", "target" => self.target.clone())
                .record(seconds);
            debug!(target = %self.target, alert_id = %pending.alert_id, seconds, "Alert delivered.");
        }
    }

    /// Logs, counts and records a failed attempt at `pending`.
    async fn failed(
        &self,
        pending: &Pending,
        failure: &Failure,
        delay: Duration,
        refusal_logged: &mut Option<i64>,
    ) {
        let outcome = if failure.refused { "refused" } else { "failed" };
        metrics::counter!("tollstream_collector_alert_deliveries_total", "target" => self.target.clone(), "outcome" => outcome)
            .increment(1);
        let error = &failure.error;
        if failure.refused && *refusal_logged != Some(pending.seq) {
            *refusal_logged = Some(pending.seq);
            error!(target = %self.target, alert_id = %pending.alert_id, %error, retry_in = ?delay, "The target refuses the alert; retrying until it takes it. Later alerts to this target wait behind it.");
        } else {
            warn!(target = %self.target, alert_id = %pending.alert_id, %error, retry_in = ?delay, "Alert delivery failed; retrying.");
        }
        let now = self.clock.now();
        let next = now
            .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(now);
        let (outbox, target, seq, error) = (
            self.outbox.clone(),
            self.target.clone(),
            pending.seq,
            error.clone(),
        );
        let recorded = tokio::task::spawn_blocking(move || {
            outbox.record_failure(&target, seq, &error, now, next)
        })
        .await;
        if let Ok(Err(error)) = recorded {
            warn!(target = %self.target, %error, "Recording the failed attempt in the outbox failed.");
        }
    }
}

/// Inserts one alert into the warehouse's `alerts` table (idempotent).
fn record(warehouse: &SharedWarehouse, pending: &Pending) -> Result<(), Failure> {
    let alert: Alert = serde_json::from_str(&pending.document).map_err(|e| Failure {
        error: format!(
            "the outbox's document of alert {} does not parse: {e}",
            pending.alert_id
        ),
        retry_after: None,
        refused: true,
    })?;
    warehouse
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .record_alert(&alert, &pending.document)
        .map_err(|e| Failure {
            error: e.to_string(),
            retry_after: None,
            refused: false,
        })
}

fn joined<T>(result: Result<Result<T, Failure>, tokio::task::JoinError>) -> Result<T, Failure> {
    result.unwrap_or_else(|e| {
        Err(Failure {
            error: format!("delivery task failed: {e}"),
            retry_after: None,
            refused: false,
        })
    })
}

/// Waits `delay`; `false` if shutdown came first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Describes the notify metrics (HELP text); call once after installing the recorder.
pub fn describe_metrics() {
    describe_counter!(
        "tollstream_collector_alerts_fired_total",
        "Alerts put into the outbox, by rule."
    );
    describe_counter!(
        "tollstream_collector_alerts_duplicate_total",
        "Alerts refused by the outbox because one with the same id was already there, by rule."
    );
    describe_counter!(
        "tollstream_collector_alert_deliveries_total",
        "Alert delivery attempts by target (webhook name, log, warehouse) and outcome: delivered, failed (retried), refused (4xx; logged at ERROR, retried)."
    );
    describe_gauge!(
        "tollstream_collector_alert_delivery_pending",
        "Alerts in the outbox not yet delivered to the target."
    );
    describe_histogram!(
        "tollstream_collector_alert_delivery_seconds",
        Unit::Seconds,
        "Per delivered alert and target: time from firing to delivery."
    );
}
