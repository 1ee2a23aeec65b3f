//! `many-files`: what the agent costs when it watches many files of which few move — the
//! toll-booth server's usual day. 1,000 files, each with a few lines already in it, are
//! tailed by the agent (its default configuration) into the counting sink; once every line
//! has arrived, two phases are measured:
//!
//! * **idle**: nothing is written; the agent's CPU time over the phase, and its RSS;
//! * **1 % active**: 10 of the files get toll lines at a steady 100 lines/s each (1,000
//!   lines/s in all), the other 990 stay idle; the agent's CPU over the phase, its RSS.
//!
//! CPU is given as seconds of CPU per minute of wall time and as a share of one core. At the
//! end every line written (the initial ones and the active phase's) must have arrived, and no
//! more: the run fails otherwise.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use jiff::Timestamp;
use serde_json::{Value, json};
use tollstream_tests::harness::{Daemon, Usage, binary, wait_for};
use tollstream_tests::sim::{Mode, SimConfig, Simulator};

use crate::peers::Sink;

/// Files watched.
const FILES: usize = 1000;
/// Of which this many are written to in the active phase (1 %).
const ACTIVE: usize = 10;
/// Lines each file holds before the agent starts.
const INITIAL_LINES_PER_FILE: u64 = 5;
/// Lines per second written to each active file.
const ACTIVE_RATE_PER_FILE: f64 = 100.0;
/// The active writer appends this often.
const WRITE_TICK: Duration = Duration::from_millis(100);

/// Runs both phases, each lasting `phase`.
///
/// # Errors
/// An agent that does not start or does not deliver every line exactly once.
pub fn many_files(dir: &Path, phase: Duration) -> anyhow::Result<Value> {
    let work = dir.join("many-files");
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let paths: Vec<PathBuf> = (0..FILES)
        .map(|i| logs.join(format!("booth-{i:04}.log")))
        .collect();
    let total = FILES as u64 * INITIAL_LINES_PER_FILE;
    let mut sim = Simulator::new(
        &SimConfig::default(),
        Mode::Count {
            lines: total + (ACTIVE_RATE_PER_FILE * ACTIVE as f64 * phase.as_secs_f64()) as u64 * 2,
        },
    )?;
    let mut line = Vec::new();
    for path in &paths {
        let mut text = Vec::new();
        for _ in 0..INITIAL_LINES_PER_FILE {
            line.clear();
            sim.next_into(&mut line).context("the simulator ran out")?;
            text.extend_from_slice(&line);
        }
        std::fs::write(path, text)?;
    }

    let sink = Sink::start()?;
    std::fs::write(work.join("token"), "bench\n")?;
    let config = work.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "agent_id: bench\nstate_dir: state\n\
             collector: {{ url: \"http://127.0.0.1:{}\", token_file: token }}\n\
             flows:\n  - stream: toll-transactions\n    paths: [\"logs/*.log\"]\n",
            sink.port
        ),
    )?;
    let mut agent = Daemon::new(
        "agent",
        binary("tollstream-agent")?,
        config,
        work.join("agent.log"),
    );
    let started = Instant::now();
    agent.start()?;
    wait_for(
        "the initial lines of all 1,000 files",
        Duration::from_secs(120),
        || sink.lines() >= total,
    )
    .map_err(|e| e.context(agent.log_tail(20)))?;
    let initial_seconds = started.elapsed().as_secs_f64();
    let open_fds = agent.open_fds().unwrap_or(0);
    // Let the batches and checkpoints of the start settle before measuring idleness.
    std::thread::sleep(Duration::from_secs(1));

    let idle = measure(&agent, || {
        std::thread::sleep(phase);
        Ok(0)
    })?;
    let active = measure(&agent, || write_active(&paths[..ACTIVE], &mut sim, phase))?;
    let expected = total + active.lines;
    wait_for(
        "every line of the active phase",
        Duration::from_secs(60),
        || sink.lines() >= expected,
    )
    .map_err(|e| e.context(agent.log_tail(20)))?;
    // Anything sent twice would arrive about now.
    std::thread::sleep(Duration::from_millis(500));
    agent.terminate(Duration::from_secs(30))?;
    let received = sink.lines();
    if received != expected {
        bail!("the sink counted {received} lines, {expected} were written");
    }
    let phase_json = |p: &Phase| {
        json!({
            "seconds": p.seconds, "cpu_seconds": p.cpu_seconds,
            "cpu_seconds_per_minute": p.cpu_seconds * 60.0 / p.seconds,
            "core_percent": p.cpu_seconds * 100.0 / p.seconds,
            "rss_mb": p.rss_bytes as f64 / 1e6, "peak_rss_mb": p.peak_rss_bytes as f64 / 1e6,
            "lines": p.lines, "lines_per_sec": p.lines as f64 / p.seconds,
        })
    };
    Ok(json!({
        "scenario": "many-files", "name": "1,000 files → agent → sink",
        "files": FILES, "active_files": ACTIVE, "active_rate_per_file": ACTIVE_RATE_PER_FILE,
        "initial_lines": total, "initial_seconds": initial_seconds, "open_fds": open_fds,
        "idle": phase_json(&idle), "active": phase_json(&active), "delivered": received,
        "requests": sink.counts.requests.load(Ordering::Relaxed),
    }))
}

/// What the agent used over one phase.
struct Phase {
    seconds: f64,
    cpu_seconds: f64,
    rss_bytes: u64,
    peak_rss_bytes: u64,
    lines: u64,
}

/// The agent's CPU time and memory over `run`, which returns the lines it wrote.
fn measure(agent: &Daemon, run: impl FnOnce() -> anyhow::Result<u64>) -> anyhow::Result<Phase> {
    let before = agent.usage().context("the agent is not running")?;
    let started = Instant::now();
    let lines = run()?;
    let seconds = started.elapsed().as_secs_f64();
    let after: Usage = agent.usage().context("the agent is not running")?;
    Ok(Phase {
        seconds,
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        rss_bytes: after.rss_bytes,
        peak_rss_bytes: after.peak_rss_bytes,
        lines,
    })
}

/// Appends toll lines to `paths` at [`ACTIVE_RATE_PER_FILE`] each for `seconds`; returns how
/// many it wrote.
fn write_active(paths: &[PathBuf], sim: &mut Simulator, phase: Duration) -> anyhow::Result<u64> {
    let mut files = paths
        .iter()
        .map(|p| std::fs::OpenOptions::new().append(true).open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let per_file = (ACTIVE_RATE_PER_FILE * phase.as_secs_f64()).round() as u64;
    let rate = ACTIVE_RATE_PER_FILE;
    let started = Instant::now();
    let (mut done, mut line, mut chunk) = (0u64, Vec::new(), Vec::new());
    while done < per_file {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(per_file);
        let now = Timestamp::try_from(SystemTime::now())?;
        for file in &mut files {
            chunk.clear();
            for _ in done..due {
                line.clear();
                sim.next_into_at(now, &mut line)
                    .context("the simulator ran out")?;
                chunk.extend_from_slice(&line);
            }
            file.write_all(&chunk)?;
        }
        done = due;
        let tick = WRITE_TICK.as_secs_f64();
        let next = tick * ((started.elapsed().as_secs_f64() / tick).floor() + 1.0);
        std::thread::sleep(Duration::from_secs_f64(next).saturating_sub(started.elapsed()));
    }
    Ok(per_file * files.len() as u64)
}

/// Prints the `many-files` result among `results`, if any.
pub fn print_table(results: &[Value]) {
    let Some(r) = results.iter().find(|r| r["scenario"] == "many-files") else {
        return;
    };
    println!(
        "\n{:<44} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "many-files (1,000 files → agent → sink)",
        "lines/s",
        "CPU s/min",
        "% of core",
        "RSS at end",
        "peak RSS"
    );
    for (label, key) in [
        ("all idle", "idle"),
        ("1 % active (10 files × 100 lines/s)", "active"),
    ] {
        let p = &r[key];
        let num = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<44} {:>10.0} {:>12.2} {:>9.2}% {:>7.1} MB {:>7.1} MB",
            label,
            num("lines_per_sec"),
            num("cpu_seconds_per_minute"),
            num("core_percent"),
            num("rss_mb"),
            num("peak_rss_mb"),
        );
    }
    println!(
        "({} initial lines read in {:.1} s; {} descriptors open; every line delivered once)",
        r["initial_lines"],
        r["initial_seconds"].as_f64().unwrap_or(f64::NAN),
        r["open_fds"]
    );
}
