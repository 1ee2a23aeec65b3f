//! Batching: whole lines of one file gathered until a count, size or age limit.
//!
//! Input: chunks of complete lines read by a tailer, contiguous in the file. Output: a
//! [`Batch`] naming its source and byte range, which is what makes a resend recognisable
//! at the collector. Nothing here touches the disk; a batch not yet acknowledged is still
//! in the log file, where the next start finds it again.

use std::io::Write;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::config::BatchConfig;

/// A contiguous run of whole lines from one file, ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Collector stream.
    pub stream: String,
    /// Agent id + file identity.
    pub source: String,
    /// Offset of the first byte in the file.
    pub start: u64,
    /// Offset just past the last line in the file: `start + data.len()`, except for a
    /// batch of one line cut to `max_line_bytes`, which stands for more bytes than it holds.
    pub end: u64,
    /// Number of lines.
    pub records: usize,
    /// The lines, each ending in `\n`.
    pub data: Bytes,
    /// CRC-32 and length of the file's bytes just before `end`: what the checkpoint checks
    /// when reading resumes there.
    pub check: (u32, u32),
    /// The share of the agent's memory budget these lines hold: given back when the last
    /// copy of the batch (the shipper's, once acknowledged) is dropped.
    pub budget: Option<Arc<OwnedSemaphorePermit>>,
    /// Multiline joining made the lines: an 0x1E in `data` may stand for a `\n` of the file.
    pub joined: bool,
}

impl Batch {
    /// Offset just past the last byte.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Splits the batch into two of about half its lines each (`None` for a single line):
    /// what a collector's 413 asks for.
    pub fn split(&self) -> Option<(Batch, Batch)> {
        if self.records < 2 || self.end != self.start + self.data.len() as u64 {
            return None;
        }
        let half = self.records / 2;
        let cut = memchr::memchr_iter(b'\n', &self.data).nth(half - 1)? + 1;
        let first = Batch {
            end: self.start + cut as u64,
            records: half,
            data: self.data.slice(..cut),
            check: file_check(&self.data[..cut], self.joined),
            ..self.clone()
        };
        let second = Batch {
            start: first.end,
            records: self.records - half,
            data: self.data.slice(cut..),
            ..self.clone()
        };
        Some((first, second))
    }

    /// The request body: gzip at `level`, or the raw lines at level 0.
    pub fn encode(&self, level: u32) -> Bytes {
        if level == 0 {
            return self.data.clone();
        }
        let mut encoder = flate2::write::GzEncoder::new(
            // Toll lines shrink 2.5-3x at level 2: no regrowth.
            Vec::with_capacity(self.data.len() / 2 + 64),
            flate2::Compression::new(level),
        );
        // Writing into a Vec cannot fail.
        let _ = encoder.write_all(&self.data);
        Bytes::from(encoder.finish().unwrap_or_default())
    }
}

/// Lines read but not yet sent.
#[derive(Debug)]
pub struct Pending {
    start: u64,
    end: u64,
    data: BytesMut,
    records: usize,
    since: Option<Instant>,
    /// Holds a cut long line, which travels alone.
    closed: bool,
    /// For a cut line: the check of the file's bytes before its end (its data is not them).
    cut_check: Option<(u32, u32)>,
    /// The memory budget held by the lines pending.
    budget: Option<OwnedSemaphorePermit>,
    /// The lines come from multiline joining (see [`Batch::joined`]).
    joined: bool,
}

impl Pending {
    /// An empty batch that will start at `start`, of lines from multiline joining if
    /// `joined`.
    pub fn new(start: u64, joined: bool) -> Self {
        Self {
            start,
            end: start,
            data: BytesMut::new(),
            records: 0,
            since: None,
            closed: false,
            cut_check: None,
            budget: None,
            joined,
        }
    }

    /// Keeps `permit` (budget for lines just read) until these lines are sent.
    pub fn hold(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.budget {
            Some(held) => held.merge(permit),
            None => self.budget = Some(permit),
        }
    }

    /// File offset where the next chunk must begin.
    pub fn next_offset(&self) -> u64 {
        self.end
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Room left before a limit: (lines, bytes).
    pub fn room(&self, limits: &BatchConfig) -> (usize, u64) {
        (
            limits.max_records.saturating_sub(self.records),
            limits.max_bytes.saturating_sub(self.data.len() as u64),
        )
    }

    /// Whether a count or size limit is reached.
    pub fn is_full(&self, limits: &BatchConfig) -> bool {
        let (lines, bytes) = self.room(limits);
        self.closed || lines == 0 || bytes == 0
    }

    /// When the age limit makes the batch due, if anything is pending.
    pub fn deadline(&self, limits: &BatchConfig) -> Option<Instant> {
        self.since.map(|t| t + limits.max_age)
    }

    /// Whether the batch should be sent now.
    pub fn is_due(&self, limits: &BatchConfig, now: Instant) -> bool {
        !self.is_empty()
            && (self.is_full(limits) || self.deadline(limits).is_some_and(|d| now >= d))
    }

    /// Appends whole lines that follow directly after what is pending and end at file
    /// offset `end`.
    pub fn push(&mut self, lines: &[u8], records: usize, end: u64, now: Instant) {
        if records == 0 {
            return;
        }
        self.since.get_or_insert(now);
        self.data.extend_from_slice(lines);
        self.records += records;
        self.end = end;
    }

    /// Adds one line cut to `max_line_bytes` that stands for the file bytes up to `end`;
    /// nothing more joins it.
    pub fn push_cut(&mut self, line: &[u8], end: u64, check: (u32, u32), now: Instant) {
        self.push(line, 1, end, now);
        self.closed = true;
        self.cut_check = Some(check);
    }

    /// Takes the pending lines as a batch; the next batch starts where this one ends.
    pub fn take(&mut self, stream: &str, source: &str) -> Batch {
        let data = self.data.split().freeze();
        let check = self
            .cut_check
            .take()
            .unwrap_or_else(|| file_check(&data, self.joined));
        let batch = Batch {
            stream: stream.to_owned(),
            source: source.to_owned(),
            start: self.start,
            end: self.end,
            records: self.records,
            data,
            check,
            budget: self.budget.take().map(Arc::new),
            joined: self.joined,
        };
        self.start = self.end;
        self.records = 0;
        self.since = None;
        self.closed = false;
        batch
    }
}

/// The check of the file's bytes that `data` ends with: lines as read, where multiline
/// joining (if `joined`) only turned some `\n` into 0x1E (one byte for one), which is
/// undone here. Without joining an 0x1E is the file's own byte and stays.
fn file_check(data: &[u8], joined: bool) -> (u32, u32) {
    let tail = &data[data.len().saturating_sub(crate::tail::TAIL_CHECK_BYTES)..];
    if !joined || !tail.contains(&crate::multiline::INNER_BREAK) {
        return crate::tail::tail_check(tail);
    }
    let raw: Vec<u8> = tail
        .iter()
        .map(|&b| {
            if b == crate::multiline::INNER_BREAK {
                b'\n'
            } else {
                b
            }
        })
        .collect();
    crate::tail::tail_check(&raw)
}

/// Splits `buf` (bytes read from the file) at the end of its last whole line, or of its
/// `max_records`-th line if that comes first. Returns (bytes, lines); (0, 0) when `buf`
/// holds no complete line.
pub fn whole_lines(buf: &[u8], max_records: usize) -> (usize, usize) {
    let mut end = 0;
    let mut lines = 0;
    for nl in memchr::memchr_iter(b'\n', buf) {
        end = nl + 1;
        lines += 1;
        if lines == max_records {
            break;
        }
    }
    (end, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> BatchConfig {
        BatchConfig {
            max_records: 3,
            max_bytes: 1000,
            max_age: Duration::from_secs(1),
        }
    }

    #[test]
    fn partial_last_line_waits_for_its_newline() {
        assert_eq!(whole_lines(b"one\ntwo\nthr", 100), (8, 2));
        assert_eq!(whole_lines(b"no newline yet", 100), (0, 0));
        assert_eq!(whole_lines(b"a\nb\nc\nd\n", 3), (6, 3));
        assert_eq!(whole_lines(b"", 3), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn batch_is_due_when_full_or_old() {
        let mut pending = Pending::new(100, false);
        let now = Instant::now();
        assert!(!pending.is_due(&limits(), now));
        pending.push(b"a\nb\n", 2, 104, now);
        assert!(!pending.is_due(&limits(), now));
        assert!(
            pending.is_due(&limits(), now + Duration::from_secs(1)),
            "old enough"
        );
        pending.push(b"c\n", 1, 106, now);
        assert!(pending.is_due(&limits(), now), "three lines fill it");
        let batch = pending.take("s", "src");
        assert_eq!((batch.start, batch.end(), batch.records), (100, 106, 3));
        assert_eq!(pending.next_offset(), 106);
        assert!(pending.is_empty());
    }

    #[test]
    fn gzip_body_decodes_to_the_lines() {
        use std::io::Read;
        let batch = Batch {
            stream: "s".into(),
            source: "x".into(),
            start: 0,
            end: 8,
            records: 2,
            data: Bytes::from_static(b"a,b\nc,d\n"),
            check: (0, 0),
            budget: None,
            joined: false,
        };
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&batch.encode(2)[..])
            .read_to_end(&mut out)
            .expect("gzip");
        assert_eq!(out, b"a,b\nc,d\n");
        assert_eq!(&batch.encode(0)[..], b"a,b\nc,d\n");
    }

    #[tokio::test(start_paused = true)]
    async fn the_check_is_of_the_file_bytes_whether_or_not_lines_were_joined() {
        let now = Instant::now();
        let file_check = |bytes: &[u8]| crate::tail::tail_check(bytes);
        // Without multiline an 0x1E is the file's own byte: the check covers it as is, or a
        // restart would find the bytes before the offset changed and send the file again.
        let own = b"a,b\x1ec\nd,e\n";
        let mut plain = Pending::new(0, false);
        plain.push(own, 2, own.len() as u64, now);
        assert_eq!(plain.take("s", "x").check, file_check(own));
        // With multiline joining an 0x1E stands for a line break of the file.
        let mut joined = Pending::new(0, true);
        joined.push(b"a,b\x1e  c\n", 1, 10, now);
        assert_eq!(joined.take("s", "x").check, file_check(b"a,b\n  c\n"));
        // The same in each half of a split batch.
        let mut plain = Pending::new(0, false);
        plain.push(b"a\x1e\nb\n", 2, 5, now);
        let (first, second) = plain.take("s", "x").split().expect("splits");
        assert_eq!(first.check, file_check(b"a\x1e\n"));
        assert_eq!(second.check, file_check(b"a\x1e\nb\n"));
    }

    #[test]
    fn a_batch_splits_into_two_contiguous_halves_at_a_line() {
        let batch = Batch {
            stream: "s".into(),
            source: "x".into(),
            start: 10,
            end: 20,
            records: 3,
            data: Bytes::from_static(b"a,b\nc\nd,e\n"),
            check: (0, 0),
            budget: None,
            joined: false,
        };
        let (first, second) = batch.split().expect("splits");
        assert_eq!((first.start, first.end, first.records), (10, 14, 1));
        assert_eq!(&first.data[..], b"a,b\n");
        assert_eq!((second.start, second.end, second.records), (14, 20, 2));
        assert_eq!(&second.data[..], b"c\nd,e\n");
        assert!(first.split().is_none(), "one line cannot split");
    }
}
