//! `tollbench`: measures tollstream on this machine and prints figures (it never passes or
//! fails on them).
//!
//! Scenarios:
//! * `references` — `cat` and `gzip -1` of the same file: the machine's physical limits.
//! * `agent-throughput` — the agent tails one pre-written file of toll lines into a counting
//!   sink built into this harness (so the collector is not the limit); with gzip and without.
//! * `catch-up` — pre-written lines in three files → agent → collector → SQLite, until every
//!   row is queryable.
//! * `catch-up-postgres` — the same into PostgreSQL: a throwaway cluster (or a database on
//!   `TOLLSTREAM_TEST_PG_URL`, see `tollstream_tests::postgres`). In `all`, skipped with a
//!   message when no PostgreSQL server can be had.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/tollbench all [--lines 5000000] [--quick] [--smoke] [--json FILE]
//! ```
//!
//! Wall-clock time is what a benchmark measures, so this file reads the real clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tollstream_tests::harness::{
    CollectorSetup, Daemon, Usage, WarehouseView, bin_dir, binary, free_port, http_get, wait_for,
    write_collector_config,
};
use tollstream_tests::postgres::TestPostgres;
use tollstream_tests::sim::{Mode, Pacing, SimConfig, write_files};
use tollstream_tests::sink::{self, Counts};

/// Measures throughput, CPU and memory of tollstream and of physical references.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Which scenario to run.
    #[arg(value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Lines in the pre-written file(s) (default 5,000,000; 1,000,000 with --quick).
    #[arg(long)]
    lines: Option<u64>,
    /// A shorter run (1M lines) that finishes in a few minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// A tiny run that only proves every scenario works (CI); its figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "tollbench.json")]
    json: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    References,
    AgentThroughput,
    CatchUp,
    CatchUpPostgres,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lines = args.lines.unwrap_or(if args.smoke {
        20_000
    } else if args.quick {
        1_000_000
    } else {
        5_000_000
    });
    if !bin_dir().ends_with("release") && !args.smoke {
        eprintln!(
            "warning: {} is not a release build; figures will be far below what tollstream does",
            bin_dir().display()
        );
    }
    let dir = tempfile::Builder::new().prefix("tollbench-").tempdir()?;
    let one = vec![dir.path().join("one/booths.log")];
    let three: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("three/booths-{i}.log")))
        .collect();
    println!(
        "tollbench: {lines} toll lines, {} cores, work dir {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().display()
    );
    let mut results = Vec::new();
    let all = args.scenario == Scenario::All;
    if all || args.scenario == Scenario::References || args.scenario == Scenario::AgentThroughput {
        prewrite(&one, lines)?;
    }
    if all || args.scenario == Scenario::References {
        results.push(reference(
            "cat file > /dev/null",
            "cat",
            &[],
            &one[0],
            lines,
        )?);
        results.push(reference(
            "gzip -1 -c file > /dev/null",
            "gzip",
            &["-1", "-c"],
            &one[0],
            lines,
        )?);
    }
    if all || args.scenario == Scenario::AgentThroughput {
        results.push(agent_throughput(dir.path(), &one[0], lines, 2)?);
        results.push(agent_throughput(dir.path(), &one[0], lines, 0)?);
    }
    if all || args.scenario == Scenario::CatchUp || args.scenario == Scenario::CatchUpPostgres {
        prewrite(&three, lines)?;
    }
    if all || args.scenario == Scenario::CatchUp {
        results.push(catch_up(dir.path(), lines, None)?);
    }
    if all || args.scenario == Scenario::CatchUpPostgres {
        match TestPostgres::start() {
            Ok(postgres) => results.push(catch_up(dir.path(), lines, Some(&postgres))?),
            Err(error) if all => eprintln!("catch-up-postgres skipped: {error:#}"),
            Err(error) => return Err(error),
        }
    }
    print_table(&results);
    let report = json!({ "lines": lines, "smoke": args.smoke, "results": results });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nresults written to {}", args.json.display());
    Ok(())
}

/// Writes `lines` toll lines over `paths` as fast as possible.
fn prewrite(paths: &[PathBuf], lines: u64) -> anyhow::Result<()> {
    if let Some(parent) = paths[0].parent() {
        std::fs::create_dir_all(parent)?;
    }
    let started = Instant::now();
    write_files(
        &SimConfig::default(),
        paths,
        Mode::Count { lines },
        Pacing::AsFastAsPossible,
    )?;
    let bytes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    println!(
        "wrote {lines} lines ({:.1} MB) in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Times a command reading the file (wall clock; the file is in the page cache by now).
fn reference(
    name: &str,
    program: &str,
    args: &[&str],
    file: &Path,
    lines: u64,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .arg(file)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{program} failed: {status}");
    }
    Ok(
        json!({ "scenario": "reference", "name": name, "seconds": seconds, "lines_per_sec": lines as f64 / seconds, "mb_per_sec": file_bytes(file) as f64 / 1e6 / seconds }),
    )
}

/// The agent tails `file` into the built-in counting sink.
fn agent_throughput(dir: &Path, file: &Path, lines: u64, gzip_level: u32) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let counts = Arc::new(Counts::default());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    runtime.spawn(sink::serve(listener, counts.clone()));
    let work = dir.join(format!("agent-gzip{gzip_level}"));
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("token"), "bench\n")?;
    let config = work.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "agent_id: bench\nstate_dir: state\ncollector: {{ url: \"http://127.0.0.1:{port}\", token_file: token, gzip_level: {gzip_level} }}\n\
             flows:\n  - stream: toll-transactions\n    paths: [{:?}]\n",
            file.display().to_string()
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
    let mut usage = Usage::default();
    wait_for(
        "the sink to count every line",
        Duration::from_secs(1800),
        || {
            usage = agent.usage().unwrap_or(usage);
            counts.lines.load(Ordering::Relaxed) >= lines
        },
    )
    .map_err(|e| e.context(agent.log_tail(20)))?;
    let seconds = started.elapsed().as_secs_f64();
    usage = agent.usage().unwrap_or(usage);
    agent.terminate(Duration::from_secs(30))?;
    let received = counts.lines.load(Ordering::Relaxed);
    if received != lines {
        bail!("the sink counted {received} lines, {lines} were written");
    }
    let name = if gzip_level == 0 {
        "agent → sink, no compression"
    } else {
        "agent → sink, gzip level 2"
    };
    Ok(json!({
        "scenario": "agent-throughput", "name": name, "seconds": seconds,
        "lines_per_sec": lines as f64 / seconds, "mb_per_sec": file_bytes(file) as f64 / 1e6 / seconds,
        "cpu_us_per_line": usage.cpu_seconds * 1e6 / lines as f64, "cpu_s_per_million_lines": usage.cpu_seconds * 1e6 / lines as f64,
        "peak_rss_mb": usage.peak_rss_bytes as f64 / 1e6, "requests": counts.requests.load(Ordering::Relaxed),
    }))
}

/// Pre-written lines in three files through agent and collector into SQLite, or into
/// PostgreSQL when `postgres` is given.
fn catch_up(dir: &Path, lines: u64, postgres: Option<&TestPostgres>) -> anyhow::Result<Value> {
    let work = dir.join(if postgres.is_some() {
        "catch-up-postgres"
    } else {
        "catch-up"
    });
    std::fs::create_dir_all(&work)?;
    let port = free_port()?;
    let collector_config = write_collector_config(
        &work,
        &CollectorSetup {
            port,
            metrics_port: None,
            buffer_max_bytes: "8MiB",
            buffer_max_age: "2s",
            warehouse_url: postgres.map(|p| p.url().to_owned()),
            ..CollectorSetup::default()
        },
    )?;
    std::fs::write(
        work.join("agent.token"),
        format!("{}\n", tollstream_tests::harness::TOKEN),
    )?;
    let agent_config = work.join("agent.yaml");
    std::fs::write(
        &agent_config,
        format!(
            "agent_id: bench\nstate_dir: agent-state\ncollector: {{ url: \"http://127.0.0.1:{port}\", token_file: agent.token }}\n\
             flows:\n  - stream: toll-transactions\n    paths: [{:?}]\n",
            dir.join("three/*.log").display().to_string()
        ),
    )?;
    let mut collector = Daemon::new(
        "collector",
        binary("tollstream-collector")?,
        collector_config,
        work.join("collector.log"),
    );
    let mut agent = Daemon::new(
        "agent",
        binary("tollstream-agent")?,
        agent_config,
        work.join("agent.log"),
    );
    collector.start()?;
    wait_for("the collector to start", Duration::from_secs(30), || {
        http_get(([127, 0, 0, 1], port).into(), "/healthz").is_some()
    })?;
    let warehouse = match postgres {
        Some(postgres) => WarehouseView::postgres(postgres.url())?,
        None => {
            let warehouse_path = work.join("collector-data/warehouse.db");
            wait_for(
                "the warehouse to be created",
                Duration::from_secs(30),
                || warehouse_path.exists(),
            )?;
            WarehouseView::open(&warehouse_path)?
        }
    };
    let started = Instant::now();
    agent.start()?;
    let (mut agent_usage, mut collector_usage) = (Usage::default(), Usage::default());
    wait_for(
        "every row in the warehouse",
        Duration::from_secs(3600),
        || {
            agent_usage = agent.usage().unwrap_or(agent_usage);
            collector_usage = collector.usage().unwrap_or(collector_usage);
            // The manifest's sum, not COUNT(*): cheap however large the table grows.
            warehouse
                .count("SELECT SUM(inserted) FROM loads")
                .unwrap_or(0) as u64
                >= lines
        },
    )
    .map_err(|e| {
        e.context(format!(
            "{}\n{}",
            collector.log_tail(20),
            agent.log_tail(20)
        ))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    agent_usage = agent.usage().unwrap_or(agent_usage);
    collector_usage = collector.usage().unwrap_or(collector_usage);
    agent.terminate(Duration::from_secs(60))?;
    collector.terminate(Duration::from_secs(60))?;
    let bytes: u64 = (0..3)
        .map(|i| file_bytes(&dir.join(format!("three/booths-{i}.log"))))
        .sum();
    let (scenario, name) = match postgres {
        Some(_) => (
            "catch-up-postgres",
            "3 files → agent → collector → PostgreSQL",
        ),
        None => ("catch-up", "3 files → agent → collector → SQLite"),
    };
    Ok(json!({
        "scenario": scenario, "name": name, "seconds": seconds,
        "lines_per_sec": lines as f64 / seconds, "mb_per_sec": bytes as f64 / 1e6 / seconds,
        "cpu_us_per_line": (agent_usage.cpu_seconds + collector_usage.cpu_seconds) * 1e6 / lines as f64,
        "agent_cpu_s_per_million_lines": agent_usage.cpu_seconds * 1e6 / lines as f64,
        "collector_cpu_s_per_million_lines": collector_usage.cpu_seconds * 1e6 / lines as f64,
        "peak_rss_mb": agent_usage.peak_rss_bytes.max(collector_usage.peak_rss_bytes) as f64 / 1e6,
        "agent_peak_rss_mb": agent_usage.peak_rss_bytes as f64 / 1e6,
        "collector_peak_rss_mb": collector_usage.peak_rss_bytes as f64 / 1e6,
    }))
}

fn print_table(results: &[Value]) {
    println!(
        "\n{:<40} {:>12} {:>9} {:>12} {:>11}",
        "run", "lines/s", "MB/s", "CPU µs/line", "peak RSS"
    );
    for r in results {
        let num = |k: &str| r.get(k).and_then(Value::as_f64);
        let cpu = num("cpu_us_per_line").map_or("-".into(), |v| format!("{v:.2}"));
        let rss = num("peak_rss_mb").map_or("-".into(), |v| format!("{v:.0} MB"));
        println!(
            "{:<40} {:>12.0} {:>9.1} {:>12} {:>11}",
            r["name"].as_str().unwrap_or("?"),
            num("lines_per_sec").unwrap_or(0.0),
            num("mb_per_sec").unwrap_or(0.0),
            cpu,
            rss
        );
    }
}
