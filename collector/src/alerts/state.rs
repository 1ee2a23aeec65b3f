//! Checkpoints of the alert engines, with the WAL position they cover, in
//! `<data_dir>/state/alerts.db` (SQLite, `synchronous = FULL`).
//!
//! One transaction writes a stream's position, watermark, each rule's open windows and the
//! monthly totals that changed since the last checkpoint, so after a crash the engine
//! resumes exactly where that transaction left it and reads the WAL again from the next
//! record: nothing is counted twice and nothing is lost. Alerts are put into the outbox as
//! they fire, before the checkpoint that covers them; those fired again by the replay have
//! the same ids and the outbox drops them.
//!
//! A rule whose definition changed (its fingerprint) starts afresh: its saved state is
//! dropped with a warning. A checkpoint file that cannot be read is moved aside with an
//! ERROR and the engines start afresh from the oldest record the WAL still holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::engine::{Acc, Engine, MonthAcc};
use super::windows::Month;

/// Schema version of the checkpoint file.
const VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    stream      TEXT PRIMARY KEY,
    position    INTEGER NOT NULL,
    max_event   INTEGER,
    watermark   INTEGER,
    saved_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
    stream      TEXT NOT NULL,
    rule        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    next_close  INTEGER,
    open_from   TEXT,
    windows     TEXT NOT NULL,
    late        INTEGER NOT NULL,
    PRIMARY KEY (stream, rule)
);
CREATE TABLE IF NOT EXISTS monthly (
    rule    TEXT NOT NULL,
    month   TEXT NOT NULL,
    key     TEXT NOT NULL,
    count   INTEGER NOT NULL,
    sum     TEXT NOT NULL,
    min     INTEGER NOT NULL,
    max     INTEGER NOT NULL,
    fired   TEXT NOT NULL,
    PRIMARY KEY (rule, month, key)
);
";

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
#[error("alert checkpoint {path}: {action}: {source}")]
pub struct StateError {
    path: PathBuf,
    action: &'static str,
    #[source]
    source: rusqlite::Error,
}

/// A checkpoint file written by a newer collector.
#[derive(Debug, thiserror::Error)]
#[error(
    "version {found}, written by a newer collector (this one reads version {VERSION}); run the \
     newer collector, or move the file aside to start the alert engines afresh"
)]
struct Newer {
    found: i64,
}

impl StateError {
    /// Whether the file itself is damaged (the only case it is moved aside).
    fn is_corruption(&self) -> bool {
        matches!(
            self.source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    }
}

/// The checkpoint file.
pub struct StateStore {
    conn: Connection,
    path: PathBuf,
}

/// Open windows of a rule as saved: window start (µs) → key → [count, sum, min, max].
type SavedWindows = BTreeMap<i64, BTreeMap<String, (u64, String, i64, i64)>>;

/// A saved rule row: fingerprint, next window to close (µs), oldest open month, open
/// windows (JSON), late records.
type SavedRule = (String, Option<i64>, Option<String>, String, i64);

/// Where a stream's engine resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The last WAL record the checkpoint covers (0: none).
    pub position: u64,
}

#[derive(Serialize, Deserialize)]
struct Fired(Vec<i64>);

impl StateStore {
    /// Opens (creating) the file. A corrupt one (not a database, or damaged) is moved aside
    /// (ERROR) and a fresh one started; any other failure (permissions, a file written by a
    /// newer collector, a busy disk) is an error, and the file is left as it is.
    ///
    /// # Errors
    /// As above.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        match Self::try_open(path) {
            Ok(store) => Ok(store),
            Err(e) if path.exists() && e.is_corruption() => {
                let aside = path.with_extension(format!("db.unreadable-{}", std::process::id()));
                error!(path = %path.display(), aside = %aside.display(), error = %e, "The alert checkpoint cannot be read; moving it aside and starting the alert engines afresh from the oldest record the WAL holds. Monthly totals count only what the WAL still holds.");
                metrics::counter!("tollstream_collector_alert_checkpoint_errors_total")
                    .increment(1);
                let _ = std::fs::rename(path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let mut side = path.as_os_str().to_owned();
                    side.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(side));
                }
                Self::try_open(path)
            }
            Err(e) => Err(e),
        }
    }

    fn try_open(path: &Path) -> Result<Self, StateError> {
        let err = |action| {
            move |source| StateError {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("set journal_mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("set synchronous"))?;
        conn.execute_batch(SCHEMA).map_err(err("create tables"))?;
        let version: Option<i64> = conn
            .query_row("SELECT version FROM meta", [], |r| r.get(0))
            .optional()
            .map_err(err("read version"))?;
        match version {
            None => {
                conn.execute("INSERT INTO meta (version) VALUES (?1)", [VERSION])
                    .map_err(err("write version"))?;
            }
            Some(VERSION) => {}
            Some(found) => {
                return Err(StateError {
                    path: path.to_path_buf(),
                    action: "check version",
                    source: rusqlite::Error::ToSqlConversionFailure(Box::new(Newer { found })),
                });
            }
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Restores `engine` from the last checkpoint of its stream.
    ///
    /// # Errors
    /// Database errors.
    pub fn restore(&self, engine: &mut Engine) -> Result<Resume, StateError> {
        let stream = engine.stream.clone();
        let row: Option<(i64, Option<i64>, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT position, max_event, watermark FROM streams WHERE stream = ?1",
                [&stream],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.err("read stream"))?;
        let Some((position, max_event, watermark)) = row else {
            return Ok(Resume { position: 0 });
        };
        self.forget_removed_rules(engine)?;
        let ts = |us: Option<i64>| us.and_then(|us| Timestamp::from_microsecond(us).ok());
        engine.max_event = ts(max_event);
        engine.watermark = ts(watermark);
        for (i, state) in engine.rules.iter_mut().enumerate() {
            let saved: Option<SavedRule> = self
                .conn
                .query_row(
                    "SELECT fingerprint, next_close, open_from, windows, late FROM rules
                     WHERE stream = ?1 AND rule = ?2",
                    params![stream, state.rule.name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(self.err("read rule"))?;
            let Some((fingerprint, next_close, open_from, windows, late)) = saved else {
                continue;
            };
            if fingerprint != state.rule.fingerprint {
                warn!(rule = %state.rule.name, "The rule's definition changed since the last checkpoint; its windows and totals start afresh.");
                self.conn
                    .execute("DELETE FROM monthly WHERE rule = ?1", [&state.rule.name])
                    .map_err(self.err("drop monthly totals"))?;
                continue;
            }
            state.next_close = ts(next_close);
            state.open_from = open_from.and_then(|m| m.parse::<Month>().ok());
            engine.late[i] = u64::try_from(late).unwrap_or(0);
            let windows: SavedWindows = serde_json::from_str(&windows).unwrap_or_default();
            for (start, keys) in windows {
                let Some(start) = ts(Some(start)) else {
                    continue;
                };
                let map: foldhash::HashMap<String, Acc> = keys
                    .into_iter()
                    .map(|(k, (count, sum, min, max))| {
                        let sum = sum.parse().unwrap_or(0);
                        (
                            k,
                            Acc {
                                count,
                                sum,
                                min,
                                max,
                            },
                        )
                    })
                    .collect();
                state.windows.insert(start, map);
            }
            let mut statement = self
                .conn
                .prepare_cached(
                    "SELECT month, key, count, sum, min, max, fired FROM monthly WHERE rule = ?1",
                )
                .map_err(self.err("read monthly totals"))?;
            let rows = statement
                .query_map([&state.rule.name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                })
                .map_err(self.err("read monthly totals"))?;
            for row in rows {
                let (month, key, count, sum, min, max, fired) =
                    row.map_err(self.err("read monthly totals"))?;
                let Ok(month) = month.parse::<Month>() else {
                    continue;
                };
                let fired: Fired = serde_json::from_str(&fired).unwrap_or(Fired(Vec::new()));
                state.months.insert(
                    (month, key),
                    MonthAcc {
                        acc: Acc {
                            count: u64::try_from(count).unwrap_or(0),
                            sum: sum.parse().unwrap_or(0),
                            min,
                            max,
                        },
                        fired: fired.0,
                        dirty: false,
                    },
                );
            }
        }
        Ok(Resume {
            position: u64::try_from(position).unwrap_or(0),
        })
    }

    /// Deletes everything saved for `stream` (its position, windows and its rules' totals).
    ///
    /// # Errors
    /// Database errors.
    pub fn reset(&self, stream: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM monthly WHERE rule IN (SELECT rule FROM rules WHERE stream = ?1)",
                [stream],
            )
            .map_err(self.err("reset monthly totals"))?;
        self.conn
            .execute("DELETE FROM rules WHERE stream = ?1", [stream])
            .map_err(self.err("reset rules"))?;
        self.conn
            .execute("DELETE FROM streams WHERE stream = ?1", [stream])
            .map_err(self.err("reset stream"))?;
        Ok(())
    }

    /// Deletes the saved state of rules this stream no longer has, so a rule removed and
    /// added back later starts afresh instead of resuming from a stale position.
    fn forget_removed_rules(&self, engine: &Engine) -> Result<(), StateError> {
        let mut statement = self
            .conn
            .prepare("SELECT rule FROM rules WHERE stream = ?1")
            .map_err(self.err("list saved rules"))?;
        let saved: Vec<String> = statement
            .query_map([&engine.stream], |r| r.get(0))
            .map_err(self.err("list saved rules"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("list saved rules"))?;
        for rule in saved {
            if engine.rules.iter().any(|s| s.rule.name == rule) {
                continue;
            }
            warn!(stream = %engine.stream, rule = %rule, "Dropping the saved state of a rule that is no longer configured.");
            self.conn
                .execute(
                    "DELETE FROM rules WHERE stream = ?1 AND rule = ?2",
                    params![engine.stream, rule],
                )
                .map_err(self.err("drop a removed rule"))?;
            self.conn
                .execute("DELETE FROM monthly WHERE rule = ?1", [&rule])
                .map_err(self.err("drop a removed rule"))?;
        }
        Ok(())
    }

    /// Writes `engine`'s state as covering WAL records up to `position`, in one
    /// transaction, and forgets what it marked dirty.
    ///
    /// # Errors
    /// Database errors (a full disk); the previous checkpoint stays intact then, and the
    /// dirty marks are kept for the next attempt.
    pub fn save(
        &mut self,
        engine: &mut Engine,
        position: u64,
        now: Timestamp,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |action| {
            let path = path.clone();
            move |source| StateError {
                path: path.clone(),
                action,
                source,
            }
        };
        let tx = self.conn.transaction().map_err(err("begin"))?;
        let us = |t: Option<Timestamp>| t.map(|t| t.as_microsecond());
        tx.execute(
            "INSERT INTO streams (stream, position, max_event, watermark, saved_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (stream) DO UPDATE SET position = excluded.position,
               max_event = excluded.max_event, watermark = excluded.watermark,
               saved_at = excluded.saved_at",
            params![
                engine.stream,
                i64::try_from(position).unwrap_or(i64::MAX),
                us(engine.max_event),
                us(engine.watermark),
                now.to_string()
            ],
        )
        .map_err(err("write stream"))?;
        for (i, state) in engine.rules.iter().enumerate() {
            let windows: SavedWindows = state
                .windows
                .iter()
                .map(|(start, keys)| {
                    (
                        start.as_microsecond(),
                        keys.iter()
                            .map(|(k, a)| (k.clone(), (a.count, a.sum.to_string(), a.min, a.max)))
                            .collect(),
                    )
                })
                .collect();
            let windows = serde_json::to_string(&windows).unwrap_or_else(|_| "{}".into());
            tx.execute(
                "INSERT INTO rules (stream, rule, fingerprint, next_close, open_from, windows, late)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (stream, rule) DO UPDATE SET fingerprint = excluded.fingerprint,
                   next_close = excluded.next_close, open_from = excluded.open_from,
                   windows = excluded.windows, late = excluded.late",
                params![
                    engine.stream,
                    state.rule.name,
                    state.rule.fingerprint,
                    us(state.next_close),
                    state.open_from.map(|m| m.to_string()),
                    windows,
                    i64::try_from(engine.late[i]).unwrap_or(i64::MAX),
                ],
            )
            .map_err(err("write rule"))?;
            {
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO monthly (rule, month, key, count, sum, min, max, fired)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (rule, month, key) DO UPDATE SET count = excluded.count,
                           sum = excluded.sum, min = excluded.min, max = excluded.max,
                           fired = excluded.fired",
                    )
                    .map_err(err("write monthly totals"))?;
                for entry in &state.dirty {
                    let Some(total) = state.months.get(entry) else {
                        continue;
                    };
                    let fired = serde_json::to_string(&Fired(total.fired.clone()))
                        .unwrap_or_else(|_| "[]".into());
                    upsert
                        .execute(params![
                            state.rule.name,
                            entry.0.to_string(),
                            entry.1,
                            i64::try_from(total.acc.count).unwrap_or(i64::MAX),
                            total.acc.sum.to_string(),
                            total.acc.min,
                            total.acc.max,
                            fired
                        ])
                        .map_err(err("write monthly totals"))?;
                }
            }
            for month in &state.closed_months {
                tx.execute(
                    "DELETE FROM monthly WHERE rule = ?1 AND month = ?2",
                    params![state.rule.name, month.to_string()],
                )
                .map_err(err("drop a closed month"))?;
            }
        }
        tx.commit().map_err(err("commit"))?;
        for state in &mut engine.rules {
            for entry in std::mem::take(&mut state.dirty) {
                if let Some(total) = state.months.get_mut(&entry) {
                    total.dirty = false;
                }
            }
            state.closed_months.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_file_is_moved_aside_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alerts.db");
        std::fs::write(&path, b"this is not a database, it was damaged").expect("write");
        StateStore::open(&path).expect("a fresh store replaces a corrupt file");
        let aside = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
        assert!(aside, "the damaged file is kept aside for inspection");
        // A file from a newer collector: refused, left in place.
        let conn = Connection::open(&path).expect("open");
        conn.execute("UPDATE meta SET version = 99", [])
            .expect("update");
        drop(conn);
        let error = StateStore::open(&path).err().expect("refused");
        let text = format!("{error:#}");
        assert!(text.contains("newer collector"), "{text}");
        assert!(path.exists());
    }
}
