//! How the agent delivers when the collector says no: a refusal that retrying cannot fix
//! (a wrong token, a token bound to another agent) pauses the flow loudly and keeps the data
//! in the files until the operator fixes it; a batch over the collector's record limit is
//! split until it fits. Either way every line arrives exactly once.

use std::time::Duration;

use anyhow::Context;
use tollstream_tests::harness::{TOKEN, http_get, wait_for};

use crate::fixture::{ARRIVAL_TIMEOUT, EXIT_TIMEOUT, Pipeline};

/// How long the agent gets to notice and report a refusal (its first request is refused).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A token the collector does not know.
const WRONG_TOKEN: &str = "not-the-token-the-collector-knows-41";
/// A token the collector knows, bound to another agent id than the agent's `e2e-booth`.
const OTHER_AGENTS_TOKEN: &str = "token-of-booth-other-9c2e";

/// The agent's `/readyz`: status and body.
fn agent_readyz(pipeline: &Pipeline) -> Option<(u16, String)> {
    http_get(
        ([127, 0, 0, 1], pipeline.agent_metrics_port).into(),
        "/readyz",
    )
}

/// Waits until the agent, since its latest start, has logged an ERROR that names `status`,
/// its `/readyz` answers 503 naming it, and it counts refused sends (its counters start at
/// zero with each start).
fn wait_paused_loudly(pipeline: &Pipeline, status: &str) -> anyhow::Result<()> {
    let mut error_line = None;
    wait_for(
        &format!("the agent to log an ERROR naming {status:?}"),
        REFUSAL_TIMEOUT,
        || {
            error_line = pipeline
                .agent
                .log_since_start()
                .lines()
                .find(|l| l.contains(" ERROR ") && l.contains(status))
                .map(str::to_owned);
            error_line.is_some()
        },
    )?;
    let error_line = error_line.unwrap_or_default();
    assert!(
        error_line.contains("Collector refused the batch") && error_line.contains("paused"),
        "the ERROR says the flow is paused because the collector refused it: {error_line}"
    );
    let mut seen = None;
    wait_for(
        &format!("the agent's /readyz to answer 503 naming {status:?}"),
        REFUSAL_TIMEOUT,
        || {
            seen = agent_readyz(pipeline);
            seen.as_ref()
                .is_some_and(|(code, body)| *code == 503 && body.contains(status))
        },
    )
    .map_err(|e| e.context(format!("last /readyz: {seen:?}")))?;
    let (_, body) = seen.unwrap_or_default();
    assert!(
        body.contains("refuses batches of e2e-booth/") && body.contains("paused"),
        "/readyz names the refused source and says the flow is paused: {body}"
    );
    wait_for("the agent to count refused sends", REFUSAL_TIMEOUT, || {
        pipeline
            .agent_metric("tollstream_agent_ship_retries_total", "reason=\"refused\"")
            .is_some_and(|refused| refused > 0.0)
    })
}

/// Rows in the warehouse now.
fn rows(pipeline: &Pipeline) -> anyhow::Result<i64> {
    pipeline
        .warehouse()?
        .count("SELECT COUNT(*) FROM toll_transactions")
}

/// Restarts the agent with `token` in its token file: it reads the file only at start.
fn restart_agent_with_token(pipeline: &mut Pipeline, token: &str) -> anyhow::Result<()> {
    let status = pipeline.agent.terminate(EXIT_TIMEOUT)?;
    anyhow::ensure!(status.success(), "agent exited with {status}");
    std::fs::write(
        pipeline.dir.path().join("agent.token"),
        format!("{token}\n"),
    )?;
    pipeline.agent.start()
}

#[test]
fn a_refused_token_pauses_the_flow_loudly_and_every_line_arrives_once_it_is_fixed()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_prepared(
        |_| (),
        |dir| {
            std::fs::write(dir.join("agent.token"), format!("{WRONG_TOKEN}\n"))?;
            // On SIGTERM the agent waits the whole `shutdown_grace` (10 s by default) for
            // batches of a paused flow, which cannot be acknowledged in that time: keep the
            // restarts below short.
            let mut config = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("agent.yaml"))?;
            std::io::Write::write_all(&mut config, b"shutdown_grace: 1s\n")?;
            Ok(())
        },
    )?;
    // The collector also knows a token bound to another agent id (reloaded on SIGHUP, as an
    // operator would add it).
    std::fs::write(
        pipeline.dir.path().join("agent-tokens"),
        format!("{TOKEN}\nbooth-other {OTHER_AGENTS_TOKEN}\n"),
    )?;
    let collector_pid = pipeline.collector.pid().context("collector pid")?;
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &collector_pid.to_string()])
        .status()?;
    anyhow::ensure!(hup.success(), "kill -HUP the collector");
    pipeline
        .collector
        .wait_started("Reloaded agent tokens.", REFUSAL_TIMEOUT)?;

    let mut writer = pipeline.writer(3_000, 0)?;
    writer.write_all()?;
    let written = writer.into_summary();

    // An unknown token: 401, the flow pauses, nothing lands.
    wait_paused_loudly(&pipeline, "401 Unauthorized")?;
    // Never dropped: every byte written is still waiting to be acknowledged.
    let file_bytes: u64 = pipeline
        .log_files(3)
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .sum::<Result<_, _>>()?;
    let mut lag = None;
    wait_for(
        "the agent's lag to be every byte written",
        REFUSAL_TIMEOUT,
        || {
            lag = pipeline.agent_metric("tollstream_agent_lag_bytes", "");
            lag == Some(file_bytes as f64)
        },
    )
    .map_err(|e| e.context(format!("{file_bytes} bytes written, last lag: {lag:?}")))?;
    let unauthorized = pipeline
        .collector_metric(
            "tollstream_collector_ingest_errors_total",
            "reason=\"unauthorized\"",
        )
        .context("collector metrics")?;
    assert!(unauthorized >= 1.0, "the collector answered 401");
    assert_eq!(rows(&pipeline)?, 0, "nothing landed with a wrong token");

    // A token bound to another agent id: 403, still paused, still nothing lands.
    restart_agent_with_token(&mut pipeline, OTHER_AGENTS_TOKEN)?;
    wait_paused_loudly(&pipeline, "403 Forbidden")?;
    let forbidden = pipeline
        .collector_metric(
            "tollstream_collector_ingest_errors_total",
            "reason=\"forbidden\"",
        )
        .context("collector metrics")?;
    assert!(forbidden >= 1.0, "the collector answered 403");
    assert_eq!(
        rows(&pipeline)?,
        0,
        "nothing landed with another agent's token"
    );

    // The operator puts the right token in the file. The agent reads it only at start (and
    // would retry a refused flow only every 30 s), so it is restarted, as after any change
    // of its configuration.
    restart_agent_with_token(&mut pipeline, TOKEN)?;
    pipeline.wait_loaded(written.valid_lines, 0)?;
    let mut seen = None;
    wait_for("the agent's /readyz to answer 200", REFUSAL_TIMEOUT, || {
        seen = agent_readyz(&pipeline);
        seen.as_ref().is_some_and(|(code, _)| *code == 200)
    })
    .map_err(|e| e.context(format!("last /readyz: {seen:?}")))?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

#[test]
fn batches_over_the_collectors_record_limit_are_split_and_every_line_arrives_once()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_full(
        |_, collector| {
            collector.extra = "ingest:\n  max_records_per_batch: 100\n".into();
            Ok(())
        },
        Ok,
        |agent| agent.batch_max_records = 1000,
        |_| Ok(()),
    )?;
    let mut writer = pipeline.writer(6_000, 0)?;
    writer.write_all()?;
    let written = writer.into_summary();
    // Fails fast if the agent gives up on a batch as refused instead of splitting it.
    let warehouse = pipeline.warehouse()?;
    wait_for(
        "every line loaded, or a batch refused",
        ARRIVAL_TIMEOUT,
        || {
            let refused = pipeline
                .agent_metric("tollstream_agent_ship_retries_total", "reason=\"refused\"")
                .unwrap_or(0.0);
            let rows = warehouse
                .count("SELECT COUNT(*) FROM toll_transactions")
                .unwrap_or(0);
            refused > 0.0 || rows >= written.valid_lines as i64
        },
    )?;
    let splits = pipeline
        .agent_metric("tollstream_agent_split_batches_total", "")
        .context("agent metrics")?;
    let too_large = pipeline
        .collector_metric(
            "tollstream_collector_ingest_errors_total",
            "reason=\"too_large\"",
        )
        .context("collector metrics")?;
    let refused = pipeline
        .agent_metric("tollstream_agent_ship_retries_total", "reason=\"refused\"")
        .context("agent metrics")?;
    eprintln!("413 split: {splits} splits by the agent, {too_large} 413 answers");
    assert!(
        splits > 0.0,
        "the agent split batches the collector refused"
    );
    assert!(too_large > 0.0, "the collector answered 413");
    assert_eq!(refused, 0.0, "no batch was given up on as refused");
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

/// A stream the collector does not know (404: that flow pauses) fills only its own share of
/// the agent's memory budget: the other stream's lines keep arriving.
#[test]
fn a_refused_stream_does_not_starve_another_of_the_memory_budget() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_with(|agent| {
        agent.agent_extra = "max_buffered_bytes: 2MiB\n";
        // A second flow, last in agent.yaml: files of a stream the collector lacks.
        agent.flow_extra = "  - stream: not-configured\n    paths: [\"unknown/*.log\"]\n";
    })?;
    let unknown = pipeline.dir.path().join("unknown");
    std::fs::create_dir(&unknown)?;
    // 8 files of ~1 MB each: more than the whole budget, all refused.
    let line = "2026-11-25T14:03:27.512-03:00,not,for,this,collector\n";
    for i in 0..8 {
        std::fs::write(unknown.join(format!("u{i}.log")), line.repeat(20_000))?;
    }
    let refused = || {
        pipeline
            .agent_metric("tollstream_agent_ship_retries_total", "reason=\"refused\"")
            .unwrap_or(0.0)
    };
    wait_for(
        "the unknown stream's flow to pause",
        ARRIVAL_TIMEOUT,
        || refused() > 0.0,
    )?;
    let mut writer = pipeline.writer(20_000, 0)?;
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline
        .wait_loaded(written.valid_lines, 0)
        .context("the known stream's lines arrive while the other stream is paused")?;
    let buffered = pipeline
        .agent_metric("tollstream_agent_buffered_bytes", "")
        .context("agent metrics")?;
    assert!(
        buffered <= f64::from(2u32 << 20),
        "buffered {buffered} bytes, budget 2 MiB"
    );
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    Ok(())
}
