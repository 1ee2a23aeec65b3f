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
//! Rejected lines: for every object the loader finds lines in that do not parse, it writes
//! `<root>/errors/<stream>/YYYY/MM/DD/HH/<stream>-<first_seq:020>-<last_seq:020>.gz` — the
//! same hour and range as the object, so a replay rewrites the same name — holding one JSON
//! document per rejected line ([`RejectedLine`]). `errors` is therefore not a valid stream
//! name (configuration validation refuses it), so `<root>/<stream>` is never the errors tree
//! and listing a stream's objects never meets an errors object.
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

/// The archive's top-level directory for rejected lines, beside the stream directories.
/// Reserved: no stream may be named this.
pub const ERRORS_DIR: &str = "errors";

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

/// One rejected line as an errors object holds it: one JSON document per line, e.g.
///
/// ```json
/// {"source":"booth-017/1a2b3c-9f8e7d6c-0","source_offset":4711,"received_at":"2026-11-29T10:42:10.245Z","reason":"amount: \"R$12.50\" is not a decimal number with at most 2 places","line":"2026-11-25T14:03:27.512-03:00,…,R$12.50"}
/// ```
///
/// The line is exactly as received, without its `\n`: in `line` as a JSON string when it is
/// UTF-8, otherwise in `line_base64` (standard alphabet, padded) — exactly one of the two is
/// present, so nothing is lost or altered. `source_offset` is the line's byte offset in its
/// source, `null` when the sender named no byte range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    /// The sender's source name.
    pub source: String,
    /// Byte offset of the line in the source, when known.
    pub source_offset: Option<u64>,
    /// When the collector accepted it, as the warehouse stores times.
    pub received_at: String,
    /// Why it was rejected.
    pub reason: String,
    /// The line, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// The line in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_base64: Option<String>,
}

impl RejectedLine {
    /// A rejected line; `line` goes in as a string when it is UTF-8, else as base64.
    pub fn new(
        source: &str,
        source_offset: Option<u64>,
        received_at: &str,
        reason: String,
        line: &[u8],
    ) -> Self {
        let (text, encoded) = match std::str::from_utf8(line) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(base64(line))),
        };
        Self {
            source: source.to_owned(),
            source_offset,
            received_at: received_at.to_owned(),
            reason,
            line: text,
            line_base64: encoded,
        }
    }
}

/// Standard base64 (RFC 4648 §4) with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The receive time of a WAL record (the epoch for an out-of-range value).
fn received_at(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `YYYY/MM/DD/HH` of `at` in UTC (a Timestamp formats in UTC).
fn hour_path(at: Timestamp) -> String {
    at.strftime("%Y/%m/%d/%H").to_string()
}

/// The sequence range in an object's file name, `<stream>-<first>-<last>.gz`.
fn parse_object_name(stream: &str, name: &str) -> Option<(u64, u64)> {
    let range = name
        .strip_prefix(stream)?
        .strip_prefix('-')?
        .strip_suffix(".gz")?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
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
        self.root.join(stream).join(hour_path(at))
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
        let dir = self.hour_dir(stream, received_at(first.received_at_us));
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
        self.write_durably(&path, GzBuilder::new().comment(comment), |gz| {
            records
                .iter()
                .try_for_each(|record| gz.write_all(&record.data))
        })?;
        Ok(ArchiveObject {
            stream: stream.into(),
            first_seq: first.seq,
            last_seq: last.seq,
            path,
        })
    }

    /// Writes the rejected lines of the object holding WAL records `first_seq..=last_seq`,
    /// whose first record was received at `first_received_at_us`, to its errors object:
    /// `<root>/errors/<stream>/…` with the object's own hour directory and name. Writing it
    /// again (a replayed load) replaces it with the same content.
    ///
    /// # Errors
    /// I/O errors; no errors object of that name exists afterwards then (or the one an
    /// earlier attempt wrote, with the same content).
    pub fn write_rejected(
        &self,
        stream: &str,
        (first_seq, last_seq): (u64, u64),
        first_received_at_us: i64,
        rejected: &[RejectedLine],
    ) -> Result<ArchiveObject, ArchiveError> {
        let dir = self
            .errors_root(stream)
            .join(hour_path(received_at(first_received_at_us)));
        let path = dir.join(Self::object_name(stream, first_seq, last_seq));
        self.write_durably(&path, GzBuilder::new(), |gz| {
            for line in rejected {
                serde_json::to_writer(&mut *gz, line)?;
                gz.write_all(b"\n")?;
            }
            Ok(())
        })?;
        Ok(ArchiveObject {
            stream: stream.into(),
            first_seq,
            last_seq,
            path,
        })
    }

    /// Reads an errors object back.
    ///
    /// # Errors
    /// I/O errors, a truncated gzip stream, a line that is not a [`RejectedLine`].
    pub fn read_rejected(path: &Path) -> Result<Vec<RejectedLine>, ArchiveError> {
        let file = File::open(path).map_err(io("opening", path))?;
        let mut data = Vec::new();
        GzDecoder::new(std::io::BufReader::new(file))
            .read_to_end(&mut data)
            .map_err(io("decompressing", path))?;
        data.split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice(line).map_err(|e| ArchiveError::Damaged {
                    path: path.to_path_buf(),
                    reason: format!("errors object line: {e}"),
                })
            })
            .collect()
    }

    /// The directory under which `stream`'s errors objects live: `<root>/errors/<stream>`.
    pub fn errors_root(&self, stream: &str) -> PathBuf {
        self.root.join(ERRORS_DIR).join(stream)
    }

    /// Writes a gzip file at `path` so that a crash leaves either no file of that name or a
    /// complete one: parent directories created and synced, a temp file written by `fill`,
    /// fsynced, renamed over `path`, and the directory synced.
    fn write_durably(
        &self,
        path: &Path,
        header: GzBuilder,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), ArchiveError> {
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        // New hour directories must survive a power loss as much as the object inside.
        for ancestor in dir
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&self.root))
        {
            crate::fsutil::sync_dir(ancestor).map_err(io("syncing", ancestor))?;
        }
        // The process id keeps writers of the same name apart: a `reload` into another
        // warehouse may write an errors object while the collector writes the same one
        // (same content); each renames a complete file of its own over the name.
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut gz = header.write(
            BufWriter::with_capacity(1 << 20, file),
            Compression::new(GZIP_LEVEL),
        );
        fill(&mut gz).map_err(io("writing", &tmp))?;
        let file = gz
            .finish()
            .map_err(io("writing", &tmp))?
            .into_inner()
            .map_err(|e| io("writing", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
        crate::fsutil::sync_dir(dir).map_err(io("syncing", dir))
    }

    /// The object that starts at `first_seq`, whose first record was received at `received`.
    pub fn find_starting_at(
        &self,
        stream: &str,
        first_seq: u64,
        received: Timestamp,
    ) -> Option<ArchiveObject> {
        let dir = self.hour_dir(stream, received);
        let entries = std::fs::read_dir(&dir).ok()?;
        entries.filter_map(Result::ok).find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (first, last_seq) = parse_object_name(stream, &name)?;
            (first == first_seq).then_some(())?;
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
            let Some((first_seq, last_seq)) = entry
                .file_name()
                .to_str()
                .and_then(|name| parse_object_name(stream, name))
            else {
                continue;
            };
            if last_seq > after {
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

    /// Visits `stream`'s objects newest first — hour directories in descending order, and
    /// inside one by descending first sequence — until `visit` returns `false`. Cheap when
    /// stopped early: only the newest directories are listed.
    ///
    /// # Errors
    /// I/O errors while listing.
    pub fn newest_first(
        &self,
        stream: &str,
        mut visit: impl FnMut(ArchiveObject) -> bool,
    ) -> Result<(), ArchiveError> {
        descend(&self.root.join(stream), stream, 0, &mut visit).map(drop)
    }

    /// Like [`Archive::newest_first`], over `stream`'s errors objects.
    ///
    /// # Errors
    /// I/O errors while listing.
    pub fn errors_newest_first(
        &self,
        stream: &str,
        mut visit: impl FnMut(ArchiveObject) -> bool,
    ) -> Result<(), ArchiveError> {
        descend(&self.errors_root(stream), stream, 0, &mut visit).map(drop)
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
        let index = header_index(&gz, path)?;
        let total: u64 = index.iter().map(|e| e.bytes).sum();
        if total != data.len() as u64 {
            return Err(ArchiveError::Damaged {
                path: path.to_path_buf(),
                reason: format!("index names {total} bytes, object holds {}", data.len()),
            });
        }
        Ok((index, data))
    }

    /// Reads only an object's index, from its gzip header (the lines are not decompressed,
    /// so a damaged body is not noticed here).
    ///
    /// # Errors
    /// I/O errors, a damaged header, or no index in it.
    pub fn read_index(path: &Path) -> Result<Vec<IndexEntry>, ArchiveError> {
        let file = File::open(path).map_err(io("opening", path))?;
        let mut gz = GzDecoder::new(std::io::BufReader::new(file));
        // The header is parsed before the first byte of the body comes out.
        let _first_byte = gz.read(&mut [0u8; 1]).map_err(io("decompressing", path))?;
        header_index(&gz, path)
    }
}

/// The JSON index in a gzip header's comment field.
fn header_index<R>(gz: &GzDecoder<R>, path: &Path) -> Result<Vec<IndexEntry>, ArchiveError> {
    let damaged = |reason: String| ArchiveError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let comment = gz
        .header()
        .and_then(|h| h.comment())
        .ok_or_else(|| damaged("no index in the gzip header".into()))?;
    serde_json::from_slice(comment).map_err(|e| damaged(format!("index: {e}")))
}

/// The temp file a write of `path` by this process goes through: `<name>.<pid>.tmp`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Walks `dir` (a stream's tree, at `depth` below it) newest first; `Ok(false)` once
/// `visit` asked to stop.
fn descend(
    dir: &Path,
    stream: &str,
    depth: usize,
    visit: &mut dyn FnMut(ArchiveObject) -> bool,
) -> Result<bool, ArchiveError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if depth == 0 && e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let (mut dirs, mut objects) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(io("listing", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if depth < 4 {
            if entry.path().is_dir() {
                dirs.push(name);
            }
        } else if let Some(range) = parse_object_name(stream, &name) {
            objects.push((range, entry.path()));
        }
    }
    // Directory names are zero-padded numbers, so text order is time order.
    dirs.sort_unstable_by(|a, b| b.cmp(a));
    for name in dirs {
        if !descend(&dir.join(name), stream, depth + 1, visit)? {
            return Ok(false);
        }
    }
    objects.sort_unstable_by_key(|(range, _)| std::cmp::Reverse(*range));
    for ((first_seq, last_seq), path) in objects {
        let object = ArchiveObject {
            stream: stream.into(),
            first_seq,
            last_seq,
            path,
        };
        if !visit(object) {
            return Ok(false);
        }
    }
    Ok(true)
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
    fn rejected_lines_go_to_an_errors_object_named_like_their_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(dir.path());
        let records = [record(5, b"a,b\n"), record(6, b"c,d\n")];
        let object = archive.write("s", &records).expect("written");
        let rejected = vec![
            RejectedLine::new(
                "agent/5",
                Some(500),
                "2025-11-25T17:00:00.000Z",
                "bad".into(),
                b"a,b",
            ),
            RejectedLine::new(
                "-",
                None,
                "2025-11-25T17:00:00.000Z",
                "worse".into(),
                b"\xffc\r",
            ),
        ];
        let errors = archive
            .write_rejected("s", (5, 6), records[0].received_at_us, &rejected)
            .expect("written");
        // Same hour directory and name as the object, under errors/.
        assert_eq!(
            errors.path.strip_prefix(dir.path().join(ERRORS_DIR)).ok(),
            object.path.strip_prefix(dir.path()).ok(),
            "{:?}",
            errors.path
        );
        assert_eq!(
            Archive::read_rejected(&errors.path).expect("read"),
            rejected
        );
        assert_eq!(rejected[0].line.as_deref(), Some("a,b"));
        assert_eq!(rejected[1].line, None);
        assert_eq!(rejected[1].line_base64.as_deref(), Some("/2MN"));
        // What a person sees with zcat: one JSON document per line.
        let mut text = String::new();
        GzDecoder::new(File::open(&errors.path).expect("open"))
            .read_to_string(&mut text)
            .expect("zcat");
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.starts_with(r#"{"source":"agent/5","source_offset":500,"received_at":"2025-11-25T17:00:00.000Z","reason":"bad","line":"a,b"}"#),
            "{text}"
        );
        // A replay writes the same name again.
        archive
            .write_rejected("s", (5, 6), records[0].received_at_us, &rejected)
            .expect("rewritten");
        let mut errors_found = Vec::new();
        archive
            .errors_newest_first("s", |o| {
                errors_found.push(o);
                true
            })
            .expect("listed");
        assert_eq!(errors_found, vec![errors]);
        // The stream's own listing never meets errors objects.
        assert_eq!(
            archive.list_after("s", 0).expect("list"),
            vec![object.clone()]
        );
        let received = Timestamp::from_microsecond(records[0].received_at_us).expect("ts");
        assert_eq!(archive.find_starting_at("s", 5, received), Some(object));
    }

    #[test]
    fn newest_first_walks_hours_and_ranges_backwards_and_stops_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(dir.path());
        let hour = 3_600_000_000;
        let mut written = Vec::new();
        for (seq, hours) in [(1, 0), (2, 0), (3, 1), (4, 25)] {
            let mut r = record(seq, b"x\n");
            r.received_at_us += hours * hour;
            written.push(archive.write("s", &[r]).expect("written"));
        }
        let mut seen = Vec::new();
        archive
            .newest_first("s", |o| {
                seen.push(o.first_seq);
                true
            })
            .expect("walked");
        assert_eq!(seen, [4, 3, 2, 1]);
        let mut first = None;
        archive
            .newest_first("s", |o| {
                first = Some(o);
                false
            })
            .expect("walked");
        assert_eq!(first.as_ref(), written.last());
        archive
            .newest_first("absent", |_| panic!("no objects"))
            .expect("a stream without objects is fine");
    }

    #[test]
    fn a_stream_cannot_be_named_like_the_errors_tree() {
        let path = Path::new("collector.yaml");
        let config = |stream: &str| {
            let text = format!(
                "listen: 127.0.0.1:8700\ndata_dir: d\nauth: {{ agent_tokens_file: t }}\n\
                 streams:\n  {stream}:\n    table: t\n"
            );
            crate::config::Config::parse(&text, path)
                .expect("parses")
                .validate()
        };
        config("errors-2").expect("only the exact name is reserved");
        let message = config(ERRORS_DIR).expect_err("refused").to_string();
        assert!(
            message.contains("streams.errors") && message.contains("reserved"),
            "{message}"
        );
    }

    #[test]
    fn base64_follows_rfc_4648() {
        for (raw, encoded) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"\xff\xfe\x00", "//4A"),
        ] {
            assert_eq!(base64(raw), encoded, "{raw:?}");
        }
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
