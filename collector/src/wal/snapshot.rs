//! `sources.json`: the per-source accepted byte ranges of records that may already be
//! deleted. Version 2 holds interval lists; version 1 (a high-water mark per source) is read
//! as "everything below the mark".
//!
//! Written (temp file, fsync, rename, directory fsync) by the writer thread just before it
//! deletes segments, so every mark that lived only in those segments survives them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::covered::Covered;
use super::{HighWater, WalError};

const FILE: &str = "sources.json";

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// Every record up to this sequence is reflected in `sources`.
    seq: u64,
    /// CRC-32 of the JSON text of `sources`.
    crc: u32,
    sources: serde_json::Value,
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
    let body = serde_json::to_vec(&snapshot.sources).map_err(|e| bad(e.to_string()))?;
    if crc32fast::hash(&body) != snapshot.crc {
        return Err(bad("checksum mismatch".into()));
    }
    let marks = match snapshot.version {
        1 => serde_json::from_value::<std::collections::BTreeMap<String, u64>>(snapshot.sources)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .map(|(source, mark)| (source, Covered::below(mark)))
            .collect(),
        2 => {
            serde_json::from_value::<std::collections::BTreeMap<String, Covered>>(snapshot.sources)
                .map_err(|e| bad(e.to_string()))?
                .into_iter()
                .collect()
        }
        other => return Err(bad(format!("unknown version {other}"))),
    };
    Ok((marks, snapshot.seq))
}

/// Writes the snapshot atomically.
///
/// # Errors
/// I/O errors; the previous snapshot is then still in place.
pub fn store(dir: &Path, marks: &HighWater, seq: u64) -> Result<(), WalError> {
    let sources: std::collections::BTreeMap<&String, &Covered> = marks.iter().collect();
    let snapshot_error = |e: serde_json::Error| WalError::Snapshot {
        path: dir.join(FILE),
        reason: e.to_string(),
    };
    let sources = serde_json::to_value(sources).map_err(snapshot_error)?;
    let body = serde_json::to_vec(&sources).map_err(snapshot_error)?;
    let snapshot = Snapshot {
        version: 2,
        seq,
        crc: crc32fast::hash(&body),
        sources,
    };
    let text = serde_json::to_vec(&snapshot).map_err(snapshot_error)?;
    crate::fsutil::write_atomic(&dir.join(FILE), &text).map_err(|e| WalError::io("writing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_marks_read_as_everything_below_them_and_version_2_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = r#"{"a/1":120}"#;
        let crc = crc32fast::hash(sources.as_bytes());
        let text = format!(r#"{{"version":1,"seq":7,"crc":{crc},"sources":{sources}}}"#);
        std::fs::write(dir.path().join(FILE), text).expect("write");
        let (marks, seq) = load(dir.path()).expect("loads");
        assert_eq!(seq, 7);
        assert_eq!(marks["a/1"], Covered::below(120));
        let mut marks = marks;
        marks.entry("b/2".into()).or_default().insert(50, 60);
        store(dir.path(), &marks, 9).expect("stored");
        let (again, seq) = load(dir.path()).expect("loads");
        assert_eq!((again, seq), (marks, 9));
    }
}
