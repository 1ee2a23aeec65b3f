//! What a run produced: line counts and, per booth, transactions and cents.
//!
//! Tests compare this with what reached the warehouse. Maps are `BTreeMap`s so the JSON is
//! byte-stable across runs. Malformed lines count only in the totals: after corruption the
//! booth a line "belongs" to is not something a reader of the file can know.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::parse::parse_line;
use super::transaction::{LineKind, LineMeta, Record, RecordKind};

/// Valid transactions of one booth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoothSummary {
    /// Number of valid transactions.
    pub lines: u64,
    /// Sum of their amounts, in cents.
    pub amount_cents: i64,
}

/// Totals of a run, serializable as JSON (`tollsim --summary`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// All lines written, valid plus malformed.
    pub total_lines: u64,
    /// Valid transactions.
    pub valid_lines: u64,
    /// Malformed lines.
    pub malformed_lines: u64,
    /// Sum of all valid amounts, in cents.
    pub amount_cents: i64,
    /// Per booth id (`PLZ-001`), valid transactions and their amounts.
    pub booths: BTreeMap<String, BoothSummary>,
}

impl Summary {
    /// Counts one generated record.
    pub fn add(&mut self, record: &Record) {
        match &record.kind {
            RecordKind::Valid(tx) => self.add_valid(&tx.booth_id, tx.amount_cents),
            RecordKind::Malformed(_) => self.add_malformed(),
        }
    }

    /// Counts one line described by a [`LineMeta`], whose booth index names an entry of
    /// `booth_ids`.
    pub fn add_meta(&mut self, booth_ids: &[String], meta: &LineMeta) {
        match meta.kind {
            LineKind::Valid { amount_cents } => {
                self.add_valid(&booth_ids[meta.booth], amount_cents)
            }
            LineKind::Malformed(_) => self.add_malformed(),
        }
    }

    /// Counts one valid transaction at `booth_id`.
    pub fn add_valid(&mut self, booth_id: &str, amount_cents: i64) {
        self.total_lines += 1;
        self.valid_lines += 1;
        self.amount_cents += amount_cents;
        // Look up by `&str` first so the common case allocates nothing.
        if let Some(booth) = self.booths.get_mut(booth_id) {
            booth.lines += 1;
            booth.amount_cents += amount_cents;
        } else {
            self.booths.insert(
                booth_id.to_owned(),
                BoothSummary {
                    lines: 1,
                    amount_cents,
                },
            );
        }
    }

    /// Counts one malformed line.
    pub fn add_malformed(&mut self) {
        self.total_lines += 1;
        self.malformed_lines += 1;
    }

    /// Recounts files from disk with [`parse_line`]: what a correct collector should accept
    /// (valid lines) and reject (malformed ones). A missing file counts as empty.
    ///
    /// # Errors
    ///
    /// Reading a file fails for a reason other than its absence.
    pub fn recount(paths: &[PathBuf]) -> io::Result<Summary> {
        let mut summary = Summary::default();
        for path in paths {
            let data = match std::fs::read(path) {
                Ok(data) => data,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in data.split_inclusive(|b| *b == b'\n') {
                match parse_line(line) {
                    Ok(tx) => summary.add_valid(&tx.booth_id, tx.amount_cents),
                    Err(_) => summary.add_malformed(),
                }
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_valid_and_malformed_and_round_trips_through_json() {
        let mut s = Summary::default();
        s.add_valid("PLZ-002", 1250);
        s.add_valid("PLZ-001", 625);
        s.add_valid("PLZ-002", 2500);
        s.add_malformed();
        assert_eq!((s.total_lines, s.valid_lines, s.malformed_lines), (4, 3, 1));
        assert_eq!(s.amount_cents, 4375);
        assert_eq!(
            s.booths["PLZ-002"],
            BoothSummary {
                lines: 2,
                amount_cents: 3750
            }
        );
        let json = serde_json::to_string_pretty(&s).unwrap();
        assert!(json.find("PLZ-001").unwrap() < json.find("PLZ-002").unwrap());
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
    }

    #[test]
    fn recount_parses_files_and_skips_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let line = "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,\
                    PLZ-017,3,C0001234,TX-0088231,2,12.50\n";
        std::fs::write(&path, format!("{line}garbage\n{line}")).unwrap();
        let s = Summary::recount(&[path, dir.path().join("missing.log")]).unwrap();
        assert_eq!((s.total_lines, s.valid_lines, s.malformed_lines), (3, 2, 1));
        assert_eq!(
            s.booths["PLZ-017"],
            BoothSummary {
                lines: 2,
                amount_cents: 2500
            }
        );
    }
}
