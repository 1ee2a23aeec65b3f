//! Archive: immutable gzip objects cut from the WAL, named by the WAL range they hold.
//!
//! Input: runs of WAL records from the buffer stage. Output: files
//! `<root>/<stream>/YYYY/MM/DD/HH/<stream>-<first_seq:020>-<last_seq:020>.gz`, whose hour
//! is the UTC hour the first record was received, so a replay after a crash computes the
//! same name and overwrites instead of duplicating.
//!
//! An object decompresses (`zcat`) to the records, each ending in `\n`. The gzip header's
//! comment field carries a JSON index of the WAL records inside — source, byte offset in
//! the source, receive time and line count — so the loader can say where each row came
//! from without a second file to keep consistent.
//!
//! Durability: temp file, fsync, rename, directory fsync; a name either does not exist or
//! names a complete object.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder, read::GzDecoder};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::wal::WalRecord;

/// Most bytes of JSON index an object's gzip header may hold: gzip readers (flate2 among
/// them) refuse header fields over 65,535 bytes, so the buffer cuts objects before this.
pub const MAX_INDEX_BYTES: u64 = 64_000;

/// An upper bound on one index entry's JSON size for a source name of `source_len` visible
/// ASCII characters (each escapes to at most two) and five numbers of at most 20 digits.
pub fn index_entry_bound(source_len: usize) -> u64 {
    2 * source_len as u64 + 176
}

/// gzip level for archive objects: level 2 keeps most of level 6's ratio at ~1.7× the speed.
const GZIP_LEVEL: u32 = 2;

/// Why an archive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An object's content does not match its index.
    #[error("archive object {path} is damaged: {reason}")]
    Damaged {
        /// The object.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One WAL record's share of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// WAL sequence number.
    pub seq: u64,
    /// Source name.
    pub source: String,
    /// Byte offset of the first line in the source, when the sender named a range.
    pub start: Option<u64>,
    /// When the collector accepted it, microseconds since the epoch.
    pub received_at_us: i64,
    /// Lines.
    pub records: u32,
    /// Bytes of lines.
    pub bytes: u64,
}

/// A complete archive object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveObject {
    /// Stream name.
    pub stream: String,
    /// First WAL sequence number inside.
    pub first_seq: u64,
    /// Last WAL sequence number inside.
    pub last_seq: u64,
    /// The file.
    pub path: PathBuf,
}

/// The local archive directory.
#[derive(Debug, Clone)]
pub struct Archive {
    root: PathBuf,
}

impl Archive {
    /// An archive rooted at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The directory of objects whose first record was received at `at`.
    fn hour_dir(&self, stream: &str, at: Timestamp) -> PathBuf {
        // A Timestamp formats in UTC.
        self.root
            .join(stream)
            .join(at.strftime("%Y/%m/%d/%H").to_string())
    }

    fn object_name(stream: &str, first_seq: u64, last_seq: u64) -> String {
        format!("{stream}-{first_seq:020}-{last_seq:020}.gz")
    }

    /// Writes `records` (consecutive, non-empty) as one object and returns it.
    ///
    /// # Errors
    /// I/O errors; no object of that name exists afterwards then.
    pub fn write(
        &self,
        stream: &str,
        records: &[WalRecord],
    ) -> Result<ArchiveObject, ArchiveError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Err(ArchiveError::Damaged {
                path: self.root.clone(),
                reason: "empty object".into(),
            });
        };
        let received =
            Timestamp::from_microsecond(first.received_at_us).unwrap_or(Timestamp::UNIX_EPOCH);
        let dir = self.hour_dir(stream, received);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        // New hour directories must survive a power loss as much as the object inside.
        for ancestor in dir
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&self.root))
        {
            crate::fsutil::sync_dir(ancestor).map_err(io("syncing", ancestor))?;
        }
        let path = dir.join(Self::object_name(stream, first.seq, last.seq));
        let index: Vec<IndexEntry> = records
            .iter()
            .map(|r| IndexEntry {
                seq: r.seq,
                source: r.source.clone(),
                start: r.range.map(|(start, _)| start),
                received_at_us: r.received_at_us,
                records: r.records,
                bytes: r.data.len() as u64,
            })
            .collect();
        let comment = serde_json::to_vec(&index).map_err(|e| ArchiveError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if comment.len() as u64 > MAX_INDEX_BYTES {
            return Err(ArchiveError::Damaged {
                path,
                reason: format!("index of {} bytes exceeds {MAX_INDEX_BYTES}", comment.len()),
            });
        }
        let tmp = path.with_extension("gz.tmp");
        let file = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut gz = GzBuilder::new().comment(comment).write(
            BufWriter::with_capacity(1 << 20, file),
            Compression::new(GZIP_LEVEL),
        );
        for record in records {
            gz.write_all(&record.data).map_err(io("writing", &tmp))?;
        }
        let file = gz
            .finish()
            .map_err(io("writing", &tmp))?
            .into_inner()
            .map_err(|e| io("writing", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
        crate::fsutil::sync_dir(&dir).map_err(io("syncing", &dir))?;
        Ok(ArchiveObject {
            stream: stream.into(),
            first_seq: first.seq,
            last_seq: last.seq,
            path,
        })
    }

    /// The object that starts at `first_seq`, whose first record was received at `received`.
    pub fn find_starting_at(
        &self,
        stream: &str,
        first_seq: u64,
        received: Timestamp,
    ) -> Option<ArchiveObject> {
        let prefix = format!("{stream}-{first_seq:020}-");
        let dir = self.hour_dir(stream, received);
        let entries = std::fs::read_dir(&dir).ok()?;
        entries.filter_map(Result::ok).find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?.strip_suffix(".gz")?;
            let last_seq = rest.parse().ok()?;
            Some(ArchiveObject {
                stream: stream.into(),
                first_seq,
                last_seq,
                path: entry.path(),
            })
        })
    }

    /// Every object of `stream` whose last sequence is above `after`, in sequence order.
    ///
    /// # Errors
    /// I/O errors while listing.
    pub fn list_after(&self, stream: &str, after: u64) -> Result<Vec<ArchiveObject>, ArchiveError> {
        let mut found = Vec::new();
        let base = self.root.join(stream);
        if base.exists() {
            self.walk(&base, stream, after, 0, &mut found)?;
        }
        found.sort_by_key(|o| o.first_seq);
        Ok(found)
    }

    fn walk(
        &self,
        dir: &Path,
        stream: &str,
        after: u64,
        depth: usize,
        out: &mut Vec<ArchiveObject>,
    ) -> Result<(), ArchiveError> {
        for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
            let entry = entry.map_err(io("listing", dir))?;
            let path = entry.path();
            if depth < 4 {
                if path.is_dir() {
                    self.walk(&path, stream, after, depth + 1, out)?;
                }
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(range) = name
                .strip_prefix(stream)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(".gz"))
            else {
                continue;
            };
            let Some((first, last)) = range.split_once('-') else {
                continue;
            };
            if let (Ok(first_seq), Ok(last_seq)) = (first.parse::<u64>(), last.parse::<u64>())
                && last_seq > after
            {
                out.push(ArchiveObject {
                    stream: stream.into(),
                    first_seq,
                    last_seq,
                    path,
                });
            }
        }
        Ok(())
    }

    /// Reads an object: its index and its lines.
    ///
    /// # Errors
    /// I/O errors, a truncated gzip stream, or an index that does not match the content.
    pub fn read(path: &Path) -> Result<(Vec<IndexEntry>, Vec<u8>), ArchiveError> {
        let file = File::open(path).map_err(io("opening", path))?;
        let mut gz = GzDecoder::new(std::io::BufReader::new(file));
        let mut data = Vec::new();
        gz.read_to_end(&mut data)
            .map_err(io("decompressing", path))?;
        let damaged = |reason: String| ArchiveError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let comment = gz
            .header()
            .and_then(|h| h.comment())
            .ok_or_else(|| damaged("no index in the gzip header".into()))?;
        let index: Vec<IndexEntry> =
            serde_json::from_slice(comment).map_err(|e| damaged(format!("index: {e}")))?;
        let total: u64 = index.iter().map(|e| e.bytes).sum();
        if total != data.len() as u64 {
            return Err(damaged(format!(
                "index names {total} bytes, object holds {}",
                data.len()
            )));
        }
        Ok((index, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(seq: u64, data: &'static [u8]) -> WalRecord {
        WalRecord {
            seq,
            received_at_us: 1_764_090_000_000_000,
            source: format!("agent/{seq}"),
            range: Some((seq * 100, seq * 100 + data.len() as u64)),
            records: 1,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn object_round_trips_and_is_found_again_by_its_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(dir.path());
        let records = [record(5, b"a,b\n"), record(6, b"c,d\n")];
        let object = archive.write("s", &records).expect("written");
        assert!(
            object
                .path
                .ends_with("s/2025/11/25/17/s-00000000000000000005-00000000000000000006.gz"),
            "{:?}",
            object.path
        );
        let (index, data) = Archive::read(&object.path).expect("read");
        assert_eq!(data, b"a,b\nc,d\n");
        assert_eq!(index.len(), 2);
        assert_eq!(index[1].start, Some(600));
        let received = Timestamp::from_microsecond(records[0].received_at_us).expect("ts");
        assert_eq!(
            archive.find_starting_at("s", 5, received),
            Some(object.clone())
        );
        assert_eq!(
            archive.list_after("s", 4).expect("list"),
            vec![object.clone()]
        );
        assert!(archive.list_after("s", 6).expect("list").is_empty());
        // A replay writes the same name: still one object.
        archive.write("s", &records).expect("rewritten");
        assert_eq!(archive.list_after("s", 0).expect("list").len(), 1);
    }

    #[test]
    fn truncated_object_is_reported_not_half_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(dir.path());
        let object = archive
            .write("s", &[record(1, b"hello,world\n")])
            .expect("written");
        let bytes = std::fs::read(&object.path).expect("read");
        std::fs::write(&object.path, &bytes[..bytes.len() - 6]).expect("truncate");
        assert!(Archive::read(&object.path).is_err());
    }
}
