//! `tollstream-collector status`: per stream, where each stage stands.
//!
//! Reads the WAL directory, the archive position and the warehouse manifest; changes
//! nothing, and works whether or not the collector is running.

use std::fmt::Write;

use jiff::Timestamp;
use rusqlite::{OpenFlags, OptionalExtension};

use crate::clock::Clock;
use crate::config::Config;
use crate::wal::segment;

/// The status report as text.
///
/// # Errors
/// Unreadable WAL directories or warehouse.
pub fn report(config: &Config, clock: &dyn Clock) -> anyhow::Result<String> {
    let mut out = String::new();
    let warehouse_path = config.warehouse_path().map_err(anyhow::Error::msg)?;
    let _ = writeln!(
        out,
        "collector on {}; data in {}; warehouse {}",
        config.listen,
        config.data_dir.display(),
        warehouse_path.display()
    );
    let db = if warehouse_path.exists() {
        let db = rusqlite::Connection::open_with_flags(
            &warehouse_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Some(db)
    } else {
        None
    };
    for name in config.streams.keys() {
        let _ = writeln!(out, "\nstream {name}");
        let wal_dir = config.data_dir.join("wal").join(name);
        let segments = if wal_dir.exists() {
            segment::list(&wal_dir)?
        } else {
            Vec::new()
        };
        let bytes: u64 = segments
            .iter()
            .map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len()))
            .sum();
        let mut last_seq = segments.last().map_or(0, |s| s.first_seq.saturating_sub(1));
        if let Some(newest) = segments.last() {
            segment::scan(newest, |record| {
                last_seq = record.seq;
                Ok(())
            })?;
        }
        let first_seq = segments.first().map_or(0, |s| s.first_seq);
        let _ = writeln!(
            out,
            "  wal        {} segments, {bytes} bytes, records {first_seq}..={last_seq}",
            segments.len()
        );
        let position_file = config
            .data_dir
            .join("state")
            .join(format!("{name}.archive.pos"));
        let archived = crate::buffer::load_position(&position_file)?;
        let _ = writeln!(
            out,
            "  archive    through record {archived} ({} behind the WAL)",
            last_seq.saturating_sub(archived)
        );
        match &db {
            Some(db) => warehouse_lines(&mut out, db, name, clock)?,
            None => {
                let _ = writeln!(out, "  warehouse  not created yet");
            }
        }
    }
    Ok(out)
}

fn warehouse_lines(
    out: &mut String,
    db: &rusqlite::Connection,
    stream: &str,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    let totals: (i64, i64, i64, i64) = db.query_row(
        "SELECT COUNT(*), COALESCE(SUM(inserted), 0), COALESCE(SUM(rejected), 0), COALESCE(SUM(duplicates), 0) FROM loads WHERE stream = ?1",
        [stream],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let last: Option<(String, i64, String, Option<String>)> = db
        .query_row(
            "SELECT object, last_seq, loaded_at, newest_received_at FROM loads WHERE stream = ?1 ORDER BY last_seq DESC LIMIT 1",
            [stream],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let _ = writeln!(
        out,
        "  warehouse  {} loads, {} rows, {} rejected, {} duplicate keys",
        totals.0, totals.1, totals.2, totals.3
    );
    if let Some((object, last_seq, loaded_at, newest)) = last {
        let _ = writeln!(
            out,
            "  last load  {object} (through record {last_seq}) at {loaded_at}"
        );
        let age = newest
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| clock.now().duration_since(t));
        if let Some(age) = age {
            let _ = writeln!(
                out,
                "  freshness  newest loaded record received {:.1} s ago",
                age.as_secs_f64()
            );
        }
    }
    Ok(())
}
