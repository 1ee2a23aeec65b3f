//! The walking skeleton's exactly-once promise with a PostgreSQL warehouse: a real server
//! (a throwaway cluster, or a database on `TOLLSTREAM_TEST_PG_URL`), loaded by COPY.

use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use tollstream_tests::harness::{binary, http_get, wait_for};
use tollstream_tests::postgres::TestPostgres;

use crate::fixture::{ARRIVAL_TIMEOUT, EXIT_TIMEOUT, Pipeline, WAREHOUSE_CA, archive_lines};

const LINES: u64 = 200_000;

#[test]
fn every_line_written_across_three_files_lands_exactly_once_in_postgres() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_postgres(TestPostgres::start()?)?;
    let mut writer = pipeline.writer(LINES, 0)?;
    while !writer.is_finished() {
        writer.write(10_000)?;
    }
    let written = writer.into_summary();
    assert_eq!(written.total_lines, LINES);
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    // Every manifest row's counts add up to the table, and `status` reads them there.
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT SUM(inserted) FROM loads")?,
        written.valid_lines as i64
    );
    let status = Command::new(binary("tollstream-collector")?)
        .args(["status", "--json", "--config"])
        .arg(pipeline.dir.path().join("collector.yaml"))
        .output()?;
    anyhow::ensure!(status.status.success(), "status: {status:?}");
    let report: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let stream = &report["streams"][0];
    assert_eq!(stream["warehouse"]["rows"], written.valid_lines);
    assert_eq!(stream["archive"]["not_loaded"], 0);
    assert_eq!(stream["problems"].as_array().map(Vec::len), Some(0));
    let shown = report["warehouse"].as_str().unwrap_or_default();
    assert!(shown.starts_with("postgres://"), "{report}");
    // The password (in warehouse.password_file here) never shows.
    if let (_, Some(password)) = pipeline.postgres().url_and_password() {
        let log = std::fs::read_to_string(pipeline.dir.path().join("collector.log"))?;
        assert!(
            !log.contains(&password),
            "the collector log shows the password"
        );
        assert!(!String::from_utf8_lossy(&status.stdout).contains(&password));
    }
    Ok(())
}

/// The collector's `/readyz`: its status code and body.
fn readyz(pipeline: &Pipeline) -> Option<(u16, String)> {
    http_get(
        ([127, 0, 0, 1], pipeline.collector_metrics_port).into(),
        "/readyz",
    )
}

/// Waits until `/readyz` says 503 with the warehouse problem and `warehouse_up` is 0; the
/// problem never shows the password.
fn wait_warehouse_down(pipeline: &mut Pipeline) -> anyhow::Result<()> {
    let mut seen = None;
    wait_for(
        "/readyz to report the warehouse down, and warehouse_up 0",
        ARRIVAL_TIMEOUT,
        || {
            seen = readyz(pipeline);
            seen.as_ref().is_some_and(|(status, body)| {
                *status == 503
                    && body.contains("warehouse unavailable since")
                    && body.contains("ingest still accepts batches")
            }) && pipeline.collector_metric("tollstream_collector_warehouse_up", "") == Some(0.0)
        },
    )
    .map_err(|e| e.context(format!("last /readyz: {seen:?}")))?;
    let (_, body) = seen.unwrap_or_default();
    let problem: serde_json::Value = serde_json::from_str(&body)?;
    assert!(
        problem["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("failed attempt") && p.contains("last error: warehouse")),
        "{problem}"
    );
    if let (_, Some(password)) = pipeline.postgres().url_and_password() {
        assert!(!body.contains(&password), "/readyz shows the password");
    }
    Ok(())
}

/// Waits until `/readyz` says 200 and `warehouse_up` is 1, with a freshness gauge.
fn wait_warehouse_up(pipeline: &Pipeline) -> anyhow::Result<()> {
    let mut seen = None;
    wait_for(
        "/readyz to be ready again, and warehouse_up 1",
        ARRIVAL_TIMEOUT,
        || {
            seen = readyz(pipeline);
            seen.as_ref().is_some_and(|(status, _)| *status == 200)
                && pipeline.collector_metric("tollstream_collector_warehouse_up", "") == Some(1.0)
        },
    )
    .map_err(|e| e.context(format!("last /readyz: {seen:?}")))?;
    let freshness = pipeline
        .collector_metric("tollstream_collector_warehouse_freshness_seconds", "")
        .unwrap_or(-1.0);
    assert!(
        (0.0..600.0).contains(&freshness),
        "a freshness gauge once something is loaded, got {freshness}"
    );
    Ok(())
}

/// The collector starts while PostgreSQL is down and accepts everything (it waits in the
/// archive); the server comes up, goes down again mid-stream (a load fails), comes back:
/// every line lands exactly once. Meanwhile `/readyz` and `warehouse_up` say when the
/// warehouse is down, and recover once a load succeeds.
#[test]
fn postgres_down_at_start_and_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut postgres = TestPostgres::start_cluster()?;
    postgres.stop()?;
    let mut pipeline = Pipeline::start_postgres(postgres)?;
    let mut writer = pipeline.writer(LINES, 0)?;
    writer.write(60_000)?;
    let archive = pipeline.data_dir.join("archive");
    wait_for(
        "the lines written while PostgreSQL is down to reach the archive",
        ARRIVAL_TIMEOUT,
        || archive_lines(&archive).is_ok_and(|n| n >= 60_000),
    )?;
    let failed_loads = |p: &Pipeline| {
        p.collector_metric("tollstream_collector_load_errors_total", "")
            .unwrap_or(0.0)
    };
    assert!(
        failed_loads(&pipeline) >= 1.0,
        "the loader reports that it cannot load"
    );
    assert_eq!(
        pipeline.collector_metric("tollstream_collector_loads_total", ""),
        Some(0.0),
        "nothing loaded yet"
    );
    wait_warehouse_down(&mut pipeline)?;
    // Ingest is not refused meanwhile: the agent's lines keep arriving (checked above).
    // Stopped now, the collector gives up on the failing warehouse at once instead of
    // retrying through its shutdown grace period; the objects wait in the archive.
    let stopped = pipeline.collector.terminate(EXIT_TIMEOUT)?;
    anyhow::ensure!(stopped.success(), "collector exited with {stopped}");
    let log = pipeline.collector.log_since_start();
    anyhow::ensure!(
        log.contains("Stopping while the warehouse fails")
            && !log.contains("Shutdown exceeded the grace period"),
        "the loader should stop at once: {log}"
    );
    pipeline.collector.start()?;
    pipeline.wait_collector_ready()?;
    pipeline.postgres().restart()?;
    pipeline.wait_rows_at_least(60_000)?;
    wait_warehouse_up(&pipeline)?;
    // Down again while the agent keeps shipping: loads fail and are retried.
    writer.write(70_000)?;
    pipeline.wait_rows_at_least(70_000)?;
    let failed_before = failed_loads(&pipeline);
    pipeline.postgres().stop()?;
    writer.write_all()?;
    wait_for(
        "a load to fail while PostgreSQL is down",
        ARRIVAL_TIMEOUT,
        || failed_loads(&pipeline) > failed_before,
    )?;
    wait_warehouse_down(&mut pipeline)?;
    pipeline.postgres().restart()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    wait_warehouse_up(&pipeline)?;
    wait_for("an empty backlog", ARRIVAL_TIMEOUT, || {
        pipeline.collector_metric("tollstream_collector_warehouse_backlog_objects", "") == Some(0.0)
    })?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

/// The collector SIGKILLs itself in the middle of a PostgreSQL load — after the rows, the
/// manifest row and the errors object are written but before `COMMIT`, and again just after
/// `COMMIT` before the loader hears of it — and is started again each time: every line once.
#[test]
fn collector_killed_just_before_and_just_after_a_postgres_commit_loses_and_duplicates_nothing()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_postgres(TestPostgres::start()?)?;
    let mut writer = pipeline.writer(LINES, 0)?;
    writer.write(20_000)?;
    pipeline.wait_rows_at_least(10_000)?;
    for point in ["load-uncommitted:2", "load-committed:2"] {
        pipeline.collector.kill()?;
        pipeline
            .collector
            .start_with_env(&[("TOLLSTREAM_CRASH_AT", point)])?;
        // Lines keep coming (2,000 every half second, so the run's lines last for both
        // points) until the collector has killed itself at its second load. On a busy
        // machine cutting and loading an object takes seconds: the deadline is generous.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last_write: Option<Instant> = None;
        while pipeline.collector.is_running() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the collector never reached {point} within 120 s"
            );
            if !writer.is_finished()
                && last_write.is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
            {
                writer.write(2_000)?;
                last_write = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50)); // Polls the process, with the deadline above.
        }
        let status = pipeline.collector.try_exit();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{point}: the collector died by its crash point, got {status:?}"
        );
        pipeline.collector.start()?;
        pipeline.wait_collector_ready()?;
    }
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    assert_eq!(pipeline.collector.starts(), 5);
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

/// `tollstream-collector status --json` of the pipeline's collector.
fn status_json(pipeline: &Pipeline) -> anyhow::Result<serde_json::Value> {
    let status = Command::new(binary("tollstream-collector")?)
        .args(["status", "--json", "--config"])
        .arg(pipeline.dir.path().join("collector.yaml"))
        .output()?;
    anyhow::ensure!(status.status.success(), "status: {status:?}");
    Ok(serde_json::from_slice(&status.stdout)?)
}

/// Issue 5: the collector loads into a PostgreSQL server over verified TLS
/// (`sslmode=require`, `warehouse.ca_file`, the password from `warehouse.password_file`):
/// every line exactly once, the server sees the loader's session encrypted, and `status`
/// and `reload --warehouse … --warehouse-ca-file` read the manifest over TLS too — with a
/// CA that did not sign the server's certificate, `status` reports why it cannot.
#[test]
fn lines_load_exactly_once_into_postgres_over_verified_tls() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_postgres(TestPostgres::start_tls_cluster()?)?;
    let config = std::fs::read_to_string(pipeline.dir.path().join("collector.yaml"))?;
    assert!(
        config.contains("sslmode=require") && config.contains("ca_file"),
        "{config}"
    );
    let mut writer = pipeline.writer(3_000, 0)?;
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    let warehouse = pipeline.warehouse()?;
    let encrypted = warehouse.count(
        "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'tollstream-collector' AND s.ssl",
    )?;
    assert!(encrypted >= 1, "the loader's session is encrypted");
    let plain = warehouse.count(
        "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'tollstream-collector' AND NOT s.ssl",
    )?;
    assert_eq!(plain, 0, "no plain session of the collector");

    let report = status_json(&pipeline)?;
    let stream = &report["streams"][0];
    assert_eq!(stream["warehouse"]["rows"], written.valid_lines, "{report}");
    assert_eq!(
        stream["problems"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );

    // reload into the same server named on the command line: everything is loaded already.
    let (url, password) = pipeline.postgres().url_and_password();
    let dir = pipeline.dir.path().to_path_buf();
    let mut reload = Command::new(binary("tollstream-collector")?);
    reload
        .arg("reload")
        .arg("--config")
        .arg(dir.join("collector.yaml"))
        .args(["--warehouse", &format!("{url}?sslmode=require")])
        .arg("--warehouse-ca-file")
        .arg(dir.join(WAREHOUSE_CA))
        .env("TOLLSTREAM_LOG", "warn");
    if password.is_some() {
        reload
            .arg("--warehouse-password-file")
            .arg(dir.join("warehouse.password"));
    }
    let output = reload.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "reload: {output:?}");
    assert!(stdout.contains(" 0 loaded now"), "{stdout}");

    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;

    // The wrong CA: status cannot read the manifest, and says why.
    std::fs::write(
        dir.join(WAREHOUSE_CA),
        tollstream_tests::postgres::unrelated_ca_pem()?,
    )?;
    let report = status_json(&pipeline)?;
    let problems = report["streams"][0]["problems"].to_string();
    assert!(
        problems.contains("invalid peer certificate: UnknownIssuer"),
        "{report}"
    );
    Ok(())
}
