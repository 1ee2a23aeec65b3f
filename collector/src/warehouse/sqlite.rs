//! The embedded default warehouse: one SQLite file.
//!
//! WAL journal mode so `sqlite3` readers never block loading (nor the other way round);
//! `synchronous = FULL` so a committed load survives power loss.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::{LoadJob, LoadOutcome, Warehouse, WarehouseError, migrate};
use crate::alerts::Alert;
use crate::archive::RejectedLine;
use crate::schema::{ColumnType, Schema, Value, format_timestamp};

/// A SQLite warehouse.
pub struct SqliteWarehouse {
    conn: Connection,
}

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> WarehouseError {
    move |source| WarehouseError::Sqlite { action, source }
}

/// Migration 1: the load manifest and rejected records.
const MANIFEST: &str = "
CREATE TABLE IF NOT EXISTS loads (
    load_id     INTEGER PRIMARY KEY,
    stream      TEXT    NOT NULL,
    object      TEXT    NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    inserted    INTEGER NOT NULL DEFAULT 0,
    duplicates  INTEGER NOT NULL DEFAULT 0,
    rejected    INTEGER NOT NULL DEFAULT 0,
    loaded_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Receive time of the newest record in the object: what freshness is measured from.
    newest_received_at TEXT,
    UNIQUE (stream, first_seq)
);
CREATE TABLE IF NOT EXISTS rejected_records (
    id            INTEGER PRIMARY KEY,
    load_id       INTEGER NOT NULL REFERENCES loads (load_id),
    stream        TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    source_offset INTEGER,
    received_at   TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    line          BLOB    NOT NULL
);
";

/// Migration 2: each stream table's definitions, one row per version.
const TABLE_VERSIONS: &str = "
CREATE TABLE IF NOT EXISTS tollstream_table_versions (
    table_name  TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    stream      TEXT    NOT NULL,
    definition  TEXT    NOT NULL,
    applied_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (table_name, version)
);
";

/// Migration 3: alerts as fired (one row per alert id). Values are exact decimal text.
const ALERTS: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    alert_id     TEXT PRIMARY KEY,
    rule         TEXT NOT NULL,
    key          TEXT NOT NULL,
    window_start TEXT,
    window_end   TEXT,
    month        TEXT,
    value        TEXT NOT NULL,
    threshold    TEXT NOT NULL,
    fired_at     TEXT NOT NULL,
    document     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_fired_at ON alerts (fired_at);
";

impl SqliteWarehouse {
    /// Opens (creating if needed) the database file and brings the collector's own tables
    /// to the newest migration.
    ///
    /// # Errors
    /// Database errors; a database a newer collector migrated.
    pub fn open(path: &Path) -> Result<Self, WarehouseError> {
        let mut conn = Connection::open(path).map_err(sql("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("set journal_mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous"))?;
        // Natural keys are random (UUIDs): a larger page cache keeps the key index's hot
        // pages in memory as the table grows (64 MiB; SQLite's default is 2 MiB).
        conn.pragma_update(None, "cache_size", -65_536)
            .map_err(sql("set cache_size"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set busy_timeout"))?;
        migrate(&mut conn)?;
        Ok(Self { conn })
    }
}

/// Applies the migrations this database lacks, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), WarehouseError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tollstream_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));",
    )
    .map_err(sql("create the migrations table"))?;
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("begin migration"))?;
        let applied: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM tollstream_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(sql("read migrations"))?;
        migrate::check_not_newer(applied)?;
        if applied == migrate::LATEST {
            return Ok(());
        }
        let version = applied + 1;
        match version {
            1 => {
                tx.execute_batch(MANIFEST)
                    .map_err(sql("create manifest tables"))?;
                upgrade_manifest(&tx)?;
            }
            2 => tx
                .execute_batch(TABLE_VERSIONS)
                .map_err(sql("create the table versions table"))?,
            _ => tx
                .execute_batch(ALERTS)
                .map_err(sql("create the alerts table"))?,
        }
        tx.execute(
            "INSERT INTO tollstream_migrations (version, name) VALUES (?1, ?2)",
            params![version, migrate::MIGRATIONS[version as usize - 1]],
        )
        .map_err(sql("record migration"))?;
        tx.commit().map_err(sql("commit migration"))?;
    }
}

/// Adds manifest columns that databases made by earlier versions lack.
fn upgrade_manifest(conn: &Connection) -> Result<(), WarehouseError> {
    let has_column: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('loads') WHERE name = 'newest_received_at'",
            [],
            |r| r.get(0),
        )
        .map_err(sql("read manifest schema"))?;
    if !has_column {
        conn.execute_batch("ALTER TABLE loads ADD COLUMN newest_received_at TEXT;")
            .map_err(sql("upgrade manifest"))?;
    }
    Ok(())
}

/// SQLite's spelling of column types: no native timestamp, UUID or boolean.
struct Dialect;

impl migrate::Dialect for Dialect {
    fn type_name(&self, ty: &ColumnType) -> &'static str {
        match ty {
            ColumnType::Text | ColumnType::Uuid | ColumnType::Timestamp => "TEXT",
            ColumnType::Integer { .. } | ColumnType::Decimal { .. } | ColumnType::Boolean => {
                "INTEGER"
            }
        }
    }

    fn can_drop_not_null(&self) -> bool {
        false
    }
}

/// The stream table as it is, or none.
fn existing_table(
    conn: &Connection,
    table: &str,
) -> Result<Option<migrate::ExistingTable>, WarehouseError> {
    let columns = conn
        .prepare("SELECT name, type, \"notnull\" FROM pragma_table_info(?1)")
        .map_err(sql("read table columns"))?
        .query_map([table], |r| {
            Ok(migrate::ExistingColumn {
                name: r.get(0)?,
                sql_type: r.get(1)?,
                not_null: r.get(2)?,
            })
        })
        .map_err(sql("read table columns"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("read table columns"))?;
    if columns.is_empty() {
        return Ok(None);
    }
    let recorded: Option<(i64, String)> = conn
        .query_row(
            "SELECT version, definition FROM tollstream_table_versions WHERE table_name = ?1 \
             ORDER BY version DESC LIMIT 1",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql("read table versions"))?;
    let recorded = match recorded {
        None => None,
        Some((version, definition)) => {
            Some((version, recorded_schema(table, version, &definition)?))
        }
    };
    let primary_key = conn
        .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")
        .and_then(|mut stmt| {
            stmt.query_map([table], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(sql("read the table's primary key"))?;
    Ok(Some(migrate::ExistingTable {
        columns,
        primary_key,
        recorded,
    }))
}

/// A recorded definition read back.
pub(super) fn recorded_schema(
    table: &str,
    version: i64,
    definition: &str,
) -> Result<Schema, WarehouseError> {
    serde_json::from_str(definition).map_err(|e| {
        WarehouseError::Incompatible(format!(
            "the recorded definition of table {table} (version {version} in tollstream_table_versions) cannot be read: {e}"
        ))
    })
}

/// Rows per multi-row `INSERT`: up to 64, within SQLite's 32,766 bound parameters.
fn rows_per_insert(columns: usize) -> usize {
    (30_000 / columns.max(1)).clamp(1, 64)
}

/// `INSERT OR IGNORE` of `rows` rows: `?1` source, `?2` receive time, `?3` load id (shared
/// by the rows of one WAL record), then each row's values.
fn insert_sql(table: &str, schema: &Schema, rows: usize) -> String {
    use std::fmt::Write as _;
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.column.as_str()).collect();
    let mut sql = format!(
        "INSERT OR IGNORE INTO {table} ({}, source, received_at, load_id) VALUES ",
        columns.join(", ")
    );
    let mut param = 4;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for _ in &columns {
            let _ = write!(sql, "?{param}, ");
            param += 1;
        }
        sql.push_str("?1, ?2, ?3)");
    }
    sql
}

/// Inserts the rows in `pending` (values, row after row) with one statement, counting
/// inserted rows and duplicates; empties `pending`.
fn insert_rows(
    tx: &rusqlite::Transaction<'_>,
    job: &LoadJob<'_>,
    record: &super::RecordLines<'_>,
    load_id: i64,
    pending: &mut Vec<Value>,
    outcome: &mut LoadOutcome,
) -> Result<(), WarehouseError> {
    let columns = job.schema.columns.len();
    let rows = pending.len() / columns;
    if rows == 0 {
        return Ok(());
    }
    let mut insert = tx
        .prepare_cached(&insert_sql(job.table, job.schema, rows))
        .map_err(sql("prepare insert"))?;
    insert
        .raw_bind_parameter(1, record.source)
        .and_then(|()| insert.raw_bind_parameter(2, record.received_at.as_str()))
        .and_then(|()| insert.raw_bind_parameter(3, load_id))
        .map_err(sql("bind rows"))?;
    for (i, value) in pending.iter().enumerate() {
        bind(&mut insert, i + 4, value).map_err(sql("bind rows"))?;
    }
    let inserted = insert.raw_execute().map_err(sql("insert rows"))? as u64;
    outcome.inserted += inserted;
    outcome.duplicates += rows as u64 - inserted;
    pending.clear();
    Ok(())
}

impl Warehouse for SqliteWarehouse {
    fn prepare(
        &mut self,
        stream: &str,
        table: &str,
        schema: &Schema,
    ) -> Result<(), WarehouseError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let existing = existing_table(&tx, table)?;
        let plan = migrate::plan(stream, table, schema, existing.as_ref(), &Dialect)?;
        let (statements, version) = migrate::steps(plan, stream, table, schema, &Dialect);
        for statement in statements {
            tx.execute_batch(&statement)
                .map_err(sql("create or change the stream table"))?;
        }
        if version.is_some() {
            let definition = serde_json::to_string(schema)
                .map_err(|e| WarehouseError::Invalid(format!("recording the schema: {e}")))?;
            // Numbered after the table's last recorded version, also when the table was
            // dropped by hand and is made again.
            tx.execute(
                "INSERT INTO tollstream_table_versions (table_name, version, stream, definition) \
                 SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3 FROM tollstream_table_versions \
                 WHERE table_name = ?1",
                params![table, stream, definition],
            )
            .map_err(sql("record table version"))?;
        }
        tx.commit().map_err(sql("commit"))
    }

    fn last_loaded(&mut self, stream: &str) -> Result<u64, WarehouseError> {
        let last: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MAX(last_seq), 0) FROM loads WHERE stream = ?1",
                [stream],
                |r| r.get(0),
            )
            .map_err(sql("read manifest"))?;
        Ok(u64::try_from(last).unwrap_or(0))
    }

    fn newest_received_at(&mut self, stream: &str) -> Result<Option<String>, WarehouseError> {
        let newest: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT newest_received_at FROM loads WHERE stream = ?1 \
                 ORDER BY last_seq DESC LIMIT 1",
                [stream],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read manifest"))?;
        Ok(newest.flatten())
    }

    fn record_alert(&mut self, alert: &Alert, document: &str) -> Result<(), WarehouseError> {
        // Values stay exact decimal text (SQLite has no exact decimal type); times are
        // formatted as every other warehouse time.
        self.conn
            .execute(
                "INSERT INTO alerts (alert_id, rule, key, window_start, window_end, month, \
                 value, threshold, fired_at, document) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (alert_id) DO NOTHING",
                params![
                    alert.alert_id,
                    alert.rule,
                    alert.key,
                    alert.window_start.map(format_timestamp),
                    alert.window_end.map(format_timestamp),
                    alert.month,
                    alert.value,
                    alert.threshold,
                    format_timestamp(alert.fired_at),
                    document,
                ],
            )
            .map(drop)
            .map_err(sql("record alert"))
    }

    fn load(&mut self, job: &LoadJob<'_>) -> Result<LoadOutcome, WarehouseError> {
        // IMMEDIATE: the write lock is taken (waiting up to the busy timeout) before the
        // manifest is read. A deferred transaction that read first could not wait for
        // another writer (a `reload`, a second collector) and would fail with "database is
        // locked" instead of finding the object loaded.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT load_id FROM loads WHERE stream = ?1 AND first_seq = ?2",
                params![job.stream, job.first_seq as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read manifest"))?;
        if existing.is_some() {
            return Ok(LoadOutcome {
                already_loaded: true,
                ..LoadOutcome::default()
            });
        }
        tx.execute(
            "INSERT INTO loads (stream, object, first_seq, last_seq, newest_received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                job.stream,
                job.object,
                job.first_seq as i64,
                job.last_seq as i64,
                job.newest_received_at()
            ],
        )
        .map_err(sql("write manifest"))?;
        let load_id = tx.last_insert_rowid();
        let mut outcome = LoadOutcome::default();
        let mut rejected = Vec::new();
        {
            let columns = job.schema.columns.len();
            let full_batch = rows_per_insert(columns);
            let mut reject = tx
                .prepare_cached(
                    "INSERT INTO rejected_records (load_id, stream, source, source_offset, received_at, reason, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql("prepare reject"))?;
            // Parsed values of the rows waiting for the next multi-row insert.
            let mut pending: Vec<Value> = Vec::with_capacity(full_batch * columns);
            let mut values = Vec::with_capacity(columns);
            for record in job.records() {
                let mut failed = None;
                record.for_each_line(|line| {
                    if failed.is_some() {
                        return;
                    }
                    match job.schema.parse(line.line, &mut values) {
                        Ok(()) => {
                            pending.append(&mut values);
                            if pending.len() == full_batch * columns
                                && let Err(error) = insert_rows(
                                    &tx,
                                    job,
                                    &record,
                                    load_id,
                                    &mut pending,
                                    &mut outcome,
                                )
                            {
                                failed = Some(error);
                            }
                        }
                        Err(reason) => {
                            let offset = line.offset.map(|o| o as i64);
                            if let Err(error) = reject.execute(params![
                                load_id,
                                job.stream,
                                line.source,
                                offset,
                                line.received_at,
                                reason,
                                line.line
                            ]) {
                                failed = Some(sql("insert rejected record")(error));
                                return;
                            }
                            outcome.rejected += 1;
                            rejected.push(RejectedLine::new(
                                line.source,
                                line.offset,
                                line.received_at,
                                reason,
                                line.line,
                            ));
                        }
                    }
                });
                if let Some(error) = failed {
                    return Err(error);
                }
                // Rows of one WAL record share its source and receive time.
                insert_rows(&tx, job, &record, load_id, &mut pending, &mut outcome)?;
            }
        }
        tx.execute(
            "UPDATE loads SET inserted = ?1, duplicates = ?2, rejected = ?3 WHERE load_id = ?4",
            params![
                outcome.inserted as i64,
                outcome.duplicates as i64,
                outcome.rejected as i64,
                load_id
            ],
        )
        .map_err(sql("update manifest"))?;
        // Durable before the commit: a recorded load always has its errors object.
        outcome.errors_object = job.write_rejected(&rejected)?;
        crate::crashpoint::hit("load-uncommitted");
        tx.commit().map_err(sql("commit"))?;
        crate::crashpoint::hit("load-committed");
        Ok(outcome)
    }
}

fn bind(
    stmt: &mut rusqlite::CachedStatement<'_>,
    index: usize,
    value: &Value,
) -> rusqlite::Result<()> {
    match value {
        Value::Text(text) => stmt.raw_bind_parameter(index, text.as_str()),
        Value::Integer(n) => stmt.raw_bind_parameter(index, *n),
        Value::Timestamp(ts) => stmt.raw_bind_parameter(index, format_timestamp(*ts)),
        Value::Boolean(b) => stmt.raw_bind_parameter(index, *b),
        Value::Null => stmt.raw_bind_parameter(index, rusqlite::types::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Archive;
    use crate::wal::WalRecord;

    fn good(n: u32) -> String {
        format!(
            "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-{n:012},PLZ-017,3,C0001234,TX-0088231,2,12.50\n"
        )
    }

    /// An archive with one object of two WAL records: good and bad lines mixed.
    fn archive_with_bad_lines(root: &Path) -> (Archive, crate::archive::ArchiveObject) {
        let archive = Archive::new(root);
        let first = [good(1), "not a toll line\n".into(), good(2)].concat();
        let second = [b"\xff,bad\r\n".to_vec(), good(3).into_bytes()].concat();
        let records = [
            WalRecord {
                seq: 7,
                received_at_us: 1_764_090_000_000_000,
                source: "booth/a".into(),
                range: Some((1000, 1000 + first.len() as u64)),
                records: 3,
                data: first.into_bytes().into(),
            },
            WalRecord {
                seq: 8,
                received_at_us: 1_764_090_001_000_000,
                source: "-".into(),
                range: None,
                records: 2,
                data: second.into(),
            },
        ];
        let object = archive.write("s", &records).expect("written");
        (archive, object)
    }

    fn load(
        warehouse: &mut SqliteWarehouse,
        archive: &Archive,
        object: &crate::archive::ArchiveObject,
    ) -> Result<LoadOutcome, WarehouseError> {
        let (index, data) = Archive::read(&object.path)?;
        warehouse.load(&LoadJob {
            stream: "s",
            table: "t",
            schema: &Schema::toll(),
            object: "s/x.gz".into(),
            first_seq: object.first_seq,
            last_seq: object.last_seq,
            index,
            data,
            archive,
        })
    }

    #[test]
    fn rejected_lines_are_in_the_table_and_in_the_errors_object_of_the_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (archive, object) = archive_with_bad_lines(&dir.path().join("archive"));
        let mut warehouse = SqliteWarehouse::open(&dir.path().join("w.db")).expect("open");
        warehouse
            .prepare("s", "t", &Schema::toll())
            .expect("prepare");
        let outcome = load(&mut warehouse, &archive, &object).expect("loaded");
        assert_eq!((outcome.inserted, outcome.rejected), (3, 2));
        let errors = outcome.errors_object.expect("an errors object");
        assert!(
            errors
                .ends_with("errors/s/2025/11/25/17/s-00000000000000000007-00000000000000000008.gz"),
            "{errors:?}"
        );
        let lines = Archive::read_rejected(&errors).expect("readable");
        // The errors object says exactly what the table says, line for line.
        let table: Vec<RejectedLine> = warehouse
            .conn
            .prepare("SELECT source, source_offset, received_at, reason, line FROM rejected_records ORDER BY id")
            .expect("prepare")
            .query_map([], |r| {
                let offset: Option<i64> = r.get(1)?;
                let line: Vec<u8> = r.get(4)?;
                Ok(RejectedLine::new(
                    &r.get::<_, String>(0)?,
                    offset.map(|o| o as u64),
                    &r.get::<_, String>(2)?,
                    r.get(3)?,
                    &line,
                ))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(lines, table);
        assert_eq!(lines.len(), 2);
        let offset_of_bad = 1000 + good(1).len() as u64;
        assert_eq!(lines[0].source_offset, Some(offset_of_bad));
        assert_eq!(lines[0].line.as_deref(), Some("not a toll line"));
        assert!(
            lines[0].reason.contains("comma-separated"),
            "{:?}",
            lines[0]
        );
        assert_eq!(lines[1].source_offset, None);
        assert_eq!(lines[1].line, None, "not UTF-8");
        assert_eq!(lines[1].line_base64.as_deref(), Some("/yxiYWQN")); // ff ",bad\r"
        assert!(lines[1].reason.contains("UTF-8"), "{:?}", lines[1]);
        // Loading it again changes nothing.
        let again = load(&mut warehouse, &archive, &object).expect("no-op");
        assert!(again.already_loaded);
    }

    #[test]
    fn an_errors_object_that_cannot_be_written_fails_the_load_which_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("archive");
        let (archive, object) = archive_with_bad_lines(&root);
        let mut warehouse = SqliteWarehouse::open(&dir.path().join("w.db")).expect("open");
        warehouse
            .prepare("s", "t", &Schema::toll())
            .expect("prepare");
        // A file where the errors tree should be: every write under it fails.
        std::fs::write(root.join(crate::archive::ERRORS_DIR), b"in the way").expect("block");
        let error = load(&mut warehouse, &archive, &object).expect_err("the load fails");
        assert!(error.to_string().contains("errors"), "{error}");
        let count = |w: &SqliteWarehouse, sql: &str| -> i64 {
            w.conn.query_row(sql, [], |r| r.get(0)).expect("count")
        };
        assert_eq!(
            count(&warehouse, "SELECT COUNT(*) FROM loads"),
            0,
            "not recorded"
        );
        assert_eq!(count(&warehouse, "SELECT COUNT(*) FROM t"), 0);
        assert_eq!(
            count(&warehouse, "SELECT COUNT(*) FROM rejected_records"),
            0
        );
        // Once the archive can be written again, the retry loads it, errors object and all.
        std::fs::remove_file(root.join(crate::archive::ERRORS_DIR)).expect("unblock");
        let outcome = load(&mut warehouse, &archive, &object).expect("retried");
        assert_eq!((outcome.inserted, outcome.rejected), (3, 2));
        assert!(outcome.errors_object.expect("written").exists());
        assert_eq!(count(&warehouse, "SELECT COUNT(*) FROM loads"), 1);
    }

    #[test]
    fn an_object_without_rejected_lines_has_no_errors_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::new(&dir.path().join("archive"));
        let record = WalRecord {
            seq: 1,
            received_at_us: 1_764_090_000_000_000,
            source: "booth/a".into(),
            range: Some((0, good(1).len() as u64)),
            records: 1,
            data: good(1).into_bytes().into(),
        };
        let object = archive.write("s", &[record]).expect("written");
        let mut warehouse = SqliteWarehouse::open(&dir.path().join("w.db")).expect("open");
        warehouse
            .prepare("s", "t", &Schema::toll())
            .expect("prepare");
        let outcome = load(&mut warehouse, &archive, &object).expect("loaded");
        assert_eq!((outcome.inserted, outcome.errors_object), (1, None));
        assert!(!dir.path().join("archive").join("errors").exists());
    }

    #[test]
    fn a_manifest_from_an_earlier_version_is_upgraded_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let old = Connection::open(&path).expect("open");
        old.execute_batch(
            "CREATE TABLE loads (load_id INTEGER PRIMARY KEY, stream TEXT NOT NULL, object TEXT NOT NULL, \
             first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, inserted INTEGER NOT NULL DEFAULT 0, \
             duplicates INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0, \
             loaded_at TEXT NOT NULL DEFAULT 'x', UNIQUE (stream, first_seq));",
        )
        .expect("old schema");
        drop(old);
        let warehouse = SqliteWarehouse::open(&path).expect("opens and upgrades");
        warehouse
            .conn
            .execute("INSERT INTO loads (stream, object, first_seq, last_seq, newest_received_at) VALUES ('s', 'o', 1, 1, 't')", [])
            .expect("new column usable");
        drop(warehouse);
        SqliteWarehouse::open(&path).expect("opening again is a no-op");
    }
}
