//! `tollstream-demo`: the whole system on the embedded default, in one command.
//!
//! Starts a collector (SQLite warehouse and local archive under one data directory) and an
//! agent following the toll log files that the simulator writes live, prints progress while
//! it streams, then a summary queried from the warehouse, and exits. The collector runs the
//! shipped `billing-limit` rule; 40 customers get a monthly limit of 30.00 (with the
//! `limits import` command), and the summary shows the alerts their charges fired.
//!
//! ```text
//! cargo run --release --bin tollstream-demo [-- --seconds 40 --rate 3000]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tollstream_tests::harness::{
    AgentSetup, CollectorSetup, Daemon, WarehouseView, bin_dir, binary, free_port, http_get,
    wait_for, write_agent_config, write_collector_config,
};
use tollstream_tests::sim::{Mode, Pacing, SimConfig, SimWriter, WriteOptions};

/// Streams simulated toll traffic through a real agent and collector into SQLite.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// How long the simulator writes, in seconds.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// Lines per second the simulator writes (over all files).
    #[arg(long, default_value_t = 3000)]
    rate: u64,
    /// Number of toll log files.
    #[arg(long, default_value_t = 3)]
    files: usize,
    /// Malformed lines mixed in, to show rejected records.
    #[arg(long, default_value_t = 12)]
    malformed: usize,
    /// Directory for logs, configs and data (default: a new directory under /tmp, kept).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_daemons_built()?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::path::absolute(dir)?
        }
        None => tempfile::Builder::new()
            .prefix("tollstream-demo-")
            .tempdir()?
            .keep(),
    };
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    println!("tollstream demo — everything lives in {}", dir.display());

    let (port, agent_metrics) = (free_port()?, free_port()?);
    let collector_config = write_collector_config(
        &dir,
        &CollectorSetup {
            port,
            metrics_port: Some(free_port()?),
            buffer_max_bytes: "8MiB",
            buffer_max_age: "1s",
            extra: "rules:\n  - { name: billing-limit, key: customer_id, period: month, \
                    aggregate: sum, column: amount, threshold: limits, when: above }\n\
                    notify: { log: alerts.jsonl }\n"
                .into(),
            ..CollectorSetup::default()
        },
    )?;
    import_limits(&dir, &collector_config)?;
    let agent_config = write_agent_config(
        &dir,
        &AgentSetup {
            collector_port: port,
            metrics_port: Some(agent_metrics),
            paths: vec!["logs/*.log".into()],
            batch_max_age: "200ms",
            batch_max_records: 5000,
            start_at: "beginning",
            ..AgentSetup::default()
        },
    )?;
    let mut collector = Daemon::new(
        "collector",
        binary("tollstream-collector")?,
        collector_config,
        dir.join("collector.log"),
    );
    let mut agent = Daemon::new(
        "agent",
        binary("tollstream-agent")?,
        agent_config,
        dir.join("agent.log"),
    );
    collector.start()?;
    let collector_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("the collector to start", Duration::from_secs(30), || {
        http_get(collector_addr, "/healthz").is_some()
    })
    .map_err(|e| e.context(collector.log_tail(20)))?;
    agent.start()?;
    println!(
        "collector on {collector_addr}, agent metrics on 127.0.0.1:{agent_metrics}; writing {} lines/s for {} s into {} files\n",
        args.rate, args.seconds, args.files
    );

    let result = stream(&args, &dir, &logs, agent_metrics);
    let stopped = agent
        .terminate(Duration::from_secs(30))
        .and_then(|_| collector.terminate(Duration::from_secs(30)));
    if let Err(error) = result {
        eprintln!("{}\n{}", collector.log_tail(30), agent.log_tail(30));
        return Err(error);
    }
    stopped?;
    print_summary(&dir)?;
    Ok(())
}

/// Writes live traffic, printing progress, then waits for the warehouse to catch up.
fn stream(args: &Args, dir: &Path, logs: &Path, agent_metrics: u16) -> anyhow::Result<()> {
    let paths: Vec<PathBuf> = (0..args.files)
        .map(|i| logs.join(format!("booths-{i}.log")))
        .collect();
    let total = args.rate * args.seconds;
    let config = SimConfig {
        malformed: args.malformed,
        ..SimConfig::default()
    };
    let options = WriteOptions {
        pacing: Pacing::Rate {
            lines_per_sec: args.rate as f64,
        },
        ..WriteOptions::default()
    };
    let mut writer =
        SimWriter::with_options(&config, Mode::Count { lines: total }, &paths, options)?;
    let warehouse_path = dir.join("collector-data").join("warehouse.db");
    wait_for(
        "the warehouse to be created",
        Duration::from_secs(30),
        || warehouse_path.exists(),
    )?;
    let warehouse = WarehouseView::open(&warehouse_path)?;
    println!(
        "{:>8}  {:>10}  {:>10}  {:>10}  {:>9}  {:>10}",
        "time", "written", "shipped", "loaded", "rejected", "freshness"
    );
    let step = (args.rate * 2).max(1);
    let mut elapsed = 0;
    while !writer.is_finished() {
        writer.write(step)?;
        elapsed += 2;
        progress(
            elapsed,
            writer.summary().total_lines,
            &warehouse,
            agent_metrics,
        );
    }
    let written = writer.summary().clone();
    wait_for(
        "the warehouse to hold every line",
        Duration::from_secs(120),
        || {
            let loaded = warehouse
                .count("SELECT COUNT(*) FROM toll_transactions")
                .unwrap_or(0);
            let rejected = warehouse
                .count("SELECT COUNT(*) FROM rejected_records")
                .unwrap_or(0);
            (loaded + rejected) as u64 >= written.total_lines
        },
    )?;
    progress(elapsed, written.total_lines, &warehouse, agent_metrics);
    Ok(())
}

fn progress(seconds: u64, written: u64, warehouse: &WarehouseView, agent_metrics: u16) {
    let shipped = http_get(([127, 0, 0, 1], agent_metrics).into(), "/metrics")
        .and_then(|(_, body)| metric(&body, "tollstream_agent_shipped_records_total"))
        .unwrap_or(0);
    let loaded = warehouse
        .count("SELECT COUNT(*) FROM toll_transactions")
        .unwrap_or(0);
    let rejected = warehouse
        .count("SELECT COUNT(*) FROM rejected_records")
        .unwrap_or(0);
    // Live event times are the wall clock at write time, so this is write-to-queryable age.
    let freshness = warehouse
        .count("SELECT CAST((julianday('now') - julianday(MAX(event_time))) * 86400000 AS INTEGER) FROM toll_transactions")
        .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
        .unwrap_or_else(|_| "-".into());
    println!(
        "{:>7}s  {written:>10}  {shipped:>10}  {loaded:>10}  {rejected:>9}  {freshness:>10}",
        seconds
    );
}

fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Customers with a demo limit.
const LIMITED: u32 = 40;

/// Gives customers `C0000001`…`C0000040` a monthly limit of 30.00 with `limits import`.
fn import_limits(dir: &Path, config: &Path) -> anyhow::Result<()> {
    let csv = dir.join("limits.csv");
    let mut text = String::from("customer_id,monthly_limit\n");
    for n in 1..=LIMITED {
        text.push_str(&format!(
            "{},30.00\n",
            tollstream_tests::sim::customer_id(n)
        ));
    }
    std::fs::write(&csv, text)?;
    let status = Command::new(binary("tollstream-collector")?)
        .arg("--config")
        .arg(config)
        .args(["limits", "import"])
        .arg(&csv)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!(
            "tollstream-collector limits import {}: {status}",
            csv.display()
        );
    }
    Ok(())
}

/// The alerts the collector logged.
fn print_alerts(dir: &Path) -> anyhow::Result<()> {
    let log = dir.join("collector-data").join("alerts.jsonl");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let alerts: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    println!(
        "\nAlerts: {} of the {LIMITED} customers with a 30.00 monthly limit went above it (first few):",
        alerts.len()
    );
    for alert in alerts.iter().take(4) {
        println!(
            "  {} {}: spent {} this month ({}), limit {}, at the charge of {}",
            alert["rule"].as_str().unwrap_or("?"),
            alert["key"].as_str().unwrap_or("?"),
            alert["value"].as_str().unwrap_or("?"),
            alert["month"].as_str().unwrap_or("?"),
            alert["threshold"].as_str().unwrap_or("?"),
            alert["event_time"].as_str().unwrap_or("?"),
        );
    }
    println!(
        "  all: {}   (also in the warehouse's alerts table)",
        log.display()
    );
    Ok(())
}

fn print_summary(dir: &Path) -> anyhow::Result<()> {
    print_alerts(dir)?;
    let warehouse = WarehouseView::open(&dir.join("collector-data").join("warehouse.db"))?;
    println!("\nPer booth, from the warehouse:");
    println!("{:>8}  {:>8}  {:>14}", "booth", "rows", "amount (BRL)");
    for (booth, rows, cents) in warehouse.triples("SELECT booth_id, COUNT(*), SUM(amount_cents) FROM toll_transactions GROUP BY booth_id ORDER BY booth_id")? {
        println!("{booth:>8}  {rows:>8}  {:>11}.{:02}", cents / 100, cents % 100);
    }
    let rows = warehouse.count("SELECT COUNT(*) FROM toll_transactions")?;
    let cents = warehouse.count("SELECT SUM(amount_cents) FROM toll_transactions")?;
    println!(
        "{:>8}  {rows:>8}  {:>11}.{:02}",
        "total",
        cents / 100,
        cents % 100
    );
    let rejected =
        warehouse.pairs("SELECT reason, line FROM rejected_records ORDER BY id LIMIT 4")?;
    println!(
        "\nRejected lines: {} (first few with their reasons):",
        warehouse.count("SELECT COUNT(*) FROM rejected_records")?
    );
    for (reason, line) in rejected {
        println!(
            "  {reason}\n      {}",
            line.chars().take(100).collect::<String>()
        );
    }
    let loads = warehouse.count("SELECT COUNT(*) FROM loads")?;
    let data = dir.join("collector-data");
    println!("\nWhere things are:");
    println!(
        "  warehouse   {}   ({loads} loads)   try: sqlite3 {} 'SELECT * FROM toll_transactions LIMIT 5'",
        data.join("warehouse.db").display(),
        data.join("warehouse.db").display()
    );
    println!(
        "  archive     {}   (zcat any .gz)",
        data.join("archive").display()
    );
    println!("  WAL         {}", data.join("wal").display());
    println!("  toll logs   {}", dir.join("logs").display());
    println!(
        "  configs     {} and {}",
        dir.join("collector.yaml").display(),
        dir.join("agent.yaml").display()
    );
    println!(
        "  daemon logs {} and {}",
        dir.join("collector.log").display(),
        dir.join("agent.log").display()
    );
    Ok(())
}

/// Under `cargo run`, builds the two daemons in the demo's own profile first, so the demo
/// never runs stale binaries; otherwise expects them next to the demo's executable.
fn ensure_daemons_built() -> anyhow::Result<()> {
    let (Ok(cargo), Some(manifest)) = (std::env::var("CARGO"), option_env!("CARGO_MANIFEST_DIR"))
    else {
        return Ok(());
    };
    let workspace = Path::new(manifest).parent().context("workspace root")?;
    if !workspace.join("Cargo.toml").exists() {
        return Ok(());
    }
    let mut command = Command::new(cargo);
    command.current_dir(workspace).args([
        "build",
        "--quiet",
        "-p",
        "tollstream-agent",
        "-p",
        "tollstream-collector",
    ]);
    if bin_dir().ends_with("release") {
        command.arg("--release");
    }
    println!("building tollstream-agent and tollstream-collector…");
    if !command.status().context("running cargo build")?.success() {
        bail!("building the daemons failed");
    }
    Ok(())
}
