//! Warehouse: loads archive objects, each exactly once, in one transaction with its
//! manifest row.
//!
//! Input: [`ArchiveObject`]s from the buffer, plus on start every object the manifest does
//! not hold yet. Output: rows in the stream's table, rejected lines in `rejected_records`
//! and in the object's errors object in the archive (`errors/…`, see [`crate::archive`]),
//! one row per object in `loads`.
//!
//! Exactly once: the manifest row (unique per stream and first sequence) commits in the
//! same transaction as the rows, so an object is either fully loaded and recorded or not at
//! all; loading it again finds the manifest row and does nothing. Inside the table, the
//! stream's natural key catches duplicates that arrived without a byte range.
//!
//! The errors object is written (durably) before the transaction commits, so a load the
//! manifest records always has it; a load that fails after writing it leaves it behind, and
//! the retry rewrites it with the same name and content. Failing to write it fails the load,
//! which is retried like any other failure.
//!
//! A failing warehouse (locked, full, down) is retried with backoff, never skipped: the
//! objects wait in the archive.

pub mod migrate;
pub mod pg_tls;
mod postgres;
pub mod progress;
mod sqlite;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use postgres::PostgresWarehouse;
pub use progress::LoadProgress;
pub use sqlite::SqliteWarehouse;

use crate::archive::{Archive, ArchiveObject, IndexEntry, RejectedLine};
use crate::schema::Schema;

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The database refused or failed.
    #[error("warehouse {action}: {source}")]
    Sqlite {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL refused or failed, or could not be reached.
    #[error("warehouse {action}: {}", pg_error_message(.error))]
    Postgres {
        /// What was being done.
        action: &'static str,
        /// The error.
        error: tokio_postgres::Error,
    },
    /// The stream table, or the warehouse's own tables, cannot take this config's rows
    /// without changing what stored values mean; nothing was changed.
    #[error("warehouse schema: {0}")]
    Incompatible(String),
    /// A value the warehouse cannot hold.
    #[error("warehouse: {0}")]
    Invalid(String),
    /// The object could not be read.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
}

/// A tokio-postgres error with its cause (the server's message, or the I/O error), which
/// its own `Display` leaves out.
pub fn pg_error_message(error: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match (error.as_db_error(), error.source()) {
        (Some(db), _) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        (None, Some(cause)) => format!("{error}: {cause}"),
        (None, None) => error.to_string(),
    }
}

/// One object to load.
pub struct LoadJob<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Target table.
    pub table: &'a str,
    /// How lines become rows.
    pub schema: &'a Schema,
    /// The object's name relative to the archive root (manifest key).
    pub object: String,
    /// First WAL sequence in the object.
    pub first_seq: u64,
    /// Last WAL sequence in the object.
    pub last_seq: u64,
    /// Index from the object's header.
    pub index: Vec<IndexEntry>,
    /// The object's lines.
    pub data: Vec<u8>,
    /// Where the object's rejected lines are written before the load commits.
    pub archive: &'a Archive,
}

/// One line of a [`LoadJob`] with where it came from.
pub struct SourceLine<'a> {
    /// Source name.
    pub source: &'a str,
    /// Byte offset of the line in the source, when known.
    pub offset: Option<u64>,
    /// When the collector accepted it, formatted as the warehouse stores times.
    pub received_at: &'a str,
    /// The line without its `\n`.
    pub line: &'a [u8],
}

impl LoadJob<'_> {
    /// Receive time of the newest record, as the warehouse stores times.
    pub fn newest_received_at(&self) -> Option<String> {
        let newest = self.index.iter().map(|e| e.received_at_us).max()?;
        Timestamp::from_microsecond(newest)
            .ok()
            .map(crate::schema::format_timestamp)
    }

    /// Calls `visit` for every line in order.
    pub fn for_each_line<E>(
        &self,
        mut visit: impl FnMut(SourceLine<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for record in self.records() {
            record.try_for_each_line(&mut visit)?;
        }
        Ok(())
    }

    /// The object's WAL records in order, each with its lines.
    pub fn records(&self) -> impl Iterator<Item = RecordLines<'_>> {
        let mut at = 0usize;
        self.index.iter().map(move |entry| {
            let end = at + entry.bytes as usize;
            let data = &self.data[at..end];
            at = end;
            RecordLines {
                source: &entry.source,
                start: entry.start,
                // Formatted once per WAL record, not once per line.
                received_at: crate::schema::format_timestamp(
                    Timestamp::from_microsecond(entry.received_at_us)
                        .unwrap_or(Timestamp::UNIX_EPOCH),
                ),
                data,
            }
        })
    }

    /// Writes the object's rejected lines (if any) to its errors object in the archive.
    /// Backends call this after the rows are written and before the commit.
    ///
    /// # Errors
    /// I/O errors; the backend must then not commit.
    pub fn write_rejected(
        &self,
        rejected: &[RejectedLine],
    ) -> Result<Option<PathBuf>, WarehouseError> {
        if rejected.is_empty() {
            return Ok(None);
        }
        let first_received_at_us = self.index.first().map_or(0, |e| e.received_at_us);
        let object = self.archive.write_rejected(
            self.stream,
            (self.first_seq, self.last_seq),
            first_received_at_us,
            rejected,
        )?;
        Ok(Some(object.path))
    }
}

/// The lines of one WAL record in a [`LoadJob`].
pub struct RecordLines<'a> {
    /// Source name.
    pub source: &'a str,
    /// Byte offset of the first line in the source, when known.
    pub start: Option<u64>,
    /// When the collector accepted it, formatted as the warehouse stores times.
    pub received_at: String,
    /// The lines, each ending in `\n`.
    pub data: &'a [u8],
}

impl RecordLines<'_> {
    /// Calls `visit` for every line in order.
    pub fn for_each_line(&self, mut visit: impl FnMut(SourceLine<'_>)) {
        let _ = self.try_for_each_line(|line| {
            visit(line);
            Ok::<(), ()>(())
        });
    }

    /// Calls `visit` for every line in order, stopping at its first error.
    ///
    /// # Errors
    /// The first error `visit` returns.
    pub fn try_for_each_line<E>(
        &self,
        mut visit: impl FnMut(SourceLine<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut line_start = 0usize;
        for nl in memchr::memchr_iter(b'\n', self.data) {
            visit(SourceLine {
                source: self.source,
                offset: self.start.map(|s| s + line_start as u64),
                received_at: &self.received_at,
                line: &self.data[line_start..nl],
            })?;
            line_start = nl + 1;
        }
        Ok(())
    }
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// The object was in the manifest already; nothing was written.
    pub already_loaded: bool,
    /// Rows inserted.
    pub inserted: u64,
    /// Lines whose natural key was already in the table.
    pub duplicates: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// The errors object holding the rejected lines, when there were any.
    pub errors_object: Option<PathBuf>,
}

/// A warehouse backend. Calls run on a blocking thread.
pub trait Warehouse: Send + 'static {
    /// Creates the stream's table and indexes if missing, or brings the table to the
    /// config's definition (see [`migrate`]), recording the new version.
    ///
    /// # Errors
    /// Database errors; [`WarehouseError::Incompatible`] for a change that is refused.
    fn prepare(&mut self, stream: &str, table: &str, schema: &Schema)
    -> Result<(), WarehouseError>;

    /// The last WAL sequence number of `stream` that the manifest holds (0 if none).
    ///
    /// # Errors
    /// Database errors.
    fn last_loaded(&mut self, stream: &str) -> Result<u64, WarehouseError>;

    /// The receive time of the newest record in `stream`'s newest manifest row, as the
    /// warehouse stores times (`None` if nothing was loaded): where freshness starts from
    /// when the collector starts. The default knows nothing.
    ///
    /// # Errors
    /// Database errors.
    fn newest_received_at(&mut self, stream: &str) -> Result<Option<String>, WarehouseError> {
        let _ = stream;
        Ok(None)
    }

    /// Loads one object atomically with its manifest row, writing its rejected lines with
    /// [`LoadJob::write_rejected`] before committing.
    ///
    /// # Errors
    /// Database errors, or the errors object could not be written; nothing of the object
    /// is visible in the warehouse then.
    fn load(&mut self, job: &LoadJob<'_>) -> Result<LoadOutcome, WarehouseError>;

    /// Inserts `alert` into the `alerts` table, with `document` (its JSON, exactly as the
    /// other targets receive it) in the `document` column. Idempotent: an alert whose id is
    /// already in the table is left as it is.
    ///
    /// # Errors
    /// Database errors; a value or threshold that is not a decimal number.
    fn record_alert(
        &mut self,
        alert: &crate::alerts::Alert,
        document: &str,
    ) -> Result<(), WarehouseError>;
}

impl<W: Warehouse + ?Sized> Warehouse for Box<W> {
    fn prepare(
        &mut self,
        stream: &str,
        table: &str,
        schema: &Schema,
    ) -> Result<(), WarehouseError> {
        (**self).prepare(stream, table, schema)
    }

    fn last_loaded(&mut self, stream: &str) -> Result<u64, WarehouseError> {
        (**self).last_loaded(stream)
    }

    fn newest_received_at(&mut self, stream: &str) -> Result<Option<String>, WarehouseError> {
        (**self).newest_received_at(stream)
    }

    fn load(&mut self, job: &LoadJob<'_>) -> Result<LoadOutcome, WarehouseError> {
        (**self).load(job)
    }

    fn record_alert(
        &mut self,
        alert: &crate::alerts::Alert,
        document: &str,
    ) -> Result<(), WarehouseError> {
        (**self).record_alert(alert, document)
    }
}

/// Loads one stream's archive objects.
pub struct Loader<W: Warehouse> {
    /// Stream name.
    pub stream: String,
    /// Target table.
    pub table: String,
    /// Line format.
    pub schema: Arc<Schema>,
    /// The archive root, to name objects in the manifest.
    pub archive_root: PathBuf,
    /// The archive, to find objects not yet loaded on start.
    pub archive: Archive,
    /// The backend, shared between streams.
    pub warehouse: Arc<Mutex<W>>,
    /// New objects from the buffer.
    pub objects: mpsc::Receiver<ArchiveObject>,
    /// Where the loader reports what it loaded and what fails (gauges, `/readyz`).
    pub progress: Arc<LoadProgress>,
    /// The last sequence number the buffer has archived (published after the object is in
    /// place and offered to `objects`): what the loader finds in the archive when the
    /// queue was full.
    pub archived: tokio::sync::watch::Receiver<u64>,
    /// Cancelled when the collector stops. A loader with a working warehouse still loads
    /// what the buffer queues until the buffer ends; one whose warehouse fails gives up at
    /// once instead of retrying through the shutdown grace period.
    pub stopping: CancellationToken,
}

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

impl<W: Warehouse> Loader<W> {
    /// Catches up with the archive, then loads objects as they come, until the buffer stops.
    ///
    /// # Errors
    /// Only if the blocking pool is gone; load failures are retried.
    pub async fn run(mut self) -> anyhow::Result<()> {
        // Everything archived up to here was renamed into place before the listing below
        // starts, so the listing cannot miss any of it (a directory read may or may not
        // show files added while it runs: what comes later arrives through the queue).
        let bound = *self.archived.borrow();
        let Some((mut loaded, backlog)) = self.catch_up_list().await else {
            return self.gave_up(None);
        };
        let backlog: Vec<ArchiveObject> = backlog
            .into_iter()
            .filter(|o| o.last_seq <= bound.max(loaded))
            .collect();
        if !backlog.is_empty() {
            info!(stream = %self.stream, objects = backlog.len(), "Loading archive objects not yet in the warehouse.");
        }
        let Some(now) = self.load_listed(backlog, loaded, true).await else {
            return self.gave_up(Some(loaded));
        };
        loaded = now;
        self.progress.backlog(self.objects.len());
        let mut archived = self.archived.clone();
        let mut watching = true;
        loop {
            let bound = tokio::select! {
                biased;
                received = self.objects.recv() => {
                    let Some(object) = received else { break };
                    if object.last_seq <= loaded {
                        continue;
                    }
                    // In place (renamed) before it was queued, as is every object before it.
                    let mut bound = object.last_seq;
                    if object.first_seq == loaded + 1 {
                        self.progress.backlog(1 + self.objects.len());
                        let Some(now) = self.load_until_done(object, loaded).await else {
                            return self.gave_up(Some(loaded));
                        };
                        loaded = now;
                        self.progress.backlog(self.objects.len());
                    }
                    // Objects before it (and, once the queue is empty, after it) that the
                    // buffer could not queue are in the archive.
                    if self.objects.is_empty() {
                        bound = bound.max(*self.archived.borrow());
                    }
                    bound
                }
                changed = archived.changed(), if watching => {
                    if changed.is_err() {
                        watching = false; // The buffer stopped; the queue ends too.
                        continue;
                    }
                    if !self.objects.is_empty() {
                        continue;
                    }
                    *archived.borrow_and_update()
                }
            };
            if bound > loaded {
                // The buffer does not wait for a slow loader: what it could not queue is
                // in the archive, renamed into place before `bound` was published.
                let Some(missed) = self.list_archive_after(loaded).await else {
                    return self.gave_up(Some(loaded));
                };
                let missed = missed.into_iter().filter(|o| o.last_seq <= bound).collect();
                let Some(now) = self.load_listed(missed, loaded, false).await else {
                    return self.gave_up(Some(loaded));
                };
                loaded = now;
                self.progress.backlog(self.objects.len());
            }
        }
        info!(stream = %self.stream, last_loaded_seq = loaded, "Loader stopped.");
        Ok(())
    }

    /// Loads listed objects in order; the new position, or none if the collector stopped
    /// while the warehouse failed.
    async fn load_listed(
        &mut self,
        listed: Vec<ArchiveObject>,
        mut loaded: u64,
        at_start: bool,
    ) -> Option<u64> {
        let mut left = listed.len();
        for object in listed {
            if object.last_seq <= loaded {
                left -= 1;
                continue;
            }
            if at_start {
                crate::crashpoint::hit("recovery-catch-up");
            }
            self.progress.backlog(left + self.objects.len());
            loaded = self.load_until_done(object, loaded).await?;
            left -= 1;
        }
        Some(loaded)
    }

    /// Waits `delay` before a retry and doubles it; true instead when the collector is
    /// stopping, and the caller gives up (what it was loading waits in the archive).
    async fn back_off(&self, delay: &mut Duration) -> bool {
        tokio::select! {
            () = self.stopping.cancelled() => return true,
            () = tokio::time::sleep(*delay) => {}
        }
        *delay = (*delay * 2).min(RETRY_MAX);
        false
    }

    /// Says why the loader stops before the buffer did; what `run` then returns.
    fn gave_up(&self, loaded: Option<u64>) -> anyhow::Result<()> {
        warn!(stream = %self.stream, last_loaded_seq = loaded, "Stopping while the warehouse fails; objects not loaded wait in the archive for the next start.");
        Ok(())
    }

    /// Creates the stream's tables if missing, then reads the manifest's position and
    /// lists the archive objects after it; retried until all of it works (a warehouse that
    /// is down or locked, a directory removed while listing).
    async fn catch_up_list(&self) -> Option<(u64, Vec<ArchiveObject>)> {
        let mut delay = RETRY_MIN;
        loop {
            let attempt = async {
                let (loaded, newest) = self
                    .blocking(|w, stream, (table, schema)| {
                        w.prepare(stream, table, schema)?;
                        Ok((w.last_loaded(stream)?, w.newest_received_at(stream)?))
                    })
                    .await?;
                // The warehouse answered; listing the archive is the collector's own work.
                self.progress
                    .reached(newest.and_then(|t| t.parse::<Timestamp>().ok()));
                let (archive, stream) = (self.archive.clone(), self.stream.clone());
                let backlog =
                    tokio::task::spawn_blocking(move || archive.list_after(&stream, loaded))
                        .await??;
                anyhow::Ok((loaded, backlog))
            };
            match attempt.await {
                Ok(found) => return Some(found),
                Err(error) if is_incompatible(&error) => {
                    tracing::error!(stream = %self.stream, error = format!("{error:#}"), retry_in = ?delay, "The stream table cannot take this config's rows; fix the config or the table. Objects wait in the archive.");
                    self.progress.failed(&format!("{error:#}"));
                    metrics::counter!("tollstream_collector_load_errors_total", "stream" => self.stream.clone()).increment(1);
                    if self.back_off(&mut delay).await {
                        return None;
                    }
                }
                Err(error) => {
                    warn!(stream = %self.stream, error = format!("{error:#}"), retry_in = ?delay, "Cannot prepare the warehouse, read its load manifest or list the archive; will retry.");
                    self.progress.failed(&format!("{error:#}"));
                    metrics::counter!("tollstream_collector_load_errors_total", "stream" => self.stream.clone()).increment(1);
                    if self.back_off(&mut delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The archive objects after sequence `after`, retrying until the archive can be listed.
    async fn list_archive_after(&self, after: u64) -> Option<Vec<ArchiveObject>> {
        let mut delay = RETRY_MIN;
        loop {
            let (archive, stream) = (self.archive.clone(), self.stream.clone());
            match tokio::task::spawn_blocking(move || archive.list_after(&stream, after)).await {
                Ok(Ok(objects)) => return Some(objects),
                Ok(Err(error)) => {
                    warn!(stream = %self.stream, error = format!("{error:#}"), retry_in = ?delay, "Cannot list the archive; will retry.");
                }
                Err(error) => {
                    warn!(stream = %self.stream, %error, retry_in = ?delay, "Archive listing task failed; will retry.");
                }
            }
            if self.back_off(&mut delay).await {
                return None;
            }
        }
    }

    /// Loads `object`, retrying with backoff until it succeeds; returns the new position.
    async fn load_until_done(&mut self, object: ArchiveObject, loaded: u64) -> Option<u64> {
        if object.first_seq != loaded + 1 {
            warn!(stream = %self.stream, expected = loaded + 1, found = object.first_seq, path = %object.path.display(), "Archive objects are not contiguous; were some removed by hand?");
        }
        let mut delay = RETRY_MIN;
        loop {
            let started = tokio::time::Instant::now();
            match self.load_once(&object).await {
                Ok((outcome, (oldest, newest))) => {
                    record_load(&self.stream, &outcome, started.elapsed());
                    let time = |us| Timestamp::from_microsecond(us).ok();
                    self.progress
                        .loaded(oldest.and_then(time), newest.and_then(time));
                    debug!(stream = %self.stream, path = %object.path.display(), ?outcome, "Loaded.");
                    return Some(object.last_seq);
                }
                Err(error) => {
                    warn!(stream = %self.stream, path = %object.path.display(), error = format!("{error:#}"), retry_in = ?delay, "Load failed; will retry.");
                    self.progress.failed(&format!("{error:#}"));
                    metrics::counter!("tollstream_collector_load_errors_total", "stream" => self.stream.clone()).increment(1);
                    if self.back_off(&mut delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Loads `object` once; returns what the load did and the receive times (µs) of the
    /// object's oldest and newest record.
    async fn load_once(
        &self,
        object: &ArchiveObject,
    ) -> anyhow::Result<(LoadOutcome, (Option<i64>, Option<i64>))> {
        let name = object
            .path
            .strip_prefix(&self.archive_root)
            .unwrap_or(&object.path)
            .to_string_lossy()
            .into_owned();
        let (path, first_seq, last_seq) = (object.path.clone(), object.first_seq, object.last_seq);
        let archive = self.archive.clone();
        let outcome = self
            .blocking(move |w, stream, (table, schema)| {
                let (index, data) = Archive::read(&path)?;
                let received = index.iter().map(|e| e.received_at_us);
                let span = (received.clone().min(), received.max());
                let outcome = w.load(&LoadJob {
                    stream,
                    table,
                    schema,
                    object: name,
                    first_seq,
                    last_seq,
                    index,
                    data,
                    archive: &archive,
                })?;
                Ok((outcome, span))
            })
            .await?;
        Ok(outcome)
    }

    /// Runs `f` on a blocking thread with the backend locked.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut W, &str, (&str, &Schema)) -> Result<T, WarehouseError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (warehouse, stream, table, schema) = (
            self.warehouse.clone(),
            self.stream.clone(),
            self.table.clone(),
            self.schema.clone(),
        );
        let result = tokio::task::spawn_blocking(move || {
            let mut warehouse = warehouse.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut warehouse, &stream, (&table, &schema))
        })
        .await?;
        Ok(result?)
    }
}

fn is_incompatible(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<WarehouseError>(),
        Some(WarehouseError::Incompatible(_))
    )
}

fn record_load(stream: &str, outcome: &LoadOutcome, took: Duration) {
    let stream = stream.to_owned();
    metrics::histogram!("tollstream_collector_load_duration_seconds", "stream" => stream.clone())
        .record(took.as_secs_f64());
    metrics::counter!("tollstream_collector_loaded_records_total", "stream" => stream.clone())
        .increment(outcome.inserted);
    metrics::counter!("tollstream_collector_rejected_records_total", "stream" => stream.clone())
        .increment(outcome.rejected);
    metrics::counter!("tollstream_collector_duplicate_records_total", "stream" => stream.clone(), "stage" => "warehouse").increment(outcome.duplicates);
    if outcome.errors_object.is_some() {
        metrics::counter!("tollstream_collector_rejected_objects_total", "stream" => stream.clone())
            .increment(1);
    }
    metrics::counter!("tollstream_collector_loads_total", "stream" => stream).increment(1);
}

/// Opens the backend named by the warehouse URL: a SQLite file now; PostgreSQL on first
/// use (so a server that is down does not stop the collector from starting). Must be
/// called inside the collector's runtime, which runs PostgreSQL's connection task.
///
/// # Errors
/// A SQLite file that cannot be opened.
pub fn open(target: &crate::config::WarehouseTarget) -> Result<Box<dyn Warehouse>, WarehouseError> {
    Ok(match target {
        crate::config::WarehouseTarget::Sqlite(path) => Box::new(SqliteWarehouse::open(path)?),
        crate::config::WarehouseTarget::Postgres(pg) => Box::new(
            PostgresWarehouse::new(pg.config.clone(), tokio::runtime::Handle::current())
                .with_tls(pg.tls.clone()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalRecord;

    #[tokio::test]
    async fn objects_the_buffer_could_not_queue_are_found_in_the_archive_and_loaded_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("archive");
        let archive = Archive::new(&root);
        let line = |n: u64| {
            format!(
                "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-{n:012},PLZ-017,3,C0001234,TX-0088231,2,12.50\n"
            )
        };
        let write = |seq: u64| {
            let data = line(seq);
            let record = WalRecord {
                seq,
                received_at_us: 1_764_090_000_000_000,
                source: "booth/a".into(),
                range: Some(((seq - 1) * 200, (seq - 1) * 200 + data.len() as u64)),
                records: 1,
                data: data.into_bytes().into(),
            };
            archive.write("s", &[record]).expect("written")
        };
        write(1); // Found by the catch-up at start.
        let warehouse = SqliteWarehouse::open(&dir.path().join("w.db")).expect("open");
        let warehouse = Arc::new(Mutex::new(warehouse));
        let (objects_tx, rx) = mpsc::channel(1);
        let (archived_tx, archived) = tokio::sync::watch::channel(1);
        let clock = crate::clock::FakeClock::new("2025-11-25T17:00:00Z".parse().expect("time"));
        let loader = Loader {
            archived,
            stopping: CancellationToken::new(),
            stream: "s".into(),
            table: "t".into(),
            schema: Arc::new(Schema::toll()),
            archive_root: root.clone(),
            archive: archive.clone(),
            warehouse: warehouse.clone(),
            objects: rx,
            progress: LoadProgress::new("s", Arc::new(clock), progress::Mask::default()),
        };
        let running = tokio::spawn(loader.run());
        let loaded = || {
            warehouse
                .lock()
                .expect("lock")
                .last_loaded("s")
                .unwrap_or(0)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while loaded() < 1 {
            assert!(tokio::time::Instant::now() < deadline, "catch-up at start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The buffer archived 2 to 6 but queued only 4: 2 and 3 before it and 5 and 6 after
        // it found the queue full; then it published 6 as archived, and nothing more came.
        let later: Vec<ArchiveObject> = (2..=6).map(write).collect();
        objects_tx.send(later[2].clone()).await.expect("queued");
        archived_tx.send_replace(6);
        while loaded() < 6 {
            assert!(
                tokio::time::Instant::now() < deadline + Duration::from_secs(10),
                "the objects left in the archive are loaded without another object coming"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop((objects_tx, archived_tx));
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("loader done")
            .expect("task")
            .expect("loader");
        assert_eq!(loaded(), 6);
        let db = rusqlite::Connection::open(dir.path().join("w.db")).expect("open");
        let (rows, loads): (i64, i64) = db
            .query_row(
                "SELECT (SELECT COUNT(*) FROM t), (SELECT COUNT(*) FROM loads)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("counted");
        assert_eq!((rows, loads), (6, 6), "each object once, none skipped");
    }

    #[tokio::test]
    async fn a_loader_whose_warehouse_fails_stops_at_once_when_the_collector_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("archive");
        let archive = Archive::new(&root);
        let warehouse = Arc::new(Mutex::new(FailingWarehouse));
        let (_objects_tx, objects) = mpsc::channel(1);
        let clock = crate::clock::FakeClock::new("2025-11-25T17:00:00Z".parse().expect("time"));
        let stopping = CancellationToken::new();
        let loader = Loader {
            // No buffer here: everything in the archive counts as archived.
            archived: tokio::sync::watch::channel(u64::MAX).1,
            stopping: stopping.clone(),
            stream: "s".into(),
            table: "t".into(),
            schema: Arc::new(Schema::toll()),
            archive_root: root.clone(),
            archive,
            warehouse,
            objects,
            progress: LoadProgress::new("s", Arc::new(clock), progress::Mask::default()),
        };
        let running = tokio::spawn(loader.run());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while FAILED.load(std::sync::atomic::Ordering::Relaxed) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "attempts fail");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!running.is_finished(), "retrying, the buffer still open");
        stopping.cancel();
        tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .expect("stopped within its back-off, not after it")
            .expect("task")
            .expect("loader");
    }

    static FAILED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    /// A warehouse that is down.
    struct FailingWarehouse;

    impl Warehouse for FailingWarehouse {
        fn prepare(&mut self, _: &str, _: &str, _: &Schema) -> Result<(), WarehouseError> {
            FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(WarehouseError::Invalid("down".into()))
        }

        fn last_loaded(&mut self, _: &str) -> Result<u64, WarehouseError> {
            Err(WarehouseError::Invalid("down".into()))
        }

        fn load(&mut self, _: &LoadJob<'_>) -> Result<LoadOutcome, WarehouseError> {
            Err(WarehouseError::Invalid("down".into()))
        }

        fn record_alert(
            &mut self,
            _: &crate::alerts::Alert,
            _: &str,
        ) -> Result<(), WarehouseError> {
            Err(WarehouseError::Invalid("down".into()))
        }
    }

    #[tokio::test]
    async fn a_load_whose_errors_object_cannot_be_written_is_retried_until_it_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("archive");
        let archive = Archive::new(&root);
        let data = "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,PLZ-017,3,C0001234,TX-0088231,2,12.50\nnot a toll line\n";
        let record = WalRecord {
            seq: 1,
            received_at_us: 1_764_090_000_000_000,
            source: "booth/a".into(),
            range: Some((0, data.len() as u64)),
            records: 2,
            data: data.as_bytes().to_vec().into(),
        };
        archive.write("s", &[record]).expect("written");
        let blocker = root.join(crate::archive::ERRORS_DIR);
        std::fs::write(&blocker, b"in the way").expect("block the errors tree");
        let mut warehouse = SqliteWarehouse::open(&dir.path().join("w.db")).expect("open");
        warehouse
            .prepare("s", "t", &Schema::toll())
            .expect("prepare");
        let warehouse = Arc::new(Mutex::new(warehouse));
        let (objects_tx, objects) = mpsc::channel(1);
        drop(objects_tx); // The object is found by the catch-up at start.
        let clock = crate::clock::FakeClock::new("2025-11-25T17:00:00Z".parse().expect("time"));
        let progress = LoadProgress::new("s", Arc::new(clock), progress::Mask::default());
        let loader = Loader {
            // No buffer here: everything in the archive counts as archived.
            archived: tokio::sync::watch::channel(u64::MAX).1,
            stopping: CancellationToken::new(),
            stream: "s".into(),
            table: "t".into(),
            schema: Arc::new(Schema::toll()),
            archive_root: root.clone(),
            archive: archive.clone(),
            warehouse: warehouse.clone(),
            objects,
            progress: progress.clone(),
        };
        let running = tokio::spawn(loader.run());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!running.is_finished(), "still retrying, not skipping");
        let problem = progress
            .problem()
            .expect("/readyz reports the failing loads");
        assert!(
            problem.starts_with("stream s: warehouse unavailable since 2025-11-25T17:00:00Z ("),
            "{problem}"
        );
        assert!(
            problem.contains("failed attempts, last error: "),
            "{problem}"
        );
        assert_eq!(progress.freshness_seconds(), None, "nothing loaded yet");
        assert_eq!(
            warehouse
                .lock()
                .expect("lock")
                .last_loaded("s")
                .expect("manifest"),
            0
        );
        std::fs::remove_file(&blocker).expect("unblock");
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("loaded after the retry")
            .expect("task")
            .expect("loader");
        assert_eq!(
            progress.problem(),
            None,
            "ready again once the load succeeded"
        );
        // The record was received at 2025-11-25T17:00:00Z, the fake clock's time.
        assert_eq!(progress.freshness_seconds(), Some(0.0));
        assert_eq!(
            warehouse
                .lock()
                .expect("lock")
                .last_loaded("s")
                .expect("manifest"),
            1
        );
        let mut errors = Vec::new();
        archive
            .errors_newest_first("s", |o| {
                errors.push(o);
                true
            })
            .expect("listed");
        assert_eq!(errors.len(), 1);
        let lines = Archive::read_rejected(&errors[0].path).expect("read");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].line.as_deref(), Some("not a toll line"));
    }
}
