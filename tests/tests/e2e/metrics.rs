//! Issue 7's metrics acceptance: both `/metrics` endpoints pass `promtool check metrics`
//! during and after a run, their counters equal what was sent, and every metric the Grafana
//! dashboard (`packaging/grafana/tollstream.json`) queries is one the daemons export.
//!
//! Needs `promtool` (Debian package `prometheus`; CI's `.ci/run` installs it).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tollstream_tests::harness::{http_get, wait_for};

use crate::fixture::{EXIT_TIMEOUT, Pipeline};

const LINES: u64 = 20_000;
const MALFORMED: usize = 40;

#[test]
fn both_metrics_endpoints_pass_promtool_and_count_exactly_what_was_sent() -> anyhow::Result<()> {
    let promtool = promtool()?;
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(LINES, MALFORMED)?;
    writer.write(LINES / 2)?;
    pipeline.wait_rows_at_least(1)?;
    // Mid-stream: histograms, gauges and per-stream series are all live.
    let mut scrapes = vec![
        check(&promtool, "agent", pipeline.agent_metrics_port)?,
        check(&promtool, "collector", pipeline.collector_metrics_port)?,
    ];
    writer.write_all()?;
    let written = writer.into_summary();
    assert_eq!(written.malformed_lines, MALFORMED as u64);
    pipeline.wait_loaded(written.valid_lines, written.malformed_lines)?;
    let total = written.total_lines as f64;
    let bytes = log_bytes(&pipeline.log_files(3))? as f64;
    wait_for_metric(
        &pipeline,
        Daemon::Agent,
        "tollstream_agent_lag_bytes",
        "",
        0.0,
    )?;
    wait_for_metric(
        &pipeline,
        Daemon::Agent,
        "tollstream_agent_files_behind",
        "",
        0.0,
    )?;
    // The rows are visible once a load commits, its counters a moment later: wait for the
    // last one counted (loads_total) to cover every archived object.
    let port = pipeline.collector_metrics_port;
    wait_for(
        "every archive object counted loaded",
        Duration::from_secs(60),
        || {
            let objects = Pipeline::metric(port, "tollstream_collector_archive_objects_total", "");
            let loads = Pipeline::metric(port, "tollstream_collector_loads_total", "");
            let backlog =
                Pipeline::metric(port, "tollstream_collector_warehouse_backlog_objects", "");
            objects.is_some_and(|o| o > 0.0) && objects == loads && backlog == Some(0.0)
        },
    )?;
    // By port, so the pipeline stays free to restart the agent below.
    let (agent_port, collector_port) =
        (pipeline.agent_metrics_port, pipeline.collector_metrics_port);
    let agent = |name: &str| Pipeline::metric(agent_port, name, "").unwrap_or(f64::NAN);
    let collector = |name: &str, labels: &str| {
        Pipeline::metric(
            collector_port,
            &format!("tollstream_collector_{name}"),
            labels,
        )
        .unwrap_or(f64::NAN)
    };
    assert_eq!(agent("tollstream_agent_read_records_total"), total);
    assert_eq!(agent("tollstream_agent_shipped_records_total"), total);
    assert_eq!(agent("tollstream_agent_read_bytes_total"), bytes);
    assert_eq!(agent("tollstream_agent_shipped_bytes_total"), bytes);
    assert_eq!(agent("tollstream_agent_files_followed"), 3.0);
    let batches = agent("tollstream_agent_batches_total");
    assert!(batches >= 3.0, "at least a batch per file, got {batches}");
    assert_eq!(
        agent("tollstream_agent_ship_duration_seconds_count"),
        batches,
        "one ship latency per acknowledged batch"
    );
    assert_eq!(collector("ingest_records_total", ""), total);
    assert_eq!(collector("archive_records_total", ""), total);
    assert_eq!(
        collector("loaded_records_total", ""),
        written.valid_lines as f64
    );
    assert_eq!(collector("rejected_records_total", ""), MALFORMED as f64);
    assert_eq!(collector("duplicate_records_total", ""), 0.0);
    assert_eq!(collector("ingest_errors_total", ""), 0.0);
    assert_eq!(collector("load_errors_total", ""), 0.0);
    let loads = collector("loads_total", "");
    assert_eq!(collector("archive_objects_total", ""), loads);
    assert_eq!(collector("load_duration_seconds_count", ""), loads);
    assert_eq!(collector("warehouse_load_lag_seconds_count", ""), loads);
    assert_eq!(collector("warehouse_backlog_objects", ""), 0.0);
    assert_eq!(collector("warehouse_up", ""), 1.0);
    if agent("tollstream_agent_ship_retries_total") == 0.0 {
        // Without retries each batch was one request, answered once.
        assert_eq!(collector("ingest_duration_seconds_count", ""), batches);
    }
    wait_for_metric(
        &pipeline,
        Daemon::Collector,
        "tollstream_collector_buffer_bytes",
        "",
        0.0,
    )?;
    scrapes.push(check(&promtool, "agent", pipeline.agent_metrics_port)?);
    scrapes.push(check(
        &promtool,
        "collector",
        pipeline.collector_metrics_port,
    )?);

    // The agent forgets its checkpoints and sends every line again: the collector counts
    // each one a duplicate at ingest, and nothing new is written or loaded.
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    std::fs::remove_dir_all(pipeline.dir.path().join("agent-state"))?;
    pipeline.agent.start()?;
    wait_for_metric(
        &pipeline,
        Daemon::Agent,
        "tollstream_agent_shipped_records_total",
        "",
        total,
    )?;
    assert_eq!(
        collector("duplicate_records_total", "stage=\"ingest\""),
        total
    );
    assert_eq!(collector("ingest_records_total", ""), total);
    assert_eq!(
        collector("loaded_records_total", ""),
        written.valid_lines as f64
    );
    scrapes.push(check(&promtool, "agent", pipeline.agent_metrics_port)?);
    scrapes.push(check(
        &promtool,
        "collector",
        pipeline.collector_metrics_port,
    )?);

    assert_dashboard_queries_exported_metrics(&promtool, pipeline.dir.path(), &scrapes)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

#[derive(Clone, Copy)]
enum Daemon {
    Agent,
    Collector,
}

/// Waits until a metric's sum is `value`.
fn wait_for_metric(
    pipeline: &Pipeline,
    daemon: Daemon,
    name: &str,
    labels: &str,
    value: f64,
) -> anyhow::Result<()> {
    let port = match daemon {
        Daemon::Agent => pipeline.agent_metrics_port,
        Daemon::Collector => pipeline.collector_metrics_port,
    };
    let mut last = None;
    wait_for(
        &format!("{name}{{{labels}}} to be {value}"),
        Duration::from_secs(60),
        || {
            last = Pipeline::metric(port, name, labels);
            last == Some(value)
        },
    )
    .map_err(|e| e.context(format!("last seen: {last:?}")))
}

/// The `promtool` binary: on `PATH`, else where Debian's `prometheus` package puts it.
fn promtool() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("promtool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/promtool")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "promtool not found on PATH or at /usr/bin/promtool: this test checks both \
                 /metrics endpoints with `promtool check metrics`. Install it with \
                 `apt-get install --no-install-recommends prometheus` (CI's .ci/run does)."
            )
        })
}

/// Scrapes a daemon's `/metrics` and passes it to `promtool check metrics`, which fails on
/// a missing HELP, a counter without `_total`, a unit missing from a name and the like.
fn check(promtool: &Path, daemon: &str, port: u16) -> anyhow::Result<String> {
    let (status, text) = http_get(([127, 0, 0, 1], port).into(), "/metrics")
        .ok_or_else(|| anyhow::anyhow!("the {daemon}'s /metrics did not answer"))?;
    anyhow::ensure!(status == 200, "the {daemon}'s /metrics answered {status}");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("promtool's stdin"))?
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    assert!(
        output.status.success(),
        "promtool check metrics on the {daemon}'s /metrics: {}\n{}{}\n----- scraped -----\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    Ok(text)
}

/// Total size of the log files (all whole lines once the writer is done).
fn log_bytes(files: &[PathBuf]) -> anyhow::Result<u64> {
    let mut total = 0;
    for file in files {
        total += std::fs::metadata(file)?.len();
    }
    Ok(total)
}

/// Every query of the dashboard parses (`promtool check rules` on them as recording rules,
/// Grafana's variables filled in), and every `tollstream_*` name in them is a series in some
/// scrape of this run, or (for series that only appear once something fails, like the error
/// counters) a metric the daemons describe.
fn assert_dashboard_queries_exported_metrics(
    promtool: &Path,
    dir: &Path,
    scrapes: &[String],
) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("packaging/grafana/tollstream.json"),
    )?)?;
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries: {exprs:?}");
    assert_queries_parse(promtool, dir, &exprs)?;
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let exported: BTreeSet<String> = scrapes
        .iter()
        .flat_map(|s| s.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let mut described = String::new();
    for file in ["agent/src/metrics.rs", "collector/src/metrics.rs"] {
        described.push_str(&std::fs::read_to_string(root.join(file))?);
    }
    let mut missing = Vec::new();
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if !exported.contains(name) && !described.contains(&format!("\"{base}\"")) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics neither exported nor described: {missing:?}"
    );
    let unseen: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    eprintln!("dashboard metrics not exported in this run (described, error-only): {unseen:?}");
    Ok(())
}

/// Runs `promtool check rules` on `exprs` as recording rules (JSON is YAML to promtool).
fn assert_queries_parse(promtool: &Path, dir: &Path, exprs: &[String]) -> anyhow::Result<()> {
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$stream", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": expr })
        })
        .collect();
    let file = dir.join("dashboard-rules.json");
    let groups = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, serde_json::to_vec_pretty(&groups)?)?;
    let output = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()?;
    assert!(
        output.status.success(),
        "the dashboard's queries do not all parse: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    Ok(())
}

/// The `expr` of every target in the dashboard, at any depth (rows nest panels).
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(s) if key == "expr" => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `tollstream_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tollstream_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
