//! `tollstream-collector status`: per stream, where each stage stands.
//!
//! Reads the WAL segments, the archive position file, the archive and the warehouse
//! manifest; opens everything read-only, changes nothing, and works whether or not the
//! collector is running. While it runs, the numbers are a snapshot taken over a few
//! milliseconds: a record may be counted in the WAL and, a moment later, in an object.
//!
//! Per stream it reports:
//!
//! * **wal** — segments, bytes on disk, the first and last record, and where the last
//!   complete record ends (segment and byte). Bytes after it in the newest segment are a
//!   write in progress (collector running) or a torn tail that the next start cuts off.
//! * **buffer** — WAL records after the archive position (not yet in an archive object):
//!   records, lines and bytes, and how long the oldest has waited.
//! * **archive** — the position (the last record in an object), the newest object, and how
//!   many objects the warehouse has not loaded yet (the backlog).
//! * **warehouse** — loads, rows, duplicate keys, the last load, and the freshness: the age
//!   of the newest loaded record (its receive time).
//! * **rejected** — lines rejected, in how many loads, and the errors objects under
//!   `archive/errors/<stream>/` that hold them.
//!
//! With a PostgreSQL warehouse the manifest is read over a connection made for the report
//! (at most 5 s to connect); a server that cannot be reached is a problem, not a failure.
//!
//! Anything it cannot read becomes a `problem` line (and an entry in `problems`) instead of
//! ending the report.
//!
//! Cost: the WAL segments holding records not yet archived are read whole (the WAL is
//! small when the archive keeps up), the archive is listed newest first and only as far as
//! the first loaded object, the errors objects are listed in full, and the manifest is
//! summed in one query.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jiff::Timestamp;
use rusqlite::{OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::archive::{Archive, ArchiveObject, ERRORS_DIR};
use crate::clock::Clock;
use crate::config::{Config, PostgresTarget, WarehouseTarget};
use crate::schema::format_timestamp;
use crate::wal::{WalError, segment};

/// The whole report: what `status --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The ingest address from the configuration.
    pub listen: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The warehouse file, or its PostgreSQL URL with the password masked.
    pub warehouse: String,
    /// When the report was taken (UTC).
    pub at: String,
    /// One entry per configured stream, in name order.
    pub streams: Vec<StreamReport>,
    /// The alert engines' checkpoints and the outbox; absent without rules or outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<crate::alerts::report::AlertsReport>,
}

/// Where one stream's stages stand.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// Stream name.
    pub stream: String,
    /// Warehouse table.
    pub table: String,
    /// The write-ahead log.
    pub wal: WalReport,
    /// Records in the WAL not yet archived.
    pub buffer: BufferReport,
    /// The archive.
    pub archive: ArchiveReport,
    /// The warehouse; `null` when its file does not exist yet or it cannot be reached.
    pub warehouse: Option<WarehouseReport>,
    /// Rejected lines.
    pub rejected: RejectedReport,
    /// What could not be read, one sentence each.
    pub problems: Vec<String>,
}

/// The stream's WAL on disk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalReport {
    /// Segment files.
    pub segments: usize,
    /// Their size on disk.
    pub bytes: u64,
    /// The oldest record still in the WAL.
    pub first_seq: Option<u64>,
    /// The newest complete record.
    pub last_seq: Option<u64>,
    /// The segment file holding the end of the last complete record.
    pub end_segment: Option<String>,
    /// Byte offset in that segment just after the last complete record.
    pub end_offset: u64,
    /// Bytes after it: a write in progress, or a torn tail the next start cuts off.
    pub tail_bytes: u64,
}

/// WAL records after the archive position.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BufferReport {
    /// WAL records (one per accepted batch).
    pub records: u64,
    /// Lines in them.
    pub lines: u64,
    /// Bytes of lines in them.
    pub bytes: u64,
    /// When the oldest of them was received.
    pub oldest_received_at: Option<String>,
    /// How long ago that was, in seconds.
    pub oldest_age_seconds: Option<f64>,
}

/// The stream's archive.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveReport {
    /// Last WAL record in an archive object: the position file, or a newer object found
    /// on disk (written just before a crash; the next start adopts it).
    pub archived_through: u64,
    /// The newest object.
    pub last_object: Option<ObjectReport>,
    /// Objects whose records the warehouse manifest does not hold yet.
    pub not_loaded: u64,
}

/// One archive or errors object.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    /// Path relative to the archive root.
    pub name: String,
    /// First WAL record inside.
    pub first_seq: u64,
    /// Last WAL record inside.
    pub last_seq: u64,
    /// Size on disk.
    pub bytes: u64,
    /// When the file was written (its modification time).
    pub written_at: Option<String>,
}

/// The stream's loads, from the manifest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WarehouseReport {
    /// Objects loaded.
    pub loads: u64,
    /// Rows inserted.
    pub rows: u64,
    /// Lines dropped because their natural key was already loaded.
    pub duplicates: u64,
    /// Last WAL record in a loaded object.
    pub loaded_through: u64,
    /// The most recent load.
    pub last_load: Option<LoadReport>,
    /// Receive time of the newest loaded record.
    pub newest_received_at: Option<String>,
    /// Its age in seconds: how far the warehouse is behind what the collector received.
    pub freshness_seconds: Option<f64>,
}

/// One row of the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The object, relative to the archive root.
    pub object: String,
    /// First WAL record in it.
    pub first_seq: u64,
    /// Last WAL record in it.
    pub last_seq: u64,
    /// Rows inserted.
    pub rows: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Duplicate keys.
    pub duplicates: u64,
    /// When it committed.
    pub loaded_at: String,
}

/// Rejected lines and their errors objects.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RejectedReport {
    /// Lines rejected (manifest).
    pub lines: u64,
    /// Loads that rejected any (manifest); each wrote one errors object.
    pub loads: u64,
    /// Errors objects on disk.
    pub errors_objects: u64,
    /// The newest of them.
    pub newest_errors_object: Option<ObjectReport>,
}

/// The status report as text.
///
/// # Errors
/// When the warehouse exists but cannot be opened.
pub fn report(config: &Config, clock: &dyn Clock) -> anyhow::Result<String> {
    Ok(render(&collect(config, clock)?))
}

/// The status report as pretty-printed JSON (a [`Report`]).
///
/// # Errors
/// When the warehouse exists but cannot be opened.
pub fn report_json(config: &Config, clock: &dyn Clock) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(&collect(config, clock)?)?;
    text.push('\n');
    Ok(text)
}

/// Gathers the report.
///
/// # Errors
/// When the warehouse exists but cannot be opened.
pub fn collect(config: &Config, clock: &dyn Clock) -> anyhow::Result<Report> {
    let now = clock.now();
    let target = config.warehouse_target().map_err(anyhow::Error::msg)?;
    let db = match &target {
        WarehouseTarget::Sqlite(path) if path.exists() => {
            let db = open_read_only(path).with_context(|| format!("opening {}", path.display()))?;
            db.busy_timeout(std::time::Duration::from_secs(5))?;
            Some(Manifest::Sqlite(db))
        }
        WarehouseTarget::Sqlite(_) => None,
        WarehouseTarget::Postgres(pg) => Some(Manifest::connect_postgres(pg)),
    };
    let archive_root = config.data_dir.join("archive");
    let streams = config
        .streams
        .iter()
        .map(|(name, stream)| {
            let mut report = StreamReport {
                stream: name.clone(),
                table: stream.table.clone(),
                wal: WalReport::default(),
                buffer: BufferReport::default(),
                archive: ArchiveReport::default(),
                warehouse: None,
                rejected: RejectedReport::default(),
                problems: Vec::new(),
            };
            stream_report(&mut report, config, &archive_root, db.as_ref(), now);
            report
        })
        .collect();
    Ok(Report {
        listen: config.listen.to_string(),
        data_dir: config.data_dir.clone(),
        warehouse: target.describe(),
        at: format_timestamp(now),
        streams,
        alerts: crate::alerts::report::collect(config, now)?,
    })
}

/// Opens the warehouse read-only without creating anything beside it. A reader of a
/// WAL-mode database creates its `-wal` and `-shm` files when they are missing (no
/// collector has it open, and everything is checkpointed) and leaves them behind; in that
/// case the file is complete as it is, and `immutable=1` reads it without them.
pub(crate) fn open_read_only(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut uri = String::from("file:");
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'/' | b'-' | b'_' | b'.' | b'~' => uri.push(char::from(*byte)),
            b if b.is_ascii_alphanumeric() => uri.push(char::from(*b)),
            b => {
                let _ = write!(uri, "%{b:02X}");
            }
        }
    }
    if !Path::new(&wal).exists() {
        uri.push_str("?immutable=1");
    }
    rusqlite::Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

fn stream_report(
    report: &mut StreamReport,
    config: &Config,
    archive_root: &Path,
    db: Option<&Manifest>,
    now: Timestamp,
) {
    let name = report.stream.clone();
    let problems = &mut report.problems;
    let archive = Archive::new(archive_root);
    // Warehouse first: the backlog is counted against what it has loaded.
    if let Some(db) = db {
        match warehouse_report(db, &name, now) {
            Ok((warehouse, rejected)) => {
                report.warehouse = Some(warehouse);
                report.rejected = rejected;
            }
            Err(e) => problems.push(format!("warehouse: {e}")),
        }
    }
    let loaded_through = report.warehouse.as_ref().map_or(0, |w| w.loaded_through);
    let mut not_loaded = 0;
    let mut newest = None;
    let walked = archive.newest_first(&name, |object| {
        if newest.is_none() {
            newest = Some(object.clone());
        }
        if object.last_seq > loaded_through {
            not_loaded += 1;
            true
        } else {
            false
        }
    });
    if let Err(e) = walked {
        problems.push(format!("archive: {e}"));
    }
    report.archive.not_loaded = not_loaded;
    let position_file = config
        .data_dir
        .join("state")
        .join(format!("{name}.archive.pos"));
    let position = crate::buffer::load_position(&position_file).unwrap_or_else(|e| {
        problems.push(format!("archive position: {e:#}"));
        0
    });
    report.archive.archived_through = position.max(newest.as_ref().map_or(0, |o| o.last_seq));
    report.archive.last_object = newest.map(|o| object_report(archive_root, &o));
    let mut errors_objects = 0;
    let mut newest_errors = None;
    let walked = archive.errors_newest_first(&name, |object| {
        errors_objects += 1;
        newest_errors.get_or_insert(object);
        true
    });
    if let Err(e) = walked {
        problems.push(format!("{ERRORS_DIR}/: {e}"));
    }
    report.rejected.errors_objects = errors_objects;
    report.rejected.newest_errors_object = newest_errors.map(|o| object_report(archive_root, &o));
    let wal_dir = config.data_dir.join("wal").join(&name);
    let archived = report.archive.archived_through;
    if let Err(e) = wal_report(&wal_dir, archived, now, report) {
        report.problems.push(format!("wal: {e}"));
    }
}

/// Reads the WAL: sizes and ends of every segment, and the records after `archived`.
fn wal_report(
    dir: &Path,
    archived: u64,
    now: Timestamp,
    report: &mut StreamReport,
) -> Result<(), WalError> {
    if !dir.exists() {
        return Ok(());
    }
    let segments = segment::list(dir)?;
    let (wal, buffer) = (&mut report.wal, &mut report.buffer);
    let mut oldest_unarchived: Option<i64> = None;
    for (i, seg) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let bytes = match std::fs::metadata(&seg.path) {
            Ok(meta) => meta.len(),
            // Deleted meanwhile: the collector archived it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(WalError::Io {
                    action: "reading",
                    path: seg.path.clone(),
                    source: e,
                });
            }
        };
        wal.segments += 1;
        wal.bytes += bytes;
        // A segment that is not the newest ends just before the next one starts: when all
        // of it is archived, its name says all that is needed and it is not read.
        let next_first = segments.get(i + 1).map(|s| s.first_seq);
        if let Some(next_first) = next_first
            && next_first <= archived + 1
        {
            wal.first_seq.get_or_insert(seg.first_seq);
            wal.last_seq = Some(next_first - 1);
            continue;
        }
        let scanned = segment::scan(seg, |record| {
            wal.first_seq.get_or_insert(record.seq);
            wal.last_seq = Some(record.seq);
            if record.seq > archived {
                buffer.records += 1;
                buffer.lines += u64::from(record.records);
                buffer.bytes += record.data.len() as u64;
                oldest_unarchived.get_or_insert(record.received_at_us);
            }
            Ok(())
        });
        let scan = match scanned {
            Ok(scan) => scan,
            Err(WalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        let name = seg
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        if newest {
            wal.end_segment = name;
            wal.end_offset = scan.valid_len;
            wal.tail_bytes = scan.torn_bytes;
        } else if let Some(error) = scan.tail_error {
            report.problems.push(format!(
                "wal: segment {} is damaged at byte {} ({error}); the collector will refuse to start",
                seg.path.display(),
                scan.valid_len
            ));
        }
    }
    if let Some(us) = oldest_unarchived
        && let Ok(at) = Timestamp::from_microsecond(us)
    {
        buffer.oldest_received_at = Some(format_timestamp(at));
        buffer.oldest_age_seconds = Some(age_seconds(now, at));
    }
    Ok(())
}

/// Where `status` reads the load manifest from.
enum Manifest {
    Sqlite(rusqlite::Connection),
    Postgres {
        runtime: tokio::runtime::Runtime,
        client: tokio_postgres::Client,
    },
    /// The server could not be reached: why.
    Unreachable(String),
}

/// One stream's manifest, summed.
struct ManifestSums {
    loads: i64,
    rows: i64,
    rejected: i64,
    duplicates: i64,
    loaded_through: i64,
    /// Loads with rejected lines.
    rejecting: i64,
    /// The newest load and the receive time of its newest record.
    last: Option<(LoadReport, Option<String>)>,
}

/// Formats a `timestamptz` as the SQLite warehouse stores times.
const PG_TIME: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;

impl Manifest {
    /// Connects within a few seconds, on a runtime of its own (`status` runs outside the
    /// collector).
    fn connect_postgres(target: &PostgresTarget) -> Self {
        let mut config = target.config.clone();
        config.connect_timeout(std::time::Duration::from_secs(5));
        config.application_name("tollstream-collector status");
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => return Self::Unreachable(format!("cannot start a runtime: {e}")),
        };
        // The connection task is driven whenever the runtime runs a query (a current-thread
        // runtime).
        match runtime.block_on(crate::warehouse::pg_tls::connect(
            &config,
            target.tls.as_ref(),
        )) {
            Ok(client) => Self::Postgres { runtime, client },
            Err(e) => Self::Unreachable(format!(
                "cannot connect to {}: {}",
                target.shown,
                crate::warehouse::pg_error_message(&e)
            )),
        }
    }

    /// The stream's manifest summed; `None` when there is no manifest table yet.
    fn sums(&self, stream: &str) -> Result<Option<ManifestSums>, String> {
        match self {
            Self::Sqlite(db) => sqlite_sums(db, stream).map_err(|e| e.to_string()),
            Self::Postgres { runtime, client } => runtime
                .block_on(postgres_sums(client, stream))
                .map_err(|e| crate::warehouse::pg_error_message(&e)),
            Self::Unreachable(why) => Err(why.clone()),
        }
    }
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn sqlite_sums(db: &rusqlite::Connection, stream: &str) -> rusqlite::Result<Option<ManifestSums>> {
    let manifest_exists: bool = db.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'loads'",
        [],
        |r| r.get(0),
    )?;
    if !manifest_exists {
        return Ok(None);
    }
    let mut sums = db.query_row(
        "SELECT COUNT(*), COALESCE(SUM(inserted), 0), COALESCE(SUM(rejected), 0), \
         COALESCE(SUM(duplicates), 0), COALESCE(MAX(last_seq), 0), \
         COALESCE(SUM(rejected > 0), 0) FROM loads WHERE stream = ?1",
        [stream],
        |r| {
            Ok(ManifestSums {
                loads: r.get(0)?,
                rows: r.get(1)?,
                rejected: r.get(2)?,
                duplicates: r.get(3)?,
                loaded_through: r.get(4)?,
                rejecting: r.get(5)?,
                last: None,
            })
        },
    )?;
    sums.last = db
        .query_row(
            "SELECT object, first_seq, last_seq, inserted, rejected, duplicates, loaded_at, \
             newest_received_at FROM loads WHERE stream = ?1 ORDER BY last_seq DESC LIMIT 1",
            [stream],
            |r| {
                let load = LoadReport {
                    object: r.get(0)?,
                    first_seq: count(r.get(1)?),
                    last_seq: count(r.get(2)?),
                    rows: count(r.get(3)?),
                    rejected: count(r.get(4)?),
                    duplicates: count(r.get(5)?),
                    loaded_at: r.get(6)?,
                };
                Ok((load, r.get(7)?))
            },
        )
        .optional()?;
    Ok(Some(sums))
}

async fn postgres_sums(
    client: &tokio_postgres::Client,
    stream: &str,
) -> Result<Option<ManifestSums>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('loads') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let r = client
        .query_one(
            "SELECT COUNT(*), COALESCE(SUM(inserted), 0)::bigint, \
             COALESCE(SUM(rejected), 0)::bigint, COALESCE(SUM(duplicates), 0)::bigint, \
             COALESCE(MAX(last_seq), 0), COUNT(*) FILTER (WHERE rejected > 0) \
             FROM loads WHERE stream = $1",
            &[&stream],
        )
        .await?;
    let mut sums = ManifestSums {
        loads: r.get(0),
        rows: r.get(1),
        rejected: r.get(2),
        duplicates: r.get(3),
        loaded_through: r.get(4),
        rejecting: r.get(5),
        last: None,
    };
    let last = client
        .query_opt(
            &format!(
                "SELECT object, first_seq, last_seq, inserted, rejected, duplicates, \
                 to_char(loaded_at AT TIME ZONE 'UTC', {PG_TIME}), \
                 to_char(newest_received_at AT TIME ZONE 'UTC', {PG_TIME}) \
                 FROM loads WHERE stream = $1 ORDER BY last_seq DESC LIMIT 1"
            ),
            &[&stream],
        )
        .await?;
    sums.last = last.map(|r| {
        let load = LoadReport {
            object: r.get(0),
            first_seq: count(r.get(1)),
            last_seq: count(r.get(2)),
            rows: count(r.get(3)),
            rejected: count(r.get(4)),
            duplicates: count(r.get(5)),
            loaded_at: r.get(6),
        };
        (load, r.get(7))
    });
    Ok(Some(sums))
}

fn warehouse_report(
    db: &Manifest,
    stream: &str,
    now: Timestamp,
) -> Result<(WarehouseReport, RejectedReport), String> {
    let Some(sums) = db.sums(stream)? else {
        return Ok((WarehouseReport::default(), RejectedReport::default()));
    };
    let (last_load, newest) = sums.last.unzip();
    let newest = newest.flatten();
    let freshness = newest
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| age_seconds(now, t));
    Ok((
        WarehouseReport {
            loads: count(sums.loads),
            rows: count(sums.rows),
            duplicates: count(sums.duplicates),
            loaded_through: count(sums.loaded_through),
            last_load,
            newest_received_at: newest,
            freshness_seconds: freshness,
        },
        RejectedReport {
            lines: count(sums.rejected),
            loads: count(sums.rejecting),
            ..RejectedReport::default()
        },
    ))
}

fn object_report(root: &Path, object: &ArchiveObject) -> ObjectReport {
    let meta = std::fs::metadata(&object.path).ok();
    let written_at = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| Timestamp::try_from(t).ok())
        .map(format_timestamp);
    ObjectReport {
        name: object
            .path
            .strip_prefix(root)
            .unwrap_or(&object.path)
            .to_string_lossy()
            .into_owned(),
        first_seq: object.first_seq,
        last_seq: object.last_seq,
        bytes: meta.map_or(0, |m| m.len()),
        written_at,
    }
}

fn age_seconds(now: Timestamp, then: Timestamp) -> f64 {
    now.duration_since(then).as_secs_f64()
}

/// `1 segment`, `2 segments`.
fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The report as text for people.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "collector on {}; data in {}; warehouse {}; at {}",
        report.listen,
        report.data_dir.display(),
        report.warehouse,
        report.at
    );
    for stream in &report.streams {
        render_stream(&mut out, stream);
    }
    if let Some(alerts) = &report.alerts {
        crate::alerts::report::render(&mut out, alerts);
    }
    out
}

fn render_stream(out: &mut String, s: &StreamReport) {
    let _ = writeln!(out, "\nstream {} → table {}", s.stream, s.table);
    let wal = &s.wal;
    let records = match (wal.first_seq, wal.last_seq) {
        (Some(first), Some(last)) => format!("records {first}..={last}"),
        _ => "no records".into(),
    };
    let end = match &wal.end_segment {
        Some(segment) => {
            let tail = if wal.tail_bytes > 0 {
                format!(
                    " ({} after it: a write in progress, or a torn tail cut at the next start)",
                    plural(wal.tail_bytes, "byte")
                )
            } else {
                String::new()
            };
            format!(
                ", complete up to byte {} of {segment}{tail}",
                wal.end_offset
            )
        }
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  wal        {}, {}; {records}{end}",
        plural(wal.segments as u64, "segment"),
        plural(wal.bytes, "byte")
    );
    let buffer = &s.buffer;
    let waiting = buffer
        .oldest_age_seconds
        .map(|age| format!("; oldest received {age:.1} s ago"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  buffer     {} ({}, {}) in the WAL not yet archived{waiting}",
        plural(buffer.records, "record"),
        plural(buffer.lines, "line"),
        plural(buffer.bytes, "byte"),
    );
    let archive = &s.archive;
    let last_object = match &archive.last_object {
        Some(o) => format!(
            "; last object {} (records {}..={}, {}, written {})",
            o.name,
            o.first_seq,
            o.last_seq,
            plural(o.bytes, "byte"),
            o.written_at.as_deref().unwrap_or("at an unknown time")
        ),
        None => "; no objects yet".into(),
    };
    let _ = writeln!(
        out,
        "  archive    through record {}{last_object}",
        archive.archived_through
    );
    let _ = writeln!(
        out,
        "  backlog    {} not yet loaded",
        plural(archive.not_loaded, "archive object")
    );
    match &s.warehouse {
        Some(w) => {
            match &w.last_load {
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "  last load  {} (records {}..={}: {}, {} rejected, {} duplicate keys) at {}",
                        l.object,
                        l.first_seq,
                        l.last_seq,
                        plural(l.rows, "row"),
                        l.rejected,
                        l.duplicates,
                        l.loaded_at
                    );
                }
                None => {
                    let _ = writeln!(out, "  last load  none yet");
                }
            }
            let _ = writeln!(
                out,
                "  warehouse  {}, {}, {} duplicate keys",
                plural(w.loads, "load"),
                plural(w.rows, "row"),
                w.duplicates
            );
        }
        None if s.problems.iter().any(|p| p.starts_with("warehouse:")) => {
            let _ = writeln!(out, "  warehouse  cannot be read (see the problem below)");
        }
        None => {
            let _ = writeln!(out, "  warehouse  not created yet");
        }
    }
    let r = &s.rejected;
    let newest = r
        .newest_errors_object
        .as_ref()
        .map(|o| format!(", newest {}", o.name))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  rejected   {} in {}; {}{newest}",
        plural(r.lines, "line"),
        plural(r.loads, "load"),
        plural(r.errors_objects, "errors object"),
    );
    if let Some(w) = &s.warehouse {
        match (&w.newest_received_at, w.freshness_seconds) {
            (Some(at), Some(age)) => {
                let _ = writeln!(
                    out,
                    "  freshness  newest loaded record received {age:.1} s ago ({at})"
                );
            }
            _ => {
                let _ = writeln!(out, "  freshness  nothing loaded yet");
            }
        }
    }
    for problem in &s.problems {
        let _ = writeln!(out, "  problem    {problem}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::archive::Archive;
    use crate::clock::FakeClock;
    use crate::schema::Schema;
    use crate::wal::{AppendRequest, Wal, WalOptions};
    use crate::warehouse::{LoadJob, SqliteWarehouse, Warehouse};

    const STREAM: &str = "toll-transactions";

    /// `lines` toll lines of about 100 bytes, `bad` of them not parsing.
    fn batch(n: u32, lines: u32, bad: u32) -> String {
        (0..lines)
            .map(|i| {
                if i < bad {
                    format!("not a toll line {n}-{i}\n")
                } else {
                    format!(
                        "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-{n:04}-{i:012},PLZ-017,3,C0001234,TX-0088231,2,12.50\n"
                    )
                }
            })
            .collect()
    }

    /// Every file under `dir` with its size and modification time.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("list") {
                let path = entry.expect("entry").path();
                let meta = std::fs::metadata(&path).expect("metadata");
                if meta.is_dir() {
                    stack.push(path.clone());
                }
                files.insert(path, (meta.len(), meta.modified().expect("mtime")));
            }
        }
        files
    }

    /// A data directory as the pipeline leaves it mid-stream: six WAL records over
    /// several segments, records 1..=2 and 3..=4 archived as two objects, the first loaded
    /// (with 2 rejected lines), 5..=6 still only in the WAL.
    #[tokio::test]
    async fn status_reports_every_stage_of_a_data_dir_mid_stream_and_changes_nothing() {
        // A name that needs escaping in an SQLite URI.
        let dir = tempfile::Builder::new()
            .prefix("status dir ?#%")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("tokens"), "t\n").expect("tokens");
        let config_path = dir.path().join("collector.yaml");
        std::fs::write(
            &config_path,
            "listen: 127.0.0.1:8700\ndata_dir: data\nauth: { agent_tokens_file: tokens }\nwal: { segment_bytes: 64KiB }\n",
        )
        .expect("config");
        let config = Config::load(&config_path).expect("config loads");
        let data = &config.data_dir;
        let received = "2026-11-29T10:42:10.245Z".parse::<Timestamp>().expect("ts");
        let clock = FakeClock::new(received);
        let (wal, writer) = Wal::open(
            &data.join("wal").join(STREAM),
            WalOptions {
                segment_bytes: 64 << 10,
                consumers: vec![crate::buffer::CONSUMER],
            },
            Arc::new(clock.clone()),
        )
        .expect("wal");
        let mut sizes = Vec::new();
        for n in 1..=6u32 {
            let text = batch(n, 300, if n == 2 { 2 } else { 0 });
            sizes.push(text.len() as u64);
            let start = u64::from(n) * 1_000_000;
            wal.append(AppendRequest {
                lease: None,
                source: format!("booth/{n}"),
                range: Some((start, start + text.len() as u64)),
                data: text.into_bytes().into(),
                records: 300,
            })
            .await
            .expect("appended");
        }
        let durable = *wal.durable().borrow();
        let mut reader = wal.reader(1);
        let records: Vec<_> = (1..=4)
            .map(|_| reader.next(durable).expect("read").expect("durable"))
            .collect();
        let archive_root = data.join("archive");
        let archive = Archive::new(&archive_root);
        let first = archive.write(STREAM, &records[..2]).expect("object 1..=2");
        let second = archive.write(STREAM, &records[2..]).expect("object 3..=4");
        std::fs::create_dir_all(data.join("state")).expect("state");
        std::fs::write(
            data.join("state").join(format!("{STREAM}.archive.pos")),
            "4",
        )
        .expect("position");
        let mut warehouse = SqliteWarehouse::open(&data.join("warehouse.db")).expect("db");
        warehouse
            .prepare("toll-transactions", "toll_transactions", &Schema::toll())
            .expect("prepare");
        let (index, lines) = Archive::read(&first.path).expect("read object");
        let outcome = warehouse
            .load(&LoadJob {
                stream: STREAM,
                table: "toll_transactions",
                schema: &Schema::toll(),
                object: first
                    .path
                    .strip_prefix(&archive_root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned(),
                first_seq: 1,
                last_seq: 2,
                index,
                data: lines,
                archive: &archive,
            })
            .expect("loaded");
        assert_eq!((outcome.inserted, outcome.rejected), (598, 2));
        clock.advance(std::time::Duration::from_secs(5));

        let running = snapshot(data);
        let check = |report: &Report| {
            let s = &report.streams[0];
            assert_eq!(s.stream, STREAM);
            assert!(s.problems.is_empty(), "{:?}", s.problems);
            assert!(s.wal.segments >= 2, "{:?}", s.wal);
            assert_eq!((s.wal.first_seq, s.wal.last_seq), (Some(1), Some(6)));
            let on_disk: u64 = segment::list(&data.join("wal").join(STREAM))
                .expect("segments")
                .iter()
                .map(|seg| std::fs::metadata(&seg.path).expect("size").len())
                .sum();
            assert_eq!(s.wal.bytes, on_disk);
            assert_eq!(s.wal.tail_bytes, 0);
            assert!(s.wal.end_segment.is_some());
            assert_eq!(s.buffer.records, 2, "records 5 and 6");
            assert_eq!(s.buffer.lines, 600);
            assert_eq!(s.buffer.bytes, sizes[4] + sizes[5]);
            assert_eq!(s.buffer.oldest_age_seconds, Some(5.0));
            assert_eq!(s.archive.archived_through, 4);
            let last = s.archive.last_object.as_ref().expect("an object");
            assert_eq!((last.first_seq, last.last_seq), (3, 4));
            assert_eq!(
                archive_root.join(&last.name),
                second.path,
                "named relative to the archive root"
            );
            assert_eq!(s.archive.not_loaded, 1, "3..=4 is not loaded");
            let w = s.warehouse.as_ref().expect("warehouse");
            assert_eq!((w.loads, w.rows, w.duplicates), (1, 598, 0));
            assert_eq!(w.loaded_through, 2);
            assert_eq!(w.last_load.as_ref().map(|l| l.last_seq), Some(2));
            assert_eq!(
                w.newest_received_at.as_deref(),
                Some("2026-11-29T10:42:10.245Z")
            );
            assert_eq!(w.freshness_seconds, Some(5.0));
            assert_eq!(
                (
                    s.rejected.lines,
                    s.rejected.loads,
                    s.rejected.errors_objects
                ),
                (2, 1, 1)
            );
            let errors = s
                .rejected
                .newest_errors_object
                .as_ref()
                .expect("errors object");
            assert_eq!(
                errors.name,
                format!("errors/{}", w.last_load.as_ref().expect("load").object)
            );
        };
        // While the collector's WAL writer and warehouse connection are open…
        let report = collect(&config, &clock).expect("report");
        check(&report);
        let mut after = snapshot(data);
        // (SQLite readers take read marks in the shared-memory file.)
        after.retain(|path, _| !path.to_string_lossy().ends_with("-shm"));
        let mut running = running;
        running.retain(|path, _| !path.to_string_lossy().ends_with("-shm"));
        assert_eq!(after, running, "status changed nothing");
        let text = render(&report);
        for expected in [
            "stream toll-transactions → table toll_transactions",
            "records 1..=6, complete up to byte",
            "buffer     2 records (600 lines, ",
            "oldest received 5.0 s ago",
            "archive    through record 4; last object toll-transactions/2026/11/29/10/toll-transactions-00000000000000000003-00000000000000000004.gz (records 3..=4, ",
            "backlog    1 archive object not yet loaded",
            "(records 1..=2: 598 rows, 2 rejected, 0 duplicate keys) at ",
            "warehouse  1 load, 598 rows, 0 duplicate keys",
            "rejected   2 lines in 1 load; 1 errors object, newest errors/toll-transactions/2026/11/29/10/toll-transactions-00000000000000000001-00000000000000000002.gz",
            "freshness  newest loaded record received 5.0 s ago (2026-11-29T10:42:10.245Z)",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&report_json(&config, &clock).expect("json")).expect("parses");
        assert_eq!(json["streams"][0]["buffer"]["lines"], 600);
        assert_eq!(json["streams"][0]["warehouse"]["rows"], 598);
        assert_eq!(json["streams"][0]["rejected"]["errors_objects"], 1);
        // …and after they closed: the same, and nothing on disk changed either way.
        drop((wal, reader, warehouse));
        writer.join().expect("writer stops");
        let stopped = snapshot(data);
        assert!(
            !stopped
                .keys()
                .any(|p| p.to_string_lossy().ends_with("-wal")),
            "the warehouse closed cleanly: {stopped:?}"
        );
        check(&collect(&config, &clock).expect("report"));
        assert_eq!(
            snapshot(data),
            stopped,
            "status changed nothing, created nothing"
        );
    }

    #[test]
    fn a_data_dir_the_collector_never_used_reports_empty_stages() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tokens"), "t\n").expect("tokens");
        let config_path = dir.path().join("collector.yaml");
        std::fs::write(
            &config_path,
            "listen: 127.0.0.1:8700\ndata_dir: data\nauth: { agent_tokens_file: tokens }\n",
        )
        .expect("config");
        let config = Config::load(&config_path).expect("config loads");
        let clock = FakeClock::new(Timestamp::UNIX_EPOCH);
        let report = collect(&config, &clock).expect("report");
        let s = &report.streams[0];
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.wal.segments, 0);
        assert!(s.warehouse.is_none());
        let text = render(&report);
        assert!(
            text.contains("wal        0 segments, 0 bytes; no records"),
            "{text}"
        );
        assert!(text.contains("warehouse  not created yet"), "{text}");
        assert!(!config.data_dir.exists(), "status created nothing");
    }
}
