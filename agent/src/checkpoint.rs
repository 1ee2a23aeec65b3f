//! Checkpoints: how far each file has been acknowledged by the collector.
//!
//! Input: offsets advanced by tailers after each ack. Output: `<state_dir>/checkpoints.json`,
//! rewritten every `checkpoint_interval` while something changed, and once more at
//! shutdown after the last ack.
//!
//! Format (version 1): `{"version":1,"crc":<CRC-32 of the JSON text of "files">,"files":[..]}`.
//! Entries are keyed by file identity (inode + first-line fingerprint + generation), not
//! by path, so a renamed file keeps its offset.
//!
//! Durability: temp file, fsync, rename, directory fsync. At start a complete, valid temp
//! file (a crash after its fsync but before the rename) wins over the main file. A damaged
//! checkpoint is moved aside with an ERROR and the agent starts as if it had none: with
//! `start_at: beginning` (the default) files are read again and the collector's duplicate
//! detection drops what it already has; with `start_at: end` what was not yet shipped
//! before the damage is skipped, which the ERROR says.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::clock::Clock;

const FILE: &str = "checkpoints.json";
const VERSION: u32 = 1;

/// The acknowledged state of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Last path it was seen under.
    pub path: PathBuf,
    /// Bytes acknowledged from the start of the file (always at a line boundary).
    pub offset: u64,
    /// Size when last read, for `status` and lag.
    pub size: u64,
    /// Increased each time the file was found truncated, so its new content is a new
    /// source for the collector.
    pub generation: u32,
    /// Last acknowledgement, RFC 3339.
    pub acked_at: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    crc: u32,
    files: BTreeMap<String, Entry>,
}

/// All files' entries, keyed by identity; shared between tailers and the checkpointer.
#[derive(Debug, Default)]
pub struct Checkpoints {
    files: BTreeMap<String, Entry>,
    dirty: bool,
}

/// Shared handle.
pub type SharedCheckpoints = Arc<Mutex<Checkpoints>>;

/// Why checkpoints could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// I/O error.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a valid checkpoint.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Checkpoints {
    /// The entry of a file identity.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.files.get(key)
    }

    /// Sets a file's entry.
    pub fn set(&mut self, key: &str, entry: Entry) {
        self.files.insert(key.to_owned(), entry);
        self.dirty = true;
    }

    /// Updates the offset and size after an ack (offsets never move backwards).
    pub fn acked(&mut self, key: &str, offset: u64, size: u64, at: &str) {
        if let Some(entry) = self.files.get_mut(key) {
            entry.offset = entry.offset.max(offset);
            entry.size = size;
            entry.acked_at = Some(at.to_owned());
            self.dirty = true;
        }
    }

    /// Every entry, for `status`.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.files.iter()
    }

    /// Serialises if changed since the last call.
    fn take_snapshot(&mut self) -> Option<Vec<u8>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(encode(&self.files))
    }
}

fn encode(files: &BTreeMap<String, Entry>) -> Vec<u8> {
    // Serialising plain strings and integers cannot fail.
    let body = serde_json::to_vec(files).unwrap_or_default();
    let on_disk = OnDisk {
        version: VERSION,
        crc: crc32fast::hash(&body),
        files: files.clone(),
    };
    serde_json::to_vec_pretty(&on_disk).unwrap_or_default()
}

fn decode(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Entry>, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let on_disk: OnDisk = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("not a valid checkpoint file: {e}")))?;
    if on_disk.version != VERSION {
        return Err(corrupt(format!(
            "unsupported version {} (this agent reads {VERSION})",
            on_disk.version
        )));
    }
    let body = serde_json::to_vec(&on_disk.files).unwrap_or_default();
    if crc32fast::hash(&body) != on_disk.crc {
        return Err(corrupt("checksum mismatch: the file was damaged".into()));
    }
    Ok(on_disk.files)
}

fn tmp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{FILE}.tmp"))
}

/// Loads the checkpoints in `dir`, preferring a valid leftover temp file; a damaged file
/// is renamed to `checkpoints.json.corrupt-<unix seconds>` and reported.
///
/// # Errors
/// I/O errors other than "not found".
pub fn load(dir: &Path, clock: &dyn Clock) -> Result<Checkpoints, CheckpointError> {
    let main = dir.join(FILE);
    if let Some(files) = read_tmp(dir) {
        warn!(path = %tmp_path(dir).display(), "Using checkpoint temp file left by an interrupted write.");
        return Ok(Checkpoints { files, dirty: true });
    }
    let bytes = match std::fs::read(&main) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoints::default()),
        Err(source) => {
            return Err(CheckpointError::Io {
                action: "reading",
                path: main,
                source,
            });
        }
    };
    match decode(&main, &bytes) {
        Ok(files) => Ok(Checkpoints {
            files,
            dirty: false,
        }),
        Err(problem) => {
            let aside = dir.join(format!("{FILE}.corrupt-{}", clock.now().as_second()));
            let _ = std::fs::rename(&main, &aside);
            error!(%problem, moved_to = %aside.display(), "Checkpoint file is damaged; starting without it. Files are read again per start_at; the collector drops what it already has.");
            metrics::counter!("tollstream_agent_checkpoint_errors_total", "reason" => "corrupt")
                .increment(1);
            Ok(Checkpoints::default())
        }
    }
}

/// A complete, valid temp file left by an interrupted write, if any.
fn read_tmp(dir: &Path) -> Option<BTreeMap<String, Entry>> {
    let tmp = tmp_path(dir);
    decode(&tmp, &std::fs::read(&tmp).ok()?).ok()
}

/// Reads the checkpoints without changing anything on disk (for `status`).
///
/// # Errors
/// An unreadable or damaged file.
pub fn read_only(dir: &Path) -> Result<Checkpoints, CheckpointError> {
    if let Some(files) = read_tmp(dir) {
        return Ok(Checkpoints {
            files,
            dirty: false,
        });
    }
    let main = dir.join(FILE);
    match std::fs::read(&main) {
        Ok(bytes) => Ok(Checkpoints {
            files: decode(&main, &bytes)?,
            dirty: false,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoints::default()),
        Err(source) => Err(CheckpointError::Io {
            action: "reading",
            path: main,
            source,
        }),
    }
}

/// Writes `bytes` as the checkpoint file, atomically and durably.
///
/// # Errors
/// I/O errors; the previous checkpoint stays in place then.
pub fn store(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(dir);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

/// Persists the shared checkpoints periodically and once more when stopped.
pub struct Checkpointer {
    /// The shared state.
    pub checkpoints: SharedCheckpoints,
    /// The state directory.
    pub dir: PathBuf,
    /// Time between writes.
    pub interval: Duration,
}

impl Checkpointer {
    /// Runs until `stop` is cancelled (after every tailer has finished), then writes the
    /// final state.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = stop.cancelled() => true,
            };
            self.persist().await;
            if stopping {
                return;
            }
        }
    }

    async fn persist(&self) {
        let snapshot = self
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_snapshot();
        let Some(bytes) = snapshot else { return };
        let dir = self.dir.clone();
        let result = tokio::task::spawn_blocking(move || store(&dir, &bytes)).await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // The collector still deduplicates, so a missed write costs resends, not data.
        warn!(dir = %self.dir.display(), %error, "Checkpoint write failed; will retry.");
        metrics::counter!("tollstream_agent_checkpoint_errors_total", "reason" => "write")
            .increment(1);
        self.checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn entry(offset: u64) -> Entry {
        Entry {
            path: "/var/log/toll/a.log".into(),
            offset,
            size: offset,
            generation: 0,
            acked_at: None,
        }
    }

    #[test]
    fn checkpoint_round_trips_through_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut checkpoints = Checkpoints::default();
        checkpoints.set("1a-00ff-0", entry(4096));
        store(dir.path(), &checkpoints.take_snapshot().expect("dirty")).expect("stored");
        let loaded = load(dir.path(), &SystemClock).expect("loads");
        assert_eq!(loaded.get("1a-00ff-0"), Some(&entry(4096)));
    }

    #[test]
    fn corrupt_checkpoint_is_set_aside_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut checkpoints = Checkpoints::default();
        checkpoints.set("k", entry(10));
        let mut bytes = checkpoints.take_snapshot().expect("dirty");
        let at = bytes.iter().position(|&b| b == b'1').expect("a digit");
        bytes[at] = b'9'; // offset 10 → 90: valid JSON, wrong checksum.
        std::fs::write(dir.path().join(FILE), &bytes).expect("write");
        let loaded = load(dir.path(), &SystemClock).expect("loads");
        assert!(loaded.get("k").is_none());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("checkpoints.json.corrupt-")),
            "{names:?}"
        );
    }

    #[test]
    fn truncated_checkpoint_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut checkpoints = Checkpoints::default();
        checkpoints.set("k", entry(10));
        let bytes = checkpoints.take_snapshot().expect("dirty");
        std::fs::write(dir.path().join(FILE), &bytes[..bytes.len() / 2]).expect("write");
        assert!(
            load(dir.path(), &SystemClock)
                .expect("loads")
                .get("k")
                .is_none()
        );
    }

    #[test]
    fn valid_temp_file_from_an_interrupted_write_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut old = Checkpoints::default();
        old.set("k", entry(10));
        store(dir.path(), &old.take_snapshot().expect("dirty")).expect("stored");
        let mut new = Checkpoints::default();
        new.set("k", entry(20));
        std::fs::write(tmp_path(dir.path()), new.take_snapshot().expect("dirty")).expect("write");
        assert_eq!(
            load(dir.path(), &SystemClock).expect("loads").get("k"),
            Some(&entry(20))
        );
    }

    #[test]
    fn offsets_never_move_backwards() {
        let mut checkpoints = Checkpoints::default();
        checkpoints.set("k", entry(10));
        checkpoints.acked("k", 5, 50, "t");
        assert_eq!(checkpoints.get("k").map(|e| e.offset), Some(10));
    }
}
