//! Write-ahead log: the only thing ingest waits for.
//!
//! Input: [`AppendRequest`]s from ingest. Output: records with dense sequence numbers that
//! the buffer stage reads back with a [`Reader`], never past [`Wal::durable`].
//!
//! Durability promise: [`Wal::append`] answers only after the record (or the decision that
//! it is a duplicate) is fsynced. One writer thread does group commit: every request that
//! arrived while the previous fsync ran is written and covered by the next single fsync, so
//! many concurrent agents do not each pay for their own.
//!
//! Exactly-once at the door: the writer keeps, per source, the highest byte offset accepted
//! (the high-water mark). A batch entirely below it is acknowledged as a duplicate without
//! being written; a batch overlapping it is trimmed to the new part. The marks are rebuilt
//! on start from `sources.json` (a snapshot written before old segments are deleted) plus a
//! replay of every remaining segment.
//!
//! On disk, per stream: `<dir>/<first_seq:020>.wal` segments (format in [`record`]) and
//! `<dir>/sources.json`.

mod covered;
pub mod record;
pub mod segment;
mod snapshot;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use record::WalRecord;
pub use segment::{Durable, Reader};

use crate::clock::Clock;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A segment is damaged somewhere other than its torn tail.
    #[error("WAL segment {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
    /// A record that a consumer needs is no longer (or not yet) in the log.
    #[error("WAL record {seq} is missing from {dir}")]
    Missing {
        /// The record.
        seq: u64,
        /// The stream's WAL directory.
        dir: PathBuf,
    },
    /// A batch overlaps what was already accepted, but not at a line boundary.
    #[error(
        "batch for source {source_name} starts at byte {start}, below the accepted high-water mark \
         {high_water}, and the overlap does not end at a line boundary"
    )]
    Misaligned {
        /// The source.
        source_name: String,
        /// Start of the batch's range.
        start: u64,
        /// Highest byte offset already accepted.
        high_water: u64,
    },
    /// The per-source snapshot could not be read.
    #[error(
        "{path}: {reason}; move it aside to start with empty duplicate detection (resent \
         batches of sources older than the WAL would then be written again)"
    )]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The writer thread has stopped.
    #[error("the WAL writer has stopped")]
    Closed,
}

impl WalError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One batch to make durable.
pub struct AppendRequest {
    /// The sender's source name (agent id + file identity).
    pub source: String,
    /// Byte range `[start, end)` of `data` in the source, when known.
    pub range: Option<(u64, u64)>,
    /// `\n`-terminated lines.
    pub data: Bytes,
    /// Number of lines in `data`.
    pub records: u32,
    /// Whatever accounts for `data`'s memory (ingest's share of its budget); dropped only
    /// once the writer is done with the request, even if the requester has gone.
    pub lease: Option<Box<dyn std::any::Any + Send>>,
}

/// What the WAL did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// New lines were written as record `seq`; `skipped_records` were already known.
    Written {
        /// The record's sequence number.
        seq: u64,
        /// Lines written.
        records: u32,
        /// Lines dropped from the front because an earlier batch delivered them.
        skipped_records: u32,
        /// The source's high-water mark after this batch.
        high_water: Option<u64>,
    },
    /// Every line was delivered before; nothing was written.
    Duplicate {
        /// Lines in the batch.
        skipped_records: u32,
        /// The source's high-water mark.
        high_water: u64,
    },
}

type Reply = oneshot::Sender<Result<Appended, WalError>>;

/// What the writer thread is asked to do.
enum Command {
    /// Make a batch durable and answer.
    Append(AppendRequest, Reply),
    /// A consumer moved on: delete the segments every consumer has passed.
    Compact,
}

/// Positions of the stages that read the WAL; segments below all of them may go.
#[derive(Debug)]
pub struct Consumers {
    positions: Mutex<BTreeMap<&'static str, u64>>,
    /// Wakes the writer to delete passed segments even while no batch arrives (ingest may
    /// be refusing batches precisely because the WAL is full). Weak, so that the writer
    /// still stops once every [`Wal`] handle is gone.
    wake: mpsc::WeakSender<Command>,
}

impl Consumers {
    /// Records that `name` has durably handled every record up to and including `seq`.
    pub fn advance(&self, name: &'static str, seq: u64) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = positions.entry(name).or_insert(0);
        *entry = (*entry).max(seq);
        drop(positions);
        // A full queue means the writer is busy and compacts after its next group anyway.
        if let Some(wake) = self.wake.upgrade() {
            let _ = wake.try_send(Command::Compact);
        }
    }

    /// The lowest position over all consumers (0 until each has reported).
    pub fn min(&self) -> u64 {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.values().copied().min().unwrap_or(0)
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Append(request, _) => f.debug_tuple("Append").field(&request.source).finish(),
            Self::Compact => f.write_str("Compact"),
        }
    }
}

/// Bytes the stream's segments take on disk, kept by the writer.
#[derive(Debug, Default)]
pub struct DiskUsage(AtomicU64);

impl DiskUsage {
    /// Bytes on disk now.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

/// Handle to one stream's write-ahead log; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Command>,
    durable: watch::Receiver<Durable>,
    dir: PathBuf,
    first_seq: u64,
    consumers: Arc<Consumers>,
    usage: Arc<DiskUsage>,
    heartbeat: Arc<crate::systemd::Heartbeat>,
}

/// Tuning for [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Start a new segment past this many bytes.
    pub segment_bytes: u64,
    /// Names of the consumers whose positions gate segment deletion.
    pub consumers: Vec<&'static str>,
}

impl Wal {
    /// Recovers the log in `dir` (creating it if needed) and starts the writer thread.
    ///
    /// # Errors
    /// I/O errors, a corrupt segment other than a torn tail, an unreadable snapshot.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, std::thread::JoinHandle<()>), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::io("creating", dir, e))?;
        let recovered = writer::recover(dir)?;
        crate::crashpoint::hit("recovery-wal-scanned");
        let (tx, rx) = mpsc::channel(1024);
        let consumers = Arc::new(Consumers {
            positions: Mutex::default(),
            wake: tx.downgrade(),
        });
        for name in &options.consumers {
            consumers.advance(name, 0);
        }
        let first_seq = recovered.first_seq;
        let usage = Arc::new(DiskUsage::default());
        // The sender is replaced by the writer's own right below; recovery made the log
        // durable up to its valid end.
        let (durable_tx, durable) = watch::channel(Durable::default());
        let writer = writer::Writer::new(
            dir,
            options.segment_bytes,
            recovered,
            durable_tx,
            consumers.clone(),
            usage.clone(),
            clock,
        )?;
        writer.publish_durable();
        let heartbeat = writer.heartbeat();
        let thread = std::thread::Builder::new()
            .name(format!(
                "wal-{}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
            ))
            .spawn(move || writer.run(rx))
            .map_err(|e| WalError::io("starting writer thread for", dir, e))?;
        Ok((
            Self {
                tx,
                durable,
                dir: dir.to_path_buf(),
                first_seq,
                consumers,
                usage,
                heartbeat,
            },
            thread,
        ))
    }

    /// The writer thread's heartbeat, for the watchdog.
    pub fn heartbeat(&self) -> Arc<crate::systemd::Heartbeat> {
        self.heartbeat.clone()
    }

    /// Makes a batch durable (or recognises it as a duplicate) and says which.
    ///
    /// # Errors
    /// I/O errors of the write or fsync (nothing of the batch is kept then),
    /// [`WalError::Misaligned`], [`WalError::Closed`].
    pub async fn append(&self, request: AppendRequest) -> Result<Appended, WalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Append(request, reply))
            .await
            .map_err(|_| WalError::Closed)?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    /// The durable position, updated after every fsync; closes when the writer stops.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// The oldest sequence number still in the log at open time.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// A reader starting at `from_seq`.
    pub fn reader(&self, from_seq: u64) -> Reader {
        Reader::new(&self.dir, from_seq)
    }

    /// The shared consumer positions.
    pub fn consumers(&self) -> Arc<Consumers> {
        self.consumers.clone()
    }

    /// Bytes the segments take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.usage.bytes()
    }

    /// The live count of bytes on disk, for holders that must not keep the writer alive.
    pub fn disk_usage(&self) -> Arc<DiskUsage> {
        self.usage.clone()
    }
}

/// Accepted byte ranges per source.
pub type HighWater = HashMap<String, Covered>;

#[cfg(test)]
mod tests;

pub use covered::Covered;
