//! `catch-up`: pre-written lines in three files → agent → collector → SQLite (or, for
//! `catch-up-postgres`, PostgreSQL), until the manifest counts every row.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollstream_tests::harness::{
    CollectorSetup, Daemon, Usage, WarehouseView, binary, free_port, http_get, wait_for,
    write_collector_config,
};

use tollstream_tests::postgres::TestPostgres;

use crate::file_bytes;

/// Pre-written lines in three files through agent and collector into SQLite, or into
/// PostgreSQL when `postgres` is given.
pub fn catch_up(dir: &Path, lines: u64, postgres: Option<&TestPostgres>) -> anyhow::Result<Value> {
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
