//! The writer thread: recovery, duplicate detection, group commit, segment roll-over and
//! deletion.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::covered::Covered;
use super::segment::{self, Durable, Segment};
use super::{
    AppendRequest, Appended, Command, Consumers, DiskUsage, HighWater, Reply, WalError, WalRecord,
    snapshot,
};
use crate::clock::Clock;

/// The byte agents put for a line break inside a multiline record (ASCII record separator).
const INNER_BREAK: u8 = 0x1e;

/// Most requests one fsync covers; bounds the latency of the first request in a group.
const MAX_GROUP: usize = 512;

/// The group buffer's usual size, and the size past which it is given back after use.
const INITIAL_BUFFER: usize = 4 << 20;
const MAX_IDLE_BUFFER: usize = 16 << 20;

/// The state recovery found on disk.
pub struct Recovered {
    pub segments: Vec<Segment>,
    pub high_water: HighWater,
    pub next_seq: u64,
    pub first_seq: u64,
    /// Valid length of the newest segment, where appending continues.
    pub tail_len: u64,
}

/// Rebuilds the high-water marks and finds where to append, cutting a torn tail.
///
/// # Errors
/// I/O errors, corruption anywhere but the newest segment's tail, gaps between segments.
pub fn recover(dir: &Path) -> Result<Recovered, WalError> {
    // Segment files are created empty before being named in any state; drop leftovers of a
    // crash at that moment only if they are empty and last.
    let (mut high_water, snapshot_seq) = snapshot::load(dir)?;
    let mut segments = segment::list(dir)?;
    // An empty newest segment holds nothing (a roll-over that failed or crashed before
    // its first write); dropping it lets appending continue in the one before.
    while segments.len() > 1 && segments.last().is_some_and(|s| is_empty(&s.path)) {
        if let Some(stray) = segments.pop() {
            warn!(path = %stray.path.display(), "Removing an empty WAL segment left by an interrupted roll-over.");
            std::fs::remove_file(&stray.path)
                .map_err(|e| WalError::io("deleting", &stray.path, e))?;
        }
    }
    let mut next_seq = snapshot_seq + 1;
    let mut tail_len = 0;
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        if i > 0 && seg.first_seq != next_seq {
            return Err(WalError::Corrupt {
                path: seg.path.clone(),
                offset: 0,
                reason: format!(
                    "segment starts at {} but the previous one ended at {}",
                    seg.first_seq,
                    next_seq - 1
                ),
            });
        }
        next_seq = seg.first_seq;
        let scan = segment::scan(seg, |record| {
            if let Some((start, end)) = record.range {
                high_water
                    .entry(record.source.clone())
                    .or_default()
                    .insert(start, end);
            }
            next_seq = record.seq + 1;
            Ok(())
        })?;
        if let Some(error) = scan.tail_error {
            // Only the very end of the newest segment can be a torn write; damage with
            // valid-looking data after it means acknowledged records are at stake.
            if !is_last || !scan.torn_tail {
                return Err(WalError::Corrupt {
                    path: seg.path.clone(),
                    offset: scan.valid_len,
                    reason: error.to_string(),
                });
            }
            // A torn tail was never acknowledged: the fsync that would have covered it did
            // not return before the crash.
            warn!(path = %seg.path.display(), valid_bytes = scan.valid_len, torn_bytes = scan.torn_bytes, %error, "Cutting torn tail off the WAL.");
            metrics::counter!("tollstream_collector_wal_torn_bytes_total")
                .increment(scan.torn_bytes);
            segment::truncate(&seg.path, scan.valid_len)?;
        }
        tail_len = scan.valid_len;
    }
    let first_seq = segments.first().map_or(next_seq, |s| s.first_seq);
    if !segments.is_empty() {
        info!(dir = %dir.display(), segments = segments.len(), first_seq, last_seq = next_seq - 1, sources = high_water.len(), "Recovered WAL.");
    }
    Ok(Recovered {
        segments,
        high_water,
        next_seq,
        first_seq,
        tail_len,
    })
}

/// Owns the active segment; runs on its own thread.
pub struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    file: File,
    file_len: u64,
    next_seq: u64,
    high_water: HighWater,
    durable_tx: watch::Sender<Durable>,
    consumers: Arc<Consumers>,
    /// Bytes of the segments before the active one.
    closed_bytes: u64,
    usage: Arc<DiskUsage>,
    clock: Arc<dyn Clock>,
    buf: BytesMut,
    /// Set when the log could not be restored after a failed write; no more writes then.
    poisoned: Option<String>,
    /// Beats while a group is written; parked while waiting for requests.
    heartbeat: Arc<crate::systemd::Heartbeat>,
}

/// What to do with one request in a group.
enum Decision {
    /// Records to write, and how many of the request's lines were already known.
    Write(Vec<WalRecord>, u32),
    Done(Appended),
    Fail(WalError),
}

impl Writer {
    /// Opens (or creates) the newest segment for appending.
    ///
    /// # Errors
    /// I/O errors.
    pub fn new(
        dir: &Path,
        segment_bytes: u64,
        recovered: Recovered,
        durable_tx: watch::Sender<Durable>,
        consumers: Arc<Consumers>,
        usage: Arc<DiskUsage>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, WalError> {
        let Recovered {
            mut segments,
            high_water,
            next_seq,
            tail_len,
            ..
        } = recovered;
        let file = if segments.is_empty() {
            let (segment, file) = create_segment(dir, next_seq)?;
            segments.push(segment);
            file
        } else {
            let active = segments.last().map(|s| s.path.clone()).unwrap_or_default();
            OpenOptions::new()
                .append(true)
                .open(&active)
                .map_err(|e| WalError::io("opening", &active, e))?
        };
        let closed_bytes = segments
            .iter()
            .rev()
            .skip(1)
            .map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len()))
            .sum();
        let writer = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            file,
            file_len: tail_len,
            next_seq,
            high_water,
            durable_tx,
            consumers,
            closed_bytes,
            usage,
            clock,
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            poisoned: None,
            heartbeat: crate::systemd::Heartbeat::new(format!("WAL writer of {}", dir.display())),
        };
        writer.publish_usage();
        Ok(writer)
    }

    fn publish_usage(&self) {
        let bytes = self.closed_bytes + self.file_len;
        self.usage.set(bytes);
        let stream = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        metrics::gauge!("tollstream_collector_wal_disk_bytes", "stream" => stream)
            .set(bytes as f64);
    }

    /// The durable position: everything written so far has been fsynced.
    pub fn durable(&self) -> Durable {
        let segment = self.segments.last().map_or(self.next_seq, |s| s.first_seq);
        Durable {
            seq: self.next_seq - 1,
            segment,
            len: self.file_len,
        }
    }

    /// Tells readers the current durable position.
    pub fn publish_durable(&self) {
        self.durable_tx.send_replace(self.durable());
    }

    /// The heartbeat of [`Writer::run`]: overdue when one round (a group's write and fsync,
    /// segment deletion and roll-over) takes longer than the watchdog allows.
    pub fn heartbeat(&self) -> Arc<crate::systemd::Heartbeat> {
        self.heartbeat.clone()
    }

    /// Serves requests until every [`super::Wal`] handle is dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let heartbeat = self.heartbeat.clone();
        heartbeat.park();
        while let Some(first) = rx.blocking_recv() {
            heartbeat.beat();
            crate::crashpoint::stall("wal-writer");
            let mut compact = false;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(request, reply) => group.push((request, reply)),
                    Command::Compact => compact = true,
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit(&mut group);
            }
            // Passed segments go first: that frees space even when a roll-over cannot
            // create its new segment on a full disk. Checked every round, not only when
            // woken for it, so a lost wake-up cannot leave the WAL full for good.
            if (compact || self.has_consumed_segments())
                && let Err(error) = self.delete_consumed()
            {
                warn!(%error, "Deleting consumed WAL segments failed; will try again.");
            }
            if self.file_len >= self.segment_bytes
                && let Err(error) = self.roll_over()
            {
                warn!(%error, "WAL segment roll-over failed; continuing in the current segment.");
            }
            if self.buf.capacity() > MAX_IDLE_BUFFER {
                // One large group should not pin its size for the life of the process.
                self.buf = BytesMut::with_capacity(INITIAL_BUFFER);
            }
            self.publish_usage();
            heartbeat.park();
        }
        info!(dir = %self.dir.display(), last_seq = self.next_seq - 1, "WAL writer stopped.");
    }

    /// Writes a group with one fsync and answers every request in it.
    fn commit(&mut self, group: &mut Vec<(AppendRequest, Reply)>) {
        if self.poisoned.is_some() && self.file.set_len(self.file_len).is_ok() {
            // The cut that failed has now succeeded: the segment ends where it should.
            info!(dir = %self.dir.display(), "WAL cut back after an earlier failure; accepting writes again.");
            self.poisoned = None;
        }
        if let Some(reason) = &self.poisoned {
            for (_, reply) in group.drain(..) {
                let source = std::io::Error::other(format!(
                    "WAL stopped after an earlier failure: {reason}"
                ));
                let _ = reply.send(Err(WalError::io("writing", &self.dir, source)));
            }
            return;
        }
        self.buf.clear();
        let start_seq = self.next_seq;
        let received_at_us = self.clock.now().as_microsecond();
        let mut undo: Vec<(String, Option<Covered>)> = Vec::new();
        let mut decisions = Vec::with_capacity(group.len());
        for (request, _) in group.iter() {
            let decision = self.decide(request, received_at_us, &mut undo);
            if let Decision::Write(records, _) = &decision {
                for record in records {
                    record.encode_into(&mut self.buf);
                }
            }
            decisions.push(decision);
        }
        let result = if self.buf.is_empty() {
            Ok(())
        } else {
            self.write_and_sync()
        };
        match result {
            Ok(()) => {
                self.file_len += self.buf.len() as u64;
                if self.next_seq != start_seq {
                    self.durable_tx.send_replace(self.durable());
                }
                for ((_, reply), decision) in group.drain(..).zip(decisions) {
                    let answer = match decision {
                        Decision::Write(records, skipped) => {
                            let source = records.first().map(|r| r.source.as_str());
                            Ok(Appended::Written {
                                seq: records.last().map_or(0, |r| r.seq),
                                records: records.iter().map(|r| r.records).sum(),
                                skipped_records: skipped,
                                high_water: records.iter().any(|r| r.range.is_some()).then(|| {
                                    source
                                        .and_then(|s| self.high_water.get(s))
                                        .map_or(0, Covered::high_water)
                                }),
                            })
                        }
                        Decision::Done(appended) => Ok(appended),
                        Decision::Fail(error) => Err(error),
                    };
                    let _ = reply.send(answer); // The requester may have gone; nothing to do.
                }
            }
            Err(error) => {
                // Nothing of this group is acknowledged: cut the file back and forget the
                // marks it set, so the agents' retries are written, not taken as duplicates.
                warn!(%error, requests = group.len(), "WAL write failed; the batches will be retried by their senders.");
                metrics::counter!("tollstream_collector_wal_write_errors_total").increment(1);
                if let Err(cut) = self.file.set_len(self.file_len) {
                    // Appending after bytes of unknown state would bury them mid-segment.
                    tracing::error!(error = %cut, "Could not cut the WAL back after a failed write; refusing writes until the cut succeeds (tried again with every batch; a restart's recovery also cuts the torn tail).");
                    self.poisoned = Some(cut.to_string());
                }
                for (source, previous) in undo.into_iter().rev() {
                    match previous {
                        Some(mark) => self.high_water.insert(source, mark),
                        None => self.high_water.remove(&source),
                    };
                }
                self.next_seq = start_seq;
                let message = error.to_string();
                // The kind travels to every requester, so a full disk is told as such.
                let kind = match &error {
                    WalError::Io { source, .. } => source.kind(),
                    _ => std::io::ErrorKind::Other,
                };
                for (_, reply) in group.drain(..) {
                    let source = std::io::Error::new(kind, message.clone());
                    let _ = reply.send(Err(WalError::io("writing", &self.dir, source)));
                }
            }
        }
    }

    fn write_and_sync(&mut self) -> Result<(), WalError> {
        let started = tokio::time::Instant::now();
        let path = self
            .segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        self.file
            .write_all(&self.buf)
            .map_err(|e| WalError::io("writing", &path, e))?;
        crate::crashpoint::hit("wal-written");
        self.file
            .sync_data()
            .map_err(|e| WalError::io("syncing", &path, e))?;
        crate::crashpoint::hit("wal-synced");
        metrics::histogram!("tollstream_collector_wal_fsync_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("tollstream_collector_wal_bytes_total").increment(self.buf.len() as u64);
        Ok(())
    }

    /// Applies duplicate detection to one request and assigns sequence numbers to what is
    /// new in it: one record per range of it not yet accepted (usually one; several when
    /// a resend spans batches that arrived out of order).
    fn decide(
        &mut self,
        request: &AppendRequest,
        received_at_us: i64,
        undo: &mut Vec<(String, Option<Covered>)>,
    ) -> Decision {
        let Some((start, end)) = request.range else {
            if request.data.is_empty() {
                return Decision::Done(Appended::Duplicate {
                    skipped_records: 0,
                    high_water: 0,
                });
            }
            let record = self.record(
                request,
                received_at_us,
                None,
                request.data.clone(),
                request.records,
            );
            return Decision::Write(vec![record], 0);
        };
        let previous = self.high_water.get(&request.source).cloned();
        let covered = previous.clone().unwrap_or_default();
        let parts = covered.uncovered(start, end);
        if parts.is_empty() {
            return Decision::Done(Appended::Duplicate {
                skipped_records: request.records,
                high_water: covered.high_water(),
            });
        }
        // A line cut by the agent stands for more bytes than it holds: all or nothing.
        let whole = end - start == request.data.len() as u64;
        if !whole && parts != [(start, end)] {
            return Decision::Fail(WalError::Misaligned {
                source_name: request.source.clone(),
                start,
                high_water: covered.high_water(),
            });
        }
        let mut slices = Vec::with_capacity(parts.len());
        let mut written = 0u32;
        for &(a, b) in &parts {
            let (from, to) = if whole {
                ((a - start) as usize, (b - start) as usize)
            } else {
                (0, request.data.len())
            };
            let data = &request.data;
            // A cut may also fall inside a multiline record (at one of its inner breaks): a
            // record the agent sent in parts before (flushed by time) and whole after a
            // restart. The part not held yet becomes a record of its own.
            let boundary = |at: usize| matches!(data.get(at), Some(b'\n' | &INNER_BREAK));
            let at_line_start = from == 0 || boundary(from - 1);
            let at_line_end = to == data.len() || boundary(to - 1);
            if !(at_line_start && at_line_end) {
                return Decision::Fail(WalError::Misaligned {
                    source_name: request.source.clone(),
                    start,
                    high_water: covered.high_water(),
                });
            }
            let mut slice = data.slice(from..to);
            if slice.last() == Some(&INNER_BREAK) {
                let mut owned = slice.to_vec();
                if let Some(last) = owned.last_mut() {
                    *last = b'\n';
                }
                slice = bytes::Bytes::from(owned);
            }
            let lines = memchr::memchr_iter(b'\n', &slice).count() as u32;
            written += lines;
            slices.push(((a, b), slice, lines));
        }
        let mut next = covered;
        let mut gave_up = false;
        for &(a, b) in &parts {
            gave_up |= next.insert(a, b);
        }
        if gave_up {
            warn!(source = %request.source, max = super::covered::MAX_INTERVALS, "Too many gaps in one source's accepted ranges; the oldest is taken as delivered.");
            metrics::counter!("tollstream_collector_wal_gaps_given_up_total").increment(1);
        }
        undo.push((request.source.clone(), previous));
        self.high_water.insert(request.source.clone(), next);
        let records = slices
            .into_iter()
            .map(|(range, data, lines)| {
                self.record(request, received_at_us, Some(range), data, lines)
            })
            .collect();
        Decision::Write(records, request.records.saturating_sub(written))
    }

    /// A new WAL record with the next sequence number.
    fn record(
        &mut self,
        request: &AppendRequest,
        received_at_us: i64,
        range: Option<(u64, u64)>,
        data: bytes::Bytes,
        records: u32,
    ) -> WalRecord {
        let record = WalRecord {
            seq: self.next_seq,
            received_at_us,
            source: request.source.clone(),
            range,
            records,
            data,
        };
        self.next_seq += 1;
        record
    }

    /// Starts a new segment, then deletes old ones every consumer has passed.
    fn roll_over(&mut self) -> Result<(), WalError> {
        // Switch only once the new segment exists, is open and its name is durable; a
        // half-made one is removed, and writing goes on in the current segment.
        let (segment, file) = create_segment(&self.dir, self.next_seq)?;
        self.segments.push(segment);
        self.file = file;
        self.closed_bytes += self.file_len;
        self.file_len = 0;
        self.delete_consumed()
    }

    /// Whether some segment before the active one has been passed by every consumer.
    fn has_consumed_segments(&self) -> bool {
        self.segments
            .get(1)
            .is_some_and(|next| next.first_seq - 1 <= self.consumers.min())
    }

    fn delete_consumed(&mut self) -> Result<(), WalError> {
        let consumed = self.consumers.min();
        // Segment i ends just before segment i+1 starts; the active one is never deleted.
        let deletable = self
            .segments
            .windows(2)
            .take_while(|w| w[1].first_seq - 1 <= consumed)
            .count();
        if deletable == 0 {
            return Ok(());
        }
        // The marks of the records about to go must outlive them.
        snapshot::store(&self.dir, &self.high_water, self.next_seq - 1)?;
        crate::crashpoint::hit("wal-snapshot-stored");
        for _ in 0..deletable {
            let path = self.segments[0].path.clone();
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            std::fs::remove_file(&path).map_err(|e| WalError::io("deleting", &path, e))?;
            self.closed_bytes = self.closed_bytes.saturating_sub(len);
            self.segments.remove(0);
            info!(path = %path.display(), "Deleted consumed WAL segment.");
        }
        crate::fsutil::sync_dir(&self.dir).map_err(|e| WalError::io("syncing", &self.dir, e))
    }
}

/// Creates an empty segment, open for appending, with its directory entry durable.
fn create_segment(dir: &Path, first_seq: u64) -> Result<(Segment, File), WalError> {
    let path = segment::segment_path(dir, first_seq);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| WalError::io("creating", &path, e))?;
    if let Err(e) = crate::fsutil::sync_dir(dir) {
        drop(file);
        let _ = std::fs::remove_file(&path); // Best effort; recovery drops an empty stray.
        return Err(WalError::io("syncing", dir, e));
    }
    Ok((Segment { first_seq, path }, file))
}

fn is_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == 0)
}
