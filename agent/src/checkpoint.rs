//! Checkpoints: how far each file has been acknowledged by the collector.
//!
//! Input: offsets advanced by tailers after each ack. Output: `<state_dir>/checkpoints.json`,
//! rewritten every `checkpoint_interval` while something changed, and once more at
//! shutdown after the last ack.
//!
//! Format (version 2): `{"version":2,"crc":<CRC-32 of the JSON text of "files">,"files":{..}}`.
//! Entries are keyed by source (the name the collector knows the file's content by), not
//! by path, so a renamed file keeps its offset. Each entry records which file holds the
//! source now (device, inode, birth time, first-line fingerprint) and a CRC of the bytes
//! just before the acknowledged offset, checked when reading resumes. Version 1 files
//! (no file fields) are read and upgraded: their identity is taken from the key. Version 3
//! adds `"forgotten_at"` (see [`Checkpoints::forgot`]), whose decimal text the CRC then
//! covers after the entries; it is written only once the agent has forgotten state, so an
//! agent that never did keeps writing version 2.
//!
//! Durability: temp file, fsync, rename, directory fsync. At start a complete, valid temp
//! file (a crash after its fsync but before the rename) wins over the main file. A damaged
//! checkpoint is moved aside with an ERROR and the agent starts without its entries (and
//! without applying `start_at: end`, which would skip what was not yet sent): every file is
//! read again from the start as a new source, with a generation above any it can have had
//! before, since a file rewritten in place keeps its first source's name and the collector
//! would take the new content for what it already holds under that name. The collector
//! cannot recognise those resends as its own; the warehouse's natural key drops them.

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
const VERSION: u32 = 3;

/// The acknowledged state of one source: a file's content, wherever it lives now.
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
    /// The file that holds this source now.
    #[serde(default)]
    pub file: FileIdentity,
    /// CRC-32 of the `tail_len` bytes just before `offset`.
    #[serde(default)]
    pub tail_crc: u32,
    /// How many bytes `tail_crc` covers (0: nothing to check).
    #[serde(default)]
    pub tail_len: u32,
    /// Set for a file found to be a copy of another source's file (e.g. by
    /// `copytruncate`): that source's key. The copy is not read while that source's own
    /// file still holds the content; afterwards it continues the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
    /// When a tailer last followed this source, RFC 3339; state is pruned once this is
    /// older than `checkpoint_retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<String>,
    /// The file was read to its end after it was rotated away, deleted or truncated: there
    /// is nothing more to look for after a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// The collector stream its flow sends to (empty in state from before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream: String,
}

/// Which file holds a source: device, inode, birth time and first line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Birth time in nanoseconds since the epoch, 0 where the file system has none.
    pub btime: u64,
    /// CRC-32 of the first line (up to 64 KiB).
    pub head_crc: u32,
    /// Length of the first line; 0 when upgraded from version 1 (CRC only).
    pub head_len: u32,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    crc: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forgotten_at: Option<i64>,
    files: BTreeMap<String, Entry>,
}

/// All files' entries, keyed by identity; shared between tailers and the checkpointer.
#[derive(Debug, Default)]
pub struct Checkpoints {
    files: BTreeMap<String, Entry>,
    /// When the agent last forgot sources it had started (Unix seconds): see
    /// [`Checkpoints::forgot`].
    forgotten_at: Option<i64>,
    dirty: bool,
    /// Wakes the checkpointer to write at once: a new source must be on disk before its
    /// file can be copied or rotated away under a crashed agent, or the copy would look new.
    urgent: Arc<tokio::sync::Notify>,
}

/// What an acknowledgement moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The new acknowledged offset.
    pub offset: u64,
    /// File size when the batch was read.
    pub size: u64,
    /// CRC-32 of the bytes just before `offset`.
    pub tail_crc: u32,
    /// How many bytes that covers.
    pub tail_len: u32,
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

    /// Sets a file's entry; a new one is written to disk at once.
    pub fn set(&mut self, key: &str, entry: Entry) {
        if self.files.insert(key.to_owned(), entry).is_none() {
            self.urgent.notify_one();
        }
        self.dirty = true;
    }

    /// Updates the offset, the check of the bytes before it and the size after an ack
    /// (offsets never move backwards).
    pub fn acked(&mut self, key: &str, ack: Ack, at: &str) {
        if let Some(entry) = self.files.get_mut(key) {
            if entry.acked_at.is_none() {
                // A source's first ack is written at once too (see `urgent`).
                self.urgent.notify_one();
            }
            if ack.offset >= entry.offset {
                entry.offset = ack.offset;
                entry.tail_crc = ack.tail_crc;
                entry.tail_len = ack.tail_len;
            }
            entry.size = ack.size;
            entry.acked_at = Some(at.to_owned());
            entry.seen_at = Some(at.to_owned());
            self.dirty = true;
        }
    }

    /// Mutable access to an entry; marks the state changed.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.dirty = true;
        self.files.get_mut(key)
    }

    /// Removes an entry.
    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        self.dirty = true;
        self.files.remove(key)
    }

    /// Records that the agent forgot, at `at` (Unix seconds), sources it had started: a
    /// damaged checkpoint was set aside, or state was pruned after `checkpoint_retention`.
    /// The collector still holds every byte range it accepted under those sources' names,
    /// so a name must not be given again to other bytes; see [`Checkpoints::new_source`].
    pub fn forgot(&mut self, at: i64) {
        self.forgotten_at = Some(self.forgotten_at.map_or(at, |was| was.max(at)));
        self.dirty = true;
    }

    /// When the agent last forgot sources it had started (Unix seconds), if ever.
    pub fn forgotten_at(&self) -> Option<i64> {
        self.forgotten_at
    }

    /// The key of a new source for a file without saved state, whose keys are `base-N`
    /// and which was born at `btime` (nanoseconds since the epoch, 0 if unknown), at `now`
    /// (Unix seconds).
    ///
    /// Generation 0 (the lowest N not in use) while the agent remembers every source it
    /// ever started for this file: always on its first run, and for files born since it
    /// last forgot any. Otherwise it cannot know which numbers the file's sources had — a
    /// file truncated or rewritten in place (same inode, birth time and first line) moved
    /// on from generation 0 to others — and takes one above all of them: generations
    /// after a truncation are the Unix second it was found in (see `next_generation`), so
    /// none before the forgetting exceeds its second.
    pub fn new_source(&self, base: &str, btime: u64, now: i64) -> (String, u32) {
        let born_since = |at: i64| {
            btime != 0 && i64::try_from(btime / 1_000_000_000).is_ok_and(|second| second > at)
        };
        match self.forgotten_at {
            Some(at) if !born_since(at) => {
                let floor = now.max(at.saturating_add(1));
                self.next_generation(base, u32::try_from(floor).unwrap_or(u32::MAX))
            }
            _ => self.free_key(base),
        }
    }

    /// `base-N` for the smallest N not yet used.
    pub fn free_key(&self, base: &str) -> (String, u32) {
        (0u32..)
            .map(|g| (format!("{base}-{g}"), g))
            .find(|(key, _)| !self.files.contains_key(key))
            .unwrap_or_else(|| (format!("{base}-0"), 0))
    }

    /// `base-N` for an N above every generation of `base` in use and at least `floor`.
    pub fn next_generation(&self, base: &str, floor: u32) -> (String, u32) {
        let prefix = format!("{base}-");
        let highest = self
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix)?.parse::<u32>().ok())
            .max();
        let generation = highest.map_or(0, |g| g.saturating_add(1)).max(floor);
        (format!("{base}-{generation}"), generation)
    }

    /// Drops entries not followed since `before` (RFC 3339, compared as timestamps) whose
    /// key `keep` does not claim, and records that they were forgotten `now` (Unix
    /// seconds): their files may turn up again, rewritten since under the same names.
    /// Returns how many.
    pub fn prune(
        &mut self,
        before: jiff::Timestamp,
        now: i64,
        keep: impl Fn(&str) -> bool,
    ) -> usize {
        let old = |entry: &Entry| {
            let last = entry.seen_at.as_deref().or(entry.acked_at.as_deref());
            last.and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t < before)
        };
        let gone: Vec<String> = self
            .files
            .iter()
            .filter(|(key, entry)| !keep(key) && old(entry))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &gone {
            self.files.remove(key);
        }
        if !gone.is_empty() {
            self.forgot(now);
        }
        gone.len()
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
        Some(encode(&self.files, self.forgotten_at))
    }
}

/// The CRC of the JSON text of the entries, then of `forgotten_at` in decimal if set.
fn checksum(body: &[u8], forgotten_at: Option<i64>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body);
    if let Some(at) = forgotten_at {
        hasher.update(at.to_string().as_bytes());
    }
    hasher.finalize()
}

fn encode(files: &BTreeMap<String, Entry>, forgotten_at: Option<i64>) -> Vec<u8> {
    // Serialising plain strings and integers cannot fail.
    let body = serde_json::to_vec(files).unwrap_or_default();
    let on_disk = OnDisk {
        version: if forgotten_at.is_some() { VERSION } else { 2 },
        crc: checksum(&body, forgotten_at),
        forgotten_at,
        files: files.clone(),
    };
    serde_json::to_vec_pretty(&on_disk).unwrap_or_default()
}

/// What a checkpoint file holds: the entries and `forgotten_at`.
type Decoded = (BTreeMap<String, Entry>, Option<i64>);

fn decode(path: &Path, bytes: &[u8]) -> Result<Decoded, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let on_disk: OnDisk = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("not a valid checkpoint file: {e}")))?;
    if !(1..=VERSION).contains(&on_disk.version) {
        return Err(corrupt(format!(
            "unsupported version {} (this agent reads 1 to {VERSION})",
            on_disk.version
        )));
    }
    let body = serde_json::to_vec(&on_disk.files).unwrap_or_default();
    // Version 1 checksummed the entries without the fields added since, which serialise
    // as defaults when read back.
    let v1_body = (on_disk.version == 1).then(|| v1_json(&on_disk.files));
    if checksum(&body, on_disk.forgotten_at) != on_disk.crc
        && v1_body.is_none_or(|b| crc32fast::hash(&b) != on_disk.crc)
    {
        return Err(corrupt("checksum mismatch: the file was damaged".into()));
    }
    let mut files = on_disk.files;
    if on_disk.version == 1 {
        for (key, entry) in &mut files {
            entry.file = identity_from_v1_key(key);
        }
    }
    Ok((files, on_disk.forgotten_at))
}

/// The JSON text version 1 checksummed: entries with only its five fields.
fn v1_json(files: &BTreeMap<String, Entry>) -> Vec<u8> {
    #[derive(Serialize)]
    struct V1<'a> {
        path: &'a Path,
        offset: u64,
        size: u64,
        generation: u32,
        acked_at: &'a Option<String>,
    }
    let v1: BTreeMap<&String, V1> = files
        .iter()
        .map(|(k, e)| {
            let entry = V1 {
                path: &e.path,
                offset: e.offset,
                size: e.size,
                generation: e.generation,
                acked_at: &e.acked_at,
            };
            (k, entry)
        })
        .collect();
    serde_json::to_vec(&v1).unwrap_or_default()
}

/// Version 1 keys were `<inode hex>-<first-line CRC hex>-<generation>`.
fn identity_from_v1_key(key: &str) -> FileIdentity {
    let mut parts = key.split('-');
    let ino = parts.next().and_then(|h| u64::from_str_radix(h, 16).ok());
    let crc = parts.next().and_then(|h| u32::from_str_radix(h, 16).ok());
    FileIdentity {
        ino: ino.unwrap_or(0),
        head_crc: crc.unwrap_or(0),
        ..FileIdentity::default()
    }
}

fn tmp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{FILE}.tmp"))
}

/// Loads the checkpoints in `dir`, preferring a valid leftover temp file; a damaged file
/// is renamed to `checkpoints.json.corrupt-<unix seconds>` and reported, and the state
/// without it (which records that sources were forgotten) is written at once.
///
/// # Errors
/// I/O errors other than "not found".
pub fn load(dir: &Path, clock: &dyn Clock) -> Result<Checkpoints, CheckpointError> {
    let main = dir.join(FILE);
    if let Some((files, forgotten_at)) = read_tmp(dir) {
        warn!(path = %tmp_path(dir).display(), "Using checkpoint temp file left by an interrupted write.");
        return Ok(Checkpoints {
            files,
            forgotten_at,
            dirty: true,
            ..Checkpoints::default()
        });
    }
    let bytes = match std::fs::read(&main) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut checkpoints = Checkpoints::default();
            // A damaged file was set aside, and no state was written after it (a crash
            // right then, or the file was deleted): what was forgotten then still is.
            if let Some(aside) = set_aside(dir) {
                warn!(set_aside = %aside.display(), "No checkpoint file, but a damaged one was set aside before it: starting as after a damaged checkpoint (files are read again as new sources).");
                checkpoints.forgot(clock.now().as_second());
                write_now(dir, &mut checkpoints);
            }
            return Ok(checkpoints);
        }
        Err(source) => {
            return Err(CheckpointError::Io {
                action: "reading",
                path: main,
                source,
            });
        }
    };
    match decode(&main, &bytes) {
        Ok((files, forgotten_at)) => Ok(Checkpoints {
            files,
            forgotten_at,
            ..Checkpoints::default()
        }),
        Err(problem) => {
            let now = clock.now().as_second();
            let aside = dir.join(format!("{CORRUPT_PREFIX}{now}"));
            let _ = std::fs::rename(&main, &aside);
            error!(%problem, moved_to = %aside.display(), "Checkpoint file is damaged; starting without it. Every file is read again from the start as a new source (start_at: end is not applied, so nothing unsent is skipped); the collector cannot tell what it already has, so lines sent before are sent again and the warehouse's natural key drops them.");
            metrics::counter!("tollstream_agent_checkpoint_errors_total", "reason" => "corrupt")
                .increment(1);
            let mut checkpoints = Checkpoints::default();
            checkpoints.forgot(now);
            write_now(dir, &mut checkpoints);
            Ok(checkpoints)
        }
    }
}

/// How damaged checkpoint files are renamed: this, then the Unix second.
const CORRUPT_PREFIX: &str = "checkpoints.json.corrupt-";

/// A damaged checkpoint file set aside in `dir`, if any.
fn set_aside(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with(CORRUPT_PREFIX))
        .map(|e| e.path())
}

/// Writes the state at once (before any file is read under it); on failure the
/// checkpointer retries.
fn write_now(dir: &Path, checkpoints: &mut Checkpoints) {
    let Some(bytes) = checkpoints.take_snapshot() else {
        return;
    };
    if let Err(error) = store(dir, &bytes) {
        warn!(dir = %dir.display(), %error, "Checkpoint write failed; will retry.");
        checkpoints.dirty = true;
    }
}

/// A complete, valid temp file left by an interrupted write, if any.
fn read_tmp(dir: &Path) -> Option<Decoded> {
    let tmp = tmp_path(dir);
    decode(&tmp, &std::fs::read(&tmp).ok()?).ok()
}

/// Reads the checkpoints without changing anything on disk (for `status`).
///
/// # Errors
/// An unreadable or damaged file.
pub fn read_only(dir: &Path) -> Result<Checkpoints, CheckpointError> {
    let (files, forgotten_at) = match read_tmp(dir) {
        Some(decoded) => decoded,
        None => {
            let main = dir.join(FILE);
            match std::fs::read(&main) {
                Ok(bytes) => decode(&main, &bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
                Err(source) => {
                    return Err(CheckpointError::Io {
                        action: "reading",
                        path: main,
                        source,
                    });
                }
            }
        }
    };
    Ok(Checkpoints {
        files,
        forgotten_at,
        ..Checkpoints::default()
    })
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
        let urgent = self
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .urgent
            .clone();
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = urgent.notified() => false,
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
            file: FileIdentity::default(),
            tail_crc: 0,
            tail_len: 0,
            copy_of: None,
            seen_at: None,
            drained: false,
            stream: String::new(),
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
        assert!(loaded.forgotten_at().is_some());
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
        let ack = Ack {
            offset: 5,
            size: 50,
            tail_crc: 1,
            tail_len: 1,
        };
        checkpoints.acked("k", ack, "t");
        assert_eq!(checkpoints.get("k").map(|e| e.offset), Some(10));
    }

    #[test]
    fn version_1_files_are_read_and_take_their_identity_from_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = r#"{"1a-000000ff-0":{"path":"/l/a.log","offset":7,"size":9,"generation":0,"acked_at":null}}"#;
        let crc = crc32fast::hash(files.as_bytes());
        let text = format!(r#"{{"version":1,"crc":{crc},"files":{files}}}"#);
        std::fs::write(dir.path().join(FILE), text).expect("write");
        let loaded = load(dir.path(), &SystemClock).expect("loads");
        let entry = loaded.get("1a-000000ff-0").expect("entry kept");
        assert_eq!(
            (entry.offset, entry.file.ino, entry.file.head_crc),
            (7, 0x1a, 0xff)
        );
    }

    #[test]
    fn generations_after_a_truncation_never_repeat_even_after_pruning() {
        let mut checkpoints = Checkpoints::default();
        checkpoints.set("b-0", entry(1));
        assert_eq!(checkpoints.free_key("b"), ("b-1".into(), 1));
        assert_eq!(checkpoints.next_generation("b", 500), ("b-500".into(), 500));
        checkpoints.set("b-500", entry(1));
        assert_eq!(checkpoints.next_generation("b", 10), ("b-501".into(), 501));
        checkpoints.remove("b-500");
        checkpoints.remove("b-0");
        assert_eq!(checkpoints.next_generation("b", 900), ("b-900".into(), 900));
    }

    /// Nanoseconds since the epoch of a Unix second, as a birth time.
    fn born(second: i64) -> u64 {
        u64::try_from(second).expect("after 1970") * 1_000_000_000
    }

    #[test]
    fn a_file_first_seen_is_generation_0_and_keeps_its_key_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = crate::clock::FakeClock::new("2026-05-01T00:00:00Z".parse().expect("ts"));
        let now = clock.now().as_second();
        let mut checkpoints = load(dir.path(), &clock).expect("loads");
        let (key, generation) = checkpoints.new_source("b", born(now - 60), now);
        assert_eq!(
            (key.as_str(), generation),
            ("b-0", 0),
            "first run: as before"
        );
        checkpoints.set(&key, entry(7));
        store(dir.path(), &checkpoints.take_snapshot().expect("dirty")).expect("stored");
        let bytes = std::fs::read(dir.path().join(FILE)).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(r#""version": 2"#) && !text.contains("forgotten_at"),
            "an agent that never forgot state writes version 2: {text}"
        );
        let reloaded = load(dir.path(), &clock).expect("loads");
        assert_eq!(reloaded.get("b-0"), Some(&entry(7)));
        assert_eq!(reloaded.forgotten_at(), None);
    }

    #[test]
    fn after_a_damaged_checkpoint_no_file_gets_a_generation_it_may_have_had() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = crate::clock::FakeClock::new("2026-05-01T00:00:00Z".parse().expect("ts"));
        let then = clock.now().as_second();
        // Generation 0, then a rewrite in place (same inode, birth time, first line) moved
        // the file on to a generation numbered by the second it was found in.
        let mut checkpoints = load(dir.path(), &clock).expect("loads");
        checkpoints.set("b-0", entry(4000));
        let (rewritten, _) = checkpoints.next_generation("b", u32::try_from(then).expect("u32"));
        checkpoints.set(&rewritten, entry(300));
        let mut bytes = checkpoints.take_snapshot().expect("dirty");
        let at = bytes.iter().position(|&b| b == b'4').expect("a digit");
        bytes[at] = b'5';
        std::fs::write(dir.path().join(FILE), &bytes).expect("write");
        // Restarted within the same second: the state is gone, and what names were used
        // with it.
        let loaded = load(dir.path(), &clock).expect("loads");
        assert_eq!(loaded.entries().count(), 0);
        assert_eq!(loaded.forgotten_at(), Some(then));
        let (key, generation) = loaded.new_source("b", born(then - 3600), then);
        assert!(
            key != "b-0" && key != rewritten && i64::from(generation) > then,
            "{key}: not generation 0, not the rewrite's ({rewritten})"
        );
        let (unknown_birth, _) = loaded.new_source("b", 0, then);
        assert_ne!(unknown_birth, "b-0", "no birth time: it may be an old file");
        assert_eq!(
            loaded.new_source("c", born(then + 5), then + 5),
            ("c-0".into(), 0),
            "a file born after the damage has had no other generation"
        );
        // That the state was forgotten is on disk before anything is read, and is kept.
        let on_disk = read_only(dir.path()).expect("written at load");
        assert_eq!(on_disk.forgotten_at(), Some(then));
        clock.advance(std::time::Duration::from_secs(60));
        let mut again = load(dir.path(), &clock).expect("intact");
        assert_eq!(again.forgotten_at(), Some(then));
        let (key, generation) = again.new_source("b", born(then - 3600), then + 60);
        assert_eq!(i64::from(generation), then + 60);
        again.set(&key, entry(10));
        store(dir.path(), &again.take_snapshot().expect("dirty")).expect("stored");
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("read");
        assert!(text.contains(r#""version": 3"#), "{text}");
        assert_eq!(
            load(dir.path(), &clock).expect("intact").get(&key),
            Some(&entry(10)),
            "a restart with an intact checkpoint keeps the key"
        );
    }

    #[test]
    fn the_checksum_covers_when_state_was_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut checkpoints = Checkpoints::default();
        checkpoints.set("k", entry(10));
        checkpoints.forgot(1_780_000_000);
        let text = String::from_utf8(checkpoints.take_snapshot().expect("dirty")).expect("utf8");
        let damaged = text.replace("1780000000", "1700000000");
        assert_ne!(text, damaged);
        std::fs::write(dir.path().join(FILE), damaged).expect("write");
        let clock = crate::clock::FakeClock::new("2026-07-01T00:00:00Z".parse().expect("ts"));
        let loaded = load(dir.path(), &clock).expect("loads");
        assert!(loaded.get("k").is_none(), "taken for damaged");
        assert_eq!(loaded.forgotten_at(), Some(clock.now().as_second()));
    }

    #[test]
    fn a_crash_before_the_state_after_a_damaged_checkpoint_was_written_is_not_a_first_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(format!("{CORRUPT_PREFIX}1780000000")), "{").expect("write");
        let loaded = load(dir.path(), &SystemClock).expect("loads");
        assert!(loaded.forgotten_at().is_some());
        assert!(dir.path().join(FILE).exists(), "written at once");
    }

    #[test]
    fn state_of_files_gone_longer_than_the_retention_is_pruned() {
        let mut checkpoints = Checkpoints::default();
        let mut old = entry(1);
        old.seen_at = Some("2026-01-01T00:00:00Z".into());
        let mut recent = entry(2);
        recent.seen_at = Some("2026-06-01T00:00:00Z".into());
        checkpoints.set("old", old.clone());
        checkpoints.set("recent", recent);
        checkpoints.set("old-but-followed", old);
        let cutoff: jiff::Timestamp = "2026-03-01T00:00:00Z".parse().expect("ts");
        assert_eq!(checkpoints.forgotten_at(), None);
        let now = "2026-06-02T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .expect("ts");
        let pruned = checkpoints.prune(cutoff, now.as_second(), |k| k == "old-but-followed");
        assert_eq!(pruned, 1);
        assert!(checkpoints.get("old").is_none());
        assert!(checkpoints.get("recent").is_some());
        assert_eq!(
            checkpoints.forgotten_at(),
            Some(now.as_second()),
            "what was pruned is remembered as forgotten"
        );
    }
}
