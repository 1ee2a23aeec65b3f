//! `tollstream-collector reload`: the archive of a live run, loaded again into empty
//! databases (SQLite and PostgreSQL), gives the same rows as the live load; a window loads
//! exactly its objects; a second run changes nothing; and a reload into the warehouse the
//! collector is loading into at that moment duplicates nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jiff::Timestamp;
use tollstream_tests::harness::{WarehouseView, binary};
use tollstream_tests::postgres::TestPostgres;

use crate::fixture::Pipeline;

/// Lines per step; each step is loaded before the next is written, so every step is at least
/// one archive object of its own.
const STEP: u64 = 4_000;
const STEPS: u64 = 6;
const MALFORMED: usize = 60;

/// Runs `tollstream-collector reload --config <the pipeline's config> <args>`.
fn reload(pipeline: &Pipeline, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(binary("tollstream-collector")?)
        .arg("reload")
        .arg("--config")
        .arg(pipeline.dir.path().join("collector.yaml"))
        .args(args)
        .env("TOLLSTREAM_LOG", "warn")
        .output()?;
    Ok(output)
}

/// `reload …` that must succeed; returns its report.
fn reload_ok(pipeline: &Pipeline, args: &[&str]) -> anyhow::Result<String> {
    let output = reload(pipeline, args)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "reload {args:?} exited with {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// The number on a report line `  objects    N in the window: L loaded now, A already …`.
fn objects_line(report: &str) -> anyhow::Result<(u64, u64, u64)> {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with("objects"))
        .ok_or_else(|| anyhow::anyhow!("no objects line in:\n{report}"))?;
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [found, loaded, already, _unreadable] => Ok((*found, *loaded, *already)),
        _ => anyhow::bail!("unexpected objects line {line:?}"),
    }
}

/// Rows of the stream table (every column but `load_id`, plus the object that loaded the
/// row) and of `rejected_records` (every column but the ids), as text, sorted: the same SQL
/// on SQLite and PostgreSQL but for how times and bytes are written out.
fn contents(view: &WarehouseView, postgres: bool) -> anyhow::Result<Vec<(String, String)>> {
    let time = |column: &str| {
        if postgres {
            format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
        } else {
            column.to_owned()
        }
    };
    let hex = if postgres {
        "encode(r.line, 'hex')"
    } else {
        "lower(hex(r.line))"
    };
    let mut rows = view.pairs(&format!(
        "SELECT CAST(t.transaction_id AS TEXT), {} || '|' || t.booth_id || '|' || \
         CAST(t.lane AS TEXT) || '|' || t.customer_id || '|' || t.transponder_id || '|' || \
         CAST(t.vehicle_class AS TEXT) || '|' || CAST(t.amount_cents AS TEXT) || '|' || \
         t.source || '|' || {} || '|' || l.object \
         FROM toll_transactions t JOIN loads l ON l.load_id = t.load_id",
        time("t.event_time"),
        time("t.received_at"),
    ))?;
    let rejected = view.pairs(&format!(
        "SELECT 'rejected ' || r.source || '|' || COALESCE(CAST(r.source_offset AS TEXT), 'null'), \
         r.stream || '|' || {} || '|' || r.reason || '|' || {hex} || '|' || l.object \
         FROM rejected_records r JOIN loads l ON l.load_id = r.load_id",
        time("r.received_at"),
    ))?;
    rows.extend(rejected);
    rows.sort();
    Ok(rows)
}

/// The archive objects of the stream, in sequence order, with the receive time of their
/// first record (from the index in the gzip header), named relative to the archive root.
fn objects(archive: &Path) -> anyhow::Result<Vec<(String, i64)>> {
    let mut found = Vec::new();
    let mut stack = vec![archive.join("toll-transactions")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "gz") {
                found.push(path);
            }
        }
    }
    found.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    found
        .into_iter()
        .map(|path| {
            let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(&path)?);
            // The header is parsed before the first byte of the body comes out.
            let _first_byte = gz.read(&mut [0u8; 1])?;
            let comment = gz
                .header()
                .and_then(|h| h.comment())
                .ok_or_else(|| anyhow::anyhow!("{} has no index", path.display()))?;
            let index: serde_json::Value = serde_json::from_slice(comment)?;
            let first = index[0]["received_at_us"]
                .as_i64()
                .ok_or_else(|| anyhow::anyhow!("{}: no receive time", path.display()))?;
            let name = path.strip_prefix(archive)?.to_string_lossy().into_owned();
            Ok((name, first))
        })
        .collect()
}

fn rfc3339(us: i64) -> anyhow::Result<String> {
    Ok(Timestamp::from_microsecond(us)?.to_string())
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[test]
fn reload_into_empty_sqlite_and_postgres_gives_the_live_rows_and_a_window_its_objects()
-> anyhow::Result<()> {
    let postgres = TestPostgres::start()?;
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(STEP * STEPS, MALFORMED)?;
    for _ in 0..STEPS {
        writer.write(STEP)?;
        // Loaded before the next step is written: distinct objects, received apart.
        pipeline.wait_rows_at_least(writer.summary().valid_lines)?;
    }
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, written.malformed_lines)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    let live = contents(&pipeline.warehouse()?, false)?;
    assert_eq!(
        live.len() as u64,
        written.valid_lines + written.malformed_lines
    );
    let archive = pipeline.data_dir.join("archive");
    let errors_before = errors_tree(&archive)?;
    assert!(
        !errors_before.is_empty(),
        "the bad lines have errors objects"
    );
    let objects = objects(&archive)?;
    assert!(objects.len() >= 3, "{objects:?}");

    // Into an empty SQLite database: the same rows; the errors objects rewritten alike.
    let rebuilt = pipeline.dir.path().join("rebuilt.db");
    let report = reload_ok(&pipeline, &["--warehouse", &sqlite_url(&rebuilt)])?;
    let n = objects.len() as u64;
    assert_eq!(objects_line(&report)?, (n, n, 0), "{report}");
    assert!(report.contains(&format!(
        "{} inserted, 0 duplicate keys, {} rejected",
        written.valid_lines, written.malformed_lines
    )));
    assert_eq!(contents(&WarehouseView::open(&rebuilt)?, false)?, live);
    assert_eq!(
        errors_tree(&archive)?,
        errors_before,
        "same names, same bytes"
    );

    // Again: nothing to do, nothing changes.
    let report = reload_ok(&pipeline, &["--warehouse", &sqlite_url(&rebuilt)])?;
    assert_eq!(objects_line(&report)?, (n, 0, n), "{report}");
    assert_eq!(contents(&WarehouseView::open(&rebuilt)?, false)?, live);
    let manifest = WarehouseView::open(&rebuilt)?.count("SELECT COUNT(*) FROM loads")?;
    assert_eq!(manifest, n as i64);

    // Into an empty PostgreSQL database, the password in a file.
    let (url, password) = postgres.url_and_password();
    let mut args = vec!["--warehouse".to_owned(), url];
    if let Some(password) = &password {
        let file = pipeline.dir.path().join("rebuild.password");
        std::fs::write(&file, format!("{password}\n"))?;
        args.extend(["--warehouse-password-file".into(), path_arg(&file)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = reload_ok(&pipeline, &args)?;
    assert_eq!(objects_line(&report)?, (n, n, 0), "{report}");
    if let Some(password) = &password {
        assert!(!report.contains(password.as_str()), "{report}");
    }
    let pg = WarehouseView::postgres(postgres.url())?;
    assert_eq!(contents(&pg, true)?, live);
    let report = reload_ok(&pipeline, &args)?;
    assert_eq!(objects_line(&report)?, (n, 0, n), "{report}");
    assert_eq!(contents(&pg, true)?, live);
    assert_eq!(errors_tree(&archive)?, errors_before);

    // A window from the second object's first record up to (not including) the last one's:
    // exactly the objects between.
    let (since, until) = (objects[1].1, objects[objects.len() - 1].1);
    let expected: Vec<&str> = objects
        .iter()
        .filter(|(_, first)| (since..until).contains(first))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(!expected.is_empty() && expected.len() < objects.len());
    let older = objects.iter().filter(|(_, first)| *first < since).count();
    let windowed = pipeline.dir.path().join("window.db");
    let window_args = [
        "--warehouse",
        &sqlite_url(&windowed),
        "--since",
        &rfc3339(since)?,
        "--until",
        &rfc3339(until)?,
    ];
    let dry = reload_ok(&pipeline, &[&window_args[..], &["--dry-run"]].concat())?;
    assert_eq!(dry.matches("would load").count(), expected.len(), "{dry}");
    assert!(!windowed.exists(), "a dry run creates nothing");
    let report = reload_ok(&pipeline, &window_args)?;
    let e = expected.len() as u64;
    assert_eq!(objects_line(&report)?, (e, e, 0), "{report}");
    // The objects before the window are older than the newest loaded and missing: named
    // as gaps a collector would not fill.
    assert!(
        report.contains(&format!("gaps       {older} archive objects")),
        "{report}"
    );
    let view = WarehouseView::open(&windowed)?;
    let mut loaded: Vec<String> = view
        .pairs("SELECT object, '' FROM loads")?
        .into_iter()
        .map(|(object, _)| object)
        .collect();
    loaded.sort();
    assert_eq!(loaded, expected);
    let in_window: Vec<(String, String)> = live
        .iter()
        .filter(|(_, rest)| expected.iter().any(|o| rest.ends_with(&format!("|{o}"))))
        .cloned()
        .collect();
    assert_eq!(contents(&view, false)?, in_window);
    Ok(())
}

#[test]
fn reload_into_the_warehouse_the_collector_is_loading_duplicates_nothing() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(STEP * STEPS, MALFORMED)?;
    for _ in 0..STEPS {
        writer.write(STEP)?;
        // While the agent ships and the collector loads: into the same warehouse.
        reload_ok(&pipeline, &[])?;
    }
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, written.malformed_lines)?;
    let report = reload_ok(&pipeline, &[])?;
    let (found, loaded, already) = objects_line(&report)?;
    assert_eq!((loaded, already), (0, found), "{report}");
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM rejected_records")?,
        written.malformed_lines as i64
    );
    // One manifest row per object, whoever loaded it.
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM loads")? as usize,
        objects(&pipeline.data_dir.join("archive"))?.len()
    );
    Ok(())
}

#[test]
fn a_damaged_object_fails_the_reload_by_name_after_loading_the_others() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(STEP * 3, 0)?;
    for _ in 0..3 {
        writer.write(STEP)?;
        pipeline.wait_rows_at_least(writer.summary().valid_lines)?;
    }
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    let archive = pipeline.data_dir.join("archive");
    let objects = objects(&archive)?;
    let (damaged, _) = &objects[1];
    let path = archive.join(damaged);
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let rebuilt = pipeline.dir.path().join("rebuilt.db");
    let output = reload(&pipeline, &["--warehouse", &sqlite_url(&rebuilt)])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("unreadable {damaged}: ")),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 archive objects could not be read"),
        "{stderr}"
    );
    let n = objects.len() as u64;
    assert_eq!(objects_line(&stdout)?, (n, n - 1, 0), "{stdout}");
    let view = WarehouseView::open(&rebuilt)?;
    assert_eq!(view.count("SELECT COUNT(*) FROM loads")?, n as i64 - 1);
    // A warehouse that cannot be opened: exit 1 at once, saying which.
    let output = reload(
        &pipeline,
        &["--warehouse", "sqlite:///nonexistent-dir/x/w.db"],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent-dir/x/w.db"), "{stderr}");
    // A bad option: exit 64.
    let output = reload(&pipeline, &["--since", "last tuesday"])?;
    assert_eq!(output.status.code(), Some(64));
    Ok(())
}

/// Every errors object: name and bytes.
fn errors_tree(archive: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut found = Vec::new();
    let mut stack = vec![archive.join("errors")];
    while let Some(dir) = stack.pop() {
        if !dir.exists() {
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push((path.clone(), std::fs::read(&path)?));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}
