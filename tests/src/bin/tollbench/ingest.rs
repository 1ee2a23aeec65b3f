//! `ingest`: N synthetic agents → a real collector (default fsync, embedded SQLite
//! warehouse). Measures durable ingest: records/s and MB/s from the first request to the
//! last 200, ack latency p50/p99, the collector's CPU and peak RSS meanwhile; then checks
//! that the acks add up to every record and waits (with a deadline) until the warehouse
//! holds every one of them, reporting that wait as the load lag.
//!
//! The batches are generated and compressed before timing starts and shared by every run;
//! each N gets a fresh collector, and agent `i` sends batches `i, i + N, i + 2N, …` as
//! consecutive byte ranges of its one file.

mod agent;
mod batches;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tollstream_tests::harness::{
    CollectorSetup, Daemon, Usage, WarehouseView, binary, free_port, http_get, wait_for,
    write_collector_config,
};

use self::agent::{Agent, Report};
use self::batches::Batch;

/// How the scenario is run.
pub struct Options {
    /// Toll lines sent in each run.
    pub lines: u64,
    /// The numbers of concurrent agents, one run each.
    pub agents: Vec<usize>,
    /// Lines per batch.
    pub batch_records: u64,
    /// Requests each agent may have in flight (the agent's default per file is 4).
    pub in_flight: usize,
    /// gzip level of the bodies (the agent's default is 2).
    pub gzip_level: u32,
    /// The collector's `buffer.max_age`: how long records may wait to be cut into an
    /// archive object and loaded (the reference config's `2s`; shorter for smoke runs).
    pub buffer_max_age: &'static str,
}

/// One run per entry of `options.agents`.
///
/// # Errors
/// A collector that does not start, a batch it refuses for good, acks or warehouse rows
/// that do not add up to what was sent.
pub fn ingest(dir: &Path, options: &Options) -> anyhow::Result<Vec<Value>> {
    let batches = Arc::new(batches::prepare(
        options.lines,
        options.batch_records,
        options.gzip_level,
    )?);
    // One worker thread: the client's share of the two cores stays small (its CPU time is
    // reported), and the collector gets the rest.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    options
        .agents
        .iter()
        .map(|&agents| run(&runtime, dir, &batches, agents, options))
        .collect()
}

fn run(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    batches: &Arc<Vec<Batch>>,
    agents: usize,
    options: &Options,
) -> anyhow::Result<Value> {
    if agents == 0 || agents > batches.len() {
        bail!(
            "{agents} agents need 1 to {} batches each; raise --lines or lower --batch-records",
            batches.len()
        );
    }
    let work = dir.join(format!("ingest-{agents}"));
    std::fs::create_dir_all(&work)?;
    let port = free_port()?;
    let metrics_port = free_port()?;
    let config = write_collector_config(
        &work,
        &CollectorSetup {
            port,
            metrics_port: Some(metrics_port),
            buffer_max_bytes: "8MiB",
            buffer_max_age: options.buffer_max_age,
            ..CollectorSetup::default()
        },
    )?;
    let mut collector = Daemon::new(
        "collector",
        binary("tollstream-collector")?,
        config,
        work.join("collector.log"),
    );
    collector.start()?;
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    wait_for("the collector to start", Duration::from_secs(30), || {
        http_get(([127, 0, 0, 1], port).into(), "/healthz").is_some()
            && http_get(metrics_addr, "/healthz").is_some()
    })
    .map_err(|e| e.context(collector.log_tail(20)))?;
    let warehouse_path = work.join("collector-data/warehouse.db");
    wait_for(
        "the warehouse to be created",
        Duration::from_secs(30),
        || warehouse_path.exists(),
    )?;
    let warehouse = WarehouseView::open(&warehouse_path)?;

    let base = format!("http://127.0.0.1:{port}");
    let senders: Vec<Arc<Agent>> = plans(batches, agents)
        .into_iter()
        .enumerate()
        .map(|(i, plan)| Agent::new(&base, i, plan, options.in_flight).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    runtime.block_on(async {
        for agent in &senders {
            agent.connect().await?;
        }
        anyhow::Ok(())
    })?;

    let metrics_before = Scrape::of(metrics_addr);
    let collector_before = collector.usage().context("collector usage")?;
    let client_before = Usage::of(std::process::id()).unwrap_or_default();
    let started = Instant::now();
    let report = runtime.block_on(async {
        let mut running = tokio::task::JoinSet::new();
        for agent in senders {
            running.spawn(agent.run(batches.clone()));
        }
        let mut report = Report::default();
        while let Some(part) = running.join_next().await {
            match part {
                Ok(part) => report.merge(part),
                Err(error) => report.failures.push(format!("agent task: {error}")),
            }
        }
        report
    });
    let ingest_end = report.finished.unwrap_or_else(Instant::now);
    let seconds = ingest_end.duration_since(started).as_secs_f64();
    let collector_ingest = collector.usage().unwrap_or(collector_before);
    let client_after = Usage::of(std::process::id()).unwrap_or_default();
    let metrics_after = Scrape::of(metrics_addr);

    let records: u64 = batches.iter().map(|b| b.records).sum();
    let raw_bytes: u64 = batches.iter().map(|b| b.raw_len).sum();
    let sent_bytes: u64 = batches.iter().map(|b| b.body.len() as u64).sum();
    let complete = report.failures.is_empty() && report.acked_records == records;
    let mut loaded = 0;
    if complete {
        wait_for(
            "every record in the warehouse",
            Duration::from_secs(120 + records / 5_000),
            || {
                loaded = warehouse
                    .count("SELECT COALESCE(SUM(inserted + duplicates + rejected), 0) FROM loads")
                    .unwrap_or(0) as u64;
                loaded >= records || !collector.is_running()
            },
        )
        .map_err(|e| e.context(format!("{loaded} of {records} loaded")))?;
    }
    let load_lag = ingest_end.elapsed().as_secs_f64();
    if !collector.is_running() {
        bail!(
            "{agents} agents: the collector exited during the run\n{}",
            collector.log_tail(30)
        );
    }
    let collector_loaded = collector.usage().unwrap_or(collector_ingest);
    let rows = warehouse.count("SELECT COUNT(*) FROM toll_transactions")? as u64;
    let rejected = warehouse.count("SELECT COALESCE(SUM(rejected), 0) FROM loads")?;
    let log = collector.log_tail(20);
    collector.terminate(Duration::from_secs(60))?;

    if !report.failures.is_empty() {
        bail!(
            "{agents} agents: {} batches not delivered (non-200 answers {:?}, {} network errors), e.g. {}\n{log}",
            report.failures.len(),
            report.non_200,
            report.network_errors,
            report.failures[0]
        );
    }
    if report.acked_records != records || report.duplicate_records != 0 {
        bail!(
            "{agents} agents: the collector acknowledged {} records written and {} duplicates, {records} were sent\n{log}",
            report.acked_records,
            report.duplicate_records
        );
    }
    if rows != records || rejected != 0 {
        bail!(
            "{agents} agents: the warehouse holds {rows} rows and {rejected} rejected records, {records} were sent\n{log}"
        );
    }

    let mut latencies = report.latencies;
    latencies.sort_unstable();
    let ms = |q: f64| percentile(&latencies, q).as_secs_f64() * 1e3;
    let fsyncs = metrics_after.delta(
        &metrics_before,
        "tollstream_collector_wal_fsync_seconds_count",
    );
    let fsync_seconds = metrics_after.delta(
        &metrics_before,
        "tollstream_collector_wal_fsync_seconds_sum",
    );
    let handled = metrics_after.delta(
        &metrics_before,
        "tollstream_collector_ingest_duration_seconds_count",
    );
    let handled_seconds = metrics_after.delta(
        &metrics_before,
        "tollstream_collector_ingest_duration_seconds_sum",
    );
    let collector_cpu = collector_ingest.cpu_seconds - collector_before.cpu_seconds;
    Ok(json!({
        "scenario": "ingest",
        "name": format!("ingest: {agents} agent{} → collector, fsync", if agents == 1 { "" } else { "s" }),
        "agents": agents,
        "in_flight_per_agent": options.in_flight,
        "batches": batches.len(),
        "batch_records": options.batch_records,
        "gzip_level": options.gzip_level,
        "records": records,
        "seconds": seconds,
        "lines_per_sec": records as f64 / seconds,
        "mb_per_sec": raw_bytes as f64 / 1e6 / seconds,
        "mb_per_sec_sent": sent_bytes as f64 / 1e6 / seconds,
        "ack_p50_ms": ms(0.50),
        "ack_p99_ms": ms(0.99),
        "ack_max_ms": latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        "non_200": report.non_200,
        "network_errors": report.network_errors,
        "collector_cpu_s": collector_cpu,
        "cpu_us_per_line": collector_cpu * 1e6 / records as f64,
        "peak_rss_mb": collector_ingest.peak_rss_bytes as f64 / 1e6,
        "client_cpu_s": client_after.cpu_seconds - client_before.cpu_seconds,
        "wal_fsyncs": fsyncs,
        "wal_fsync_mean_ms": if fsyncs > 0.0 { fsync_seconds * 1e3 / fsyncs } else { 0.0 },
        "collector_request_mean_ms": if handled > 0.0 { handled_seconds * 1e3 / handled } else { 0.0 },
        "load_lag_s": load_lag,
        "warehouse_rows": rows,
        "collector_cpu_s_until_loaded": collector_loaded.cpu_seconds - collector_before.cpu_seconds,
        "collector_peak_rss_until_loaded_mb": collector_loaded.peak_rss_bytes as f64 / 1e6,
    }))
}

/// Which batches each agent sends, with their byte ranges: agent `i` gets batches
/// `i, i + agents, …`, one after the other in its file.
fn plans(batches: &[Batch], agents: usize) -> Vec<Vec<(usize, u64, u64)>> {
    let mut plans = vec![Vec::new(); agents];
    let mut offsets = vec![0u64; agents];
    for (i, batch) in batches.iter().enumerate() {
        let agent = i % agents;
        let start = offsets[agent];
        offsets[agent] += batch.raw_len;
        plans[agent].push((i, start, offsets[agent]));
    }
    plans
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The unlabelled samples of the collector's `/metrics`.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn of(addr: SocketAddr) -> Self {
        let text = http_get(addr, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    fn delta(&self, before: &Scrape, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0) - before.0.get(name).copied().unwrap_or(0.0)
    }
}

/// The ingest runs in detail, after the common table.
pub fn print_table(results: &[Value]) {
    let runs: Vec<&Value> = results
        .iter()
        .filter(|r| r["scenario"] == "ingest")
        .collect();
    if runs.is_empty() {
        return;
    }
    println!(
        "\n{:>6} {:>9} {:>8} {:>10} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>8}",
        "agents",
        "in flight",
        "batches",
        "records/s",
        "MB/s",
        "sent MB/s",
        "p50 ms",
        "p99 ms",
        "coll CPU",
        "peak RSS",
        "fsyncs",
        "non-200",
        "load lag"
    );
    for r in runs {
        let num = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let non_200: u64 = r["non_200"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        println!(
            "{:>6} {:>9} {:>8} {:>10.0} {:>8.1} {:>9.1} {:>8.1} {:>8.1} {:>7.1} s {:>6.0} MB {:>8.0} {:>7} {:>6.1} s",
            r["agents"].as_u64().unwrap_or(0),
            r["in_flight_per_agent"].as_u64().unwrap_or(0),
            r["batches"].as_u64().unwrap_or(0),
            num("lines_per_sec"),
            num("mb_per_sec"),
            num("mb_per_sec_sent"),
            num("ack_p50_ms"),
            num("ack_p99_ms"),
            num("collector_cpu_s"),
            num("peak_rss_mb"),
            num("wal_fsyncs"),
            non_200 + r["network_errors"].as_u64().unwrap_or(0),
            num("load_lag_s"),
        );
    }
}
