//! Many files: the agent follows 1,000 files, of which 1 % are written continuously and the
//! rest get a few lines once. Every line must arrive exactly once; then, with every file
//! idle, what following them costs (CPU over a fixed window, memory, file descriptors) is
//! measured and printed — figures, not verdicts, except the obvious bound on descriptors.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tollstream_tests::sim::{FileSet, Mode, SimConfig, Simulator, Summary};

use crate::fixture::{Pipeline, mib};

const FILES: usize = 1000;
/// Files written continuously (1 %).
const HOT: usize = 10;
/// Lines each of the other files gets, once.
const COLD_LINES: usize = 3;
/// Hot lines per round, round-robin over the hot files; one round every 100 ms.
const ROUND_LINES: usize = 1000;
const ROUNDS: u32 = 50;
/// The round after which the cold files are written.
const COLD_ROUND: u32 = 10;
const ROUND_EVERY: Duration = Duration::from_millis(100);
/// The idle measurement window.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Descriptors the agent may hold besides one per file (stdio, epoll, inotify, sockets…).
const FD_SLACK: usize = 50;

#[test]
fn a_thousand_files_every_line_once_and_what_idle_following_costs() -> anyhow::Result<()> {
    let (soft, hard) = nofile_limits()?;
    eprintln!("scale: RLIMIT_NOFILE soft {soft}, hard {hard} (inherited by the agent)");
    if soft < (FILES + FD_SLACK) as u64 {
        eprintln!(
            "scale: WARNING: a soft limit of {soft} open files is below the {} this test needs; \
             the agent does not raise its own limit, so expect it to fail to open some files",
            FILES + FD_SLACK
        );
    }
    // The agent's default poll interval, as deployed (the harness otherwise uses 100 ms).
    let mut pipeline = Pipeline::start_with(|setup| setup.poll_interval = "250ms")?;
    let logs = pipeline.dir.path().join("logs");
    let hot_paths: Vec<PathBuf> = (0..HOT)
        .map(|i| logs.join(format!("hot-{i:02}.log")))
        .collect();
    let cold_paths: Vec<PathBuf> = (0..FILES - HOT)
        .map(|i| logs.join(format!("cold-{i:03}.log")))
        .collect();
    let total = (ROUNDS as usize * ROUND_LINES + cold_paths.len() * COLD_LINES) as u64;
    let mut sim = Simulator::new(&SimConfig::default(), Mode::Count { lines: total })?;
    let mut written = Summary::default();
    let mut next_line = |line: &mut Vec<u8>| -> anyhow::Result<()> {
        line.clear();
        let meta = sim
            .next_into(line)
            .context("the simulator ran out of lines")?;
        written.add_meta(sim.booth_ids(), &meta);
        Ok(())
    };
    let mut line = Vec::with_capacity(128);
    let mut hot = FileSet::open(&hot_paths)?;
    let started = Instant::now();
    for round in 0..ROUNDS {
        for i in 0..ROUND_LINES {
            next_line(&mut line)?;
            hot.push(i % HOT, &line);
        }
        hot.flush_all()?;
        if round == COLD_ROUND {
            // One file at a time, so this process holds few descriptors itself.
            let mut lines = Vec::new();
            for path in &cold_paths {
                lines.clear();
                for _ in 0..COLD_LINES {
                    next_line(&mut line)?;
                    lines.extend_from_slice(&line);
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                file.write_all(&lines)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        // Paced writing (not waiting for anything): the hot files grow every 100 ms.
        let due = started + ROUND_EVERY * (round + 1);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    drop(hot);
    let written_in = started.elapsed();
    assert_eq!(written.total_lines, total);
    pipeline.wait_loaded(written.valid_lines, 0)?;
    eprintln!(
        "scale: {} lines in {FILES} files ({HOT} hot) written in {:.1} s, all loaded {:.1} s after the writing stopped",
        written.total_lines,
        written_in.as_secs_f64(),
        (started.elapsed() - written_in).as_secs_f64()
    );

    // Everything is acknowledged and no file changes: what does following them cost?
    let agent_before = pipeline.agent.usage().context("agent usage")?;
    let collector_before = pipeline.collector.usage().context("collector usage")?;
    let window_started = Instant::now();
    std::thread::sleep(IDLE_WINDOW); // A fixed measurement window.
    let window = window_started.elapsed().as_secs_f64();
    let agent_after = pipeline.agent.usage().context("agent usage")?;
    let collector_after = pipeline.collector.usage().context("collector usage")?;
    let fds = pipeline.agent.open_fds().context("agent fds")?;
    let threads = pipeline
        .agent
        .pid()
        .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .map_or(0, Iterator::count);
    let agent_cpu = agent_after.cpu_seconds - agent_before.cpu_seconds;
    let collector_cpu = collector_after.cpu_seconds - collector_before.cpu_seconds;
    eprintln!(
        "scale: idle for {window:.1} s with {FILES} files followed (poll_interval 250ms): \
         agent CPU {agent_cpu:.2} s ({:.1} % of a core), RSS {:.1} MiB (peak {:.1} MiB), \
         {fds} open fds, {threads} threads; collector CPU {collector_cpu:.2} s",
        100.0 * agent_cpu / window,
        mib(agent_after.rss_bytes),
        mib(agent_after.peak_rss_bytes),
    );
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    assert!(
        fds <= FILES + FD_SLACK,
        "the agent holds {fds} file descriptors for {FILES} files"
    );
    Ok(())
}

/// The soft and hard `RLIMIT_NOFILE` of this process (and so of the daemons it starts).
fn nofile_limits() -> anyhow::Result<(u64, u64)> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' in /proc/self/limits")?;
    let mut numbers = line["Max open files".len()..].split_whitespace().map(|n| {
        if n == "unlimited" {
            Ok(u64::MAX)
        } else {
            n.parse::<u64>()
        }
    });
    let mut next = || -> anyhow::Result<u64> {
        numbers
            .next()
            .context("too few fields")?
            .with_context(|| format!("parsing {line:?}"))
    };
    Ok((next()?, next()?))
}
