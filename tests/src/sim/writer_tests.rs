//! The file writer: routing, appending, chunked and split writes, rotation, pacing.

use std::path::{Path, PathBuf};

use super::*;

fn paths(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| dir.join(format!("booths-{i}.log")))
        .collect()
}

fn read_all(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// What the generator yields, routed by booth as the writer should route it.
fn expected_files(cfg: &SimConfig, mode: Mode, n: usize) -> Vec<Vec<u8>> {
    let mut files = vec![Vec::new(); n];
    for r in Simulator::new(cfg, mode).unwrap() {
        files[r.booth % n].extend_from_slice(&r.bytes);
    }
    files
}

#[test]
fn routes_each_booth_to_one_file_and_the_summary_matches_a_recount() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path(), 3);
    let cfg = SimConfig {
        malformed: 100,
        ..SimConfig::default()
    };
    let mode = Mode::Count { lines: 200_000 };
    let summary = write_files(&cfg, &paths, mode, Pacing::AsFastAsPossible).unwrap();

    assert_eq!(summary.total_lines, 200_000);
    assert_eq!(summary.malformed_lines, 100);
    assert_eq!(summary.booths.len(), 12);
    assert_eq!(Summary::recount(&paths).unwrap(), summary);
    let per_booth: i64 = summary.booths.values().map(|b| b.amount_cents).sum();
    assert_eq!(per_booth, summary.amount_cents);
    for (i, data) in read_all(&paths).iter().enumerate() {
        for line in data.split_inclusive(|b| *b == b'\n') {
            let Ok(tx) = parse_line(line) else { continue };
            let booth: usize = tx.booth_id[4..].parse().unwrap();
            assert_eq!((booth - 1) % 3, i, "{} in file {i}", tx.booth_id);
        }
    }
}

#[test]
fn writing_in_steps_with_split_writes_gives_the_same_files() {
    let cfg = SimConfig {
        malformed: 7,
        ..SimConfig::default()
    };
    let mode = Mode::Count { lines: 5_000 };
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path(), 4);
    let options = WriteOptions {
        split_writes: true,
        flush_every_lines: 64,
        ..Default::default()
    };
    let mut writer = SimWriter::with_options(&cfg, mode, &paths, options).unwrap();
    assert_eq!(writer.write(1_234).unwrap(), 1_234);
    for data in read_all(&paths) {
        assert!(data.ends_with(b"\n"), "write must leave whole lines behind");
    }
    assert_eq!(writer.summary().total_lines, 1_234);
    assert_eq!(writer.write(10_000).unwrap(), 5_000 - 1_234);
    assert!(writer.is_finished());
    assert_eq!(writer.write(1).unwrap(), 0);
    assert_eq!(read_all(&paths), expected_files(&cfg, mode, 4));
    assert_eq!(Summary::recount(&paths).unwrap(), *writer.summary());
}

#[test]
fn split_writes_leave_a_partial_line_until_the_next_write() {
    let cfg = SimConfig::default();
    let mode = Mode::Count { lines: 100 };
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path(), 2);
    let mut writer = SimWriter::new(&cfg, mode, &paths).unwrap();
    writer.write_leaving_partial_lines(40).unwrap();
    for data in read_all(&paths) {
        assert!(!data.ends_with(b"\n"));
        let last = data.rsplit(|b| *b == b'\n').next().unwrap();
        assert!(
            !last.is_empty() && last.len() < 70,
            "{}",
            String::from_utf8_lossy(last)
        );
    }
    writer.write_all().unwrap();
    assert_eq!(read_all(&paths), expected_files(&cfg, mode, 2));
}

#[test]
fn appends_to_existing_files_and_reopens_after_rotation() {
    let cfg = SimConfig::default();
    let mode = Mode::Count { lines: 3_000 };
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path(), 2);
    std::fs::write(&paths[0], b"already here\n").unwrap();
    let mut writer = SimWriter::new(&cfg, mode, &paths).unwrap();
    writer.write(1_000).unwrap();

    // logrotate-style: move the files away, then the writer reopens the paths.
    let rotated: Vec<PathBuf> = paths.iter().map(|p| p.with_extension("log.1")).collect();
    for (p, r) in paths.iter().zip(&rotated) {
        std::fs::rename(p, r).unwrap();
    }
    writer.reopen().unwrap();
    writer.write_all().unwrap();

    let expected = expected_files(&cfg, mode, 2);
    for i in 0..2 {
        let mut joined = std::fs::read(&rotated[i]).unwrap();
        joined.extend(std::fs::read(&paths[i]).unwrap());
        let prefix: &[u8] = if i == 0 { b"already here\n" } else { b"" };
        assert_eq!(joined, [prefix, &expected[i]].concat(), "file {i}");
        assert!(!std::fs::read(&paths[i]).unwrap().is_empty());
    }
}

#[test]
fn a_historical_run_writes_the_whole_span() {
    let cfg = SimConfig {
        booths: 3,
        malformed: 5,
        ..SimConfig::default()
    };
    let mode = Mode::Historical {
        from: "2026-11-25T06:00:00-03:00".parse().unwrap(),
        until: "2026-11-25T07:00:00-03:00".parse().unwrap(),
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path(), 3);
    let summary = write_files(&cfg, &paths, mode, WriteOptions::default()).unwrap();
    // 3 booths × 300/h × weight 1.0 at 06:00.
    assert!((700..1_100).contains(&summary.valid_lines), "{summary:?}");
    assert_eq!(summary.malformed_lines, 5);
    assert_eq!(read_all(&paths), expected_files(&cfg, mode, 3));
}

#[test]
// Pacing is real time by design; this checks it with the real clock, briefly.
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
fn paced_live_mode_takes_real_time_and_stamps_the_wall_clock() {
    let cfg = SimConfig {
        time_zone: "UTC".into(),
        ..SimConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path(), 1);
    let options = WriteOptions::from(Pacing::Rate {
        lines_per_sec: 400.0,
    });
    let before = jiff::Timestamp::now();
    let started = std::time::Instant::now();
    let summary = write_files(&cfg, &paths, Mode::Count { lines: 60 }, options).unwrap();
    let elapsed = started.elapsed();
    let after = jiff::Timestamp::now();
    assert_eq!(summary.total_lines, 60);
    // Line 59 is due at 59 / 400 s.
    assert!(elapsed.as_millis() >= 140, "{elapsed:?}");
    let data = std::fs::read(&paths[0]).unwrap();
    for line in data.split_inclusive(|b| *b == b'\n') {
        let t = parse_line(line).unwrap().event_time;
        // Lines carry milliseconds only, so allow for the truncation.
        assert!(
            t >= before - jiff::SignedDuration::from_millis(1) && t <= after,
            "{t}"
        );
    }
}

#[test]
fn bad_paths_and_rates_are_reported() {
    let cfg = SimConfig::default();
    let mode = Mode::Count { lines: 1 };
    assert!(matches!(
        SimWriter::new(&cfg, mode, &[]),
        Err(SimError::Invalid { key: "paths", .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let inside_missing = vec![dir.path().join("no/such/dir/a.log")];
    let err = SimWriter::new(&cfg, mode, &inside_missing).unwrap_err();
    assert!(err.to_string().contains("no/such/dir/a.log"), "{err}");
    let zero = WriteOptions::from(Pacing::Rate { lines_per_sec: 0.0 });
    let err = SimWriter::with_options(&cfg, mode, &paths(dir.path(), 1), zero).unwrap_err();
    assert_eq!(err.to_string(), "rate lines_per_sec must be > 0, got 0");
}
