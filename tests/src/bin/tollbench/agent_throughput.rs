//! `agent-throughput`: the agent tails one pre-written file into the counting sink built into
//! the harness, so the collector is not the limit.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tollstream_tests::harness::{Daemon, Usage, binary, wait_for};
use tollstream_tests::sink::{self, Counts};

use crate::file_bytes;

/// The agent tails `file` into the built-in counting sink.
pub fn agent_throughput(
    dir: &Path,
    file: &Path,
    lines: u64,
    gzip_level: u32,
) -> anyhow::Result<Value> {
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
