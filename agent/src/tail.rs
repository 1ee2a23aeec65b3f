//! Tailing: one reader per file, from its checkpoint to its end and on as it grows.
//!
//! Input: an open file, its identity and the offset to start at. Output: batches of whole
//! lines to the shipper, up to `max_in_flight_per_file` of them encoding or in flight at
//! once; acks are taken oldest first, so the checkpoint offset only ever moves to the end
//! of an acknowledged prefix of the file.
//!
//! A file is known by (inode, CRC-32 of its first line, generation) rather than by path:
//! a renamed file keeps its identity and its offset, and a new file that reuses an inode
//! gets a new one. A partial last line is never sent: it waits for its newline (across
//! restarts too, since the offset only ever points just after a newline).
//!
//! A file that is renamed away or deleted is read to its end and let go once it has been
//! quiet for `rotate_wait`. A file that shrinks below the read offset was truncated: the
//! tailer ends and discovery starts it again as a new generation from byte 0.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batch::{Pending, whole_lines};
use crate::checkpoint::{Ack, SharedCheckpoints};
use crate::clock::Clock;
use crate::config::{BatchConfig, Multiline};
use crate::multiline::Joiner;
use crate::ship::{ShipError, ShipRequest};

/// Batches compressed at once over all files: one per core (more would only hold more
/// compressor state and buffers), at most 4.
static ENCODERS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    tokio::sync::Semaphore::new(cores.clamp(1, 4))
});

/// A stream's share of the agent's memory budget for lines read and not yet acknowledged,
/// shared by the stream's files (see [`Budgets`]).
///
/// A tailer takes budget for what it reads; the lines carry it through encoding and
/// shipping, and it comes back when the collector has acknowledged them. A file that finds
/// the budget spent sends what it has and waits: its log file is the buffer. So memory
/// stays bounded whatever the number of busy files and however long the collector is away.
#[derive(Debug, Clone)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    bytes: u32,
}

impl Budget {
    /// A budget of `bytes` (at most 4 GiB).
    pub fn new(bytes: u64) -> Self {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
        }
    }

    /// Bytes held by lines not yet acknowledged.
    pub fn used(&self) -> u64 {
        u64::from(self.bytes).saturating_sub(self.semaphore.available_permits() as u64)
    }

    /// `want` bytes (at most the whole budget) if they are free now.
    fn try_take(&self, want: u64) -> Option<OwnedSemaphorePermit> {
        self.semaphore
            .clone()
            .try_acquire_many_owned(self.clamp(want))
            .ok()
    }

    /// `want` bytes (at most the whole budget), once they are free.
    async fn take(&self, want: u64) -> Option<OwnedSemaphorePermit> {
        self.semaphore
            .clone()
            .acquire_many_owned(self.clamp(want))
            .await
            .ok()
    }

    fn clamp(&self, want: u64) -> u32 {
        u32::try_from(want).unwrap_or(u32::MAX).clamp(1, self.bytes)
    }
}

thread_local! {
    /// Each blocking thread's read buffer, as large as the largest read it made (a batch's
    /// `max_bytes` at most; at most 4 such threads).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The memory budget shared out among streams: `max_buffered_bytes` split evenly, so that a
/// stream the collector refuses (an unknown stream, a single line too large for it) can only
/// fill its own share, and the others keep flowing.
#[derive(Debug, Clone)]
pub struct Budgets {
    by_stream: std::collections::BTreeMap<String, Budget>,
}

impl Budgets {
    /// Budgets for the streams of `config`'s flows.
    pub fn new(config: &crate::config::Config) -> Self {
        let streams: std::collections::BTreeSet<&str> =
            config.flows.iter().map(|f| f.stream.as_str()).collect();
        let share = config.max_buffered_bytes / streams.len().max(1) as u64;
        let by_stream = streams
            .into_iter()
            .map(|stream| (stream.to_owned(), Budget::new(share)))
            .collect();
        Self { by_stream }
    }

    /// The budget of `stream` (a stream no flow names gets a small one of its own).
    pub fn for_stream(&self, stream: &str) -> Budget {
        self.by_stream
            .get(stream)
            .cloned()
            .unwrap_or_else(|| Budget::new(1 << 20))
    }

    /// Bytes held over all streams.
    pub fn used(&self) -> u64 {
        self.by_stream.values().map(Budget::used).sum()
    }
}

/// Bytes of the first line that go into the fingerprint at most.
const FINGERPRINT_MAX_BYTES: usize = 64 * 1024;

/// Device and inode of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    /// The id of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A file's first line (up to 64 KiB of it): its CRC-32 and length. Part of the file's
/// identity, and checked again before every read to notice a file rewritten in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// CRC-32 of the bytes.
    pub crc: u32,
    /// How many bytes (the first line with its `\n`, or 64 KiB).
    pub len: usize,
}

/// The file's [`Fingerprint`], or `None` while it has no complete first line yet and is
/// shorter than 64 KiB.
///
/// # Errors
/// I/O errors reading the file.
pub fn fingerprint(file: &File) -> std::io::Result<Option<Fingerprint>> {
    let mut buf = vec![0u8; FINGERPRINT_MAX_BYTES];
    let n = read_at_most(file, &mut buf, 0)?;
    let head = &buf[..n];
    let len = match memchr::memchr(b'\n', head) {
        Some(nl) => nl + 1,
        None if n == FINGERPRINT_MAX_BYTES => n,
        None => return Ok(None),
    };
    Ok(Some(Fingerprint {
        crc: crc32fast::hash(&head[..len]),
        len,
    }))
}

/// Whether the file still starts with the bytes `expected` was taken from.
fn starts_as(file: &File, expected: Fingerprint) -> std::io::Result<bool> {
    let mut buf = vec![0u8; expected.len];
    let n = read_at_most(file, &mut buf, 0)?;
    Ok(n == expected.len && crc32fast::hash(&buf) == expected.crc)
}

/// Offset just after the last newline in the file: where `start_at: end` begins.
///
/// # Errors
/// I/O errors reading the file.
pub fn end_of_last_line(file: &File, size: u64) -> std::io::Result<u64> {
    let mut end = size;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let from = end.saturating_sub(buf.len() as u64);
        let n = read_at_most(file, &mut buf[..(end - from) as usize], from)?;
        if let Some(nl) = memchr::memrchr(b'\n', &buf[..n]) {
            return Ok(from + nl as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Longest stretch checked before a resume offset: enough to hold a whole toll line.
pub const TAIL_CHECK_BYTES: usize = 1024;

/// Whether the `len` bytes before `offset` still have CRC-32 `crc` (the check made before
/// reading resumes at a saved offset; `len` 0 always passes).
///
/// # Errors
/// I/O errors reading the file.
pub fn bytes_before_match(file: &File, offset: u64, len: u32, crc: u32) -> std::io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let Some(from) = offset.checked_sub(u64::from(len)) else {
        return Ok(false);
    };
    let mut buf = vec![0u8; len as usize];
    let n = read_at_most(file, &mut buf, from)?;
    Ok(n == buf.len() && crc32fast::hash(&buf) == crc)
}

/// The check of the file's bytes just before `offset` (see [`bytes_before_match`]).
///
/// # Errors
/// I/O errors reading the file.
pub fn tail_before(file: &File, offset: u64) -> std::io::Result<(u32, u32)> {
    let len = offset.min(TAIL_CHECK_BYTES as u64);
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset - len)?;
    Ok(tail_check(&buf))
}

/// CRC-32 and length of the last (up to [`TAIL_CHECK_BYTES`]) bytes of `data`.
pub fn tail_check(data: &[u8]) -> (u32, u32) {
    let tail = &data[data.len().saturating_sub(TAIL_CHECK_BYTES)..];
    // TAIL_CHECK_BYTES fits in u32.
    (crc32fast::hash(tail), tail.len() as u32)
}

/// Whether two files hold the same bytes over the stretch before `len` (up to 4 KiB, not
/// counting the first `skip` bytes): how a copy of a file is recognised.
///
/// # Errors
/// I/O errors reading either file.
pub fn same_bytes_before(a: &File, b: &File, len: u64, skip: u64) -> std::io::Result<bool> {
    let from = len.saturating_sub(4096).max(skip);
    if from >= len {
        return Ok(false); // Nothing beyond the first line to compare.
    }
    let mut x = vec![0u8; (len - from) as usize];
    let mut y = vec![0u8; x.len()];
    let n = read_at_most(a, &mut x, from)?;
    let m = read_at_most(b, &mut y, from)?;
    Ok(n == x.len() && m == y.len() && x == y)
}

/// What one read found.
struct Read {
    data: Bytes,
    lines: usize,
    /// File offset just past what `data` stands for (more than `data` holds for a
    /// truncated long line).
    end: u64,
    size: u64,
    /// The file shrank below the offset or no longer starts with its first line.
    replaced: bool,
    /// `data` is one line cut to `max_line_bytes`; it travels in a batch of its own.
    cut: bool,
    /// For a cut line: the check of the file's bytes just before `end`.
    cut_check: (u32, u32),
    /// For a long line whose newline is not written yet: how far it was searched.
    searched_to: Option<u64>,
}

impl Read {
    fn nothing(size: u64, offset: u64) -> Self {
        Self {
            data: Bytes::new(),
            lines: 0,
            end: offset,
            size,
            replaced: false,
            cut: false,
            cut_check: (0, 0),
            searched_to: None,
        }
    }
}

/// Limits of one read.
#[derive(Debug, Clone, Copy)]
struct Room {
    bytes: u64,
    records: usize,
    max_line: u64,
    /// Nothing is pending, so a cut long line may be returned.
    alone: bool,
    /// Where an earlier search for the end of a long line at this offset stopped.
    search_from: Option<u64>,
    /// CRC-32 and length of the bytes just before the offset, as last read.
    before: (u32, u32),
}

/// Reads whole lines at `offset`, at most `room.bytes` (more for a single longer line up
/// to `room.max_line`) and `room.records` lines. A line longer than `room.max_line` is
/// returned alone, cut to that length with a marker, once its newline is written.
fn read_lines(file: &File, expect: Fingerprint, offset: u64, room: Room) -> std::io::Result<Read> {
    let size = file.metadata()?.len();
    // A file truncated and written again past our offset between two reads is only
    // recognisable by its first line, or by the bytes before the offset.
    if size < offset
        || !starts_as(file, expect)?
        || !bytes_before_match(file, offset, room.before.1, room.before.0)?
    {
        return Ok(Read {
            replaced: true,
            ..Read::nothing(size, offset)
        });
    }
    if size == offset {
        return Ok(Read::nothing(size, offset));
    }
    let want = (size - offset).min(room.bytes.max(1)) as usize;
    // Read into this thread's buffer and keep an exact copy of the whole lines: a fresh
    // buffer per read, freed right after, left glibc's heap holding tens of MiB.
    let whole = READ_BUFFER.with_borrow_mut(|buf| -> std::io::Result<_> {
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let n = read_at_most(file, &mut buf[..want], offset)?;
        let (end, lines) = whole_lines(&buf[..n], room.records.max(1));
        Ok((lines > 0)
            .then(|| (Bytes::copy_from_slice(&buf[..end]), end, lines))
            .ok_or(n))
    })?;
    let n = match whole {
        Ok((data, end, lines)) => {
            return Ok(Read {
                data,
                lines,
                end: offset + end as u64,
                ..Read::nothing(size, offset)
            });
        }
        Err(n) => n,
    };
    // The line at `offset` is longer than the room: read it whole, up to `max_line`.
    let available = size - offset;
    let whole = available.min(room.max_line);
    if whole > n as u64 && room.search_from.is_none() {
        let mut buf = vec![0u8; whole as usize];
        let n = read_at_most(file, &mut buf, offset)?;
        buf.truncate(n);
        if let Some(nl) = memchr::memchr(b'\n', &buf) {
            buf.truncate(nl + 1);
            return Ok(Read {
                end: offset + buf.len() as u64,
                data: Bytes::from(buf),
                lines: 1,
                ..Read::nothing(size, offset)
            });
        }
    }
    if available <= room.max_line {
        return Ok(Read::nothing(size, offset)); // A partial line: wait for its newline.
    }
    // Longer than `max_line`: find its end without holding it.
    let from = room.search_from.unwrap_or(offset + room.max_line);
    let Some(newline) = find_newline(file, from, size)? else {
        return Ok(Read {
            searched_to: Some(size),
            ..Read::nothing(size, offset)
        });
    };
    if !room.alone {
        // Not joined to other lines: the caller sends what it has first.
        return Ok(Read {
            searched_to: Some(newline),
            ..Read::nothing(size, offset)
        });
    }
    let total = newline + 1 - offset;
    let marker = format!(
        " [cut by tollstream-agent: line of {total} bytes, max_line_bytes is {}]\n",
        room.max_line
    );
    // The body must stay shorter than the bytes it stands for (the collector's rule for a
    // cut line), even for a line only just over the limit.
    let keep = room
        .max_line
        .min(total.saturating_sub(marker.len() as u64 + 1));
    let mut kept = vec![0u8; keep as usize];
    let n = read_at_most(file, &mut kept, offset)?;
    kept.truncate(n);
    kept.extend_from_slice(marker.as_bytes());
    let cut_check = tail_before(file, newline + 1)?;
    Ok(Read {
        data: Bytes::from(kept),
        lines: 1,
        end: newline + 1,
        cut: true,
        cut_check,
        ..Read::nothing(size, offset)
    })
}

/// Offset of the first `\n` in `[from, size)`.
fn find_newline(file: &File, mut from: u64, size: u64) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; 256 * 1024];
    while from < size {
        let len = (size - from).min(buf.len() as u64) as usize;
        let n = read_at_most(file, &mut buf[..len], from)?;
        if n == 0 {
            break;
        }
        if let Some(nl) = memchr::memchr(b'\n', &buf[..n]) {
            return Ok(Some(from + nl as u64));
        }
        from += n as u64;
    }
    Ok(None)
}

/// How a tailer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// The path now names another file (or nothing); this one was drained.
    RotatedAway,
    /// The file shrank below what was read, or was rewritten (its first line changed):
    /// discovery starts it again as a new identity from byte 0.
    Truncated,
    /// Shutdown was requested (or the shipper stopped).
    Shutdown,
}

/// Follows one file.
pub struct Tailer {
    /// Collector stream.
    pub stream: String,
    /// The path it was found under.
    pub path: PathBuf,
    /// The open file.
    pub file: Arc<File>,
    /// Device and inode.
    pub id: FileId,
    /// Its first line, checked before every read.
    pub fingerprint: Fingerprint,
    /// Checkpoint key (identity).
    pub key: String,
    /// Source name sent to the collector.
    pub source: String,
    /// Offset to start reading at.
    pub start: u64,
    /// CRC-32 and length of the bytes just before `start` (length 0: none to check).
    pub start_check: (u32, u32),
    /// Batch limits.
    pub limits: BatchConfig,
    /// Batches of this file sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Longer lines are cut to this many bytes.
    pub max_line_bytes: u64,
    /// How continuation lines are joined to their record, if they are.
    pub multiline: Option<Multiline>,
    /// gzip level of request bodies (0: none).
    pub gzip_level: u32,
    /// Growth check interval without file events.
    pub poll_interval: Duration,
    /// Quiet time before a rotated file is let go.
    pub rotate_wait: Duration,
    /// Found after a restart under a name the globs do not match (rotated away while the
    /// agent was down): read to its end and let go, like a rotated file.
    pub draining: bool,
    /// Woken by file events for this path.
    pub wake: Arc<Notify>,
    /// Where batches go.
    pub ship: mpsc::Sender<ShipRequest>,
    /// Its stream's share of the memory budget for lines read and not yet acknowledged,
    /// shared by the stream's files: a file that finds it spent waits (its log file is the
    /// buffer).
    pub budget: Budget,
    /// Shared offsets.
    pub checkpoints: SharedCheckpoints,
    /// Wall clock for ack times.
    pub clock: Arc<dyn Clock>,
    /// Stop reading.
    pub shutdown: CancellationToken,
    /// This file's share of its stream's lag gauges (taken back when the tailer ends).
    pub lag: crate::metrics::LagShare,
    /// Beats while the tailer works; parked while it waits (see [`crate::systemd`]).
    pub heartbeat: Arc<crate::systemd::Heartbeat>,
}

type InFlight = (oneshot::Receiver<Result<(), ShipError>>, Ack);

/// A batch with its encoded request body.
struct Sealed {
    batch: crate::batch::Batch,
    body: Bytes,
    gzip: bool,
}

/// A batch taken from the pending lines, being encoded on a blocking thread while the
/// tailer reads on: reading and compressing one busy file use two cores.
struct Sealing {
    /// Where the checkpoint moves once the batch is acknowledged.
    done: Ack,
    encoding: tokio::task::JoinHandle<Sealed>,
}

impl Tailer {
    /// Follows the file until it is rotated away and drained, truncated, or shutdown.
    ///
    /// # Errors
    /// I/O errors reading the file.
    pub async fn run(self) -> std::io::Result<TailEnd> {
        let mut pending = Pending::new(self.start, self.multiline.is_some());
        // Sent and not yet acknowledged, oldest first; acks are taken in this order, so the
        // checkpoint only ever covers a prefix of the file.
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // The next batch, being encoded while the ones before it are on the wire.
        let mut sealed: Option<Sealing> = None;
        let mut quiet_since = Instant::now();
        let mut gone_since: Option<Instant> = None;
        let mut size = self.start;
        // Where the search for the end of a long line at an offset stopped.
        let mut long_line: Option<(u64, u64)> = None;
        let mut acked_to = self.start;
        let mut ack_failed = false;
        let mut before = self.start_check;
        // (size, mtime) when the last read found nothing new, and polls since.
        let mut idle_at: Option<(u64, std::time::SystemTime)> = None;
        let mut idle_polls = 0u32;
        // Budget granted while waiting for it, for the next read.
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        // The previous batch's hand-over to the shipper: batches of a file reach it in order.
        let mut handed: Option<oneshot::Receiver<()>> = None;
        let mut joiner = self
            .multiline
            .as_ref()
            .map(|m| Joiner::new(m.start.clone(), self.max_line_bytes as usize));
        let held = |j: &Option<Joiner>| j.as_ref().map_or(0, Joiner::held);
        debug!(path = %self.path.display(), source = %self.source, offset = self.start, "Tailing.");
        let end = loop {
            self.heartbeat.beat();
            if self.shutdown.is_cancelled() {
                break TailEnd::Shutdown;
            }
            let (mut eof, mut blocked, mut starved) = (false, false, false);
            let full = pending.is_full(&self.limits);
            // A file at its end whose size and modification time did not change since is
            // not read again: an idle file costs one fstat per poll.
            let stat = stat_of(&self.file);
            let mut budget = None;
            let unchanged = stat.is_some() && stat == idle_at;
            if !(full || unchanged) {
                let want = pending.room(&self.limits).1;
                budget = reserved.take().or_else(|| self.budget.try_take(want));
                starved = budget.is_none();
            }
            if full || starved {
                // Not reading (the batch is full, or the budget is spent): the lag still
                // grows with the file, and the gauge says so.
                if let Some((len, _)) = stat.filter(|(len, _)| *len != size) {
                    size = len;
                    self.report_lag(size.saturating_sub(acked_to));
                }
                // What was read waits no longer for more.
                blocked = starved && (!pending.is_empty() || held(&joiner) > 0);
            } else if unchanged {
                eof = true;
            } else if let Some(mut permit) = budget {
                idle_at = None;
                // Lines of a multiline record still open were read but are not pending.
                let offset = pending.next_offset() + held(&joiner);
                let (records, _) = pending.room(&self.limits);
                let room = Room {
                    bytes: permit.num_permits() as u64,
                    records,
                    max_line: self.max_line_bytes,
                    alone: pending.is_empty() && held(&joiner) == 0,
                    search_from: long_line.filter(|l| l.0 == offset).map(|l| l.1),
                    before,
                };
                let read = self.read(offset, room).await?;
                if read.size != size {
                    self.report_lag(read.size.saturating_sub(acked_to));
                }
                size = read.size;
                long_line = read.searched_to.map(|to| (offset, to));
                if read.replaced {
                    warn!(path = %self.path.display(), size = read.size, offset = pending.next_offset(), "File was truncated or rewritten; sending what was read before it, then reading it again from the start.");
                    metrics::counter!("tollstream_agent_truncations_total").increment(1);
                    break TailEnd::Truncated;
                }
                if read.lines > 0 {
                    metrics::counter!("tollstream_agent_read_records_total")
                        .increment(read.lines as u64);
                    metrics::counter!("tollstream_agent_read_bytes_total")
                        .increment(read.end - offset);
                    before = if read.cut {
                        (0, 0)
                    } else {
                        tail_check(&read.data)
                    };
                    if read.cut {
                        flush_joiner(&mut joiner, &mut pending);
                        warn!(path = %self.path.display(), offset, bytes = read.end - offset, max_line_bytes = self.max_line_bytes, "Line longer than max_line_bytes: sending it cut, with a marker.");
                        metrics::counter!("tollstream_agent_long_lines_total").increment(1);
                        pending.push_cut(&read.data, read.end, read.cut_check, Instant::now());
                    } else if let Some(joiner) = joiner.as_mut() {
                        let done = joiner.push(&read.data, Instant::now());
                        let end = pending.next_offset() + done.data.len() as u64;
                        pending.push(&done.data, done.records, end, Instant::now());
                    } else {
                        pending.push(&read.data, read.lines, read.end, Instant::now());
                    }
                    // The budget goes with the lines (the rest of the grant back at once;
                    // a cut line's own read is not counted beyond the grant).
                    let used = read.data.len().min(permit.num_permits());
                    if let Some(kept) = permit.split(used) {
                        pending.hold(kept);
                    }
                    quiet_since = Instant::now();
                    idle_polls = 0;
                } else if read.searched_to.is_some() && held(&joiner) > 0 {
                    // A long line follows the open record: that record is complete.
                    flush_joiner(&mut joiner, &mut pending);
                    blocked = true;
                } else if read.size > offset && !pending.is_empty() {
                    blocked = true; // The next line does not fit: send what we have.
                } else {
                    eof = true;
                    idle_at = stat;
                }
            }
            let due = blocked || pending.is_due(&self.limits, Instant::now());
            let can_send = in_flight.len() < self.max_in_flight;
            if can_send && (sealed.is_some() || due) {
                let next = match sealed.take() {
                    Some(next) => next,
                    None => self.seal(&mut pending),
                };
                in_flight.push_back(self.send(next, &mut handed));
                continue;
            }
            if sealed.is_none() && due {
                // Compress the next batch while the previous ones are being acknowledged.
                sealed = Some(self.seal(&mut pending));
                continue;
            }
            if !(eof || blocked || starved || pending.is_full(&self.limits)) {
                continue; // More to read right away.
            }
            if eof
                && pending.is_empty()
                && held(&joiner) == 0
                && in_flight.is_empty()
                && sealed.is_none()
                && self.rotated_and_quiet(&mut gone_since, quiet_since)
            {
                break TailEnd::RotatedAway;
            }
            let deadline = if can_send {
                pending.deadline(&self.limits)
            } else {
                None
            };
            let flush_at = joiner
                .as_ref()
                .zip(self.multiline.as_ref())
                .and_then(|(j, m)| j.deadline(m.flush_after));
            if flush_at.is_some_and(|t| t <= Instant::now()) {
                flush_joiner(&mut joiner, &mut pending);
                continue;
            }
            // Back after the next poll, batch deadline or multiline flush; waiting only for
            // acks (the collector is slow or away) is not a stall.
            let poll = idle_backoff(self.poll_interval, idle_polls);
            // Not reading for want of room: look at the file's size now and then (lag).
            let held_up = starved || pending.is_full(&self.limits);
            let poll_at = (eof || held_up).then(|| Instant::now() + poll);
            let wait_budget = starved && !blocked;
            match [poll_at, deadline, flush_at].into_iter().flatten().min() {
                Some(at) => self.heartbeat.park_until(at),
                None => self.heartbeat.park(),
            }
            tokio::select! {
                ack = wait_ack(&mut in_flight) => {
                    let (result, done) = ack;
                    in_flight.pop_front();
                    match result {
                        Ok(()) => {
                            acked_to = done.offset;
                            self.acked(done, size);
                        }
                        Err(_) => {
                            // Later batches must not move the checkpoint past this one.
                            ack_failed = true;
                            break TailEnd::Shutdown;
                        }
                    }
                }
                () = self.wake.notified(), if eof => idle_polls = 0,
                () = tokio::time::sleep(poll), if eof || held_up => {
                    idle_polls = idle_polls.saturating_add(1);
                }
                permit = self.budget.take(pending.room(&self.limits).1), if wait_budget => {
                    reserved = permit;
                    idle_polls = 0;
                }
                () = sleep_until(deadline) => {}
                () = sleep_until(flush_at) => {}
                () = self.shutdown.cancelled() => {}
            }
        };
        // Stop reading, but let the batches in flight finish: their acks move the
        // checkpoint, so the next start does not send them again.
        self.heartbeat.park();
        let mut delivered = !ack_failed;
        while !in_flight.is_empty() {
            let (result, done) = wait_ack(&mut in_flight).await;
            in_flight.pop_front();
            delivered &= result.is_ok();
            if delivered {
                self.acked(done, size);
            }
        }
        // Lines read before a truncation exist nowhere else any more: send them now, in
        // order.
        if end == TailEnd::Truncated && delivered {
            flush_joiner(&mut joiner, &mut pending);
            let last = if pending.is_empty() {
                None
            } else {
                Some(self.seal(&mut pending))
            };
            for next in [sealed.take(), last].into_iter().flatten() {
                in_flight.push_back(self.send(next, &mut handed));
                let ack = wait_ack(&mut in_flight).await;
                in_flight.pop_front();
                match ack {
                    (Ok(()), done) => self.acked(done, size),
                    (Err(_), _) => break,
                }
            }
        }
        if end == TailEnd::RotatedAway {
            info!(path = %self.path.display(), source = %self.source, "Rotated file drained; letting it go.");
        }
        Ok(end)
    }

    /// Takes the pending lines as a batch and starts encoding its request body.
    fn seal(&self, pending: &mut Pending) -> Sealing {
        let batch = pending.take(&self.stream, &self.source);
        let (tail_crc, tail_len) = batch.check;
        let done = Ack {
            offset: batch.end(),
            size: 0,
            tail_crc,
            tail_len,
        };
        let level = self.gzip_level;
        let encoding = tokio::spawn(async move {
            // A few compressions at a time: with many files becoming busy at once, one
            // thread (and compressor state) per file would cost hundreds of MiB for no speed.
            let permit = ENCODERS.acquire().await.ok();
            let data = batch.clone();
            // A failed encoding task (a panic) leaves the raw lines, sent uncompressed.
            let body = tokio::task::spawn_blocking(move || data.encode(level))
                .await
                .ok();
            drop(permit);
            let gzip = body.is_some() && level > 0;
            let body = body.unwrap_or_else(|| batch.data.clone());
            Sealed { batch, body, gzip }
        });
        Sealing { done, encoding }
    }

    /// Hands a batch to the shipper once it is encoded and the file's previous batch was
    /// handed over (`handed`), so the shipper gets a file's batches in order while they are
    /// encoded in parallel. If the shipper has stopped, the ack reports it.
    fn send(&self, sealing: Sealing, handed: &mut Option<oneshot::Receiver<()>>) -> InFlight {
        let (ack, answer) = oneshot::channel();
        let ship = self.ship.clone();
        let previous = handed.take();
        let (done, next) = oneshot::channel::<()>();
        *handed = Some(next);
        tokio::spawn(async move {
            let encoded = sealing.encoding.await;
            if let Some(previous) = previous {
                let _ = previous.await; // Resolves when the previous task ends, however.
            }
            let Ok(sealed) = encoded else {
                return; // Dropping `ack` fails the batch.
            };
            let request = ShipRequest {
                batch: sealed.batch,
                body: sealed.body,
                gzip: sealed.gzip,
                ack,
            };
            // A full queue to the shipper is backpressure; the shipper retries on its own.
            let _ = ship.send(request).await;
            drop(done);
        });
        (answer, sealing.done)
    }

    async fn read(&self, offset: u64, room: Room) -> std::io::Result<Read> {
        let file = self.file.clone();
        let expect = self.fingerprint;
        tokio::task::spawn_blocking(move || read_lines(&file, expect, offset, room))
            .await
            .map_err(std::io::Error::other)?
    }

    fn report_lag(&self, lag: u64) {
        self.lag.set(lag);
    }

    fn acked(&self, done: Ack, size: u64) {
        self.report_lag(size.saturating_sub(done.offset));
        let at = self.clock.now().to_string();
        self.checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked(&self.key, Ack { size, ..done }, &at);
    }

    /// Whether the path no longer names this file (or it was deleted) and it has been
    /// quiet for `rotate_wait` since both were noticed.
    fn rotated_and_quiet(&self, gone_since: &mut Option<Instant>, quiet_since: Instant) -> bool {
        let replaced = self.draining
            || match std::fs::metadata(&self.path) {
                Ok(meta) => FileId::of(&meta) != self.id,
                Err(_) => true,
            };
        let deleted = self.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
        if !(replaced || deleted) {
            *gone_since = None;
            return false;
        }
        let since = *gone_since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.rotate_wait && quiet_since.elapsed() >= self.rotate_wait
    }
}

/// Waits for the oldest in-flight ack (leaving it in the queue); pending forever when
/// nothing is in flight.
async fn wait_ack(in_flight: &mut VecDeque<InFlight>) -> (Result<(), ShipError>, Ack) {
    match in_flight.front_mut() {
        Some((answer, done)) => (answer.await.unwrap_or(Err(ShipError::ShuttingDown)), *done),
        None => std::future::pending().await,
    }
}

/// Moves the open multiline record, if any, into the pending batch.
fn flush_joiner(joiner: &mut Option<Joiner>, pending: &mut Pending) {
    if let Some(joiner) = joiner.as_mut() {
        let done = joiner.flush();
        let end = pending.next_offset() + done.data.len() as u64;
        pending.push(&done.data, done.records, end, Instant::now());
    }
}

/// Size and modification time of an open file.
fn stat_of(file: &File) -> Option<(u64, std::time::SystemTime)> {
    let meta = file.metadata().ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// The poll interval of a file idle for `polls` polls: doubling from `poll_interval` up to
/// 8 times it (2 s by default). File events wake a tailer at once, so polling only bounds
/// the latency where events are missed (NFS, overlay file systems, a full event queue).
fn idle_backoff(poll_interval: Duration, polls: u32) -> Duration {
    poll_interval.saturating_mul(1 << polls.min(3))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn room(bytes: u64) -> Room {
        Room {
            bytes,
            records: 100,
            max_line: 1 << 20,
            alone: true,
            search_from: None,
            before: (0, 0),
        }
    }

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().expect("tmp");
        tmp.write_all(bytes).expect("write");
        let file = File::open(tmp.path()).expect("open");
        (tmp, file)
    }

    #[test]
    fn reads_only_whole_lines_and_resumes_at_the_partial_one() {
        let (mut tmp, file) = file_with(b"one\ntwo\nthr");
        let fp = fingerprint(&file).expect("fp").expect("first line");
        let read = read_lines(&file, fp, 0, room(1 << 20)).expect("read");
        assert_eq!((&read.data[..], read.lines), (&b"one\ntwo\n"[..], 2));
        tmp.write_all(b"ee\n").expect("append");
        let read = read_lines(&file, fp, 8, room(1 << 20)).expect("read");
        assert_eq!(&read.data[..], b"three\n");
    }

    #[test]
    fn a_line_longer_than_the_batch_limit_is_read_whole() {
        let long = format!("{}\nnext\n", "x".repeat(5000));
        let (_tmp, file) = file_with(long.as_bytes());
        let fp = fingerprint(&file).expect("fp").expect("first line");
        let read = read_lines(&file, fp, 0, room(1024)).expect("read");
        assert_eq!(read.lines, 1);
        assert_eq!(read.data.len(), 5001);
    }

    #[test]
    fn a_line_longer_than_max_line_bytes_is_cut_once_its_newline_is_written() {
        let (mut tmp, file) = file_with(b"ok\n");
        let fp = fingerprint(&file).expect("fp").expect("first line");
        tmp.write_all(&[b'x'; 3000]).expect("append");
        let limits = Room {
            max_line: 1000,
            ..room(100)
        };
        let read = read_lines(&file, fp, 3, limits).expect("read");
        assert_eq!(
            (read.lines, read.searched_to),
            (0, Some(3003)),
            "no newline yet"
        );
        tmp.write_all(b"yy\nnext\n").expect("append");
        let busy = Room {
            alone: false,
            search_from: read.searched_to,
            ..limits
        };
        let read = read_lines(&file, fp, 3, busy).expect("read");
        assert_eq!(
            (read.lines, read.searched_to),
            (0, Some(3005)),
            "sent alone, not joined"
        );
        let alone = Room {
            search_from: read.searched_to,
            ..limits
        };
        let read = read_lines(&file, fp, 3, alone).expect("read");
        assert!(read.cut);
        assert_eq!((read.lines, read.end), (1, 3006));
        assert!(read.data.starts_with(&[b'x'; 1000]));
        assert!(
            read.data
                .ends_with(b"line of 3003 bytes, max_line_bytes is 1000]\n")
        );
        let read = read_lines(&file, fp, read.end, limits).expect("read");
        assert_eq!(&read.data[..], b"next\n");
    }

    #[test]
    fn a_line_just_over_the_limit_is_cut_shorter_than_the_bytes_it_stands_for() {
        let (mut tmp, file) = file_with(b"ok\n");
        let fp = fingerprint(&file).expect("fp").expect("first line");
        tmp.write_all(&[b'y'; 1010]).expect("append");
        tmp.write_all(b"\n").expect("append");
        let limits = Room {
            max_line: 1000,
            ..room(100)
        };
        let read = read_lines(&file, fp, 3, limits).expect("read");
        assert!(read.cut);
        assert!(
            (read.data.len() as u64) < read.end - 3,
            "{} bytes",
            read.data.len()
        );
        assert!(
            read.data
                .ends_with(b"line of 1011 bytes, max_line_bytes is 1000]\n")
        );
    }

    #[test]
    fn the_bytes_before_a_resume_offset_are_checked() {
        let (tmp, file) = file_with(b"first\nsecond\n");
        let (crc, len) = tail_check(b"first\nsecond\n");
        assert!(bytes_before_match(&file, 13, len, crc).expect("check"));
        std::fs::write(tmp.path(), b"first\nSECOND\nmore\n").expect("rewrite");
        assert!(!bytes_before_match(&file, 13, len, crc).expect("check"));
        assert!(!bytes_before_match(&file, 5, len, crc).expect("check"));
        assert!(bytes_before_match(&file, 0, 0, 0).expect("nothing to check"));
    }

    #[test]
    fn fingerprint_waits_for_the_first_newline() {
        let (mut tmp, file) = file_with(b"partial");
        assert_eq!(fingerprint(&file).expect("fp"), None);
        tmp.write_all(b" line\nsecond\n").expect("append");
        let fp = fingerprint(&file).expect("fp");
        assert_eq!(
            fp,
            Some(Fingerprint {
                crc: crc32fast::hash(b"partial line\n"),
                len: 13
            })
        );
        let (_other, other) = file_with(b"another first line\n");
        assert_ne!(fingerprint(&other).expect("fp"), fp);
    }

    #[test]
    fn start_at_end_begins_after_the_last_complete_line() {
        let (_tmp, file) = file_with(b"a\nbb\nccc");
        assert_eq!(end_of_last_line(&file, 8).expect("end"), 5);
        let (_tmp, file) = file_with(b"no newline");
        assert_eq!(end_of_last_line(&file, 10).expect("end"), 0);
    }

    #[test]
    fn a_file_rewritten_past_the_offset_is_noticed_by_its_first_line() {
        let (tmp, file) = file_with(b"first\nsecond\n");
        let fp = fingerprint(&file).expect("fp").expect("first line");
        assert!(
            !read_lines(&file, fp, 13, room(1 << 20))
                .expect("read")
                .replaced
        );
        // Truncated and refilled beyond offset 13 between two reads.
        std::fs::write(tmp.path(), b"other\nlines\nthat are longer\n").expect("rewrite");
        assert!(
            read_lines(&file, fp, 13, room(1 << 20))
                .expect("read")
                .replaced
        );
        std::fs::write(tmp.path(), b"").expect("truncate");
        assert!(
            read_lines(&file, fp, 13, room(1 << 20))
                .expect("read")
                .replaced
        );
    }
}
