//! `tollsim`: writes simulated toll transaction logs for demos, benchmarks and manual tests.
//!
//! ```text
//! tollsim --out DIR --files 3 --lines 200000 [--seed 42] [--malformed 100] [--rate 5000]
//!         [--from 2026-11-25T00:00:00-03:00 --until 2026-11-26T00:00:00-03:00]
//!         [--tz America/Sao_Paulo] [--summary summary.json] [--split-writes]
//! ```
//!
//! Writes `DIR/booths-0.log` … `DIR/booths-{files-1}.log` (appending), prints one summary line
//! and optionally the [`Summary`] as JSON. Exits 64 (EX_USAGE) on an invalid configuration,
//! 1 on any other error.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use jiff::Timestamp;
use tollstream_tests::sim::{Mode, Pacing, SimConfig, SimError, SimWriter, Summary, WriteOptions};

/// Lines written when neither `--lines` nor `--until` is given.
const DEFAULT_LINES: u64 = 200_000;

/// Write simulated toll-booth transaction logs.
#[derive(Debug, Parser)]
#[command(name = "tollsim", version)]
struct Args {
    /// Output directory (created if missing); files are DIR/booths-N.log, appended to.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of log files; booth i goes to file i % files.
    #[arg(long, default_value_t = 3)]
    files: usize,
    /// Total lines, malformed included [default: 200000]. Conflicts with --until.
    #[arg(long, conflicts_with = "until")]
    lines: Option<u64>,
    /// Random seed; the same flags and seed give byte-identical files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Malformed lines to mix in (part of --lines).
    #[arg(long, default_value_t = 0)]
    malformed: usize,
    /// Lines per second in real time; with --lines, event times are the wall clock.
    #[arg(long, value_name = "LINES_PER_SEC")]
    rate: Option<f64>,
    /// Start of the simulated clock; with --until, the start of a historical span.
    #[arg(long, value_name = "RFC3339")]
    from: Option<Timestamp>,
    /// End (exclusive) of a historical span: every transaction from --from to here.
    #[arg(long, value_name = "RFC3339", requires = "from")]
    until: Option<Timestamp>,
    /// Time zone of event times and of the daily curve.
    #[arg(long, default_value = "America/Sao_Paulo")]
    tz: String,
    /// Write the run's totals as JSON to this file.
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// End some writes in the middle of a line, as a slow writer would.
    #[arg(long)]
    split_writes: bool,
    /// Number of booths (PLZ-001 …) [default: 12].
    #[arg(long)]
    booths: Option<u16>,
    /// Lanes per booth [default: 6].
    #[arg(long)]
    lanes: Option<u8>,
    /// Number of customers [default: 20000].
    #[arg(long)]
    customers: Option<u32>,
    /// Mean transactions per booth per hour at curve weight 1 [default: 300].
    #[arg(long)]
    base_rate: Option<f64>,
    /// A booth that sends nothing in a span: BOOTH,FROM,UNTIL (RFC 3339 times).
    #[arg(long, value_name = "BOOTH,FROM,UNTIL")]
    silent_booth: Option<String>,
    /// A customer with extra passes per day: CUSTOMER,EXTRA_PER_DAY.
    #[arg(long, value_name = "CUSTOMER,EXTRA")]
    overspender: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollsim: error: {err:#}");
            if err
                .downcast_ref::<SimError>()
                .is_some_and(|e| !matches!(e, SimError::Io { .. }))
                || err.downcast_ref::<UsageError>().is_some()
            {
                ExitCode::from(64)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A flag value that clap accepted but that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

// Reads the real clock for the elapsed-time report; a load generator, not a daemon under test.
#[allow(clippy::disallowed_types)]
fn run(args: &Args) -> anyhow::Result<()> {
    let (cfg, mode) = config(args)?;
    if args.files == 0 {
        return Err(UsageError("--files must be > 0".into()).into());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let paths: Vec<PathBuf> = (0..args.files)
        .map(|i| args.out.join(format!("booths-{i}.log")))
        .collect();
    let pacing = match args.rate {
        Some(lines_per_sec) => Pacing::Rate { lines_per_sec },
        None => Pacing::AsFastAsPossible,
    };
    let options = WriteOptions {
        pacing,
        split_writes: args.split_writes,
        ..Default::default()
    };

    let started = std::time::Instant::now();
    let mut writer = SimWriter::with_options(&cfg, mode, &paths, options)?;
    writer.write_all().context("writing the logs")?;
    let secs = started.elapsed().as_secs_f64();
    let summary = writer.into_summary();

    if let Some(path) = &args.summary {
        write_summary(path, &summary)?;
    }
    println!(
        "tollsim: wrote {} lines ({} valid, {} malformed) to {} files in {:.2} s ({:.0} lines/s)",
        summary.total_lines,
        summary.valid_lines,
        summary.malformed_lines,
        paths.len(),
        secs,
        summary.total_lines as f64 / secs.max(1e-9),
    );
    Ok(())
}

/// The simulator config and mode the flags describe.
fn config(args: &Args) -> anyhow::Result<(SimConfig, Mode)> {
    let defaults = SimConfig::default();
    let mut cfg = SimConfig {
        seed: args.seed,
        booths: args.booths.unwrap_or(defaults.booths),
        lanes_per_booth: args.lanes.unwrap_or(defaults.lanes_per_booth),
        customers: args.customers.unwrap_or(defaults.customers),
        time_zone: args.tz.clone(),
        start: args.from.unwrap_or(defaults.start),
        base_rate_per_booth_per_hour: args
            .base_rate
            .unwrap_or(defaults.base_rate_per_booth_per_hour),
        malformed: args.malformed,
        ..defaults
    };
    if let Some(spec) = &args.silent_booth {
        let [booth, from, until] = split_spec::<3>(spec, "--silent-booth", "BOOTH,FROM,UNTIL")?;
        let time = |s: &str| -> anyhow::Result<Timestamp> {
            s.parse().map_err(|e| {
                UsageError(format!(
                    "--silent-booth: {s:?} is not an RFC 3339 time: {e}"
                ))
                .into()
            })
        };
        cfg.silent_booth = Some((booth.to_owned(), time(from)?, time(until)?));
    }
    if let Some(spec) = &args.overspender {
        let [customer, extra] = split_spec::<2>(spec, "--overspender", "CUSTOMER,EXTRA")?;
        let extra: u32 = extra
            .parse()
            .map_err(|_| UsageError(format!("--overspender: {extra:?} is not a whole number")))?;
        cfg.overspender = Some((customer.to_owned(), extra));
    }
    let mode = match (args.from, args.until) {
        (Some(from), Some(until)) => Mode::Historical { from, until },
        _ => Mode::Count {
            lines: args.lines.unwrap_or(DEFAULT_LINES),
        },
    };
    Ok((cfg, mode))
}

/// Splits `A,B,…` into exactly `N` parts.
fn split_spec<'a, const N: usize>(
    spec: &'a str,
    flag: &str,
    shape: &str,
) -> anyhow::Result<[&'a str; N]> {
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    match <[&str; N]>::try_from(parts) {
        Ok(parts) => Ok(parts),
        Err(_) => Err(UsageError(format!("{flag} must look like {shape}, got {spec:?}")).into()),
    }
}

/// Writes the run's totals as pretty JSON (a report for scripts and e2e tests to compare).
fn write_summary(path: &PathBuf, summary: &Summary) -> anyhow::Result<()> {
    let mut json = serde_json::to_string_pretty(summary).context("serializing the summary")?;
    json.push('\n');
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}
