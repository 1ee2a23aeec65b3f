//! `tollstream-collector reload`: loads archive objects into a warehouse again — into the
//! collector's own warehouse, to fill in what it lacks, or into another one (a fresh
//! database) to rebuild it.
//!
//! Input: the archive (`<data_dir>/archive/<stream>/YYYY/MM/DD/HH/<stream>-<first>-<last>.gz`),
//! a window of receive times, the streams, the target warehouse. Output: every object in
//! the window that the target's load manifest does not hold, loaded exactly as the live
//! loader loads it — [`Warehouse::prepare`], then [`Warehouse::load`], one transaction per
//! object together with its manifest row, objects in sequence order — and a summary per
//! stream. The rows are therefore the same as the live load's, `load_id` aside.
//!
//! **Which objects a window selects.** An object belongs to the moment its *first* record
//! was received (the collector's receive time, UTC, which is also what its hour directory is
//! named by). It is selected when that moment is at or after `since` and before `until`;
//! either bound may be absent. Adjacent windows (`--until T`, then `--since T`) thus split
//! the archive without overlap or gap. Records after the first may have been received up to
//! the stream's `buffer.max_age` later, so an object selected by `--until T` may hold records
//! received after `T`. Hour directories wholly inside or outside the window are decided by
//! their name; in the (at most two) hours a bound falls in, each object's first receive time
//! is read from its gzip header (the index, not the lines).
//!
//! **Idempotent, manifest-aware.** The target's manifest (`loads`, unique per stream and
//! first sequence) is read once per stream, and objects it holds are skipped without being
//! read; everything else goes through [`Warehouse::load`], which checks the manifest again in
//! its own transaction. Running a reload twice therefore changes nothing the second time, and
//! inside the table the natural key still drops a line that was loaded before.
//!
//! **Beside a running collector.** Safe against the collector's own warehouse: on SQLite a
//! load takes the write lock when its transaction begins (waiting up to the busy timeout), so
//! it sees any manifest row the collector committed first; on PostgreSQL the manifest row is
//! claimed with `INSERT … ON CONFLICT DO NOTHING`, which waits for a concurrent load of the
//! same object and then claims nothing. Either way one load of an object commits and the
//! other finds it loaded. A load writes the object's rejected lines to its errors object
//! under `archive/errors/` before committing, as the collector does; the content is the same
//! whichever process writes it (the same lines, parsed alike, compressed alike), each writes
//! a temp file of its own and renames it over the name, so the object is always whole.
//!
//! **Gaps.** The collector resumes loading after the newest object its manifest holds. An
//! object older than that which the manifest lacks (a window that skipped it, an object that
//! could not be read) is not loaded by the collector; the summary names such gaps.
//!
//! **Failures.** A reload is a command, not a daemon: nothing is retried. A warehouse that
//! cannot be reached or refuses a load, or an archive that cannot be listed or written, ends
//! the command with an error naming what and where (what was committed stays committed; run
//! it again to go on). An archive object that cannot be read (truncated, damaged) is named
//! and skipped, the others are loaded, and the command reports the failure at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jiff::Timestamp;
use serde::Serialize;
use tracing::{info, warn};

use crate::archive::{Archive, ArchiveObject};
use crate::config::{Config, WarehouseConfig, WarehouseTarget};
use crate::schema::{Schema, format_timestamp};
use crate::warehouse::{LoadJob, Warehouse};

/// Which receive times a reload covers: `since <= t < until`, either bound open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Objects whose first record was received at or after this.
    pub since: Option<Timestamp>,
    /// Objects whose first record was received before this.
    pub until: Option<Timestamp>,
}

/// Where an hour directory lies against a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlap {
    /// Every object in it is selected.
    Inside,
    /// None is.
    Outside,
    /// A bound falls inside the hour: each object's receive time decides.
    Partly,
}

impl Window {
    /// Whether a first record received at `at` is in the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.since.is_none_or(|since| at >= since) && self.until.is_none_or(|until| at < until)
    }

    /// How the hour starting at `start` lies against the window.
    fn hour(&self, start: Timestamp) -> Overlap {
        let Ok(end) = start.checked_add(jiff::SignedDuration::from_hours(1)) else {
            return Overlap::Partly;
        };
        let before = self.until.is_some_and(|until| until <= start);
        let after = self.since.is_some_and(|since| since >= end);
        if before || after {
            return Overlap::Outside;
        }
        let covers_start = self.since.is_none_or(|since| since <= start);
        let covers_end = self.until.is_none_or(|until| until >= end);
        if covers_start && covers_end {
            Overlap::Inside
        } else {
            Overlap::Partly
        }
    }

    /// The window in words, for the report.
    pub fn describe(&self) -> String {
        match (self.since, self.until) {
            (None, None) => "the whole archive".into(),
            (since, until) => {
                let mut text = String::from("objects whose first record was received");
                if let Some(since) = since {
                    text.push_str(&format!(" at or after {}", format_timestamp(since)));
                }
                if since.is_some() && until.is_some() {
                    text.push_str(" and");
                }
                if let Some(until) = until {
                    text.push_str(&format!(" before {}", format_timestamp(until)));
                }
                text
            }
        }
    }
}

/// Parses a `--since`/`--until` value: an RFC 3339 time with an offset
/// (`2026-11-25T14:00:00Z`, `2026-11-25T11:00:00-03:00`), a date (`2026-11-25`: its
/// midnight, UTC), or a duration before `now` (`90m`, `2h`, `7d`).
///
/// # Errors
/// A message saying which forms are accepted.
pub fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let text = text.trim();
    let usage = || {
        format!(
            "{text:?} is not a time: give an RFC 3339 time with an offset \
             (2026-11-25T14:00:00Z, 2026-11-25T11:00:00-03:00), a date (2026-11-25, midnight \
             UTC) or a duration before now (90m, 2h, 7d)"
        )
    };
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    let is_date = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if is_date {
        return format!("{text}T00:00:00Z")
            .parse::<Timestamp>()
            .map_err(|e| format!("{text:?} is not a date: {e}"));
    }
    if text.contains('T') {
        return Err(format!(
            "{text:?} has no offset: add Z for UTC or the offset, e.g. {text}Z"
        ));
    }
    let ago = humantime::parse_duration(text).map_err(|_| usage())?;
    jiff::SignedDuration::try_from(ago)
        .ok()
        .and_then(|ago| now.checked_sub(ago).ok())
        .ok_or_else(|| format!("{text:?} reaches back before the year -9999"))
}

/// What a reload is asked to do, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--since`.
    pub since: Option<String>,
    /// `--until`.
    pub until: Option<String>,
    /// `--stream` (repeatable); empty means every configured stream.
    pub streams: Vec<String>,
    /// `--warehouse`: another warehouse URL than `warehouse.url`.
    pub warehouse: Option<String>,
    /// `--warehouse-password-file`: its password, for a PostgreSQL URL.
    pub password_file: Option<PathBuf>,
    /// `--warehouse-ca-file`: the CAs its certificate must chain to, for a PostgreSQL URL
    /// with `sslmode=require` (default: the system trust store).
    pub ca_file: Option<PathBuf>,
    /// `--dry-run`: list, write nothing.
    pub dry_run: bool,
}

/// A checked [`Request`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// The receive times covered.
    pub window: Window,
    /// Streams, in configuration order.
    pub streams: Vec<String>,
    /// Where the objects are loaded.
    pub target: WarehouseTarget,
    /// List only.
    pub dry_run: bool,
}

impl Plan {
    /// Checks `request` against `config`; `now` anchors relative times.
    ///
    /// # Errors
    /// A message for the operator: an unreadable time, an empty window, an unknown stream,
    /// an unusable warehouse URL or password file.
    pub fn new(config: &Config, request: &Request, now: Timestamp) -> Result<Self, String> {
        let time = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| parse_time(t, now).map_err(|e| format!("{flag}: {e}")))
                .transpose()
        };
        let window = Window {
            since: time("--since", &request.since)?,
            until: time("--until", &request.until)?,
        };
        if let (Some(since), Some(until)) = (window.since, window.until)
            && since >= until
        {
            return Err(format!(
                "--since {} is not before --until {}: the window is empty",
                format_timestamp(since),
                format_timestamp(until)
            ));
        }
        for name in &request.streams {
            if !config.streams.contains_key(name) {
                let known: Vec<&str> = config.streams.keys().map(String::as_str).collect();
                return Err(format!(
                    "--stream {name}: no such stream in the configuration (streams: {})",
                    known.join(", ")
                ));
            }
        }
        let streams = config
            .streams
            .keys()
            .filter(|name| request.streams.is_empty() || request.streams.contains(name))
            .cloned()
            .collect();
        let target = match &request.warehouse {
            None => {
                if request.password_file.is_some() {
                    return Err(
                        "--warehouse-password-file goes with --warehouse; the configured \
                         warehouse takes its password from warehouse.password_file"
                            .into(),
                    );
                }
                if request.ca_file.is_some() {
                    return Err(
                        "--warehouse-ca-file goes with --warehouse; the configured warehouse \
                         takes its CAs from warehouse.ca_file"
                            .into(),
                    );
                }
                config.warehouse_target()?
            }
            Some(url) => other_target(
                config,
                url,
                request.password_file.as_deref(),
                request.ca_file.as_deref(),
            )?,
        };
        Ok(Self {
            window,
            streams,
            target,
            dry_run: request.dry_run,
        })
    }
}

/// The warehouse named on the command line, read as `warehouse.url` is (same URL forms,
/// same password sources, except that a relative SQLite path is relative to the current
/// directory, as a command-line path is expected to be). It does not inherit
/// `warehouse.ca_file`: another server may have another CA.
fn other_target(
    config: &Config,
    url: &str,
    password_file: Option<&Path>,
    ca_file: Option<&Path>,
) -> Result<WarehouseTarget, String> {
    let mut url = url.to_owned();
    if let Some(path) = url.strip_prefix("sqlite://")
        && !path.is_empty()
        && Path::new(path).is_relative()
    {
        let absolute = std::path::absolute(path)
            .map_err(|e| format!("--warehouse: cannot resolve {path}: {e}"))?;
        url = format!("sqlite://{}", absolute.display());
    }
    let absolute = |file: &Path| std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let mut other = config.clone();
    other.warehouse = WarehouseConfig {
        url,
        password_file: password_file.map(absolute),
        ca_file: ca_file.map(absolute),
    };
    // Messages name the configuration keys; here they were command-line options.
    other.warehouse_target().map_err(|message| {
        message
            .replace("warehouse.password_file", "--warehouse-password-file")
            .replace("warehouse.ca_file", "--warehouse-ca-file")
            .replace("warehouse.url", "--warehouse")
    })
}

/// What a reload did (or, in a dry run, would do) for one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    /// Stream name.
    pub stream: String,
    /// Its table.
    pub table: String,
    /// Objects in the window, counting those whose receive time could not be read (they
    /// may be in it): `loaded + already_loaded + unreadable`.
    pub found: u64,
    /// Objects loaded by this run (a dry run: to be loaded).
    pub loaded: u64,
    /// Objects the target's manifest held already.
    pub already_loaded: u64,
    /// Objects that could not be read: name (relative to the archive root) and why.
    pub unreadable: Vec<(String, String)>,
    /// Rows inserted.
    pub inserted: u64,
    /// Lines whose natural key was in the table already.
    pub duplicates: u64,
    /// Lines rejected (into `rejected_records` and the errors objects).
    pub rejected: u64,
    /// Archive objects (in or out of the window) older than the newest object in the
    /// manifest but not in it: a collector loading into this warehouse skips them.
    pub gaps: u64,
    /// The oldest such object.
    pub first_gap: Option<String>,
    /// The last sequence number in the manifest, after which a collector resumes.
    pub loaded_through: u64,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Per stream, in configuration order.
    pub streams: Vec<StreamSummary>,
}

impl Summary {
    /// Objects that could not be read, over all streams.
    pub fn unreadable(&self) -> usize {
        self.streams.iter().map(|s| s.unreadable.len()).sum()
    }
}

/// Runs the reload, writing the report to `out` as each stream finishes. Must not be called
/// from inside an async runtime (PostgreSQL runs on a runtime of the reload's own).
///
/// # Errors
/// The warehouse cannot be reached or refuses a load; the archive cannot be listed, or an
/// errors object cannot be written. What committed before stays committed. Objects that
/// cannot be read are not errors here: see [`Summary::unreadable`].
pub fn run(config: &Config, plan: &Plan, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let archive_root = config.data_dir.join("archive");
    if !archive_root.is_dir() {
        anyhow::bail!(
            "no archive at {} (data_dir {}): nothing to reload",
            archive_root.display(),
            config.data_dir.display()
        );
    }
    let archive = Archive::new(&archive_root);
    let target = plan.target.clone();
    writeln!(
        out,
        "{} {} from {}: {}",
        if plan.dry_run {
            "dry run, nothing is written: would reload into"
        } else {
            "reload into"
        },
        target.describe(),
        archive_root.display(),
        plan.window.describe()
    )?;
    // PostgreSQL's connection tasks run here; loads drive their queries from this thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tollstream-reload")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let target = match target {
        WarehouseTarget::Postgres(mut pg) => {
            pg.config.application_name("tollstream-collector reload");
            if pg.config.get_connect_timeout().is_none() {
                // As the loader's: fail within seconds, not after TCP's own minutes.
                pg.config.connect_timeout(PG_CONNECT_TIMEOUT);
            }
            WarehouseTarget::Postgres(pg)
        }
        sqlite => sqlite,
    };
    let mut warehouse = if plan.dry_run {
        None
    } else {
        let _entered = runtime.enter();
        Some(
            crate::warehouse::open(&target)
                .with_context(|| format!("opening warehouse {}", target.describe()))?,
        )
    };
    let manifest = Manifest::open(&target, runtime.handle())?;
    let mut summary = Summary::default();
    for name in &plan.streams {
        let Some(stream) = config.streams.get(name) else {
            continue;
        };
        let mut reload = StreamReload {
            summary: StreamSummary {
                stream: name.clone(),
                table: stream.table.clone(),
                ..StreamSummary::default()
            },
            schema: stream
                .schema
                .build()
                .map_err(|e| anyhow::anyhow!("streams.{name}.schema.{e}"))?,
            archive: &archive,
            archive_root: &archive_root,
            target: &target,
            window: plan.window,
        };
        let result = reload.run(warehouse.as_deref_mut(), &manifest, out);
        reload.print(out, plan.dry_run)?;
        if let Err(error) = result {
            writeln!(out, "  stopped    {error:#}")?;
            return Err(error);
        }
        summary.streams.push(reload.summary);
    }
    Ok(summary)
}

/// One stream's reload.
struct StreamReload<'a> {
    summary: StreamSummary,
    schema: Schema,
    archive: &'a Archive,
    archive_root: &'a Path,
    target: &'a WarehouseTarget,
    window: Window,
}

/// How long connecting to PostgreSQL may take, unless the URL sets `connect_timeout`.
const PG_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Objects loaded between two progress log lines.
const PROGRESS_EVERY: u64 = 500;

impl StreamReload<'_> {
    /// Selects, then loads (`warehouse` given) or lists (a dry run) the stream's objects.
    fn run(
        &mut self,
        mut warehouse: Option<&mut (dyn Warehouse + 'static)>,
        manifest: &Manifest,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let stream = self.summary.stream.clone();
        let table = self.summary.table.clone();
        if let Some(warehouse) = warehouse.as_deref_mut() {
            warehouse
                .prepare(&stream, &table, &self.schema)
                .with_context(|| {
                    format!(
                        "preparing table {table} in warehouse {}",
                        self.target.describe()
                    )
                })?;
        }
        let mut loaded = manifest.loaded(&stream).with_context(|| {
            format!(
                "reading the load manifest of warehouse {}",
                self.target.describe()
            )
        })?;
        let objects = self.archive.list_after(&stream, 0).with_context(|| {
            format!("listing stream {stream} in {}", self.archive_root.display())
        })?;
        let selected = self.select(&objects, &loaded);
        info!(stream = %stream, objects = selected.len(), "Reloading.");
        for object in selected {
            let name = self.name(object);
            self.summary.found += 1;
            if loaded.contains_key(&object.first_seq) {
                self.summary.already_loaded += 1;
                continue;
            }
            let Some(warehouse) = warehouse.as_deref_mut() else {
                let bytes = std::fs::metadata(&object.path).map_or(0, |m| m.len());
                writeln!(
                    out,
                    "  would load {name} (records {}..={}, {bytes} bytes)",
                    object.first_seq, object.last_seq
                )?;
                self.summary.loaded += 1;
                loaded.insert(object.first_seq, object.last_seq);
                continue;
            };
            let (index, data) = match Archive::read(&object.path) {
                Ok(read) => read,
                Err(error) => {
                    warn!(stream = %stream, object = %name, error = %error, "Cannot read an archive object; going on with the others.");
                    self.summary.unreadable.push((name, error.to_string()));
                    continue;
                }
            };
            let outcome = warehouse
                .load(&LoadJob {
                    stream: &stream,
                    table: &table,
                    schema: &self.schema,
                    object: name.clone(),
                    first_seq: object.first_seq,
                    last_seq: object.last_seq,
                    index,
                    data,
                    archive: self.archive,
                })
                .with_context(|| {
                    format!("loading {name} into warehouse {}", self.target.describe())
                })?;
            if outcome.already_loaded {
                // Loaded by the collector (or another reload) since the manifest was read.
                self.summary.already_loaded += 1;
            } else {
                self.summary.loaded += 1;
                self.summary.inserted += outcome.inserted;
                self.summary.duplicates += outcome.duplicates;
                self.summary.rejected += outcome.rejected;
                if self.summary.loaded.is_multiple_of(PROGRESS_EVERY) {
                    info!(stream = %stream, loaded = self.summary.loaded, rows = self.summary.inserted, "Reload in progress.");
                }
            }
            loaded.insert(object.first_seq, object.last_seq);
        }
        if warehouse.is_some() {
            // Read again: the collector may have loaded more meanwhile.
            loaded = manifest.loaded(&stream).with_context(|| {
                format!(
                    "reading the load manifest of warehouse {}",
                    self.target.describe()
                )
            })?;
        }
        self.find_gaps(&objects, &loaded);
        Ok(())
    }

    /// The objects in the window, in sequence order. An object whose receive time cannot
    /// be read is unreadable, unless the manifest holds it (then it needs no reading).
    fn select<'o>(
        &mut self,
        objects: &'o [ArchiveObject],
        loaded: &BTreeMap<u64, u64>,
    ) -> Vec<&'o ArchiveObject> {
        let mut selected = Vec::new();
        for object in objects {
            let hour = self.hour_of(object);
            let overlap = hour.map_or(Overlap::Partly, |h| self.window.hour(h));
            let chosen = match overlap {
                Overlap::Inside => true,
                Overlap::Outside => false,
                Overlap::Partly => match Archive::read_index(&object.path) {
                    Ok(index) => index
                        .first()
                        .and_then(|e| Timestamp::from_microsecond(e.received_at_us).ok())
                        .is_some_and(|at| self.window.contains(at)),
                    Err(error) => {
                        if !loaded.contains_key(&object.first_seq) {
                            // Counted as found: it may well be in the window.
                            self.summary.found += 1;
                            self.summary.unreadable.push((
                                self.name(object),
                                format!("cannot tell whether it is in the window: {error}"),
                            ));
                        }
                        false
                    }
                },
            };
            if chosen {
                selected.push(object);
            }
        }
        selected
    }

    /// The start of the hour an object's directory names (`<stream>/YYYY/MM/DD/HH/`).
    fn hour_of(&self, object: &ArchiveObject) -> Option<Timestamp> {
        let relative = object
            .path
            .parent()?
            .strip_prefix(self.archive_root.join(&object.stream))
            .ok()?;
        let parts: Vec<&str> = relative.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
        let [year, month, day, hour] = parts.as_slice() else {
            return None;
        };
        format!("{year}-{month}-{day}T{hour}:00:00Z").parse().ok()
    }

    /// The object's name in the manifest: its path relative to the archive root.
    fn name(&self, object: &ArchiveObject) -> String {
        object
            .path
            .strip_prefix(self.archive_root)
            .unwrap_or(&object.path)
            .to_string_lossy()
            .into_owned()
    }

    /// Counts archive objects at or below the manifest's newest that it does not hold.
    fn find_gaps(&mut self, objects: &[ArchiveObject], loaded: &BTreeMap<u64, u64>) {
        let through = loaded.values().copied().max().unwrap_or(0);
        self.summary.loaded_through = through;
        for object in objects {
            if object.last_seq <= through && !loaded.contains_key(&object.first_seq) {
                self.summary.gaps += 1;
                if self.summary.first_gap.is_none() {
                    self.summary.first_gap = Some(self.name(object));
                }
            }
        }
    }

    fn print(&self, out: &mut dyn Write, dry_run: bool) -> std::io::Result<()> {
        let s = &self.summary;
        writeln!(out, "stream {} → table {}", s.stream, s.table)?;
        for (name, error) in &s.unreadable {
            writeln!(out, "  unreadable {name}: {error}")?;
        }
        let verb = if dry_run { "to load" } else { "loaded now" };
        writeln!(
            out,
            "  objects    {} in the window: {} {verb}, {} already loaded, {} unreadable",
            s.found,
            s.loaded,
            s.already_loaded,
            s.unreadable.len()
        )?;
        if !dry_run {
            writeln!(
                out,
                "  rows       {} inserted, {} duplicate keys, {} rejected",
                s.inserted, s.duplicates, s.rejected
            )?;
        }
        if let Some(first) = &s.first_gap {
            writeln!(
                out,
                "  gaps       {} archive objects older than the newest loaded one {} not in \
                 this warehouse (the oldest: {first}); a collector loading into it resumes \
                 after record {} and will not load them, so reload them if they belong there",
                s.gaps,
                if dry_run { "would be" } else { "are" },
                s.loaded_through
            )?;
        }
        Ok(())
    }
}

/// The target's load manifest, read apart from the loads: on SQLite through a read-only
/// connection, on PostgreSQL through a connection of its own.
enum Manifest {
    Sqlite(PathBuf),
    Postgres {
        runtime: tokio::runtime::Handle,
        client: tokio_postgres::Client,
    },
}

impl Manifest {
    /// Connects to PostgreSQL now; a SQLite file is opened at each read (and not created:
    /// a dry run creates nothing).
    fn open(target: &WarehouseTarget, runtime: &tokio::runtime::Handle) -> anyhow::Result<Self> {
        match target {
            WarehouseTarget::Sqlite(path) => Ok(Self::Sqlite(path.clone())),
            WarehouseTarget::Postgres(pg) => {
                let config = pg.config.clone();
                let client = runtime
                    .block_on(crate::warehouse::pg_tls::connect(&config, pg.tls.as_ref()))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot connect to warehouse {}: {}",
                            pg.shown,
                            crate::warehouse::pg_error_message(&e)
                        )
                    })?;
                Ok(Self::Postgres {
                    runtime: runtime.clone(),
                    client,
                })
            }
        }
    }

    /// The stream's loaded objects: first sequence → last sequence.
    fn loaded(&self, stream: &str) -> anyhow::Result<BTreeMap<u64, u64>> {
        let seq = |n: i64| u64::try_from(n).unwrap_or(0);
        match self {
            Self::Sqlite(path) => {
                if !path.exists() {
                    return Ok(BTreeMap::new());
                }
                let db = crate::status::open_read_only(path)
                    .with_context(|| format!("opening {} read-only", path.display()))?;
                db.busy_timeout(std::time::Duration::from_secs(5))?;
                let exists: bool = db.query_row(
                    "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'loads'",
                    [],
                    |r| r.get(0),
                )?;
                if !exists {
                    return Ok(BTreeMap::new());
                }
                let mut query =
                    db.prepare("SELECT first_seq, last_seq FROM loads WHERE stream = ?1")?;
                let rows = query.query_map([stream], |r| Ok((seq(r.get(0)?), seq(r.get(1)?))))?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Self::Postgres { runtime, client } => runtime
                .block_on(async {
                    let exists: bool = client
                        .query_one("SELECT to_regclass('loads') IS NOT NULL", &[])
                        .await?
                        .get(0);
                    if !exists {
                        return Ok(BTreeMap::new());
                    }
                    let rows = client
                        .query(
                            "SELECT first_seq, last_seq FROM loads WHERE stream = $1",
                            &[&stream],
                        )
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|r| (seq(r.get(0)), seq(r.get(1))))
                        .collect())
                })
                .map_err(|e: tokio_postgres::Error| {
                    anyhow::anyhow!("{}", crate::warehouse::pg_error_message(&e))
                }),
        }
    }
}

#[cfg(test)]
mod tests;
