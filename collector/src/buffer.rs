//! Buffer: gathers durable WAL records of one stream and cuts them into archive objects.
//!
//! Input: the stream's WAL, read from just after the last archived record, never past the
//! durable position. Output: [`ArchiveObject`]s, sent to the loader in sequence order.
//!
//! Firehose-style hints decide when to cut: once `max_bytes` of lines are buffered, or once
//! the oldest buffered record has waited `max_age`. The cut itself is deterministic in what
//! matters: an object always holds a run of consecutive WAL records and is named by it.
//!
//! Durability: the buffer holds nothing that is not already in the WAL. After writing an
//! object it records its position in `<state>/archive.pos` and tells the WAL it may delete
//! what the object covers. After a crash between the object's rename and that record, the
//! start-up check finds the object by its name, records the position after it (before the
//! WAL may delete what the object covers) and moves past it instead of cutting an
//! overlapping one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::archive::{Archive, ArchiveObject, MAX_INDEX_BYTES, index_entry_bound};
use crate::config::BufferConfig;
use crate::wal::{Consumers, Durable, Reader, WalRecord};

/// The consumer name this stage uses for WAL positions.
pub const CONSUMER: &str = "archive";

/// Wait before retrying a failed archive write (full disk, permissions).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Cuts archive objects from one stream's WAL.
pub struct Buffer {
    /// Stream name.
    pub stream: String,
    /// Hints.
    pub config: BufferConfig,
    /// Where objects go.
    pub archive: Archive,
    /// Reads the WAL.
    pub reader: Reader,
    /// The WAL's durable position; closes when the WAL writer stops.
    pub durable: watch::Receiver<Durable>,
    /// Where to report progress.
    pub consumers: Arc<Consumers>,
    /// The position file.
    pub position_file: PathBuf,
    /// Objects for the loader.
    pub objects: mpsc::Sender<ArchiveObject>,
    /// The last archived sequence number, published after each object is offered to
    /// `objects` (so a loader that finds the queue empty and this ahead knows objects were
    /// left in the archive for it).
    pub archived: watch::Sender<u64>,
}

/// Reads the last archived sequence number from the position file (0 when absent).
///
/// # Errors
/// An unreadable or damaged file.
pub fn load_position(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; it should hold the last archived WAL sequence number",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// Writes the last archived sequence number to the position file, atomically.
///
/// # Errors
/// I/O errors; the previous position is still in place then.
pub fn store_position(path: &Path, seq: u64) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(path, seq.to_string().as_bytes())
        .map_err(|e| anyhow::Error::new(e).context(format!("writing {}", path.display())))
}

/// Moves `position` past objects that were written but not yet recorded (a crash right
/// after a rename), so the next object starts where the archive really ends, and records
/// the new position in `position_file` before returning it.
///
/// Recording it matters: the caller then lets the WAL delete the segments the adopted
/// objects cover, and a position file left behind would, after the next crash, point into
/// the middle of an adopted object, where no object starts — the records after it would be
/// archived (and loaded) a second time.
///
/// # Errors
/// WAL read errors; the position file cannot be written.
pub fn adopt_written_objects(
    stream: &str,
    archive: &Archive,
    reader: &mut Reader,
    durable: Durable,
    position: u64,
    position_file: &Path,
) -> anyhow::Result<u64> {
    let adopted = find_written_objects(stream, archive, reader, durable, position)?;
    if adopted != position {
        store_position(position_file, adopted)?;
    }
    Ok(adopted)
}

fn find_written_objects(
    stream: &str,
    archive: &Archive,
    reader: &mut Reader,
    durable: Durable,
    mut position: u64,
) -> anyhow::Result<u64> {
    loop {
        let Some(next) = reader.next(durable)? else {
            return Ok(position);
        };
        let received =
            Timestamp::from_microsecond(next.received_at_us).unwrap_or(Timestamp::UNIX_EPOCH);
        match archive.find_starting_at(stream, next.seq, received) {
            Some(object) => {
                info!(stream, path = %object.path.display(), "Found an archive object written before the last stop; continuing after it.");
                position = object.last_seq;
                *reader = Reader::new(reader.dir(), position + 1);
            }
            None => {
                *reader = Reader::new(reader.dir(), position + 1);
                return Ok(position);
            }
        }
    }
}

/// Records waiting to be cut into an object.
#[derive(Default)]
struct Pending {
    records: Vec<WalRecord>,
    bytes: u64,
    /// Upper bound on the object's index size.
    index_bytes: u64,
    since: Option<Instant>,
}

impl Pending {
    /// Whether the object is as large as it may get: by the size hint, or because one more
    /// record could push its index past what gzip headers hold.
    fn is_full(&self, max_bytes: u64) -> bool {
        self.bytes >= max_bytes || self.index_bytes + MAX_ENTRY_BYTES > MAX_INDEX_BYTES
    }

    fn push(&mut self, record: WalRecord) {
        self.since.get_or_insert_with(Instant::now);
        self.bytes += record.data.len() as u64;
        self.index_bytes += index_entry_bound(record.source.len());
        self.records.push(record);
    }
}

/// The largest index entry a record can need (sources are capped at ingest).
const MAX_ENTRY_BYTES: u64 = 2 * crate::ingest::MAX_SOURCE_LEN as u64 + 176;

impl Buffer {
    /// Runs until the WAL writer stops, then cuts what is left and returns.
    ///
    /// # Errors
    /// WAL corruption or missing records (archive write errors are retried).
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut pending = Pending::default();
        let mut open = true;
        // Set once per pass (per WAL group write at most), not per record.
        let fill =
            metrics::gauge!("tollstream_collector_buffer_bytes", "stream" => self.stream.clone());
        loop {
            let durable = *self.durable.borrow_and_update();
            self.read_available(durable, &mut pending).await?;
            fill.set(pending.bytes as f64);
            let full = pending.is_full(self.config.max_bytes);
            let aged = pending
                .since
                .is_some_and(|t| t.elapsed() >= self.config.max_age);
            if full || aged || (!open && !pending.records.is_empty()) {
                self.cut(&mut pending).await;
                continue;
            }
            if !open {
                info!(stream = %self.stream, "Buffer drained.");
                return Ok(());
            }
            let deadline = pending.since.map(|t| t + self.config.max_age);
            tokio::select! {
                changed = self.durable.changed() => open = changed.is_ok(),
                () = sleep_until(deadline) => {}
            }
        }
    }

    /// Moves every durable record into `pending`, stopping early when it is full.
    async fn read_available(
        &mut self,
        durable: Durable,
        pending: &mut Pending,
    ) -> anyhow::Result<()> {
        let max_bytes = self.config.max_bytes;
        let placeholder = Reader::new(self.reader.dir(), 0);
        let mut reader = std::mem::replace(&mut self.reader, placeholder);
        let mut batch = std::mem::take(pending);
        let (reader, batch, result) = tokio::task::spawn_blocking(move || {
            while !batch.is_full(max_bytes) {
                match reader.next(durable) {
                    Ok(Some(record)) => batch.push(record),
                    Ok(None) => break,
                    Err(e) => return (reader, batch, Err(e)),
                }
            }
            (reader, batch, Ok(()))
        })
        .await?;
        self.reader = reader;
        *pending = batch;
        Ok(result?)
    }

    /// Writes `pending` as one object, retrying until it succeeds, then hands it on.
    async fn cut(&mut self, pending: &mut Pending) {
        let records = std::mem::take(pending).records;
        let records = Arc::new(records);
        let object = loop {
            let (archive, stream, batch) =
                (self.archive.clone(), self.stream.clone(), records.clone());
            let position_file = self.position_file.clone();
            let written = tokio::task::spawn_blocking(move || {
                let object = archive.write(&stream, &batch)?;
                crate::crashpoint::hit("archive-renamed");
                store_position(&position_file, object.last_seq)?;
                crate::crashpoint::hit("archive-position-written");
                anyhow::Ok(object)
            })
            .await;
            match written {
                Ok(Ok(object)) => break object,
                Ok(Err(error)) => {
                    warn!(stream = %self.stream, error = format!("{error:#}"), "Archive write failed; retrying.")
                }
                Err(error) => {
                    warn!(stream = %self.stream, %error, "Archive task failed; retrying.")
                }
            }
            metrics::counter!("tollstream_collector_archive_errors_total", "stream" => self.stream.clone())
                .increment(1);
            tokio::time::sleep(RETRY_DELAY).await;
        };
        let lines: u64 = records.iter().map(|r| u64::from(r.records)).sum();
        debug!(stream = %self.stream, path = %object.path.display(), lines, "Archived.");
        metrics::counter!("tollstream_collector_archive_objects_total", "stream" => self.stream.clone())
            .increment(1);
        metrics::counter!("tollstream_collector_archive_records_total", "stream" => self.stream.clone())
            .increment(lines);
        self.consumers.advance(CONSUMER, object.last_seq);
        // Never waits for the loader: while the warehouse is slow or down the archive keeps
        // growing (and the WAL keeps shrinking); a loader that missed objects finds them
        // in the archive.
        let last_seq = object.last_seq;
        match self.objects.try_send(object) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                warn!(stream = %self.stream, "Loader has stopped; the archived object will be loaded at the next start.");
            }
        }
        self.archived.send_replace(last_seq);
    }
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
    use bytes::Bytes;

    fn record(seq: u64, source: &str) -> WalRecord {
        WalRecord {
            seq,
            received_at_us: 0,
            source: source.into(),
            range: Some((0, 2)),
            records: 1,
            data: Bytes::from_static(b"x\n"),
        }
    }

    /// What the collector does at start (`lib.rs`): the position file, at least the record
    /// before the WAL's oldest, then past any object written but not recorded.
    fn start_position(wal: &crate::wal::Wal, archive: &Archive, file: &Path) -> u64 {
        let position = load_position(file)
            .expect("position")
            .max(wal.first_seq() - 1);
        let mut reader = wal.reader(position + 1);
        let durable = *wal.durable().borrow();
        adopt_written_objects("s", archive, &mut reader, durable, position, file).expect("adopt")
    }

    #[tokio::test]
    async fn an_adopted_object_is_recorded_before_the_wal_may_delete_what_it_covers() {
        use crate::wal::{AppendRequest, Wal, WalOptions};
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal_dir, file) = (dir.path().join("wal"), dir.path().join("s.archive.pos"));
        let archive = Archive::new(&dir.path().join("archive"));
        let data = Bytes::from_static(b"x\n");
        let frame = {
            let mut buf = bytes::BytesMut::new();
            WalRecord {
                range: Some((0, 2)),
                data: data.clone(),
                ..record(1, "a/1")
            }
            .encode_into(&mut buf);
            buf.len() as u64
        };
        // Two records per segment: [1 2] [3 4] [5 6] ...
        let options = WalOptions {
            segment_bytes: 2 * frame,
            consumers: vec![CONSUMER],
        };
        let open = || {
            Wal::open(
                &wal_dir,
                options.clone(),
                Arc::new(crate::clock::SystemClock),
            )
        };
        let append = |wal: &Wal, n: u64| {
            let wal = wal.clone();
            async move {
                let request = AppendRequest {
                    source: "a/1".into(),
                    range: Some((2 * n, 2 * n + 2)),
                    data: Bytes::from_static(b"x\n"),
                    records: 1,
                    lease: None,
                };
                wal.append(request).await.expect("appended");
            }
        };
        let (wal, thread) = open().expect("opens");
        for n in 0..6 {
            append(&wal, n).await;
        }
        let records: Vec<WalRecord> = {
            let mut reader = wal.reader(1);
            let durable = *wal.durable().borrow();
            std::iter::from_fn(|| reader.next(durable).expect("reads")).collect()
        };
        // Object 1 is recorded; object 2-3, which spans a segment boundary, is renamed into
        // place when the collector dies, before its position is written.
        archive.write("s", &records[0..1]).expect("object 1");
        store_position(&file, 1).expect("position");
        archive.write("s", &records[1..3]).expect("object 2-3");
        drop(wal);
        thread.join().expect("writer stops");

        // The next start adopts object 2-3 and lets the WAL delete what it covers: the
        // segment [1 2] goes at the next roll-over, [3 4] stays.
        let (wal, thread) = open().expect("opens");
        assert_eq!(start_position(&wal, &archive, &file), 3);
        wal.consumers().advance(CONSUMER, 3);
        for n in 6..8 {
            append(&wal, n).await;
        }
        assert!(
            matches!(
                wal.reader(1).next(*wal.durable().borrow()),
                Err(crate::wal::WalError::Missing { seq: 1, .. })
            ),
            "segment [1 2] is deleted"
        );
        drop(wal);
        thread.join().expect("writer stops");

        // It dies again before cutting anything. Its WAL now starts at 3, inside object 2-3:
        // only the recorded position says where the archive ends.
        let (wal, thread) = open().expect("opens");
        assert_eq!(wal.first_seq(), 3);
        assert_eq!(
            start_position(&wal, &archive, &file),
            3,
            "the next object starts after 2-3, not inside it"
        );
        drop(wal);
        thread.join().expect("writer stops");
    }

    #[tokio::test]
    async fn many_small_records_are_cut_before_the_index_outgrows_a_gzip_header() {
        let mut pending = Pending::default();
        let source = format!("booth-{}/1a2b3c-deadbeef-0", "x".repeat(40));
        let mut seq = 0;
        while !pending.is_full(8 << 20) {
            seq += 1;
            pending.push(record(seq, &source));
        }
        assert!(seq > 100, "{seq} records fit");
        // The object these records make can be written and read back.
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(dir.path());
        let object = archive.write("s", &pending.records).expect("written");
        let (index, _) = Archive::read(&object.path).expect("readable");
        assert_eq!(index.len() as u64, seq);
    }
}
