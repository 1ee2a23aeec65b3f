//! Exactly once, proven under `kill -9`: the simulator writes toll lines into a few log
//! files for the whole run while both daemons are SIGKILLed again and again, at random
//! moments and at the collector's named crash points (`TOLLSTREAM_CRASH_AT`, see
//! `collector/src/crashpoint.rs`): between the WAL write and its ack, between an archive
//! write and the warehouse commit, inside the load transaction, while old WAL segments are
//! deleted, and during recovery itself. Then the killing stops, everything drains, and every
//! line written must be in the warehouse exactly once and in exactly one archive object.
//!
//! Kinds of kill, drawn from the seed (each restart of a killed daemon follows at once):
//! * the collector at a random moment;
//! * the collector restarted with a crash point armed (point and hit count drawn), so it
//!   kills itself exactly there; right after a death between archive and warehouse, the
//!   restart may arm the loader's catch-up of that very backlog;
//! * the collector at a random moment, then again a few milliseconds after its restart,
//!   while it recovers what the first kill left in its WAL and archive;
//! * the agent at a random moment;
//! * both at once.
//!
//! `TOLLSTREAM_CRASH_SEED` replays a run's schedule (kinds, delays, crash points); without
//! it the seed is random and printed first. The outcome does not depend on the timing: the
//! checks at the end hold for every interleaving, or the collector has a bug.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tollstream_tests::harness::wait_for;
use tollstream_tests::sim::{Mode, Pacing, SimConfig, SimWriter, Summary, WriteOptions};

use tollstream_tests::postgres::TestPostgres;

use crate::fixture::{Pipeline, use_postgres};

/// Kills per run, at least (a kill of both daemons at once counts once);
/// `TOLLSTREAM_CRASH_KILLS` asks for more (a soak).
const MIN_KILLS: u32 = 40;
/// A run that has not covered every crash-point group after this many more kills fails.
const COVERAGE_GRACE: u32 = 36;
/// Log files the simulator writes.
const FILES: usize = 3;
/// Lines per second the simulator writes over all files, for the whole run.
const RATE: f64 = 2_000.0;
/// How long an armed collector may take to reach its crash point.
const ARMED_DEADLINE: Duration = Duration::from_secs(15);
/// How long everything may take to arrive once the killing stops.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
/// How long a restarted daemon may take to be up.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A crash point of the collector, the highest hit count drawn for it, and what it is
/// between (the groups the run must cover).
struct Point {
    name: &'static str,
    max_hit: u32,
    group: Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// Between the WAL write and the ack.
    WalAck,
    /// While consumed WAL segments are deleted.
    WalDeletion,
    /// Between the archive write and the warehouse commit (and the commit itself).
    ArchiveToWarehouse,
    /// During recovery at start.
    Recovery,
}

/// The collector's crash points (`collector/src/crashpoint.rs`); a name the collector does
/// not know makes it refuse to start, which fails this test loudly.
const POINTS: &[Point] = &[
    Point {
        name: "wal-written",
        max_hit: 20,
        group: Group::WalAck,
    },
    Point {
        name: "wal-synced",
        max_hit: 20,
        group: Group::WalAck,
    },
    Point {
        name: "wal-snapshot-stored",
        max_hit: 3,
        group: Group::WalDeletion,
    },
    Point {
        name: "archive-renamed",
        max_hit: 4,
        group: Group::ArchiveToWarehouse,
    },
    Point {
        name: "archive-position-written",
        max_hit: 4,
        group: Group::ArchiveToWarehouse,
    },
    Point {
        name: "load-uncommitted",
        max_hit: 4,
        group: Group::ArchiveToWarehouse,
    },
    Point {
        name: "load-committed",
        max_hit: 4,
        group: Group::ArchiveToWarehouse,
    },
    // Passed once per start.
    Point {
        name: "recovery-wal-scanned",
        max_hit: 1,
        group: Group::Recovery,
    },
];

/// Armed only right after a death that left an archive object the manifest lacks.
const CATCH_UP: Point = Point {
    name: "recovery-catch-up",
    max_hit: 1,
    group: Group::Recovery,
};

/// Deaths there leave an object in the archive that the warehouse does not hold yet.
const LEAVES_BACKLOG: &[&str] = &[
    "archive-renamed",
    "archive-position-written",
    "load-uncommitted",
];

/// Where a recovering start dies when it does not die in its catch-up: a few WAL groups in.
const SOON_AFTER_RECOVERY: (&str, std::ops::RangeInclusive<u32>) = ("wal-synced", 5..=15);

/// Groups every run must have killed the collector in at least once.
const MUST_COVER: &[Group] = &[Group::WalAck, Group::ArchiveToWarehouse, Group::Recovery];

fn min_kills(floor: u32) -> anyhow::Result<u32> {
    match std::env::var("TOLLSTREAM_CRASH_KILLS") {
        Ok(text) => Ok(text
            .trim()
            .parse::<u32>()
            .with_context(|| format!("TOLLSTREAM_CRASH_KILLS={text:?} is not a number"))?
            .max(floor)),
        Err(_) => Ok(floor),
    }
}

fn crash_seed() -> anyhow::Result<u64> {
    match std::env::var("TOLLSTREAM_CRASH_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("TOLLSTREAM_CRASH_SEED={text:?} is not a u64")),
        Err(_) => Ok(fastrand::u64(..)),
    }
}

/// What the run did, for the summary and the coverage check.
#[derive(Default)]
struct Tally {
    /// Plain kills of the collector (the first of each pair below, and armings not
    /// reached in time, included).
    collector_random: u32,
    /// Kills of the collector a few milliseconds after a restart that followed a plain kill.
    collector_in_recovery: u32,
    agent: u32,
    both: u32,
    /// Collector deaths at each crash point.
    at_point: BTreeMap<&'static str, u32>,
    /// Armings whose point was not reached in time (the collector was then killed plainly).
    missed: BTreeMap<&'static str, u32>,
    groups: BTreeMap<Group, u32>,
}

impl Tally {
    fn kills(&self) -> u32 {
        self.collector_random
            + self.collector_in_recovery
            + self.agent
            + self.both
            + self.at_point.values().sum::<u32>()
    }

    fn covered(&self) -> bool {
        MUST_COVER.iter().all(|g| self.groups.contains_key(g))
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kills: collector at a random moment {}, collector again during its recovery {}, \
             agent {}, both {}, collector at crash points {} {:?}",
            self.kills(),
            self.collector_random,
            self.collector_in_recovery,
            self.agent,
            self.both,
            self.at_point.values().sum::<u32>(),
            self.at_point,
        )?;
        if !self.missed.is_empty() {
            write!(f, "; armed but not reached in time: {:?}", self.missed)?;
        }
        Ok(())
    }
}

/// The collector's arming for its current start.
#[derive(Clone, Copy)]
struct Arm {
    point: &'static Point,
    hit: u32,
}

/// Draws kill kinds, delays and armings from the seed.
struct Schedule {
    rng: fastrand::Rng,
    /// The crash points in a seeded order, armed in turn so a run reaches each of them.
    order: Vec<&'static Point>,
    next: usize,
    /// The collector's latest death left recovery work for its next start.
    recovering: bool,
}

impl Schedule {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut order: Vec<&'static Point> = POINTS.iter().collect();
        rng.shuffle(&mut order);
        Self {
            rng,
            order,
            next: 0,
            recovering: false,
        }
    }

    /// The arming of the collector's next start; `after` is the point it just died at.
    fn arm(&mut self, after: Option<&str>, tally: &Tally) -> Option<Arm> {
        // A death that left an archive object the position file or the manifest lacks makes
        // the next start a recovering one, and it stays one while it dies in its catch-up.
        self.recovering = match after {
            Some(point) if LEAVES_BACKLOG.contains(&point) => true,
            Some(point) if point == CATCH_UP.name => self.recovering,
            _ => false,
        };
        if self.recovering {
            if !tally.at_point.contains_key(CATCH_UP.name) || self.rng.bool() {
                return Some(Arm {
                    point: &CATCH_UP,
                    hit: 1,
                });
            }
            // Or die a moment after the recovering start serves again: it has adopted the
            // object, loaded the backlog and let the WAL delete segments, but not yet cut
            // an object of its own.
            let point = POINTS
                .iter()
                .find(|p| p.name == SOON_AFTER_RECOVERY.0)
                .unwrap_or(&CATCH_UP);
            return Some(Arm {
                point,
                hit: self.rng.u32(SOON_AFTER_RECOVERY.1),
            });
        }
        if self.rng.u32(..100) >= 55 {
            return None;
        }
        let point = self.order[self.next % self.order.len()];
        self.next += 1;
        Some(Arm {
            point,
            hit: self.rng.u32(1..=point.max_hit),
        })
    }

    fn delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(100..1_500))
    }
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    Collector,
    CollectorInRecovery,
    Agent,
    Both,
}

impl Kill {
    fn draw(rng: &mut fastrand::Rng) -> Self {
        match rng.u32(..100) {
            0..=34 => Kill::Collector,
            35..=54 => Kill::CollectorInRecovery,
            55..=84 => Kill::Agent,
            _ => Kill::Both,
        }
    }
}

/// The simulator, writing at [`RATE`] on its own thread until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Summary>>,
}

impl Traffic {
    fn start(paths: Vec<PathBuf>, seed: u64) -> anyhow::Result<Self> {
        let config = SimConfig {
            seed,
            ..SimConfig::default()
        };
        let options = WriteOptions {
            pacing: Pacing::Rate {
                lines_per_sec: RATE,
            },
            split_writes: true,
            flush_every_lines: 100,
        };
        let mut writer =
            SimWriter::with_options(&config, Mode::Count { lines: u64::MAX }, &paths, options)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("simulator".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    writer.write(RATE as u64 / 10)?;
                }
                Ok(writer.into_summary())
            })?;
        Ok(Self { stop, thread })
    }

    fn stop(self) -> anyhow::Result<Summary> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the simulator thread panicked"))?
    }
}

struct Run {
    pipeline: Pipeline,
    schedule: Schedule,
    tally: Tally,
    /// The collector's arming for its current start.
    armed: Option<Arm>,
    seed: u64,
}

impl Run {
    fn start_collector(&mut self, arm: Option<Arm>) -> anyhow::Result<()> {
        self.armed = arm;
        match arm {
            Some(arm) => {
                let value = format!("{}:{}", arm.point.name, arm.hit);
                self.pipeline
                    .collector
                    .start_with_env(&[("TOLLSTREAM_CRASH_AT", &value)])
            }
            None => self.pipeline.collector.start(),
        }
    }

    /// Kills the collector, which must still be running (it is not armed), and restarts it
    /// with the next arming.
    fn kill_collector(&mut self) -> anyhow::Result<()> {
        self.expect_running()?;
        self.pipeline.collector.kill()?;
        let arm = self.schedule.arm(None, &self.tally);
        self.start_collector(arm)
    }

    fn kill_agent(&mut self) -> anyhow::Result<()> {
        self.pipeline.agent.kill()?;
        self.pipeline.agent.start()
    }

    /// An unarmed collector must never die by itself.
    fn expect_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.pipeline.collector.try_exit() {
            anyhow::bail!(
                "the collector died by itself ({status}) while not armed (seed {})",
                self.seed
            );
        }
        Ok(())
    }

    fn wait_collector_ready(&mut self) -> anyhow::Result<()> {
        self.pipeline.wait_collector_ready()
    }

    /// The collector is armed: waits for it to die at its point and restarts it.
    fn await_crash_point(&mut self, arm: Arm) -> anyhow::Result<()> {
        let mut status = None;
        let collector = &mut self.pipeline.collector;
        let reached = wait_for(
            &format!("the collector to die at {}:{}", arm.point.name, arm.hit),
            ARMED_DEADLINE,
            || {
                status = collector.try_exit();
                status.is_some()
            },
        );
        let died_at = match (reached, status) {
            (Ok(()), Some(status)) if status.signal() == Some(SIGKILL) => {
                let log = self.pipeline.collector.log_since_start();
                let line = format!("crash point {} reached", arm.point.name);
                anyhow::ensure!(
                    log.contains(&line),
                    "the collector died of SIGKILL while armed at {}:{}, but did not log {line:?} (seed {})",
                    arm.point.name,
                    arm.hit,
                    self.seed
                );
                *self.tally.at_point.entry(arm.point.name).or_default() += 1;
                *self.tally.groups.entry(arm.point.group).or_default() += 1;
                Some(arm.point.name)
            }
            (_, Some(status)) => anyhow::bail!(
                "the collector exited with {status} while armed at {}:{} (seed {}); it should only ever die of SIGKILL there",
                arm.point.name,
                arm.hit,
                self.seed
            ),
            (_, None) => {
                // Not reached in time (e.g. the agent was backing off): an ordinary kill.
                eprintln!(
                    "crashes: {}:{} not reached within {ARMED_DEADLINE:?}; killing the collector plainly",
                    arm.point.name, arm.hit
                );
                *self.tally.missed.entry(arm.point.name).or_default() += 1;
                self.tally.collector_random += 1;
                self.pipeline.collector.kill()?;
                None
            }
        };
        let next = self.schedule.arm(died_at, &self.tally);
        self.start_collector(next)
    }

    /// At the end, a collector still armed is stopped (killed, if its point has not
    /// already) and started unarmed; the kill is not counted.
    fn disarm(&mut self) -> anyhow::Result<()> {
        if self.pipeline.collector.try_exit().is_none() {
            self.pipeline.collector.kill()?;
        }
        self.start_collector(None)
    }

    /// One kill of a random kind at a random moment, or the death of an armed collector.
    fn step(&mut self) -> anyhow::Result<()> {
        if let Some(arm) = self.armed {
            return self.await_crash_point(arm);
        }
        // Kills at random moments fall while the collector serves (or loads its backlog),
        // not only while it starts; killing it while it starts is a kind of its own.
        self.wait_collector_ready()?;
        let kind = Kill::draw(&mut self.schedule.rng);
        let delay = self.schedule.delay();
        std::thread::sleep(delay);
        match kind {
            Kill::Collector => {
                self.kill_collector()?;
                self.tally.collector_random += 1;
            }
            Kill::CollectorInRecovery => {
                self.expect_running()?;
                self.pipeline.collector.kill()?;
                self.start_collector(None)?;
                // A few milliseconds in: scanning the WAL, adopting objects, loading the
                // archive backlog the first kill left.
                let early = Duration::from_millis(self.schedule.rng.u64(0..120));
                std::thread::sleep(early);
                self.kill_collector()?;
                self.tally.collector_random += 1;
                self.tally.collector_in_recovery += 1;
            }
            Kill::Agent => {
                self.kill_agent()?;
                self.tally.agent += 1;
            }
            Kill::Both => {
                self.expect_running()?;
                self.pipeline.agent.kill()?;
                self.pipeline.collector.kill()?;
                self.pipeline.agent.start()?;
                let arm = self.schedule.arm(None, &self.tally);
                self.start_collector(arm)?;
                self.tally.both += 1;
            }
        }
        Ok(())
    }
}

/// SIGKILL's number (9 on every Linux architecture).
const SIGKILL: i32 = 9;

#[test]
fn every_line_once_in_warehouse_and_archive_through_kill_9_at_random_moments_and_crash_points()
-> anyhow::Result<()> {
    kill_9_run(None, MIN_KILLS)
}

#[test]
fn every_line_once_in_postgresql_and_the_archive_through_kill_9_at_random_moments_and_crash_points()
-> anyhow::Result<()> {
    let postgres = TestPostgres::start().context("PostgreSQL for the test")?;
    kill_9_run(Some(postgres), MIN_KILLS)
}

/// The run: the simulator writes, both daemons are killed `floor` times at least (and until
/// every crash-point group is covered), then all drains and is checked.
fn kill_9_run(postgres: Option<TestPostgres>, floor: u32) -> anyhow::Result<()> {
    let seed = crash_seed()?;
    let min_kills = min_kills(floor)?;
    let on = if postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    eprintln!(
        "crashes on {on}: seed {seed} (TOLLSTREAM_CRASH_SEED={seed} replays the same schedule)"
    );
    let started = Instant::now();
    let mut pipeline = Pipeline::start_full(
        |dir, collector| {
            if let Some(postgres) = &postgres {
                use_postgres(dir, collector, postgres)?;
            }
            // Small segments, so consumed ones are deleted (and crashed in) during the run.
            collector.extra = "wal:\n  segment_bytes: 64KiB\n".into();
            // An object per second of lines (~200 KiB): archive writes and loads to crash
            // between, and a second in which a recovering start serves, has its WAL delete
            // segments, and has not cut an object of its own yet.
            collector.buffer_max_bytes = "1MiB";
            collector.buffer_max_age = "1s";
            Ok(())
        },
        Ok,
        |agent| {
            agent.batch_max_records = 500;
            agent.request_timeout = Some("5s");
        },
        |_| Ok(()),
    )?;
    pipeline.postgres = postgres;
    let paths = pipeline.log_files(FILES);
    let mut run = Run {
        pipeline,
        schedule: Schedule::new(seed),
        tally: Tally::default(),
        armed: None,
        seed,
    };
    let traffic = Traffic::start(paths.clone(), seed)?;
    // The first kill falls once lines are flowing all the way through.
    run.pipeline.wait_rows_at_least(1)?;
    while run.tally.kills() < min_kills || !run.tally.covered() {
        anyhow::ensure!(
            run.tally.kills() < min_kills + COVERAGE_GRACE,
            "after {} kills the run still has not killed the collector in each of {MUST_COVER:?} (seed {seed}): {}",
            run.tally.kills(),
            run.tally
        );
        run.step()
            .with_context(|| format!("seed {seed}, after {}", run.tally))?;
    }
    let killing = started.elapsed();
    // Stop killing: one last plain start if the collector is armed, then let it all drain.
    if run.armed.is_some() {
        run.disarm()?;
    }
    let written = traffic.stop()?;
    let pipeline = &mut run.pipeline;
    pipeline.wait_collector_ready()?;
    pipeline
        .agent
        .wait_started("Agent started.", START_DEADLINE)?;
    let drained = Instant::now();
    let warehouse = pipeline.warehouse()?;
    let mut rows = 0;
    let loaded = wait_for(
        &format!("{} rows in the warehouse", written.total_lines),
        DRAIN_DEADLINE,
        || {
            rows = warehouse
                .count("SELECT COUNT(*) FROM toll_transactions")
                .unwrap_or(-1);
            rows >= written.total_lines as i64
        },
    );
    let drain = drained.elapsed();
    pipeline.stop()?;
    eprintln!(
        "crashes on {on}: seed {seed}: {}; {} lines written in {:.1} s of killing, drained in {:.1} s, {:.1} s in all",
        run.tally,
        written.total_lines,
        killing.as_secs_f64(),
        drain.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let report = check_exactly_once(&run.pipeline, &paths, &written);
    if let Err(error) = loaded.and(report) {
        // Keep the directory and print the daemons' logs (see `Pipeline`'s drop).
        run.pipeline.stopped = false;
        panic!("seed {seed}: {error:#}");
    }
    for group in MUST_COVER {
        assert!(
            run.tally.groups.contains_key(group),
            "seed {seed}: the collector never died at a {group:?} crash point: {}",
            run.tally
        );
    }
    assert!(run.tally.kills() >= min_kills, "{}", run.tally);
    Ok(())
}

/// Every line in the log files is in the warehouse once (by `transaction_id`, with no
/// line loaded twice into the key) and in exactly one archive object (by the line's bytes),
/// objects tile the WAL's sequence numbers without overlap, and each is loaded once.
fn check_exactly_once(
    pipeline: &Pipeline,
    paths: &[PathBuf],
    written: &Summary,
) -> anyhow::Result<()> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for path in paths {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            data.is_empty() || data.ends_with(b"\n"),
            "{} ends in a partial line",
            path.display()
        );
        lines.extend(data.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
    }
    anyhow::ensure!(
        lines.len() as u64 == written.total_lines,
        "the log files hold {} lines, the simulator wrote {}",
        lines.len(),
        written.total_lines
    );
    let ids: HashSet<String> = lines.iter().map(|l| transaction_id(l)).collect();
    anyhow::ensure!(
        ids.len() == lines.len(),
        "the simulator repeated a transaction_id"
    );

    // The warehouse.
    let warehouse = pipeline.warehouse()?;
    let loaded: Vec<(String, String)> =
        warehouse.pairs("SELECT transaction_id, load_id FROM toll_transactions")?;
    let loaded_ids: HashSet<&str> = loaded.iter().map(|(id, _)| id.as_str()).collect();
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !loaded_ids.contains(id.as_str()))
        .collect();
    let unexpected: Vec<&&str> = loaded_ids.iter().filter(|id| !ids.contains(**id)).collect();
    let twice = warehouse.count("SELECT SUM(duplicates) FROM loads")?;
    let rejected = warehouse.count("SELECT COUNT(*) FROM rejected_records")?;
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} lines missing from the warehouse, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        ));
    }
    if !unexpected.is_empty() || loaded.len() != loaded_ids.len() {
        problems.push(format!(
            "{} unexpected rows, {} rows for {} distinct ids",
            unexpected.len(),
            loaded.len(),
            loaded_ids.len()
        ));
    }
    if twice != 0 {
        problems.push(format!(
            "{twice} lines reached the loader twice (loads.duplicates)"
        ));
    }
    if rejected != 0 {
        problems.push(format!("{rejected} lines rejected (torn or joined lines?)"));
    }

    // The archive.
    // The stream's objects; `errors/` would hold rejected lines, and there are none.
    let root = pipeline.data_dir.join("archive").join("toll-transactions");
    let objects = archive_objects(&root)?;
    let mut seen: HashMap<&[u8], Vec<usize>> = HashMap::with_capacity(lines.len());
    for line in &lines {
        seen.insert(line.as_slice(), Vec::new());
    }
    let mut foreign = 0u64;
    for (i, object) in objects.iter().enumerate() {
        for line in object.data.split_inclusive(|&b| b == b'\n') {
            match seen.get_mut(line) {
                Some(found) => found.push(i),
                None => foreign += 1,
            }
        }
    }
    let not_archived = seen.values().filter(|f| f.is_empty()).count();
    let archived_twice: Vec<(&str, Vec<&str>)> = seen
        .iter()
        .filter(|(_, f)| f.len() > 1)
        .map(|(line, f)| {
            (
                std::str::from_utf8(line).unwrap_or("(not UTF-8)"),
                f.iter().map(|&i| objects[i].name.as_str()).collect(),
            )
        })
        .take(3)
        .collect();
    if not_archived > 0 {
        problems.push(format!("{not_archived} lines in no archive object"));
    }
    if !archived_twice.is_empty() {
        let count = seen.values().filter(|f| f.len() > 1).count();
        problems.push(format!(
            "{count} lines in more than one archive object, e.g. {archived_twice:?}"
        ));
    }
    if foreign > 0 {
        problems.push(format!("{foreign} archived lines that are no line written"));
    }
    let mut expected_first = 1;
    for object in &objects {
        if object.first_seq != expected_first {
            problems.push(format!(
                "archive object {} starts at WAL record {} where {expected_first} was next (overlap or gap)",
                object.name, object.first_seq
            ));
        }
        expected_first = object.last_seq + 1;
    }
    let manifest = warehouse.count("SELECT COUNT(*) FROM loads")?;
    let manifest_objects = warehouse.count("SELECT COUNT(DISTINCT object) FROM loads")?;
    if manifest != objects.len() as i64 || manifest_objects != manifest {
        problems.push(format!(
            "{} archive objects, {manifest} loads of {manifest_objects} distinct objects in the manifest",
            objects.len()
        ));
    }
    eprintln!(
        "crashes: {} lines written; warehouse {} rows; archive {} objects",
        lines.len(),
        loaded.len(),
        objects.len()
    );
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// The second CSV field.
fn transaction_id(line: &[u8]) -> String {
    String::from_utf8_lossy(line.split(|&b| b == b',').nth(1).unwrap_or_default()).into_owned()
}

struct Object {
    name: String,
    first_seq: u64,
    last_seq: u64,
    data: Vec<u8>,
}

/// Every `.gz` under `root`, in WAL order, decompressed.
fn archive_objects(root: &Path) -> anyhow::Result<Vec<Object>> {
    let mut objects = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "gz") {
                continue;
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let range = name
                .strip_suffix(".gz")
                .and_then(|n| {
                    let mut parts = n.rsplitn(3, '-');
                    let last = parts.next()?.parse::<u64>().ok()?;
                    let first = parts.next()?.parse::<u64>().ok()?;
                    Some((first, last))
                })
                .with_context(|| format!("archive object name {name:?}"))?;
            let mut data = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&path)?)
                .read_to_end(&mut data)
                .with_context(|| format!("decompressing {}", path.display()))?;
            objects.push(Object {
                name,
                first_seq: range.0,
                last_seq: range.1,
                data,
            });
        }
    }
    objects.sort_by_key(|o| o.first_seq);
    Ok(objects)
}
