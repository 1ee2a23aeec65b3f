//! Segment files: naming, listing, recovery and sequential reading.
//!
//! A stream's WAL directory holds files named `<first_seq:020>.wal`. Records in a segment
//! have consecutive sequence numbers starting at the name; the next segment starts where
//! the previous one ends. Only the newest segment can end in a torn frame (a crash during a
//! write that was never acknowledged); recovery cuts it off and says how many bytes went.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use super::WalError;
use super::record::{DecodeError, FRAME_HEADER_BYTES, MAX_PAYLOAD_BYTES, WalRecord};

/// A segment file and the first sequence number it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// The file.
    pub path: PathBuf,
}

/// The file name of the segment starting at `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

/// Lists the segments in `dir`, oldest first.
///
/// # Errors
/// I/O errors reading the directory.
pub fn list(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(first_seq) = stem.parse::<u64>() {
            segments.push(Segment {
                first_seq,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// What recovery found in one segment.
#[derive(Debug)]
pub struct Scan {
    /// Bytes of complete, valid frames.
    pub valid_len: u64,
    /// Bytes after them (a torn or damaged tail).
    pub torn_bytes: u64,
    /// What was wrong with the tail, if anything.
    pub tail_error: Option<DecodeError>,
    /// Whether that damage looks like a write cut short by a crash: the bad frame runs to
    /// the end of the file, or nothing but zeros follows it.
    pub torn_tail: bool,
}

/// Reads every valid record of `segment` in order, calling `visit` for each, and reports
/// where the valid part ends. Sequence numbers must continue from `segment.first_seq`.
///
/// # Errors
/// I/O errors, or [`WalError::Corrupt`] when a record's sequence number is out of order.
pub fn scan(
    segment: &Segment,
    mut visit: impl FnMut(&WalRecord) -> Result<(), WalError>,
) -> Result<Scan, WalError> {
    let bytes =
        std::fs::read(&segment.path).map_err(|e| WalError::io("reading", &segment.path, e))?;
    let mut at = 0usize;
    let mut expected = segment.first_seq;
    while at < bytes.len() {
        match WalRecord::decode(&bytes[at..]) {
            Ok((record, used)) => {
                if record.seq != expected {
                    return Err(WalError::Corrupt {
                        path: segment.path.clone(),
                        offset: at as u64,
                        reason: format!("sequence {} where {expected} was expected", record.seq),
                    });
                }
                visit(&record)?;
                expected += 1;
                at += used;
            }
            Err(error) => {
                let rest = &bytes[at..];
                let reaches_end = match error {
                    DecodeError::Truncated { .. } => true,
                    _ => {
                        rest.len() >= FRAME_HEADER_BYTES && {
                            let len =
                                u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                            FRAME_HEADER_BYTES.saturating_add(len) >= rest.len()
                        }
                    }
                };
                return Ok(Scan {
                    valid_len: at as u64,
                    torn_bytes: rest.len() as u64,
                    tail_error: Some(error),
                    torn_tail: reaches_end || rest.iter().all(|&b| b == 0),
                });
            }
        }
    }
    Ok(Scan {
        valid_len: at as u64,
        torn_bytes: 0,
        tail_error: None,
        torn_tail: false,
    })
}

/// Cuts a segment back to `len` bytes and makes that durable.
///
/// # Errors
/// I/O errors.
pub fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("opening", path, e))?;
    file.set_len(len)
        .map_err(|e| WalError::io("truncating", path, e))?;
    file.sync_all()
        .map_err(|e| WalError::io("syncing", path, e))
}

/// How far the log is durable: the last fsynced sequence number, and the byte length of the
/// segment that holds it. Readers never read bytes past it, so bytes of a group whose write
/// failed and was cut back can never be seen, even through a read-ahead buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    /// Highest durable sequence number (0 when the log is empty).
    pub seq: u64,
    /// First sequence number of the segment that holds `seq`.
    pub segment: u64,
    /// Durable bytes of that segment.
    pub len: u64,
}

/// A segment file read sequentially, never past `limit`.
struct LimitedFile {
    file: File,
    first_seq: u64,
    pos: u64,
    limit: u64,
}

impl Read for LimitedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads records in sequence order across segments, never past the durable position.
pub struct Reader {
    dir: PathBuf,
    next_seq: u64,
    file: Option<BufReader<LimitedFile>>,
    frame: Vec<u8>,
}

impl Reader {
    /// A reader whose first record will be `from_seq`.
    pub fn new(dir: &Path, from_seq: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            next_seq: from_seq,
            file: None,
            frame: Vec::new(),
        }
    }

    /// The stream's WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number the next [`Reader::next`] returns.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next record, or `None` when it is not durable yet.
    ///
    /// # Errors
    /// [`WalError::Missing`] when the record was deleted or never existed, I/O errors,
    /// [`WalError::Corrupt`] when a durable frame does not decode.
    pub fn next(&mut self, durable: Durable) -> Result<Option<WalRecord>, WalError> {
        if self.next_seq > durable.seq {
            return Ok(None);
        }
        loop {
            if self.file.is_none() {
                self.open_containing()?;
            }
            // `open_containing` either set `self.file` or returned an error above.
            let file = self.file.as_mut().expect("segment opened above");
            let segment = file.get_ref().first_seq;
            // Older segments are complete; the durable one only up to its durable length.
            file.get_mut().limit = if segment == durable.segment {
                durable.len
            } else {
                u64::MAX
            };
            match read_frame(file, &mut self.frame) {
                Ok(true) => {}
                Ok(false) if segment < durable.segment => {
                    // End of an older segment: the record is in the next one.
                    self.open_exact(self.next_seq)?;
                    continue;
                }
                Ok(false) => {
                    return Err(WalError::Corrupt {
                        path: segment_path(&self.dir, segment),
                        offset: durable.len,
                        reason: format!("durable record {} is not in the segment", self.next_seq),
                    });
                }
                Err(e) => {
                    return Err(WalError::io(
                        "reading",
                        &segment_path(&self.dir, segment),
                        e,
                    ));
                }
            }
            let (record, _) = WalRecord::decode(&self.frame).map_err(|e| WalError::Corrupt {
                path: segment_path(&self.dir, segment),
                offset: 0,
                reason: format!("durable record {} does not decode: {e}", self.next_seq),
            })?;
            if record.seq < self.next_seq {
                continue; // Skipping to the requested start inside the first segment.
            }
            if record.seq != self.next_seq {
                return Err(WalError::Corrupt {
                    path: segment_path(&self.dir, segment),
                    offset: 0,
                    reason: format!("found sequence {} expecting {}", record.seq, self.next_seq),
                });
            }
            self.next_seq += 1;
            return Ok(Some(record));
        }
    }

    /// Opens the newest segment whose first sequence is at or before `next_seq`.
    fn open_containing(&mut self) -> Result<(), WalError> {
        let segment = list(&self.dir)?
            .into_iter()
            .rev()
            .find(|s| s.first_seq <= self.next_seq)
            .ok_or(WalError::Missing {
                seq: self.next_seq,
                dir: self.dir.clone(),
            })?;
        self.open(segment.first_seq)
    }

    fn open_exact(&mut self, first_seq: u64) -> Result<(), WalError> {
        if !segment_path(&self.dir, first_seq).exists() {
            return Err(WalError::Missing {
                seq: first_seq,
                dir: self.dir.clone(),
            });
        }
        self.open(first_seq)
    }

    fn open(&mut self, first_seq: u64) -> Result<(), WalError> {
        let path = segment_path(&self.dir, first_seq);
        let file = File::open(&path).map_err(|e| WalError::io("opening", &path, e))?;
        let limited = LimitedFile {
            file,
            first_seq,
            pos: 0,
            limit: 0,
        };
        self.file = Some(BufReader::with_capacity(1 << 20, limited));
        Ok(())
    }
}

/// Reads one whole frame into `buf`; `Ok(false)` at a clean end of file.
fn read_frame(file: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.resize(FRAME_HEADER_BYTES, 0);
    match file.read_exact(&mut buf[..]) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_PAYLOAD_BYTES {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "frame length over 1 GiB",
        ));
    }
    buf.resize(FRAME_HEADER_BYTES + len, 0);
    file.read_exact(&mut buf[FRAME_HEADER_BYTES..])?;
    Ok(true)
}
