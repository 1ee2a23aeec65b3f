//! Bulk import of limits from a CSV file, all or nothing.
//!
//! ```text
//! customer_id,monthly_limit
//! C0001234,150.00
//! C0005678,80
//! ```
//!
//! The header is required (a third column `updated_at`, as `limits list` prints, is allowed
//! and ignored: the import time is recorded). Fields may be quoted and are trimmed; blank
//! lines are skipped. There are no comment lines: a customer id may start with `#`. Every
//! line is checked before anything is written; any error (bad id, bad amount, an empty
//! amount, a customer listed twice) imports nothing and lists every bad line.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use rusqlite::{TransactionBehavior, params};

use super::{LimitsError, LimitsStore, parse_limit, validate_customer_id};
use crate::alerts::reference::{LineErrors, record_line};

/// What happens to limits of customers the file does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportMode {
    /// They stay (the file adds and changes limits).
    #[default]
    Merge,
    /// They are deleted: afterwards the store holds exactly the file.
    Replace,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// Data rows in the file.
    pub rows: usize,
    /// Customers who had no limit.
    pub added: usize,
    /// Customers whose limit changed.
    pub changed: usize,
    /// Customers who had this limit already (their `updated_at` stays).
    pub unchanged: usize,
    /// Limits deleted because the file does not list them ([`ImportMode::Replace`]).
    pub removed: usize,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows: {} added, {} changed, {} unchanged, {} removed",
            self.rows, self.added, self.changed, self.unchanged, self.removed
        )
    }
}

/// Reads and checks the whole file: `(customer, scaled limit)` in file order, or every
/// bad line.
fn parse(path: &Path, bytes: &[u8], scale: u32) -> Result<Vec<(String, i64)>, LineErrors> {
    let mut errors = LineErrors::new(path);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut records = reader.byte_records();
    let width = match records.next() {
        None => {
            errors.push(
                1,
                "the file is empty; expected the header customer_id,monthly_limit",
            );
            return Err(errors);
        }
        Some(Err(e)) => {
            errors.push(record_line(bytes, e.position(), false), e.to_string());
            return Err(errors);
        }
        Some(Ok(header)) => {
            let names: Vec<String> = header
                .iter()
                .map(|f| String::from_utf8_lossy(f).to_ascii_lowercase())
                .collect();
            match names.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["customer_id", "monthly_limit"] => 2,
                ["customer_id", "monthly_limit", "updated_at"] => 3,
                _ => {
                    errors.push(
                        record_line(bytes, header.position(), false),
                        format!(
                            "expected the header customer_id,monthly_limit; found {}",
                            names.join(",")
                        ),
                    );
                    return Err(errors);
                }
            }
        }
    };
    let mut rows = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for record in records {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                errors.push(record_line(bytes, e.position(), false), e.to_string());
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        };
        let line = record_line(bytes, record.position(), false);
        match check_row(&record, width, scale) {
            Err(message) => errors.push(line, message),
            Ok((id, amount)) => match seen.get(&id) {
                Some(first) => errors.push(
                    line,
                    format!("customer {id:?} is already on line {first}; list each customer once"),
                ),
                None => {
                    seen.insert(id.clone(), line);
                    rows.push((id, amount));
                }
            },
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

fn check_row(record: &csv::ByteRecord, width: usize, scale: u32) -> Result<(String, i64), String> {
    if record.len() != width {
        return Err(format!(
            "expected {width} fields (customer_id,monthly_limit{}), found {}",
            if width == 3 { ",updated_at" } else { "" },
            record.len()
        ));
    }
    let id = std::str::from_utf8(&record[0]).map_err(|_| "customer_id is not UTF-8".to_string())?;
    validate_customer_id(id)?;
    let raw =
        std::str::from_utf8(&record[1]).map_err(|_| "monthly_limit is not UTF-8".to_string())?;
    if raw.is_empty() {
        return Err(format!(
            "monthly_limit of customer {id:?} is empty; give an amount (to remove a limit use \
             `limits delete`, or import the full list with --replace)"
        ));
    }
    let amount = parse_limit(raw, scale).map_err(|why| format!("monthly_limit {why}"))?;
    Ok((id.to_owned(), amount))
}

impl LimitsStore {
    /// Imports a CSV file of limits (see the module header) in one transaction: every line
    /// is checked first, and any error imports nothing. Blocking.
    ///
    /// # Errors
    /// [`LimitsError::Csv`] listing the bad lines (up to 20, with the total), an unreadable
    /// file, [`ImportMode::Replace`] with no rows (it would delete every limit), SQLite
    /// errors (then nothing changed).
    pub fn import_csv(&self, path: &Path, mode: ImportMode) -> Result<ImportReport, LimitsError> {
        let bytes = std::fs::read(path).map_err(|source| LimitsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let rows = parse(path, &bytes, self.scale).map_err(LimitsError::Csv)?;
        if mode == ImportMode::Replace && rows.is_empty() {
            let mut errors = LineErrors::new(path);
            errors.push(
                2,
                "the file has no rows; importing it with --replace would delete every limit \
                 (delete them one by one with `limits delete` if that is meant)",
            );
            return Err(LimitsError::Csv(errors));
        }
        let mut report = ImportReport {
            rows: rows.len(),
            ..ImportReport::default()
        };
        let now = self.now().to_string();
        let mut db = self.lock_db();
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("starting the import transaction"))?;
        let mut before: HashMap<String, i64> = HashMap::new();
        {
            let mut stmt = tx
                .prepare("SELECT customer_id, monthly_limit FROM limits")
                .map_err(self.sql("reading limits"))?;
            let all = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(self.sql("reading limits"))?;
            for row in all {
                let (id, amount) = row.map_err(self.sql("reading limits"))?;
                before.insert(id, amount);
            }
            let mut upsert = tx
                .prepare(
                    "INSERT INTO limits (customer_id, monthly_limit, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (customer_id) DO UPDATE
                     SET monthly_limit = excluded.monthly_limit, updated_at = excluded.updated_at",
                )
                .map_err(self.sql("preparing the import"))?;
            for (id, amount) in &rows {
                match before.get(id) {
                    Some(old) if old == amount => {
                        report.unchanged += 1;
                        continue;
                    }
                    Some(_) => report.changed += 1,
                    None => report.added += 1,
                }
                upsert
                    .execute(params![id, amount, now])
                    .map_err(self.sql("importing a limit"))?;
            }
            if mode == ImportMode::Replace {
                let listed: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
                let mut delete = tx
                    .prepare("DELETE FROM limits WHERE customer_id = ?1")
                    .map_err(self.sql("preparing the import"))?;
                for id in before.keys().filter(|id| !listed.contains(id.as_str())) {
                    delete.execute([id]).map_err(self.sql("removing a limit"))?;
                    report.removed += 1;
                }
            }
        }
        // Any error above dropped `tx`, which rolls everything back.
        tx.commit().map_err(self.sql("committing the import"))?;
        self.reload(&mut db)?;
        Ok(report)
    }
}
