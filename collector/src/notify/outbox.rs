//! The outbox: every alert the engine fired, and its delivery to each target, in one
//! SQLite file (`<data_dir>/state/outbox.db`).
//!
//! Input: [`Outbox::insert`] from the alert engine (a blocking thread). Output: pending
//! deliveries, read in fired order per target by the deliverers ([`super::Notifier`]).
//!
//! Durability: `journal_mode = WAL`, `synchronous = FULL`: when `insert` returns, the alert
//! and one pending delivery per target survive a crash or power loss. `alert_id` is unique,
//! so a second alert with the same id is refused (`insert` returns `false`) and changes
//! nothing, for as long as the first is kept (`notify.retention` after it fired, and never
//! while one of its deliveries is pending).
//!
//! ```text
//! alerts(seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- outbox order (fired order)
//!        alert_id TEXT UNIQUE, rule, fired_at_us, document)
//! deliveries(seq → alerts, target, attempts, last_attempt_us, next_attempt_us,
//!            last_error, delivered_at_us; PRIMARY KEY (target, seq))
//! ```
//!
//! Times in the file are the collector clock's, in microseconds since the Unix epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::watch;
use tracing::warn;

use crate::alerts::Alert;

/// Target name of the JSON-lines alert log (always a target).
pub const LOG_TARGET: &str = "log";
/// Target name of the warehouse `alerts` table (always a target).
pub const WAREHOUSE_TARGET: &str = "warehouse";

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// SQLite refused or failed.
    #[error("outbox {}: {action}: {source}", path.display())]
    Sqlite {
        /// The outbox file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// The outbox's directory could not be created.
    #[error("outbox: creating {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An alert named a target that is not configured.
    #[error(
        "alert {alert_id}: target {target:?} is not configured (known: {known}); \
         add it under notify.webhooks"
    )]
    UnknownTarget {
        /// The alert.
        alert_id: String,
        /// The target it named.
        target: String,
        /// The configured targets.
        known: String,
    },
    /// A webhook name collides with a built-in target.
    #[error("notify.webhooks: the name {0:?} is reserved for the built-in target; rename it")]
    ReservedName(String),
    /// The alert could not be serialised.
    #[error("alert {alert_id}: serialising: {source}")]
    Serialize {
        /// The alert.
        alert_id: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id    TEXT    NOT NULL UNIQUE,
    rule        TEXT    NOT NULL,
    fired_at_us INTEGER NOT NULL,
    document    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq             INTEGER NOT NULL REFERENCES alerts (seq) ON DELETE CASCADE,
    target          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_us INTEGER,
    next_attempt_us INTEGER,
    last_error      TEXT,
    delivered_at_us INTEGER,
    PRIMARY KEY (target, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (target, seq)
    WHERE delivered_at_us IS NULL;
CREATE INDEX IF NOT EXISTS alerts_fired_at ON alerts (fired_at_us);
";

/// One pending delivery: an alert and the target it has not reached yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Outbox order.
    pub seq: i64,
    /// The alert's id (the `Idempotency-Key`).
    pub alert_id: String,
    /// The rule that fired it.
    pub rule: String,
    /// When it fired (collector clock).
    pub fired_at: Timestamp,
    /// The alert document, exactly as every target receives it.
    pub document: String,
    /// Failed attempts so far (over all runs).
    pub attempts: u32,
}

/// Pending deliveries of one target, for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TargetStatus {
    /// Deliveries not yet done.
    pub pending: u64,
    /// When the oldest pending alert fired (RFC 3339), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_fired_at: Option<String>,
    /// Its age in seconds at the time of the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_age_seconds: Option<f64>,
    /// Failed attempts of the oldest pending delivery.
    pub oldest_pending_attempts: u32,
    /// The last error of the oldest pending delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The whole outbox, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStatus {
    /// Alerts kept (delivered or not).
    pub alerts: u64,
    /// Per target (configured or with pending deliveries), by name.
    pub targets: BTreeMap<String, TargetStatus>,
}

/// The durable outbox. `Send + Sync`: the engine inserts from its blocking thread while the
/// deliverers read and mark on theirs.
pub struct Outbox {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Configured targets, the built-in ones included.
    targets: BTreeSet<String>,
    /// Bumped after every insert that created deliveries; deliverers wait on it.
    wake: watch::Sender<u64>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({})", self.path.display())
    }
}

impl Outbox {
    /// Opens (creating it and its directory if needed) the outbox at `path`, for the
    /// webhooks named `webhooks` plus the built-in targets [`LOG_TARGET`] and
    /// [`WAREHOUSE_TARGET`] (listing those in `webhooks` too is allowed).
    ///
    /// Pending deliveries to a target no longer configured stay in the file (they are
    /// delivered if the target comes back) and are named in a WARN log.
    ///
    /// # Errors
    /// The directory or database cannot be created or opened.
    pub fn open(path: &Path, webhooks: &[String]) -> Result<Self, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OutboxError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let err = |action| sql(path, action);
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("set journal_mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("set synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err("set foreign_keys"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy_timeout"))?;
        conn.execute_batch(SCHEMA).map_err(err("create tables"))?;
        let mut targets: BTreeSet<String> = webhooks.iter().cloned().collect();
        targets.insert(LOG_TARGET.into());
        targets.insert(WAREHOUSE_TARGET.into());
        let outbox = Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            targets,
            wake: watch::Sender::new(0),
        };
        for (target, status) in outbox.status(Timestamp::UNIX_EPOCH)?.targets {
            if !outbox.targets.contains(&target) && status.pending > 0 {
                warn!(outbox = %path.display(), %target, pending = status.pending, "Alerts wait for a target that is no longer configured; they are delivered if it comes back.");
            }
        }
        Ok(outbox)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every configured target, built-in ones included, by name.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(String::as_str)
    }

    /// Stores `alert` with one pending delivery to each of `webhooks` (webhook names; the
    /// built-in [`LOG_TARGET`] and [`WAREHOUSE_TARGET`] are always added), durably, and
    /// wakes the deliverers.
    ///
    /// Returns `false`, changing nothing, when an alert with the same id is already in the
    /// outbox (delivered or not).
    ///
    /// # Errors
    /// A target that is not configured (nothing is stored then), or a database error.
    pub fn insert(&self, alert: &Alert, webhooks: &[String]) -> Result<bool, OutboxError> {
        let mut targets: BTreeSet<&str> = webhooks.iter().map(String::as_str).collect();
        targets.insert(LOG_TARGET);
        targets.insert(WAREHOUSE_TARGET);
        if let Some(unknown) = targets.iter().find(|t| !self.targets.contains(**t)) {
            return Err(OutboxError::UnknownTarget {
                alert_id: alert.alert_id.clone(),
                target: (*unknown).to_owned(),
                known: self.targets.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        let document = serde_json::to_string(alert).map_err(|source| OutboxError::Serialize {
            alert_id: alert.alert_id.clone(),
            source,
        })?;
        let err = |action| sql(&self.path, action);
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("begin insert"))?;
        let inserted = tx
            .execute(
                "INSERT INTO alerts (alert_id, rule, fired_at_us, document) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (alert_id) DO NOTHING",
                params![
                    alert.alert_id,
                    alert.rule,
                    alert.fired_at.as_microsecond(),
                    document
                ],
            )
            .map_err(err("insert alert"))?;
        if inserted == 0 {
            drop(tx); // Rolls back: nothing was written.
            drop(conn);
            metrics::counter!("tollstream_collector_alerts_duplicate_total", "rule" => alert.rule.clone())
                .increment(1);
            return Ok(false);
        }
        let seq = tx.last_insert_rowid();
        for target in &targets {
            tx.execute(
                "INSERT INTO deliveries (seq, target) VALUES (?1, ?2)",
                params![seq, target],
            )
            .map_err(err("insert delivery"))?;
        }
        // synchronous=FULL: the commit is on disk when this returns.
        tx.commit().map_err(err("commit insert"))?;
        drop(conn);
        metrics::counter!("tollstream_collector_alerts_fired_total", "rule" => alert.rule.clone())
            .increment(1);
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        Ok(true)
    }

    /// Whether an alert with this id is kept.
    ///
    /// # Errors
    /// Database errors.
    pub fn contains(&self, alert_id: &str) -> Result<bool, OutboxError> {
        self.lock()
            .query_row(
                "SELECT 1 FROM alerts WHERE alert_id = ?1",
                [alert_id],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(sql(&self.path, "look up alert"))
    }

    /// A receiver that changes after every insert that created deliveries.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Up to `limit` pending deliveries of `target`, oldest (outbox order) first.
    ///
    /// # Errors
    /// Database errors.
    pub fn pending(&self, target: &str, limit: usize) -> Result<Vec<Pending>, OutboxError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT a.seq, a.alert_id, a.rule, a.fired_at_us, a.document, d.attempts \
                 FROM deliveries d JOIN alerts a ON a.seq = d.seq \
                 WHERE d.target = ?1 AND d.delivered_at_us IS NULL ORDER BY d.seq LIMIT ?2",
            )
            .map_err(sql(&self.path, "read pending deliveries"))?;
        let rows = statement
            .query_map(
                params![target, i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| {
                    Ok(Pending {
                        seq: row.get(0)?,
                        alert_id: row.get(1)?,
                        rule: row.get(2)?,
                        fired_at: timestamp(row.get(3)?),
                        document: row.get(4)?,
                        attempts: u32::try_from(row.get::<_, i64>(5)?).unwrap_or(u32::MAX),
                    })
                },
            )
            .and_then(Iterator::collect)
            .map_err(sql(&self.path, "read pending deliveries"))?;
        Ok(rows)
    }

    /// Marks `target`'s deliveries of the alerts `seqs` as done at `at`, in one transaction.
    ///
    /// # Errors
    /// Database errors.
    pub fn mark_delivered(
        &self,
        target: &str,
        seqs: &[i64],
        at: Timestamp,
    ) -> Result<(), OutboxError> {
        let err = |action| sql(&self.path, action);
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(err("begin marking delivered"))?;
        for seq in seqs {
            tx.execute(
                "UPDATE deliveries SET delivered_at_us = ?3, last_error = NULL \
                 WHERE target = ?1 AND seq = ?2",
                params![target, seq, at.as_microsecond()],
            )
            .map_err(err("mark delivered"))?;
        }
        tx.commit().map_err(err("commit marking delivered"))
    }

    /// Records a failed attempt of `target`'s delivery of alert `seq`, and when the next
    /// one is due (for `status`; the deliverer keeps its own timer).
    ///
    /// # Errors
    /// Database errors.
    pub fn record_failure(
        &self,
        target: &str,
        seq: i64,
        error: &str,
        at: Timestamp,
        next_attempt: Timestamp,
    ) -> Result<(), OutboxError> {
        self.lock()
            .execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt_us = ?3, \
                 next_attempt_us = ?4, last_error = ?5 WHERE target = ?1 AND seq = ?2",
                params![
                    target,
                    seq,
                    at.as_microsecond(),
                    next_attempt.as_microsecond(),
                    error
                ],
            )
            .map(drop)
            .map_err(sql(&self.path, "record failed attempt"))
    }

    /// Pending deliveries of `target`.
    ///
    /// # Errors
    /// Database errors.
    pub fn pending_count(&self, target: &str) -> Result<u64, OutboxError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM deliveries WHERE target = ?1 AND delivered_at_us IS NULL",
                [target],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(sql(&self.path, "count pending deliveries"))
    }

    /// Deletes alerts that fired before `now - retention` and have no pending delivery;
    /// returns how many. Their ids are then no longer refused.
    ///
    /// # Errors
    /// Database errors.
    pub fn prune(
        &self,
        now: Timestamp,
        retention: std::time::Duration,
    ) -> Result<u64, OutboxError> {
        let cutoff = now
            .as_microsecond()
            .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX));
        let err = |action| sql(&self.path, action);
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(err("begin pruning"))?;
        let filter = "fired_at_us < ?1 AND NOT EXISTS (SELECT 1 FROM deliveries d \
                      WHERE d.seq = alerts.seq AND d.delivered_at_us IS NULL)";
        tx.execute(
            &format!("DELETE FROM deliveries WHERE seq IN (SELECT seq FROM alerts WHERE {filter})"),
            [cutoff],
        )
        .map_err(err("prune deliveries"))?;
        let deleted = tx
            .execute(&format!("DELETE FROM alerts WHERE {filter}"), [cutoff])
            .map_err(err("prune alerts"))?;
        tx.commit().map_err(err("commit pruning"))?;
        Ok(deleted as u64)
    }

    /// Pending deliveries per target (every configured target, plus any other with pending
    /// deliveries) and the oldest of each, as of `now`.
    ///
    /// # Errors
    /// Database errors.
    pub fn status(&self, now: Timestamp) -> Result<OutboxStatus, OutboxError> {
        let mut status = query_status(&self.lock(), &self.path, now)?;
        for target in &self.targets {
            status.targets.entry(target.clone()).or_default();
        }
        Ok(status)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done transaction behind (rusqlite
        // rolls back on drop), so the connection is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads the outbox at `path` read-only (for `tollstream-collector status`, with or
/// without a running collector); `None` when it does not exist yet.
///
/// # Errors
/// The file exists but cannot be read.
pub fn read_status(path: &Path, now: Timestamp) -> Result<Option<OutboxStatus>, OutboxError> {
    if !path.exists() {
        return Ok(None);
    }
    // Without creating `-wal`/`-shm` files beside it when no collector has it open.
    let conn = crate::status::open_read_only(path).map_err(sql(path, "open read-only"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql(path, "set busy_timeout"))?;
    query_status(&conn, path, now).map(Some)
}

fn query_status(
    conn: &Connection,
    path: &Path,
    now: Timestamp,
) -> Result<OutboxStatus, OutboxError> {
    let err = |action| sql(path, action);
    let alerts: i64 = conn
        .query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))
        .map_err(err("count alerts"))?;
    let mut status = OutboxStatus {
        alerts: u64::try_from(alerts).unwrap_or(0),
        targets: BTreeMap::new(),
    };
    // The oldest pending delivery of each target is the one with the lowest seq (fired
    // order); SQLite's bare-column MIN() returns that row's other columns.
    let mut statement = conn
        .prepare(
            "SELECT d.target, COUNT(*), MIN(d.seq), a.fired_at_us, d.attempts, d.last_error \
             FROM deliveries d JOIN alerts a ON a.seq = d.seq \
             WHERE d.delivered_at_us IS NULL GROUP BY d.target",
        )
        .map_err(err("read pending deliveries"))?;
    let rows = statement
        .query_map([], |row| {
            let fired_at = timestamp(row.get(3)?);
            Ok((
                row.get::<_, String>(0)?,
                TargetStatus {
                    pending: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    oldest_pending_fired_at: Some(fired_at.to_string()),
                    oldest_pending_age_seconds: Some(
                        (now.as_microsecond() - fired_at.as_microsecond()).max(0) as f64 / 1e6,
                    ),
                    oldest_pending_attempts: u32::try_from(row.get::<_, i64>(4)?)
                        .unwrap_or(u32::MAX),
                    last_error: row.get(5)?,
                },
            ))
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(err("read pending deliveries"))?;
    status.targets.extend(rows);
    Ok(status)
}

fn timestamp(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A `map_err` closure naming the outbox file and the action.
fn sql(path: &Path, action: &'static str) -> impl FnOnce(rusqlite::Error) -> OutboxError {
    let path = path.to_owned();
    move |source| OutboxError::Sqlite {
        path,
        action,
        source,
    }
}
