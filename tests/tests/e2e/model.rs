//! A model-based test of tailing: seeded random sequences of what happens to log files —
//! append, partial append, rename rotation, copytruncate, truncation, deletion, agent
//! crashes and restarts — run against the real agent and collector. The model is simple:
//! every line written must be in the warehouse and the archive exactly once, whatever
//! happened in between.
//!
//! Truncation and deletion throw away whatever the agent has not read yet; that loss is the
//! operator's doing, not the agent's, so the model waits until everything written so far
//! has arrived before it truncates or deletes a file. Everything else happens while the
//! agent is busy.
//!
//! `TOLLSTREAM_MODEL_CASES` (default 8) sets how many seeds run; `TOLLSTREAM_MODEL_SEED`
//! runs one given seed. A failure prints its seed and the operations so far.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fixture::{EXIT_TIMEOUT, Pipeline, archive_lines};

/// Files written at once.
const FILES: usize = 3;
/// Operations per case.
const STEPS: usize = 40;

#[derive(Debug, Clone, Copy)]
enum Op {
    Append { file: usize, lines: usize },
    PartialAppend { file: usize },
    RenameRotate { file: usize },
    CopyTruncate { file: usize },
    Truncate { file: usize },
    Delete { file: usize },
    CrashAgent,
    RestartAgent,
}

impl Op {
    fn random(rng: &mut fastrand::Rng) -> Self {
        let file = rng.usize(..FILES);
        match rng.u32(..100) {
            0..=44 => Op::Append {
                file,
                lines: rng.usize(1..400),
            },
            45..=54 => Op::PartialAppend { file },
            55..=66 => Op::RenameRotate { file },
            67..=76 => Op::CopyTruncate { file },
            77..=81 => Op::Truncate { file },
            82..=86 => Op::Delete { file },
            87..=94 => Op::CrashAgent,
            _ => Op::RestartAgent,
        }
    }
}

/// What the test wrote: the model.
struct Model {
    dir: PathBuf,
    next_id: u64,
    /// Complete lines written, all files.
    complete: u64,
    /// A line whose first part is written but not its end, per file.
    partial: BTreeMap<usize, String>,
    rotations: usize,
}

impl Model {
    fn path(&self, file: usize) -> PathBuf {
        self.dir.join(format!("w{file}.log"))
    }

    fn line(&mut self) -> String {
        let id = self.next_id;
        self.next_id += 1;
        format!(
            "2026-11-25T14:03:27.512-03:00,00000000-0000-4000-8000-{id:012},PLZ-{:03},1,C0000001,TX-0000001,1,12.50\n",
            id % 7
        )
    }

    fn append(&mut self, file: usize, text: &str) -> anyhow::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.path(file))?;
        out.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Writes the rest of a file's partial line, if any.
    fn complete_partial(&mut self, file: usize) -> anyhow::Result<()> {
        if let Some(rest) = self.partial.remove(&file) {
            self.append(file, &rest)?;
            self.complete += 1;
        }
        Ok(())
    }
}

fn run_case(seed: u64) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_with(|agent| {
        // Rotated names (`w0.log.3`, copies `w0.log.c3`) stay within the globs: a file the
        // globs match again must not be shipped twice.
        agent.paths = vec!["logs/*.log*".into()];
        agent.batch_max_records = 50;
    })?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model {
        dir: pipeline.dir.path().join("logs"),
        next_id: seed * 1_000_000,
        complete: 0,
        partial: BTreeMap::new(),
        rotations: 0,
    };
    let mut done = Vec::new();
    for _ in 0..STEPS {
        let op = Op::random(&mut rng);
        apply(&mut pipeline, &mut model, op)
            .map_err(|e| e.context(format!("seed {seed}, after {done:?}, during {op:?}")))?;
        done.push(op);
    }
    for file in 0..FILES {
        model.complete_partial(file)?;
    }
    pipeline
        .wait_loaded(model.complete, 0)
        .map_err(|e| e.context(format!("seed {seed}, operations {done:?}")))?;
    pipeline
        .agent
        .wait_started("Agent started.", Duration::from_secs(30))?;
    pipeline.stop()?;
    check_exactly_once(&pipeline, &model)
        .map_err(|e| e.context(format!("seed {seed}, operations {done:?}")))
}

fn apply(pipeline: &mut Pipeline, model: &mut Model, op: Op) -> anyhow::Result<()> {
    match op {
        Op::Append { file, lines } => {
            model.complete_partial(file)?;
            let text: String = (0..lines).map(|_| model.line()).collect();
            model.append(file, &text)?;
            model.complete += lines as u64;
        }
        Op::PartialAppend { file } => {
            model.complete_partial(file)?;
            let line = model.line();
            let (first, rest) = line.split_at(line.len() / 2);
            model.append(file, first)?;
            model.partial.insert(file, rest.to_owned());
        }
        Op::RenameRotate { file } => {
            model.complete_partial(file)?;
            if model.path(file).exists() {
                model.rotations += 1;
                let to = rotated(&model.path(file), &model.rotations.to_string());
                std::fs::rename(model.path(file), to)?;
            }
        }
        Op::CopyTruncate { file } => {
            model.complete_partial(file)?;
            if model.path(file).exists() {
                model.rotations += 1;
                let to = rotated(&model.path(file), &format!("c{}", model.rotations));
                std::fs::copy(model.path(file), to)?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(model.path(file))?
                    .set_len(0)?;
            }
        }
        Op::Truncate { file } | Op::Delete { file } => {
            model.complete_partial(file)?;
            // What the agent has not read is gone once the file is: wait for it first.
            pipeline.wait_loaded(model.complete, 0)?;
            let path = model.path(file);
            if path.exists() {
                if matches!(op, Op::Delete { .. }) {
                    std::fs::remove_file(path)?;
                } else {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)?
                        .set_len(0)?;
                }
            }
        }
        Op::CrashAgent => {
            pipeline.agent.kill()?;
            pipeline.agent.start()?;
        }
        Op::RestartAgent => {
            // A SIGTERM before the signal handler is installed would kill it outright.
            pipeline
                .agent
                .wait_started("Agent started.", Duration::from_secs(30))?;
            let status = pipeline.agent.terminate(EXIT_TIMEOUT)?;
            anyhow::ensure!(status.success(), "agent exited with {status}");
            pipeline.agent.start()?;
        }
    }
    Ok(())
}

fn rotated(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{suffix}"));
    PathBuf::from(name)
}

fn check_exactly_once(pipeline: &Pipeline, model: &Model) -> anyhow::Result<()> {
    let warehouse = pipeline.warehouse()?;
    let rows = warehouse.count("SELECT COUNT(*) FROM toll_transactions")?;
    anyhow::ensure!(
        rows as u64 == model.complete,
        "{rows} rows for {} lines written",
        model.complete
    );
    let twice = warehouse.count("SELECT SUM(duplicates) FROM loads")?;
    anyhow::ensure!(twice == 0, "{twice} lines reached the loader twice");
    let rejected = warehouse.count("SELECT COUNT(*) FROM rejected_records")?;
    anyhow::ensure!(
        rejected == 0,
        "{rejected} lines rejected (torn or joined lines?)"
    );
    let archived = archive_lines(&pipeline.dir.path().join("collector-data").join("archive"))?;
    anyhow::ensure!(
        archived == model.complete,
        "{archived} lines archived for {} written",
        model.complete
    );
    Ok(())
}

#[test]
fn random_file_histories_deliver_every_line_exactly_once() -> anyhow::Result<()> {
    let seeds: Vec<u64> = match std::env::var("TOLLSTREAM_MODEL_SEED") {
        Ok(seed) => vec![seed.parse()?],
        Err(_) => {
            let cases = std::env::var("TOLLSTREAM_MODEL_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(8u64);
            (1..=cases).collect()
        }
    };
    for seed in seeds {
        eprintln!("model case: seed {seed}");
        run_case(seed)?;
    }
    Ok(())
}
