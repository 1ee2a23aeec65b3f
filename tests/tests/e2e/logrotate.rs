//! Rotation by the real `logrotate` binary while an application keeps writing.
//!
//! Each test runs a writer thread that appends toll lines to `logs/app.log` at ~4,000
//! lines/s the way a real application does: it keeps its file open in append mode and
//! reopens the path only when it notices (or is told) that the path names another file, so
//! some lines land late in the renamed file (or in a deleted one). Meanwhile the test runs
//! `logrotate -f -s <state> <conf>` several times. Afterwards every transaction id written
//! must be in the warehouse, and no line may have reached the collector twice (counted in
//! the archive, which keeps every line as received, not just the first one per key).
//!
//! logrotate is picky about permissions: it ignores a config file writable by group or
//! others (and still exits 0!), and skips a log whose directory is world-writable or
//! writable by a group other than root unless the config says `su`. The tests make the
//! directories 0755 and the config 0644, and check after each run that a rotation really
//! happened and that logrotate printed nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::time::Instant;
use tollstream_tests::harness::{free_port, http_get, wait_for};
use tollstream_tests::sim::{Mode, SimConfig, Simulator};

use crate::fixture::Pipeline;

/// Lines per write of the writer (one `write(2)` each)…
const LINES_PER_WRITE: usize = 20;
/// …every this often: 4,000 lines/s.
const WRITE_EVERY: Duration = Duration::from_millis(5);
/// How often a polling writer checks whether its path still names the file it has open.
const REOPEN_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Rotations per test.
const ROTATIONS: usize = 4;
/// Lines written between two rotations (about a second), and after the last one.
const LINES_BETWEEN_ROTATIONS: u64 = 4_000;
/// At least this long between two rotations, so `dateext` names differ by their `%s`.
const MIN_ROTATION_SPACING: Duration = Duration::from_millis(1_100);
/// The agent's `rescan_interval` in these tests.
const RESCAN_INTERVAL: &str = "500ms";
/// The pipeline is settled once the agent has shipped everything it read and nothing moved
/// for this long with every line loaded (longer than a rescan plus a batch and a load, so a
/// file the agent has yet to find — a copy that would be shipped twice — shows up)…
const QUIET_COMPLETE: Duration = Duration::from_secs(2);
/// …or for this long with lines still missing (they are not coming).
const QUIET_INCOMPLETE: Duration = Duration::from_secs(6);
/// Hard limit on waiting for the pipeline to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A line the agent had not read yet when `copytruncate` truncated the file is lost when the
/// copy is not watched. The agent follows `app.log` with file events and a 100 ms poll, so
/// such a line was written at most this long before logrotate started.
const READ_LAG_ALLOWANCE: Duration = Duration::from_secs(1);

#[test]
fn rename_and_create_with_rotated_files_outside_the_globs() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "rename+create, app.log only",
        directives: "rotate 10\ncreate",
        paths: &["logs/app.log"],
        ..Scenario::default()
    })?;
    outcome.assert_exactly_once();
    Ok(())
}

#[test]
fn rename_and_create_with_rotated_files_inside_the_globs() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "rename+create, app.log*",
        directives: "rotate 10\ncreate",
        paths: &["logs/app.log*"],
        ..Scenario::default()
    })?;
    outcome.assert_exactly_once();
    Ok(())
}

#[test]
fn copytruncate_with_the_copy_inside_the_globs() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "copytruncate, app.log*",
        directives: "rotate 10\ncopytruncate",
        paths: &["logs/app.log*"],
        style: Style::CopyTruncate,
        ..Scenario::default()
    })?;
    // The copy holds every line that was in the file when logrotate copied it, so an agent
    // that reads the copy can deliver all of them. Only lines written between the copy and
    // the truncate exist nowhere any more; they arrive only if the agent read them from
    // `app.log` before the truncate, which no test can force.
    outcome.assert_no_duplicates();
    outcome.assert_missing_only(
        "lines that exist on disk (in app.log or a copy) are all delivered",
        |line| outcome.files_holding(line).is_empty(),
    );
    Ok(())
}

#[test]
fn copytruncate_with_the_copy_outside_the_globs() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "copytruncate, app.log only",
        directives: "rotate 10\ncopytruncate",
        paths: &["logs/app.log"],
        style: Style::CopyTruncate,
        ..Scenario::default()
    })?;
    // What the agent had not read when logrotate truncated the file is gone for it: lines
    // written during the copy (and its fsync) and, if it lagged, a little before. So lines
    // may be missing, but only from around a rotation — and never one that is still in
    // `app.log` — and none may arrive twice.
    outcome.assert_no_duplicates();
    outcome.assert_missing_only(
        "missing lines were written at most 1 s before a logrotate run started, or during it, \
         and are no longer in app.log",
        |line| {
            !outcome.files_holding(line).contains(&"app.log")
                && outcome
                    .rotations
                    .iter()
                    .any(|r| line.at + READ_LAG_ALLOWANCE >= r.started && line.at <= r.finished)
        },
    );
    Ok(())
}

#[test]
fn dateext_and_olddir() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "dateext+olddir",
        // `%s` (seconds since the epoch) makes each rotation's name distinct as long as they
        // are a second apart (MIN_ROTATION_SPACING); logrotate refuses to overwrite one.
        directives: "rotate 10\ncreate\ndateext\ndateformat -%Y%m%d-%s\nolddir {logs}/old",
        paths: &["logs/app.log"],
        old_dir: true,
        ..Scenario::default()
    })?;
    outcome.assert_exactly_once();
    Ok(())
}

#[test]
fn compress_and_delaycompress_with_rotated_files_inside_the_globs() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "compress+delaycompress, app.log*",
        directives: "rotate 10\ncreate\ncompress\ndelaycompress",
        paths: &["logs/app.log*"],
        ..Scenario::default()
    })?;
    outcome.assert_exactly_once();
    Ok(())
}

#[test]
fn rotate_0_deletes_the_file_while_the_writer_still_appends_to_it() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "rotate 0 (deleted while open)",
        directives: "rotate 0\ncreate",
        paths: &["logs/app.log"],
        ..Scenario::default()
    })?;
    outcome.assert_exactly_once();
    Ok(())
}

#[test]
fn agent_sigkilled_and_restarted_between_rotations() -> anyhow::Result<()> {
    let outcome = run(&Scenario {
        name: "rename+create, agent SIGKILLed between rotations",
        directives: "rotate 10\ncreate",
        paths: &["logs/app.log"],
        kill: Kill::BetweenRotations,
        ..Scenario::default()
    })?;
    outcome.assert_exactly_once();
    Ok(())
}

#[test]
fn agent_sigkilled_after_a_rotation_before_the_writer_reopens() -> anyhow::Result<()> {
    // The application reopens its log when logrotate's `postrotate` tells it to; the agent
    // dies in between, while lines still go to the renamed file, and is back after the
    // reopen. Those lines were appended to a watched file, so they must arrive too.
    let outcome = run(&Scenario {
        name: "rename+create, agent SIGKILLed before the writer reopens",
        directives: "rotate 10\ncreate",
        paths: &["logs/app.log"],
        reopen: Reopen::WhenTold,
        kill: Kill::BeforeReopen,
        ..Scenario::default()
    })?;
    outcome.assert_exactly_once();
    Ok(())
}

/// How logrotate moves the data out of `app.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Renamed (or deleted), a new `app.log` created: its inode changes.
    Create,
    /// Copied to `app.log.1` (a new file), then truncated in place.
    CopyTruncate,
}

/// When the writer reopens `logs/app.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reopen {
    /// When a check every [`REOPEN_CHECK_EVERY`] finds the path names another file.
    Poll,
    /// Only when the test says so, as after a `postrotate` signal.
    WhenTold,
}

/// When the agent is SIGKILLed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Never,
    /// After a rotation, once the renamed file is delivered and app.log has grown again;
    /// restarted a quarter of a rotation interval later.
    BetweenRotations,
    /// Right after logrotate, before the writer reopens; restarted after the reopen.
    BeforeReopen,
}

struct Scenario {
    name: &'static str,
    /// The directives of the `logs/app.log { … }` block; `{logs}` is the logs directory.
    directives: &'static str,
    /// The agent's globs, relative to the test directory.
    paths: &'static [&'static str],
    style: Style,
    /// Create `logs/old` for `olddir`.
    old_dir: bool,
    reopen: Reopen,
    kill: Kill,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "",
            directives: "",
            paths: &[],
            style: Style::Create,
            old_dir: false,
            reopen: Reopen::Poll,
            kill: Kill::Never,
        }
    }
}

/// One line the writer wrote.
#[derive(Debug, Clone, Copy)]
struct Line {
    /// Its transaction id.
    id: u128,
    /// The inode of the file it was written to.
    inode: u64,
    /// When its `write` started, since the test's start.
    at: Duration,
}

/// One logrotate run, since the test's start.
#[derive(Debug, Clone, Copy)]
struct Rotation {
    started: Duration,
    finished: Duration,
}

/// Starts a pipeline, writes while rotating, waits for the pipeline to settle, stops it and
/// gathers what arrived.
fn run(scenario: &Scenario) -> anyhow::Result<Outcome> {
    let logrotate = logrotate_binary()?;
    let metrics_port = free_port()?;
    let mut pipeline = Pipeline::start_prepared(
        |setup| {
            setup.paths = scenario.paths.iter().map(|p| (*p).to_owned()).collect();
            setup.exclude = vec!["*.gz".into()];
            setup.metrics_port = Some(metrics_port);
            setup.rescan_interval = Some(RESCAN_INTERVAL);
        },
        |dir| {
            // logrotate skips logs in group- or world-writable directories (whatever the
            // umask made them) and ignores group- or world-writable configs.
            let logs = dir.join("logs");
            std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755))?;
            if scenario.old_dir {
                std::fs::create_dir(logs.join("old"))?;
                std::fs::set_permissions(logs.join("old"), std::fs::Permissions::from_mode(0o755))?;
            }
            let logs = logs.to_str().context("test directory is not UTF-8")?;
            let body = scenario
                .directives
                .replace("{logs}", logs)
                .replace('\n', "\n    ");
            let conf = dir.join("logrotate.conf");
            std::fs::write(
                &conf,
                format!("{logs}/app.log {{\n    missingok\n    {body}\n}}\n"),
            )?;
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644))?;
            Ok(())
        },
    )?;
    let dir = pipeline.dir.path().to_path_buf();
    let app_log = dir.join("logs").join("app.log");
    let agent_metrics = ([127, 0, 0, 1], metrics_port).into();
    let t0 = Instant::now();
    let writer = Writer::spawn(app_log.clone(), t0, scenario.reopen)?;
    // The agent follows app.log before the first rotation (a line of it has arrived).
    pipeline.wait_rows_at_least(1)?;
    let mut rotations = Vec::new();
    let mut late = Vec::new();
    for round in 0..ROTATIONS {
        writer.wait_written(writer.written() + LINES_BETWEEN_ROTATIONS)?;
        if let Some(last) = rotations.last().map(|r: &Rotation| r.started) {
            let since = t0.elapsed() - last;
            std::thread::sleep(MIN_ROTATION_SPACING.saturating_sub(since));
        }
        let before = Inodes::of(&dir)?;
        let started = t0.elapsed();
        rotate(&logrotate, &dir)?;
        let rotation = Rotation {
            started,
            finished: t0.elapsed(),
        };
        Inodes::of(&dir)?.check_rotated(&before, scenario.style, scenario.old_dir)?;
        rotations.push(rotation);
        match scenario.kill {
            Kill::Never => {}
            Kill::BetweenRotations => {
                if round + 1 < ROTATIONS {
                    // Killed once the renamed file is delivered, while app.log has lines
                    // not yet acknowledged (or checkpointed): a restarted agent does not
                    // look for files rotated out of its globs, which the next test is about.
                    let rotated_away = writer.wait_reopened(round as u64 + 1)?;
                    wait_delivered(&pipeline, rotated_away);
                    writer.wait_written(writer.written() + LINES_BETWEEN_ROTATIONS / 4)?;
                    pipeline.agent.kill()?;
                    writer.wait_written(writer.written() + LINES_BETWEEN_ROTATIONS / 4)?;
                    pipeline.agent.start()?;
                }
            }
            Kill::BeforeReopen => {
                pipeline.agent.kill()?;
                let n = writer.written();
                writer.wait_written(n + 400)?; // All into the renamed file.
                late.push(writer.written() - n);
                writer.reopen_and_wait()?;
                pipeline.agent.start()?;
            }
        }
        if scenario.reopen == Reopen::WhenTold && scenario.kill != Kill::BeforeReopen {
            writer.reopen_and_wait()?;
        }
    }
    writer.wait_written(writer.written() + LINES_BETWEEN_ROTATIONS)?;
    let written = writer.stop()?;
    let writing = t0.elapsed();
    settle(&pipeline, agent_metrics, written.len() as u64)?;
    pipeline.stop()?;
    let outcome = Outcome::gather(scenario.name, &pipeline, written, rotations)?;
    outcome.report(writing, t0.elapsed(), &late);
    // The outcome asserts; the pipeline (its directory and logs) must outlive that.
    Ok(Outcome {
        _pipeline: Some(pipeline),
        ..outcome
    })
}

/// Waits (up to a deadline) until `lines` rows are loaded; going on after the deadline lets
/// the final check say which lines are missing.
fn wait_delivered(pipeline: &Pipeline, lines: u64) {
    let delivered = pipeline.warehouse().and_then(|warehouse| {
        wait_for(&format!("{lines} rows"), Duration::from_secs(30), || {
            warehouse
                .count("SELECT COUNT(*) FROM toll_transactions")
                .is_ok_and(|rows| rows >= lines as i64)
        })
    });
    if let Err(error) = delivered {
        eprintln!("going on without: {error:#}");
    }
}

/// The `logrotate` binary: on `PATH`, or in `/usr/sbin` (not on a non-root `PATH`).
fn logrotate_binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("logrotate"))
        .find(|p| p.is_file())
        .context("logrotate is not installed (apt-get install -y logrotate)")
}

/// Runs `logrotate -f -s <state> <conf>`; it must exit 0 and say nothing.
fn rotate(logrotate: &Path, dir: &Path) -> anyhow::Result<()> {
    let output = Command::new(logrotate)
        .arg("-f")
        .arg("-s")
        .arg(dir.join("logrotate.state"))
        .arg(dir.join("logrotate.conf"))
        .output()
        .with_context(|| format!("running {}", logrotate.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && stderr.trim().is_empty(),
        "logrotate exited with {}: {stderr}",
        output.status
    );
    Ok(())
}

/// The inodes of `logs/app.log` and `logs/app.log.1`, and the number of files in `logs/old`,
/// to check that a rotation happened (logrotate exits 0 even when it ignores its config).
struct Inodes {
    app_log: Option<u64>,
    first_copy: Option<u64>,
    old: usize,
}

impl Inodes {
    fn of(dir: &Path) -> anyhow::Result<Self> {
        let inode = |name: &str| {
            std::fs::metadata(dir.join("logs").join(name))
                .ok()
                .map(|m| m.ino())
        };
        let old = match std::fs::read_dir(dir.join("logs").join("old")) {
            Ok(entries) => entries.count(),
            Err(_) => 0,
        };
        Ok(Self {
            app_log: inode("app.log"),
            first_copy: inode("app.log.1"),
            old,
        })
    }

    fn check_rotated(&self, before: &Self, style: Style, old_dir: bool) -> anyhow::Result<()> {
        let rotated = match style {
            Style::Create => self.app_log.is_some() && self.app_log != before.app_log,
            Style::CopyTruncate => {
                self.app_log == before.app_log
                    && self.first_copy.is_some()
                    && self.first_copy != before.first_copy
            }
        };
        ensure!(
            rotated && self.old == before.old + usize::from(old_dir),
            "logrotate exited 0 but did not rotate (app.log inode {:?} → {:?}, app.log.1 inode \
             {:?} → {:?}, files in old/ {} → {})",
            before.app_log,
            self.app_log,
            before.first_copy,
            self.first_copy,
            before.old,
            self.old
        );
        Ok(())
    }
}

/// The application: appends toll lines to `logs/app.log` from its own thread.
struct Writer {
    stop: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    /// Times it reopened the path, and how many lines it had written before the last time
    /// (all of them to files that are rotated away now).
    reopens: Arc<(AtomicU64, AtomicU64)>,
    thread: Option<JoinHandle<anyhow::Result<Vec<Line>>>>,
}

impl Writer {
    fn spawn(path: PathBuf, t0: Instant, policy: Reopen) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let reopen = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let reopens = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let mut simulator =
            Simulator::new(&SimConfig::default(), Mode::Count { lines: 100_000_000 })?;
        let mut file = append_to(&path, true)?;
        let thread = {
            let (stop, reopen, written) = (stop.clone(), reopen.clone(), written.clone());
            let reopens = reopens.clone();
            std::thread::Builder::new()
                .name("app-writer".into())
                .spawn(move || -> anyhow::Result<Vec<Line>> {
                    let mut lines = Vec::new();
                    let mut inode = file.metadata()?.ino();
                    let mut buf = Vec::with_capacity(LINES_PER_WRITE * 128);
                    let mut ids = Vec::with_capacity(LINES_PER_WRITE);
                    let mut last_check = t0;
                    for tick in 0u32.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let due = t0 + WRITE_EVERY * tick;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let told = reopen.load(Ordering::SeqCst);
                        let check =
                            policy == Reopen::Poll && last_check.elapsed() >= REOPEN_CHECK_EVERY;
                        if told || check {
                            last_check = Instant::now();
                            // Reopen only once the path names another file: opening with
                            // O_CREAT between logrotate's rename and its `create` would make
                            // logrotate fail.
                            match std::fs::metadata(&path) {
                                Ok(meta) if meta.ino() != inode => {
                                    file = append_to(&path, false)?;
                                    inode = file.metadata()?.ino();
                                    reopens
                                        .1
                                        .store(written.load(Ordering::SeqCst), Ordering::SeqCst);
                                    reopens.0.fetch_add(1, Ordering::SeqCst);
                                }
                                _ => {}
                            }
                            if told {
                                reopen.store(false, Ordering::SeqCst);
                            }
                        }
                        buf.clear();
                        ids.clear();
                        for _ in 0..LINES_PER_WRITE {
                            let start = buf.len();
                            simulator
                                .next_into(&mut buf)
                                .context("the simulator ran out of lines")?;
                            ids.push(transaction_id(&buf[start..])?);
                        }
                        let at = t0.elapsed();
                        file.write_all(&buf)
                            .with_context(|| format!("writing {}", path.display()))?;
                        lines.extend(ids.iter().map(|&id| Line { id, inode, at }));
                        written.fetch_add(ids.len() as u64, Ordering::SeqCst);
                    }
                    Ok(lines)
                })?
        };
        Ok(Self {
            stop,
            reopen,
            written,
            reopens,
            thread: Some(thread),
        })
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until the writer has reopened its path `times` times in all; returns how many
    /// lines it had written before the last reopen.
    fn wait_reopened(&self, times: u64) -> anyhow::Result<u64> {
        wait_for(
            &format!("the writer to have reopened app.log {times} times"),
            Duration::from_secs(30),
            || {
                self.reopens.0.load(Ordering::SeqCst) >= times
                    || self.thread.as_ref().is_some_and(|t| t.is_finished())
            },
        )?;
        self.check_alive()?;
        Ok(self.reopens.1.load(Ordering::SeqCst))
    }

    fn wait_written(&self, lines: u64) -> anyhow::Result<()> {
        self.check_alive()?;
        wait_for(
            &format!("the writer to have written {lines} lines"),
            Duration::from_secs(60),
            || self.written() >= lines || self.thread.as_ref().is_some_and(|t| t.is_finished()),
        )?;
        self.check_alive()
    }

    /// Tells the writer to reopen its path (a `postrotate` signal) and waits until it did.
    fn reopen_and_wait(&self) -> anyhow::Result<()> {
        self.reopen.store(true, Ordering::SeqCst);
        wait_for(
            "the writer to reopen app.log",
            Duration::from_secs(30),
            || {
                !self.reopen.load(Ordering::SeqCst)
                    || self.thread.as_ref().is_some_and(|t| t.is_finished())
            },
        )?;
        self.check_alive()
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            bail!("the writer thread stopped early (its error is reported when it is joined)");
        }
        Ok(())
    }

    fn stop(mut self) -> anyhow::Result<Vec<Line>> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().context("writer already stopped")?;
        match thread.join() {
            Ok(lines) => lines,
            Err(_) => bail!("the writer thread panicked"),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn append_to(path: &Path, create: bool) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(create)
        .open(path)
        .with_context(|| format!("opening {} to append", path.display()))
}

/// The transaction id (second field) of a toll line.
fn transaction_id(line: &[u8]) -> anyhow::Result<u128> {
    let field = line
        .split(|&b| b == b',')
        .nth(1)
        .with_context(|| format!("no second field in {:?}", String::from_utf8_lossy(line)))?;
    let id = uuid::Uuid::try_parse_ascii(field)
        .with_context(|| format!("transaction id in {:?}", String::from_utf8_lossy(line)))?;
    Ok(id.as_u128())
}

/// Waits until the agent has shipped everything it read and nothing moves any more (see
/// [`QUIET_COMPLETE`] and [`QUIET_INCOMPLETE`]).
fn settle(
    pipeline: &Pipeline,
    agent_metrics: std::net::SocketAddr,
    expected_rows: u64,
) -> anyhow::Result<()> {
    let warehouse = pipeline.warehouse()?;
    let mut last = None;
    let mut changed = Instant::now();
    let result = wait_for("the pipeline to settle", SETTLE_TIMEOUT, || {
        let rows = warehouse
            .count("SELECT COUNT(*) FROM toll_transactions")
            .unwrap_or(-1);
        let counters = agent_counters(agent_metrics);
        let now = (rows, counters);
        if last != Some(now) {
            last = Some(now);
            changed = Instant::now();
        }
        let idle = counters.is_some_and(|(read, shipped)| read == shipped);
        let quiet = changed.elapsed();
        idle && (quiet >= QUIET_INCOMPLETE
            || (rows >= expected_rows as i64 && quiet >= QUIET_COMPLETE))
    });
    result.map_err(|e| e.context(format!("last seen (rows, (agent read, shipped)): {last:?}")))
}

/// The agent's `read_records_total` and `shipped_records_total`.
fn agent_counters(addr: std::net::SocketAddr) -> Option<(u64, u64)> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        return None;
    }
    let value = |name: &str| {
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0) as u64
    };
    Some((
        value("tollstream_agent_read_records_total"),
        value("tollstream_agent_shipped_records_total"),
    ))
}

/// What one test wrote and what arrived.
struct Outcome {
    name: &'static str,
    written: Vec<Line>,
    rotations: Vec<Rotation>,
    /// Written but not in the warehouse.
    missing: Vec<Line>,
    /// Written and received by the collector more than once: (line, times received).
    duplicated: Vec<(Line, u32)>,
    /// Rows whose transaction id was never written.
    unexpected_rows: usize,
    rows: i64,
    loader_duplicates: i64,
    rejected: i64,
    /// Which files under `logs/` (decompressed if `.gz`) hold each id now.
    on_disk: HashMap<u128, Vec<String>>,
    /// The name each inode has now under `logs/`.
    names: HashMap<u64, String>,
    agent_log: String,
    /// Kept so a failing assertion prints the daemons' logs and keeps the directory.
    _pipeline: Option<Pipeline>,
}

impl Outcome {
    fn gather(
        name: &'static str,
        pipeline: &Pipeline,
        written: Vec<Line>,
        rotations: Vec<Rotation>,
    ) -> anyhow::Result<Self> {
        let dir = pipeline.dir.path();
        let ids: HashSet<u128> = written.iter().map(|l| l.id).collect();
        ensure!(
            ids.len() == written.len(),
            "the simulator repeated a transaction id"
        );
        let warehouse = pipeline.warehouse()?;
        let mut loaded = HashSet::new();
        for (id, _source) in
            warehouse.pairs("SELECT transaction_id, source FROM toll_transactions")?
        {
            let id = uuid::Uuid::parse_str(&id).with_context(|| format!("warehouse id {id:?}"))?;
            loaded.insert(id.as_u128());
        }
        let received = archive_ids(&dir.join("collector-data").join("archive"))?;
        let missing = written
            .iter()
            .filter(|l| !loaded.contains(&l.id))
            .copied()
            .collect();
        let duplicated = written
            .iter()
            .filter_map(|l| received.get(&l.id).filter(|&&n| n > 1).map(|&n| (*l, n)))
            .collect();
        let mut on_disk: HashMap<u128, Vec<String>> = HashMap::new();
        let mut names = HashMap::new();
        let logs = dir.join("logs");
        for path in files_under(&logs)? {
            let label = path.strip_prefix(&logs)?.display().to_string();
            names.insert(std::fs::metadata(&path)?.ino(), label.clone());
            for line in read_maybe_gz(&path)?
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
            {
                if let Ok(id) = transaction_id(line) {
                    on_disk.entry(id).or_default().push(label.clone());
                }
            }
        }
        Ok(Self {
            name,
            unexpected_rows: loaded.difference(&ids).count(),
            rows: warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
            loader_duplicates: warehouse.count("SELECT SUM(duplicates) FROM loads")?,
            rejected: warehouse.count("SELECT COUNT(*) FROM rejected_records")?,
            written,
            rotations,
            missing,
            duplicated,
            on_disk,
            names,
            agent_log: std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default(),
            _pipeline: None,
        })
    }

    /// The files under `logs/` that hold `line` now.
    fn files_holding(&self, line: &Line) -> Vec<&str> {
        self.on_disk
            .get(&line.id)
            .map(|files| files.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Where a line was written: the name its file has now.
    fn written_to(&self, line: &Line) -> &str {
        self.names
            .get(&line.inode)
            .map_or("(deleted or compressed)", String::as_str)
    }

    fn report(&self, writing: Duration, total: Duration, late: &[u64]) {
        let spans: Vec<String> = self
            .rotations
            .iter()
            .map(|r| {
                format!(
                    "{:.2}s+{}ms",
                    r.started.as_secs_f64(),
                    (r.finished - r.started).as_millis()
                )
            })
            .collect();
        let after_first = self.rotations.first().map_or(Duration::ZERO, |r| r.started);
        // Lines written to a file other than the one app.log named after each rotation.
        let mut late_by_rotation = Vec::new();
        for (i, r) in self.rotations.iter().enumerate() {
            let until = self
                .rotations
                .get(i + 1)
                .map_or(Duration::MAX, |n| n.started);
            let window: Vec<&Line> = self
                .written
                .iter()
                .filter(|l| l.at >= r.started && l.at < until)
                .collect();
            let current = window.last().map(|l| l.inode);
            late_by_rotation.push(window.iter().filter(|l| Some(l.inode) != current).count());
        }
        eprintln!(
            "[{}] wrote {} lines in {:.1}s ({} before the first rotation) to app.log, {} logrotate runs \
             (start+duration: {}), lines written to the old file after each: {:?}{}; \
             {} rows loaded, {} missing, {} received more than once, {} duplicate keys at the \
             loader, {} unexpected rows, {} rejected; {:.1}s in all",
            self.name,
            self.written.len(),
            writing.as_secs_f64(),
            self.written.iter().filter(|l| l.at < after_first).count(),
            self.rotations.len(),
            spans.join(", "),
            late_by_rotation,
            if late.is_empty() {
                String::new()
            } else {
                format!(" (while the agent was down: {late:?})")
            },
            self.rows,
            self.missing.len(),
            self.duplicated.len(),
            self.loader_duplicates,
            self.unexpected_rows,
            self.rejected,
            total.as_secs_f64(),
        );
        if !self.missing.is_empty() {
            eprintln!(
                "[{}] missing lines: {}",
                self.name,
                self.describe(&self.missing)
            );
        }
        if !self.duplicated.is_empty() {
            let lines: Vec<Line> = self.duplicated.iter().map(|(l, _)| *l).collect();
            let max = self.duplicated.iter().map(|(_, n)| *n).max().unwrap_or(0);
            eprintln!(
                "[{}] lines received more than once (up to {max} times): {}",
                self.name,
                self.describe(&lines)
            );
        }
        if !self.missing.is_empty() || !self.duplicated.is_empty() {
            let evidence: Vec<&str> = self
                .agent_log
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("Following file")
                        || l.contains("drained")
                })
                .collect();
            let from = evidence.len().saturating_sub(40);
            eprintln!(
                "[{}] agent log (files, warnings):\n{}",
                self.name,
                evidence[from..].join("\n")
            );
        }
    }

    /// Counts of `lines` by the file they were written to, the files holding them now, and
    /// when they were written relative to the nearest logrotate run.
    fn describe(&self, lines: &[Line]) -> String {
        let mut by_place: BTreeMap<String, usize> = BTreeMap::new();
        // Per nearest logrotate run: (lines before its start, the earliest in ms before it),
        // (lines during it), (lines after its end, the latest in ms after it).
        let mut by_rotation: BTreeMap<usize, [(usize, u128); 3]> = BTreeMap::new();
        for line in lines {
            let holding = self.files_holding(line);
            let place = format!(
                "written to {}, now in {}",
                self.written_to(line),
                if holding.is_empty() {
                    "no file".to_owned()
                } else {
                    holding.join("+")
                }
            );
            *by_place.entry(place).or_default() += 1;
            let nearest = self
                .rotations
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| r.started.abs_diff(line.at));
            if let Some((i, r)) = nearest {
                let (slot, ms) = if line.at < r.started {
                    (0, (r.started - line.at).as_millis())
                } else if line.at <= r.finished {
                    (1, 0)
                } else {
                    (2, (line.at - r.finished).as_millis())
                };
                let entry = &mut by_rotation.entry(i + 1).or_default()[slot];
                *entry = (entry.0 + 1, entry.1.max(ms));
            }
        }
        let times: Vec<String> = by_rotation
            .iter()
            .map(|(i, [before, during, after])| {
                format!(
                    "run {i}: {} up to {} ms before it, {} during it, {} up to {} ms after it",
                    before.0, before.1, during.0, after.0, after.1
                )
            })
            .collect();
        format!(
            "{by_place:?}; written around logrotate {}",
            times.join("; ")
        )
    }

    fn assert_no_duplicates(&self) {
        assert!(
            self.duplicated.is_empty() && self.loader_duplicates == 0,
            "[{}] {} lines reached the collector more than once ({} duplicate keys dropped by \
             the loader): {}",
            self.name,
            self.duplicated.len(),
            self.loader_duplicates,
            self.describe(&self.duplicated.iter().map(|(l, _)| *l).collect::<Vec<_>>())
        );
        assert_eq!(
            self.unexpected_rows, 0,
            "[{}] rows that were never written",
            self.name
        );
        assert_eq!(
            self.rejected, 0,
            "[{}] rejected lines (fragments of lines?)",
            self.name
        );
    }

    fn assert_exactly_once(&self) {
        self.assert_no_duplicates();
        assert!(
            self.missing.is_empty(),
            "[{}] {} of {} lines written never arrived: {}",
            self.name,
            self.missing.len(),
            self.written.len(),
            self.describe(&self.missing)
        );
        assert_eq!(
            self.rows as usize,
            self.written.len(),
            "[{}] rows",
            self.name
        );
    }

    /// Every missing line satisfies `allowed` (`rule` says what that means).
    fn assert_missing_only(&self, rule: &str, allowed: impl Fn(&Line) -> bool) {
        let unexplained: Vec<Line> = self
            .missing
            .iter()
            .filter(|l| !allowed(l))
            .copied()
            .collect();
        eprintln!(
            "[{}] {} of {} lines missing; {} of them break the rule: {rule}",
            self.name,
            self.missing.len(),
            self.written.len(),
            unexplained.len()
        );
        assert!(
            unexplained.is_empty(),
            "[{}] {} missing lines break the rule \"{rule}\": {}",
            self.name,
            unexplained.len(),
            self.describe(&unexplained)
        );
    }
}

/// How many times each transaction id is in the archive (every line as received).
fn archive_ids(root: &Path) -> anyhow::Result<HashMap<u128, u32>> {
    let mut counts = HashMap::new();
    for path in files_under(root)? {
        // Errors objects hold copies of rejected lines, not lines as received.
        if path.extension().is_some_and(|e| e == "gz") && !path.starts_with(root.join("errors")) {
            for line in read_maybe_gz(&path)?
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
            {
                // A line that is not a toll line is counted among the rejected ones.
                if let Ok(id) = transaction_id(line) {
                    *counts.entry(id).or_default() += 1;
                }
            }
        }
    }
    Ok(counts)
}

/// Every regular file under `root`, recursively.
fn files_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn read_maybe_gz(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut data = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file).read_to_end(&mut data)
    } else {
        std::io::BufReader::new(file).read_to_end(&mut data)
    }
    .with_context(|| format!("reading {}", path.display()))?;
    Ok(data)
}
