//! Delivery through collector faults. A fault-injecting proxy ([`ChaosProxy`]) sits between
//! the agent and the real collector: it answers 429 and 503, drops requests, loses answers
//! to requests the collector made durable, stalls requests past the agent's timeout and
//! then delivers them late, and goes down altogether. Every line must still arrive exactly
//! once, and while the collector is unreachable the agent's memory must stay bounded (the
//! log files are the buffer). The agent waits as long as a `Retry-After` asks, within
//! bounds: not a hot loop on `0`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tollstream_tests::chaos::{ChaosProxy, FaultConfig, FaultCounts, SeenRequest};
use tollstream_tests::harness::AgentSetup;
use tollstream_tests::sim::{Mode, Pacing, SimConfig, Simulator, Summary};

use crate::fixture::{Pipeline, mib};

/// The seed of the proxy's fault draws: `TOLLSTREAM_CHAOS_SEED` to replay a run, else random.
fn chaos_seed() -> anyhow::Result<u64> {
    match std::env::var("TOLLSTREAM_CHAOS_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("TOLLSTREAM_CHAOS_SEED={text:?} is not a u64")),
        Err(_) => Ok(fastrand::u64(..)),
    }
}

/// Collector, proxy in front of it, and an agent sending to the proxy.
fn behind_proxy(
    faults: FaultConfig,
    seed: u64,
    adjust: impl FnOnce(&mut AgentSetup),
) -> anyhow::Result<(Pipeline, ChaosProxy)> {
    let mut proxy = None;
    let pipeline = Pipeline::start_routed(
        |collector_port| {
            let started = ChaosProxy::start(([127, 0, 0, 1], collector_port).into(), faults, seed)?;
            let port = started.port();
            proxy = Some(started);
            Ok(port)
        },
        adjust,
        |_| Ok(()),
    )?;
    Ok((pipeline, proxy.context("the proxy was not started")?))
}

/// At least this many lines are written under faults…
const FAULT_MIN_LINES: u64 = 50_000;
/// …and more, up to this many, until every fault kind was injected often enough.
const FAULT_MAX_LINES: u64 = 150_000;
const EACH_FAULT_AT_LEAST: u64 = 3;

#[test]
fn every_line_arrives_exactly_once_through_injected_collector_faults() -> anyhow::Result<()> {
    let seed = chaos_seed()?;
    eprintln!(
        "faults: chaos seed {seed} (TOLLSTREAM_CHAOS_SEED={seed} replays the same fault draws)"
    );
    // Each kind on 6 % of requests; a stall holds a request for 3 s, past the agent's 2 s
    // request timeout, and then delivers it anyway.
    let faults = FaultConfig::each(0.06, Duration::from_secs(3));
    let (mut pipeline, proxy) = behind_proxy(faults, seed, |setup| {
        setup.request_timeout = Some("2s");
        // Smaller batches: more requests, so more faults per line written.
        setup.batch_max_records = 1000;
    })?;
    let started = Instant::now();
    let mut writer = pipeline.writer_with(
        FAULT_MAX_LINES,
        0,
        3,
        Pacing::Rate {
            lines_per_sec: 5000.0,
        },
    )?;
    loop {
        writer.write(2_500)?;
        let counts = proxy.counts();
        let every_kind = FaultCounts::KINDS
            .iter()
            .all(|&kind| counts.of(kind) >= EACH_FAULT_AT_LEAST);
        if (writer.summary().total_lines >= FAULT_MIN_LINES && every_kind) || writer.is_finished() {
            break;
        }
    }
    proxy.set_faults(FaultConfig::none())?;
    let counts = proxy.counts();
    let written = writer.into_summary();
    eprintln!(
        "faults: {} lines written in {:.1} s under faults; proxy counts: {counts:?}",
        written.total_lines,
        started.elapsed().as_secs_f64()
    );
    for kind in FaultCounts::KINDS {
        assert!(
            counts.of(kind) >= EACH_FAULT_AT_LEAST,
            "the proxy injected {kind:?} only {} times while {} lines were written (seed {seed}): {counts:?}",
            counts.of(kind),
            written.total_lines
        );
    }
    let faults_off = Instant::now();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    eprintln!(
        "faults: everything loaded {:.1} s after faults were switched off",
        faults_off.elapsed().as_secs_f64()
    );
    let ingest_duplicates = pipeline
        .collector_metric(
            "tollstream_collector_duplicate_records_total",
            "stage=\"ingest\"",
        )
        .context("reading the collector's /metrics")?;
    let retries = pipeline
        .agent_metric("tollstream_agent_ship_retries_total", "")
        .context("reading the agent's /metrics")?;
    eprintln!(
        "faults: agent retries {retries}; lines the collector recognised as resent and did not write again: {ingest_duplicates}"
    );
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    // A lost answer means the collector has the batch and the agent sends it again: the
    // collector must have recognised those resent lines (else the faults tested nothing).
    assert!(
        ingest_duplicates > 0.0,
        "{} answers were lost, yet the collector saw no resent lines",
        counts.lost_answers
    );
    Ok(())
}

/// How long the collector is unreachable.
const OUTAGE: Duration = Duration::from_secs(25);
/// Lines written during the outage, at least.
const OUTAGE_LINES: u64 = 300_000;
/// Lines written (and loaded) before the outage.
const BEFORE_LINES: u64 = 20_000;
/// The agent's resident memory must stay below this while the collector is unreachable.
const OUTAGE_RSS_LIMIT: u64 = 100 << 20;

#[test]
fn while_the_collector_is_unreachable_the_agent_stays_small_then_catches_up_exactly_once()
-> anyhow::Result<()> {
    let (mut pipeline, proxy) = behind_proxy(FaultConfig::none(), 0, |setup| {
        setup.request_timeout = Some("5s");
    })?;
    let pid = pipeline.agent.pid().context("agent pid")?;
    // 12,000 lines/s: the outage's 300,000 lines take its 25 s.
    let mut writer = pipeline.writer_with(
        BEFORE_LINES + 2 * OUTAGE_LINES,
        0,
        3,
        Pacing::Rate {
            lines_per_sec: 12_000.0,
        },
    )?;
    writer.write(BEFORE_LINES)?;
    pipeline.wait_loaded(BEFORE_LINES, 0)?;
    let rss_before = pipeline.agent.usage().context("agent usage")?.rss_bytes;
    let network_retries_before = pipeline
        .agent_metric("tollstream_agent_ship_retries_total", "reason=\"network\"")
        .context("agent metrics")?;

    proxy.set_down(true)?;
    let down_at = Instant::now();
    let mut peak_rss = 0u64;
    let mut samples = 0u32;
    // Write in 0.5 s steps, sampling the agent's RSS after each, for the whole outage.
    while down_at.elapsed() < OUTAGE || writer.summary().total_lines < BEFORE_LINES + OUTAGE_LINES {
        writer.write(6_000)?;
        let usage = tollstream_tests::harness::Usage::of(pid)
            .with_context(|| format!("the agent (pid {pid}) is gone during the outage"))?;
        peak_rss = peak_rss.max(usage.rss_bytes);
        samples += 1;
        anyhow::ensure!(!writer.is_finished(), "the writer ran out of lines");
    }
    let outage_lines = writer.summary().total_lines - BEFORE_LINES;
    let loaded_during = pipeline
        .warehouse()?
        .count("SELECT COUNT(*) FROM toll_transactions")?;
    let network_retries = pipeline
        .agent_metric("tollstream_agent_ship_retries_total", "reason=\"network\"")
        .context("agent metrics")?
        - network_retries_before;
    let written = writer.into_summary();
    eprintln!(
        "outage: collector unreachable for {:.1} s while {outage_lines} lines were written; \
         agent RSS {:.1} MiB before, peak {:.1} MiB over {samples} samples during the outage; \
         {network_retries} network retries",
        down_at.elapsed().as_secs_f64(),
        mib(rss_before),
        mib(peak_rss),
    );
    // Nothing got through while the proxy was down.
    assert_eq!(
        loaded_during, BEFORE_LINES as i64,
        "rows loaded by the end of the outage vs lines written before it"
    );
    assert!(
        network_retries > 0.0,
        "the agent noticed the collector was unreachable"
    );

    let cpu = |p: &Pipeline| -> anyhow::Result<(f64, f64)> {
        let agent = p.agent.usage().context("agent usage")?;
        let collector = p.collector.usage().context("collector usage")?;
        Ok((agent.cpu_seconds, collector.cpu_seconds))
    };
    let cpu_before = cpu(&pipeline)?;
    proxy.set_down(false)?;
    let up_at = Instant::now();
    // The agent's retry backoff (up to 10 s, jittered) decides when the first batch lands.
    pipeline.wait_rows_at_least(BEFORE_LINES + 1)?;
    let first_rows = up_at.elapsed();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    let catch_up = up_at.elapsed();
    let cpu_after = cpu(&pipeline)?;
    eprintln!(
        "outage: caught up on {outage_lines} lines in {:.1} s after the collector became reachable \
         (first new rows after {:.1} s; {:.0} lines/s; CPU meanwhile: agent {:.1} s, collector {:.1} s)",
        catch_up.as_secs_f64(),
        first_rows.as_secs_f64(),
        outage_lines as f64 / catch_up.as_secs_f64(),
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
    );
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    assert!(
        peak_rss < OUTAGE_RSS_LIMIT,
        "the agent's RSS peaked at {:.1} MiB while the collector was unreachable (limit {} MiB)",
        mib(peak_rss),
        OUTAGE_RSS_LIMIT >> 20
    );
    Ok(())
}

/// Files with a backlog while the collector is away…
const BACKLOG_FILES: usize = 200;
/// …holding this many lines in all (1,000 a file, ~21 MB)…
const BACKLOG_LINES: usize = 200_000;
/// …ten times the agent's memory budget in this test.
const BACKLOG_BUDGET: u64 = 2 << 20;
/// The agent's RSS must stay below this meanwhile (without the budget it reads the whole
/// backlog in: ~21 MB of lines plus their gzip bodies).
const BACKLOG_RSS_LIMIT: u64 = 40 << 20;

#[test]
fn a_backlog_over_many_files_stays_within_the_memory_budget_and_shows_as_lag() -> anyhow::Result<()>
{
    let (mut pipeline, proxy) = behind_proxy(FaultConfig::none(), 0, |setup| {
        setup.request_timeout = Some("5s");
        setup.agent_extra = "max_buffered_bytes: 2MiB\n";
    })?;
    let pid = pipeline.agent.pid().context("agent pid")?;
    proxy.set_down(true)?;
    let paths = pipeline.log_files(BACKLOG_FILES);
    let mut sim = Simulator::new(
        &SimConfig::default(),
        Mode::Count {
            lines: BACKLOG_LINES as u64,
        },
    )?;
    let mut written = Summary::default();
    let mut files: Vec<Vec<u8>> = vec![Vec::new(); BACKLOG_FILES];
    let mut line = Vec::with_capacity(128);
    for i in 0..BACKLOG_LINES {
        line.clear();
        let meta = sim
            .next_into(&mut line)
            .context("the simulator ran out of lines")?;
        written.add_meta(sim.booth_ids(), &meta);
        files[i % BACKLOG_FILES].extend_from_slice(&line);
    }
    let mut peak_rss = 0u64;
    let sample = |peak: &mut u64| -> anyhow::Result<()> {
        let usage = tollstream_tests::harness::Usage::of(pid)
            .with_context(|| format!("the agent (pid {pid}) is gone during the outage"))?;
        *peak = (*peak).max(usage.rss_bytes);
        Ok(())
    };
    // One file at a time, in two halves, sampling the agent's RSS as it goes.
    for half in 0..2 {
        for (path, lines) in paths.iter().zip(&files) {
            let cut = lines.len() / 2;
            let cut = cut
                + lines[cut..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
            let part = if half == 0 {
                &lines[..cut]
            } else {
                &lines[cut..]
            };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            file.write_all(part)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        sample(&mut peak_rss)?;
    }
    let backlog: u64 = files.iter().map(|f| f.len() as u64).sum();
    // The lag gauge follows the files although the agent reads no further than its budget.
    let mut lag = 0.0;
    tollstream_tests::harness::wait_for(
        "the agent's lag gauge to cover the whole backlog",
        Duration::from_secs(30),
        || {
            let _ = sample(&mut peak_rss);
            lag = pipeline
                .agent_metric("tollstream_agent_lag_bytes", "")
                .unwrap_or(0.0);
            lag as u64 == backlog
        },
    )
    .with_context(|| format!("lag gauge {lag}, backlog {backlog} bytes"))?;
    let buffered = pipeline
        .agent_metric("tollstream_agent_buffered_bytes", "")
        .context("agent metrics")?;
    sample(&mut peak_rss)?;
    eprintln!(
        "backlog: {BACKLOG_FILES} files, {:.1} MiB written while the collector was away; agent \
         buffered {:.1} MiB (budget {} MiB), peak RSS {:.1} MiB",
        mib(backlog),
        mib(buffered as u64),
        BACKLOG_BUDGET >> 20,
        mib(peak_rss),
    );
    assert!(
        buffered > 0.0 && buffered as u64 <= BACKLOG_BUDGET,
        "buffered {buffered} bytes, budget {BACKLOG_BUDGET}"
    );
    assert_eq!(
        pipeline
            .warehouse()?
            .count("SELECT COUNT(*) FROM toll_transactions")?,
        0,
        "nothing got through while the proxy was down"
    );
    proxy.set_down(false)?;
    let up_at = Instant::now();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    eprintln!(
        "backlog: caught up on {BACKLOG_LINES} lines in {:.1} s",
        up_at.elapsed().as_secs_f64()
    );
    tollstream_tests::harness::wait_for(
        "the lag gauge to return to 0",
        Duration::from_secs(30),
        || pipeline.agent_metric("tollstream_agent_lag_bytes", "") == Some(0.0),
    )?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    assert!(
        peak_rss < BACKLOG_RSS_LIMIT,
        "the agent's RSS peaked at {:.1} MiB with a {} MiB budget (limit {} MiB)",
        mib(peak_rss),
        BACKLOG_BUDGET >> 20,
        BACKLOG_RSS_LIMIT >> 20
    );
    Ok(())
}

/// For each request the proxy refused itself, how long the agent waited before sending the
/// same batch (same source and range) again; `None` if it never did.
fn resend_gaps(requests: &[SeenRequest]) -> Vec<Option<Duration>> {
    requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.refused_with.is_some())
        .map(|(i, refused)| {
            requests[i + 1..]
                .iter()
                .find(|r| r.source == refused.source && r.range == refused.range)
                .map(|again| again.at.duration_since(refused.at))
        })
        .collect()
}

#[test]
fn retry_after_is_honoured_and_a_retry_after_of_zero_is_no_hot_loop() -> anyhow::Result<()> {
    let (mut pipeline, proxy) = behind_proxy(FaultConfig::none(), 0, |_| ())?;
    let mut writer = pipeline.writer_with(3_000, 0, 1, Pacing::AsFastAsPossible)?;

    // A 503 asking for 2 s: the batch is not sent again sooner, nor much later.
    proxy.refuse_next(1, "503 Service Unavailable", Some("2"));
    writer.write(1_000)?;
    pipeline.wait_loaded(1_000, 0)?;
    let gaps = resend_gaps(&proxy.requests());
    eprintln!("Retry-After: 2 → resent after {gaps:?}");
    assert_eq!(gaps.len(), 1, "one request refused");
    let gap = gaps[0].context("the refused batch was sent again")?;
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(10)).contains(&gap),
        "after a 503 with Retry-After: 2 the batch was sent again after {gap:?}"
    );

    // Retry-After: 0, five times in a row: resent after a short pause each time, not in a
    // hot loop.
    let from = proxy.requests().len();
    proxy.refuse_next(5, "503 Service Unavailable", Some("0"));
    writer.write(1_000)?;
    pipeline.wait_loaded(2_000, 0)?;
    let gaps = resend_gaps(&proxy.requests()[from..]);
    eprintln!("Retry-After: 0 → resent after {gaps:?}");
    assert_eq!(gaps.len(), 5, "five requests refused");
    for gap in gaps {
        let gap = gap.context("each refused batch was sent again")?;
        assert!(
            (Duration::from_millis(100)..Duration::from_secs(10)).contains(&gap),
            "after a 503 with Retry-After: 0 the batch was sent again after {gap:?}"
        );
    }

    // An HTTP date (here long past) instead of seconds: retried with the agent's own
    // backoff, soon.
    let from = proxy.requests().len();
    proxy.refuse_next(
        1,
        "429 Too Many Requests",
        Some("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    let gaps = resend_gaps(&proxy.requests()[from..]);
    eprintln!("Retry-After: <date> → resent after {gaps:?}");
    assert!(
        gaps.len() == 1 && gaps[0].is_some_and(|gap| gap < Duration::from_secs(10)),
        "after a 429 with a date in Retry-After the batch was sent again soon: {gaps:?}"
    );
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}
