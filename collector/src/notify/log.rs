//! The JSON-lines alert log (`notify.log`): one line per alert, the alert document, in
//! outbox (fired) order, each alert exactly once.
//!
//! Input: pending deliveries of the `log` target. Output: lines appended to the file and
//! fsynced, then the deliveries marked done in the outbox.
//!
//! Exactly once across crashes: a crash after the append and before the mark leaves
//! delivered-but-pending alerts at the end of the file. Before its first append (and after
//! any failed append or mark), the log is *recovered*: a torn last line (a crash in the
//! middle of a write) is cut off with a WARN, the last [`TAIL_BYTES`] of the file are read,
//! and every pending log delivery whose `alert_id` is there is marked done instead of being
//! written again. A failed append is cut back to where it began.
//!
//! The file is opened for each batch (`O_APPEND`), so logrotate's default
//! rename-and-create works without `copytruncate` and without a signal. A rotation between
//! a crash's append and the next start hides those lines from recovery (they would be
//! written again, to the new file); rotate while the collector runs, not across a crash.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use serde::Deserialize;
use tracing::{info, warn};

use super::outbox::{LOG_TARGET, Outbox, Pending};
use super::{Failure, NotifyError};

/// How much of the file's end recovery reads: far more than a batch of lines.
pub const TAIL_BYTES: u64 = 4 * 1024 * 1024;
/// Most alerts appended with one fsync.
pub const BATCH: usize = 256;

/// The alert log.
#[derive(Debug)]
pub struct AlertLog {
    path: PathBuf,
    /// Set at open and after a failure that may have left lines not marked done.
    needs_recovery: AtomicBool,
}

#[derive(Deserialize)]
struct Id {
    alert_id: String,
}

impl AlertLog {
    /// The log at `path`, creating its directory and the file now, so that a path that
    /// cannot be written fails at start.
    ///
    /// # Errors
    /// The directory or file cannot be created or opened for appending.
    pub fn open(path: &Path) -> Result<Self, NotifyError> {
        let io = |what: &str, e: std::io::Error| {
            NotifyError::Config(format!("notify.log: {what} {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let existed = path.exists();
        append_handle(path).map_err(|e| io("opening", e))?;
        if !existed && let Some(dir) = path.parent() {
            // The new file's name is durable before anything is marked as written to it.
            crate::fsutil::sync_dir(dir).map_err(|e| io("syncing the directory of", e))?;
        }
        Ok(Self {
            path: path.to_owned(),
            needs_recovery: AtomicBool::new(true),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the alerts of `batch` that are not in the file yet, fsyncs, and marks them
    /// delivered in `outbox` at `now`. Runs recovery first when needed. Blocking.
    ///
    /// Returns the deliveries now done (by this append or found by recovery).
    ///
    /// # Errors
    /// I/O or outbox errors; nothing is marked that is not durably in the file.
    pub fn deliver(
        &self,
        outbox: &Outbox,
        batch: &[Pending],
        now: Timestamp,
    ) -> Result<Vec<i64>, Failure> {
        let mut done = Vec::new();
        let mut todo: Vec<&Pending> = batch.iter().collect();
        if self.needs_recovery.load(Ordering::SeqCst) {
            let found = self.recover().map_err(|e| self.failed(e))?;
            let (written, rest): (Vec<&Pending>, Vec<&Pending>) =
                todo.into_iter().partition(|p| found.contains(&p.alert_id));
            let written: Vec<i64> = written.iter().map(|p| p.seq).collect();
            if !written.is_empty() {
                outbox
                    .mark_delivered(LOG_TARGET, &written, now)
                    .map_err(|e| self.failed(e.to_string()))?;
                info!(path = %self.path.display(), alerts = written.len(), "Alerts found in the alert log after a restart; not written again.");
            }
            self.needs_recovery.store(false, Ordering::SeqCst);
            done = written;
            todo = rest;
        }
        if todo.is_empty() {
            return Ok(done);
        }
        let mut lines = String::new();
        for pending in &todo {
            lines.push_str(&pending.document);
            lines.push('\n');
        }
        self.append(lines.as_bytes()).map_err(|e| self.failed(e))?;
        let seqs: Vec<i64> = todo.iter().map(|p| p.seq).collect();
        // A crash here leaves the lines written and the deliveries pending: recovery at
        // the next start finds them at the end of the file.
        outbox
            .mark_delivered(LOG_TARGET, &seqs, now)
            .map_err(|e| self.failed(e.to_string()))?;
        done.extend(seqs);
        Ok(done)
    }

    /// A failure after which the file must be recovered before the next append.
    fn failed(&self, error: String) -> Failure {
        self.needs_recovery.store(true, Ordering::SeqCst);
        Failure {
            error: format!("alert log {}: {error}", self.path.display()),
            retry_after: None,
            refused: false,
        }
    }

    /// Appends `bytes` and fsyncs; on failure cuts the file back to where it was.
    fn append(&self, bytes: &[u8]) -> Result<(), String> {
        let mut file = append_handle(&self.path).map_err(|e| format!("opening: {e}"))?;
        let start = file
            .seek(SeekFrom::End(0))
            .map_err(|e| format!("seeking to the end: {e}"))?;
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        if let Err(error) = written {
            // Best effort; if this fails too, recovery cuts the torn line.
            let _ = file.set_len(start).and_then(|()| file.sync_data());
            return Err(format!("appending: {error}"));
        }
        Ok(())
    }

    /// Cuts a torn last line and returns the alert ids in the file's last [`TAIL_BYTES`].
    fn recover(&self) -> Result<HashSet<String>, String> {
        let mut file = match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(file) => file,
            // Rotated away and not yet made again: nothing to find.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(format!("opening for recovery: {e}")),
        };
        let len = file
            .metadata()
            .map_err(|e| format!("reading its size: {e}"))?
            .len();
        let from = len.saturating_sub(TAIL_BYTES);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(from))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(|e| format!("reading its end: {e}"))?;
        let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < tail.len() {
            let cut = from + complete as u64;
            warn!(path = %self.path.display(), bytes = len - cut, "The alert log ends in a torn line (a crash while writing); cutting it off.");
            file.set_len(cut)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("cutting the torn line: {e}"))?;
            tail.truncate(complete);
        }
        // The first line may start before `from`; it does not parse and is skipped.
        Ok(tail
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Id>(line).ok())
            .map(|id| id.alert_id)
            .collect())
    }
}

fn append_handle(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
