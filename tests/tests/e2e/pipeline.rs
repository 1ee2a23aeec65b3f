//! The walking skeleton's acceptance: lines written on a booth server land in the warehouse
//! exactly once, through restarts and crashes of either daemon, and bad lines are kept with
//! a reason instead of being lost.

use crate::fixture::{EXIT_TIMEOUT, Pipeline, base64_decode, errors_objects};

const LINES: u64 = 200_000;

#[test]
fn every_line_written_across_three_files_lands_exactly_once() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(LINES, 0)?;
    // Written while both daemons run, in steps, so the agent follows growing files.
    while !writer.is_finished() {
        writer.write(10_000)?;
    }
    let written = writer.into_summary();
    assert_eq!(written.total_lines, LINES);
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

#[test]
fn agent_stopped_and_killed_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(LINES, 0)?;
    writer.write(50_000)?;
    pipeline.wait_rows_at_least(10_000)?;
    let status = pipeline.agent.terminate(EXIT_TIMEOUT)?;
    assert!(status.success(), "agent exits 0 on SIGTERM, got {status}");
    writer.write(50_000)?;
    pipeline.agent.start()?;
    // After a clean stop the agent resumes exactly where the collector's acks left it: the
    // collector is sent nothing it already had.
    pipeline.wait_rows_at_least(100_000)?;
    let resent = pipeline
        .collector_metric(
            "tollstream_collector_duplicate_records_total",
            "stage=\"ingest\"",
        )
        .unwrap_or(0.0);
    assert_eq!(resent, 0.0, "lines sent again after a SIGTERM restart");
    writer.write(50_000)?;
    // SIGKILL while it is busy with the lines just written (some loaded, most not): no
    // checkpoint flush, batches in flight. The restart resends from the last checkpoint and
    // the collector drops the overlap.
    pipeline.wait_rows_at_least(105_000)?;
    pipeline.agent.kill()?;
    writer.write_all()?;
    pipeline.agent.start()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

#[test]
fn collector_killed_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(LINES, 0)?;
    for round in 1..=2u64 {
        writer.write(60_000)?;
        // Killed while the agent is shipping what was just written (some of it loaded,
        // most not): batches in the WAL but not yet archived, objects archived but not yet
        // loaded, requests half-answered.
        pipeline.wait_rows_at_least(round * 80_000 - 50_000)?;
        pipeline.collector.kill()?;
        writer.write(20_000)?; // Written while the collector is down: waits in the files.
        pipeline.collector.start()?;
        pipeline.wait_collector_ready()?;
    }
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    assert_eq!(pipeline.collector.starts(), 3);
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

#[test]
fn malformed_lines_are_rejected_with_a_reason_and_every_valid_line_loads() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(LINES, 100)?;
    while !writer.is_finished() {
        writer.write(25_000)?;
    }
    let written = writer.into_summary();
    assert_eq!(written.malformed_lines, 100);
    pipeline.wait_loaded(written.valid_lines, 100)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM rejected_records")?,
        100
    );
    let reasons = warehouse.pairs("SELECT reason, source FROM rejected_records")?;
    let kinds = [
        ("wrong field count", "comma-separated fields"),
        ("bad timestamp", "event_time:"),
        ("non-numeric amount", "amount:"),
        ("invalid UTF-8", "UTF-8"),
    ];
    for (kind, marker) in kinds {
        let n = reasons
            .iter()
            .filter(|(reason, _)| reason.contains(marker))
            .count();
        assert_eq!(
            n,
            25,
            "{kind}: 25 lines whose reason mentions {marker:?}; reasons: {:?}",
            &reasons[..5]
        );
    }
    assert!(
        reasons
            .iter()
            .all(|(_, source)| source.starts_with("e2e-booth/")),
        "each rejected line names its source"
    );
    let with_offsets =
        warehouse.count("SELECT COUNT(*) FROM rejected_records WHERE source_offset IS NOT NULL")?;
    assert_eq!(
        with_offsets, 100,
        "each rejected line says where in its file it was"
    );
    assert_errors_objects_match_the_rejected_records(&pipeline)
}

/// The archive's `errors/` objects hold exactly the rejected lines, with their reasons: one
/// object per loaded object that had any, named like it, with the lines the manifest counts.
fn assert_errors_objects_match_the_rejected_records(pipeline: &Pipeline) -> anyhow::Result<()> {
    type Rejected = (String, Option<i64>, String, String, Vec<u8>);
    let archive = pipeline.dir.path().join("collector-data").join("archive");
    let objects = errors_objects(&archive)?;
    let db = rusqlite::Connection::open_with_flags(
        pipeline.warehouse_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let loads_with_rejects: Vec<(String, i64)> = db
        .prepare("SELECT object, rejected FROM loads WHERE rejected > 0 ORDER BY object")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let per_object: Vec<(String, i64)> = objects
        .iter()
        .map(|(name, documents)| (name.clone(), documents.len() as i64))
        .collect();
    assert_eq!(
        per_object, loads_with_rejects,
        "one errors object per load with rejected lines, named like its object"
    );
    for (name, _) in &objects {
        assert!(
            archive.join(name).is_file(),
            "{name} names an archive object"
        );
    }
    let mut table: Vec<Rejected> = db
        .prepare("SELECT source, source_offset, received_at, reason, line FROM rejected_records")?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut in_objects = Vec::new();
    let mut not_utf8 = 0;
    for document in objects.iter().flat_map(|(_, documents)| documents) {
        let text = |key: &str| -> anyhow::Result<String> {
            Ok(document[key]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no {key} in {document}"))?
                .to_owned())
        };
        let line = match document.get("line") {
            Some(line) => line.as_str().unwrap_or_default().as_bytes().to_vec(),
            None => {
                not_utf8 += 1;
                base64_decode(&text("line_base64")?)?
            }
        };
        in_objects.push((
            text("source")?,
            document["source_offset"].as_i64(),
            text("received_at")?,
            text("reason")?,
            line,
        ));
    }
    table.sort();
    in_objects.sort();
    assert_eq!(table.len(), 100);
    assert!(
        in_objects == table,
        "the errors objects hold exactly the rejected records; first of each: {:?} / {:?}",
        in_objects.first(),
        table.first()
    );
    assert_eq!(
        not_utf8, 25,
        "the lines that are not UTF-8 are kept in base64"
    );
    Ok(())
}

#[test]
fn a_partial_last_line_waits_for_its_newline() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(2_000, 0)?;
    writer.write_leaving_partial_lines(1_000)?;
    // Each of the three files ends in half a line: the 997 whole lines arrive, the halves
    // wait for their newlines.
    pipeline.wait_loaded(997, 0)?;
    // Restart the agent in between: the partial line is completed once, not sent in halves.
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    pipeline.agent.start()?;
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    assert_eq!(
        pipeline
            .warehouse()?
            .count("SELECT COUNT(*) FROM rejected_records")?,
        0,
        "no half line was rejected"
    );
    Ok(())
}
