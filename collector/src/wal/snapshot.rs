//! `sources.json`: the per-source high-water marks of records that may already be deleted.
//!
//! Written (temp file, fsync, rename, directory fsync) by the writer thread just before it
//! deletes segments, so every mark that lived only in those segments survives them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{HighWater, WalError};

const FILE: &str = "sources.json";

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// Every record up to this sequence is reflected in `sources`.
    seq: u64,
    /// CRC-32 of the JSON text of `sources`.
    crc: u32,
    sources: std::collections::BTreeMap<String, u64>,
}

/// Loads the snapshot: the marks and the sequence they cover; empty when there is none.
///
/// # Errors
/// [`WalError::Snapshot`] when the file exists but is damaged.
pub fn load(dir: &Path) -> Result<(HighWater, u64), WalError> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((HighWater::new(), 0)),
        Err(e) => return Err(WalError::io("reading", &path, e)),
    };
    let bad = |reason: String| WalError::Snapshot {
        path: path.clone(),
        reason,
    };
    let snapshot: Snapshot =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if snapshot.version != 1 {
        return Err(bad(format!("unknown version {}", snapshot.version)));
    }
    let body = serde_json::to_vec(&snapshot.sources).map_err(|e| bad(e.to_string()))?;
    if crc32fast::hash(&body) != snapshot.crc {
        return Err(bad("checksum mismatch".into()));
    }
    Ok((snapshot.sources.into_iter().collect(), snapshot.seq))
}

/// Writes the snapshot atomically.
///
/// # Errors
/// I/O errors; the previous snapshot is then still in place.
pub fn store(dir: &Path, marks: &HighWater, seq: u64) -> Result<(), WalError> {
    let sources: std::collections::BTreeMap<String, u64> =
        marks.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let body = serde_json::to_vec(&sources).map_err(|e| WalError::Snapshot {
        path: dir.join(FILE),
        reason: e.to_string(),
    })?;
    let snapshot = Snapshot {
        version: 1,
        seq,
        crc: crc32fast::hash(&body),
        sources,
    };
    let text = serde_json::to_vec(&snapshot).map_err(|e| WalError::Snapshot {
        path: dir.join(FILE),
        reason: e.to_string(),
    })?;
    crate::fsutil::write_atomic(&dir.join(FILE), &text).map_err(|e| WalError::io("writing", dir, e))
}
