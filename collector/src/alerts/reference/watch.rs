//! The reference table in use, swapped whole on reload, and the watcher that reloads it when
//! the file changes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ReferenceError, ReferenceTable};

/// What identifies the file's content on disk, to notice a change without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A rule's reference data in use: the current [`ReferenceTable`], swapped whole when the
/// file changes and validates.
pub struct Reference {
    rule: String,
    path: PathBuf,
    window: Duration,
    scale: u32,
    current: RwLock<Arc<ReferenceTable>>,
    /// The file as last read (valid or not), so an unchanged broken file is not reported
    /// again every poll.
    stamp: Mutex<Option<FileStamp>>,
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reference")
            .field("rule", &self.rule)
            .field("path", &self.path)
            .field("rows", &self.current().rows())
            .finish()
    }
}

impl Reference {
    /// Loads the file for rule `rule` (the metrics' label) for the first time.
    ///
    /// # Errors
    /// As [`ReferenceTable::load`]: a collector should not start with a broken file.
    pub fn open(
        rule: &str,
        path: &Path,
        window: Duration,
        scale: u32,
    ) -> Result<Self, ReferenceError> {
        let stamp = FileStamp::of(path).ok();
        let table = ReferenceTable::load(path, window, scale)?;
        metrics::gauge!("tollstream_collector_reference_rows", "rule" => rule.to_owned())
            .set(table.rows() as f64);
        Ok(Self {
            rule: rule.to_owned(),
            path: path.to_path_buf(),
            window,
            scale,
            current: RwLock::new(Arc::new(table)),
            stamp: Mutex::new(stamp),
        })
    }

    /// The table in use now.
    pub fn current(&self) -> Arc<ReferenceTable> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again (SIGHUP, or a change seen by [`Reference::watch`]). Returns
    /// whether the thresholds changed. Blocking file I/O: call it off the async threads.
    ///
    /// # Errors
    /// The file does not load; the table in use stays, the error is logged (ERROR, with
    /// every bad line) and counted in `tollstream_collector_reference_reload_errors_total`.
    pub fn reload(&self) -> Result<bool, ReferenceError> {
        let stamp = FileStamp::of(&self.path).ok();
        // Remember the stamp taken *before* reading: a write racing with this read changes
        // the stamp again and is read on the next poll.
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        let rule = self.rule.clone();
        match ReferenceTable::load(&self.path, self.window, self.scale) {
            Ok(table) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                if **current == table {
                    return Ok(false);
                }
                info!(rule = %rule, path = %self.path.display(), rows = table.rows(), keys = table.keys().len(), "Reloaded reference data.");
                metrics::gauge!("tollstream_collector_reference_rows", "rule" => rule.clone())
                    .set(table.rows() as f64);
                metrics::counter!("tollstream_collector_reloads_total", "what" => "reference", "result" => "ok").increment(1);
                *current = Arc::new(table);
                Ok(true)
            }
            Err(e) => {
                error!(rule = %rule, path = %self.path.display(), errors = %e, "Reference data not reloaded; the previous thresholds stay in use. Fix the file; it is read again when it changes.");
                metrics::counter!("tollstream_collector_reference_reload_errors_total", "rule" => rule)
                    .increment(1);
                metrics::counter!("tollstream_collector_reloads_total", "what" => "reference", "result" => "error").increment(1);
                Err(e)
            }
        }
    }

    /// Reloads when the file's identity, size or times differ from the last read.
    ///
    /// # Errors
    /// As [`Reference::reload`]; also when the file cannot be looked at (then nothing is
    /// reloaded and it is looked at again next time).
    pub fn reload_if_modified(&self) -> Result<bool, ReferenceError> {
        let now = FileStamp::of(&self.path).map_err(|source| ReferenceError::Read {
            path: self.path.clone(),
            source,
        })?;
        let last = *self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if last == Some(now) {
            return Ok(false);
        }
        self.reload()
    }

    /// Looks at the file every `every` and reloads it when it changed, until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut missing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let outcome = tokio::task::spawn_blocking(move || this.reload_if_modified()).await;
            match outcome {
                Ok(Err(ReferenceError::Read { source, .. })) => {
                    // Editors replace files by rename: missing for a moment is normal.
                    if !missing {
                        warn!(rule = %self.rule, path = %self.path.display(), error = %source, "Cannot read the reference file; the thresholds in use stay.");
                    }
                    missing = true;
                }
                Ok(_) => missing = false,
                Err(e) => warn!(error = %e, "Reference reload task failed."),
            }
        }
    }
}
