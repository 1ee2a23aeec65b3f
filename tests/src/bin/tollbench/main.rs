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
//! * `ingest` — 1, 10 and 100 synthetic agents send pre-compressed batches straight to a
//!   collector (fsync, SQLite): records/s, MB/s, ack latency p50/p99, collector CPU and RSS.
//! * `firehose` — 1, 10 and 100 producers send `PutRecordBatch` requests of 500 records,
//!   SigV4-signed, to the collector's Firehose API (compare: `ingest --batch-records 500`).
//! * `end-to-end` — toll lines written at a steady rate (5,000/s) into a watched file →
//!   agent → collector (default configuration) → SQLite, then PostgreSQL (skipped with a
//!   message when no server can be had): per line, write → row visible, p50/p99/max; then
//!   the highest rate whose freshness p99 stays under 5 s, on each backend (`max_rate`).
//! * `many-files` — 1,000 files, 1 % of them written to: the agent's CPU and RSS, idle and
//!   active.
//! * `peers` — syslog-ng and rsyslog, when installed, tail the same file into the same sink,
//!   side by side with the agent (runs `agent-throughput` too when run alone).
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/tollbench all [--lines 5000000] [--quick] [--smoke] [--json FILE]
//! target/release/tollbench ingest [--agents 1,10,100] [--batch-records 1000] [--in-flight 1]
//! target/release/tollbench end-to-end [--rate 5000] [--seconds 60] [--poll-ms 25]
//!                                     [--search-start 10000] [--step-seconds 20]
//! target/release/tollbench many-files [--phase-seconds 60]
//! TOLLBENCH_RSYSLOG_ROOT=DIR TOLLBENCH_SYSLOG_NG_ROOT=DIR target/release/tollbench peers
//! ```
//!
//! The figures of this machine, and how to read them, are in BENCHMARKS.md.
//!
//! One module per scenario. Wall-clock time is what a benchmark measures, so these files read
//! the real clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod agent_throughput;
mod catch_up;
mod end_to_end;
mod firehose;
mod ingest;
mod many_files;
mod max_rate;
mod peers;
mod references;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tollstream_tests::harness::bin_dir;
use tollstream_tests::postgres::TestPostgres;
use tollstream_tests::sim::{Mode, Pacing, SimConfig, write_files};

use crate::agent_throughput::agent_throughput;
use crate::catch_up::catch_up;
use crate::end_to_end::end_to_end;
use crate::ingest::ingest;
use crate::references::reference;

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
    /// `ingest`: the numbers of concurrent synthetic agents, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    agents: Vec<usize>,
    /// `ingest`: lines per batch (default 1,000; 100 with --smoke).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch_records: Option<u64>,
    /// `ingest`: requests each synthetic agent may have in flight (the agent allows 4 per
    /// file); 1 sends each batch only after the previous one was acknowledged.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    in_flight: usize,
    /// `end-to-end`: lines written per second.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// `end-to-end`: seconds of writing per backend (default 60; 15 with --quick, 4 with
    /// --smoke).
    #[arg(long)]
    seconds: Option<f64>,
    /// `end-to-end`: the first rate of the search for the highest rate with freshness p99
    /// under 5 s (doubling until a step fails, then bisecting; default 10,000; 20,000 with
    /// --quick).
    #[arg(long)]
    search_start: Option<f64>,
    /// `end-to-end`: seconds of writing per search step (default 20; 6 with --quick, 2
    /// with --smoke).
    #[arg(long)]
    step_seconds: Option<f64>,
    /// `many-files`: seconds of each phase, idle and active (default 60; 8 with --quick, 1
    /// with --smoke).
    #[arg(long)]
    phase_seconds: Option<f64>,
    /// `end-to-end`: how often the reader polls the warehouse, in milliseconds.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=1000))]
    poll_ms: u64,
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
    Ingest,
    EndToEnd,
    Firehose,
    ManyFiles,
    Peers,
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
    let peers = all || args.scenario == Scenario::Peers;
    if all
        || peers
        || args.scenario == Scenario::References
        || args.scenario == Scenario::AgentThroughput
    {
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
    if all || peers || args.scenario == Scenario::AgentThroughput {
        results.push(agent_throughput(dir.path(), &one[0], lines, 2)?);
        results.push(agent_throughput(dir.path(), &one[0], lines, 0)?);
    }
    if peers {
        results.extend(peers::peers(dir.path(), &one[0], lines));
    }
    if all || args.scenario == Scenario::ManyFiles {
        let phase = args.phase_seconds.unwrap_or(if args.smoke {
            1.0
        } else if args.quick {
            8.0
        } else {
            60.0
        });
        anyhow::ensure!(phase > 0.0, "--phase-seconds must be > 0");
        results.push(many_files::many_files(
            dir.path(),
            std::time::Duration::from_secs_f64(phase),
        )?);
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
    if all || args.scenario == Scenario::Ingest {
        results.extend(ingest(
            dir.path(),
            &ingest::Options {
                lines,
                agents: args.agents.clone(),
                batch_records: args
                    .batch_records
                    .unwrap_or(if args.smoke { 100 } else { 1000 }),
                in_flight: args.in_flight,
                gzip_level: 2,
                buffer_max_age: if args.smoke { "1s" } else { "2s" },
            },
        )?);
    }
    if all || args.scenario == Scenario::Firehose {
        let age = if args.smoke { "1s" } else { "2s" };
        results.extend(firehose::firehose(dir.path(), lines, &args.agents, age)?);
    }
    if all || args.scenario == Scenario::EndToEnd {
        let options = end_to_end::Options {
            rate: if args.smoke { 1000.0 } else { args.rate },
            seconds: args.seconds.unwrap_or(if args.smoke {
                4.0
            } else if args.quick {
                15.0
            } else {
                60.0
            }),
            poll: std::time::Duration::from_millis(args.poll_ms),
            tag: String::new(),
            stop_when_late: None,
            alerts: true,
        };
        let search = max_rate::Search {
            start: if args.smoke {
                1000.0
            } else {
                args.search_start
                    .unwrap_or(if args.quick { 20_000.0 } else { 10_000.0 })
            },
            step: std::time::Duration::from_secs_f64(args.step_seconds.unwrap_or(if args.smoke {
                2.0
            } else if args.quick {
                6.0
            } else {
                20.0
            })),
            bisections: if args.smoke {
                0
            } else if args.quick {
                2
            } else {
                4
            },
            // One step in a smoke run.
            ceiling: if args.smoke { 1000.0 } else { 1e7 },
            granularity: if args.smoke { 500.0 } else { 1000.0 },
            poll: options.poll,
        };
        anyhow::ensure!(
            options.rate > 0.0 && options.seconds > 0.0,
            "--rate and --seconds must be > 0"
        );
        results.push(end_to_end(dir.path(), &options, None)?);
        results.push(max_rate::max_rate(dir.path(), &search, None)?);
        match TestPostgres::start() {
            Ok(postgres) => {
                results.push(end_to_end(dir.path(), &options, Some(&postgres))?);
                results.push(max_rate::max_rate(dir.path(), &search, Some(&postgres))?);
            }
            Err(error) => eprintln!("end-to-end on PostgreSQL skipped: {error:#}"),
        }
    }
    print_table(&results);
    ingest::print_table(&results);
    firehose::print_table(&results);
    end_to_end::print_table(&results);
    max_rate::print_table(&results);
    many_files::print_table(&results);
    peers::print_table(&results);
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

fn print_table(results: &[Value]) {
    println!(
        "\n{:<40} {:>12} {:>9} {:>12} {:>11}",
        "run", "lines/s", "MB/s", "CPU µs/line", "peak RSS"
    );
    // Runs of a single throughput figure (many-files, the rate search and skipped peers have
    // tables of their own).
    for r in results.iter().filter(|r| r.get("lines_per_sec").is_some()) {
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
