//! The PostgreSQL warehouse (and the path to PostgreSQL-compatible engines).
//!
//! One load is one transaction:
//!
//! 1. `INSERT INTO loads … ON CONFLICT (stream, first_seq) DO NOTHING RETURNING load_id` —
//!    no row back means the object is in the manifest already (or another collector is
//!    committing it right now, in which case the insert waits for it): nothing is written.
//! 2. `COPY <staging> FROM STDIN` (text format) of every line that parses, into a temporary
//!    table shaped like the stream's table (session-local, emptied at every commit), streamed
//!    in chunks while the next lines are parsed.
//! 3. `INSERT INTO <table> SELECT … FROM <staging> ON CONFLICT (<natural key>) DO NOTHING`:
//!    keys already in the table (or twice in the object) are skipped, not an error; staged
//!    minus inserted is the number of duplicates.
//! 4. `COPY rejected_records FROM STDIN` of the lines that did not parse, the counts into the
//!    manifest row, the errors object written to the archive, `COMMIT`.
//!
//! A failure anywhere rolls the whole transaction back; the loader retries it.
//!
//! The [`Warehouse`] trait is synchronous and runs on the loader's blocking thread: a load
//! is CPU work (parsing every line) around database I/O. This backend is written as async
//! code on tokio-postgres; its connection task runs on the collector's runtime, and each
//! trait call drives its future to completion with [`Handle::block_on`] on the calling
//! (blocking) thread, so parsing never occupies an async worker while COPY chunks go out
//! as they are ready.
//!
//! The connection is made on first use, not at start, so the collector starts (and keeps
//! accepting data) while PostgreSQL is down; any error drops the connection and the next
//! call connects afresh.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::runtime::Handle;
use tokio_postgres::Client;

use super::{LoadJob, LoadOutcome, Warehouse, WarehouseError, migrate};
use crate::archive::RejectedLine;
use crate::schema::{ColumnType, Schema, Value};

/// A PostgreSQL warehouse, connected on first use.
pub struct PostgresWarehouse {
    config: tokio_postgres::Config,
    /// Verified TLS (`sslmode=require`), or none: plain.
    tls: Option<super::pg_tls::PgTls>,
    runtime: Handle,
    client: Option<Client>,
    /// The collector's own tables (`alerts` among them) are known to be migrated.
    alerts_ready: bool,
}

fn pg(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> WarehouseError {
    move |error| WarehouseError::Postgres { action, error }
}

/// A COPY chunk is sent once it holds this much.
const CHUNK_BYTES: usize = 256 * 1024;

/// How long connecting may take, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent data unacknowledged this long means a dead server (Linux `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Serialises `CREATE … IF NOT EXISTS` between collectors sharing one database.
const DDL_LOCK: i64 = 0x7461_6c6c_7374_7265; // "tallstre"

/// Migration 1: the load manifest and rejected records.
const MANIFEST: &str = "
CREATE TABLE IF NOT EXISTS loads (
    load_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream      text   NOT NULL,
    object      text   NOT NULL,
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    inserted    bigint NOT NULL DEFAULT 0,
    duplicates  bigint NOT NULL DEFAULT 0,
    rejected    bigint NOT NULL DEFAULT 0,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    -- Receive time of the newest record in the object: what freshness is measured from.
    newest_received_at timestamptz,
    UNIQUE (stream, first_seq)
);
CREATE TABLE IF NOT EXISTS rejected_records (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    load_id       bigint NOT NULL REFERENCES loads (load_id),
    stream        text   NOT NULL,
    source        text   NOT NULL,
    source_offset bigint,
    received_at   timestamptz NOT NULL,
    reason        text   NOT NULL,
    line          bytea  NOT NULL
);
ALTER TABLE loads ADD COLUMN IF NOT EXISTS newest_received_at timestamptz;
";

/// Migration 2: each stream table's definitions, one row per version.
const TABLE_VERSIONS: &str = "
CREATE TABLE IF NOT EXISTS tollstream_table_versions (
    table_name  text   NOT NULL,
    version     bigint NOT NULL,
    stream      text   NOT NULL,
    definition  jsonb  NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, version)
);
";

/// Migration 3: alerts as fired (one row per alert id), values exact.
const ALERTS: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    alert_id     text PRIMARY KEY,
    rule         text NOT NULL,
    key          text NOT NULL,
    window_start timestamptz,
    window_end   timestamptz,
    month        text,
    value        numeric NOT NULL,
    threshold    numeric NOT NULL,
    fired_at     timestamptz NOT NULL,
    document     jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_fired_at ON alerts (fired_at);
";

/// PostgreSQL's spelling of column types, as `format_type` reports them.
struct Dialect;

impl migrate::Dialect for Dialect {
    fn type_name(&self, ty: &ColumnType) -> &'static str {
        match ty {
            ColumnType::Text => "text",
            ColumnType::Uuid => "uuid",
            ColumnType::Timestamp => "timestamp with time zone",
            ColumnType::Integer { .. } | ColumnType::Decimal { .. } => "bigint",
            ColumnType::Boolean => "boolean",
        }
    }

    fn can_drop_not_null(&self) -> bool {
        true
    }
}

impl PostgresWarehouse {
    /// A warehouse that connects with `config` when first used; its connection task runs
    /// on `runtime`. Calls must come from outside the runtime's async context (a blocking
    /// thread, as the loader's are).
    pub fn new(mut config: tokio_postgres::Config, runtime: Handle) -> Self {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tollstream-collector");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        Self {
            config,
            tls: None,
            runtime,
            client: None,
            alerts_ready: false,
        }
    }

    /// Connects through verified TLS with `tls` (the URL's `sslmode=require`); `None`
    /// (the default) connects plain.
    #[must_use]
    pub fn with_tls(mut self, tls: Option<super::pg_tls::PgTls>) -> Self {
        self.tls = tls;
        self
    }

    /// The connection, made now if there is none.
    async fn client(&mut self) -> Result<&mut Client, WarehouseError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            // The connection task is spawned on `self.runtime`: `run` drives this future
            // with its `block_on`, inside the runtime's context.
            let client = super::pg_tls::connect(&self.config, self.tls.as_ref())
                .await
                .map_err(pg("connect"))?;
            client
                .batch_execute(
                    "SET client_min_messages = warning; SET TIME ZONE 'UTC'; \
                     SET temp_buffers = '64MB'",
                )
                .await
                .map_err(pg("set up the session"))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    /// Runs `f` on the connection; any error drops the connection, so the next call starts
    /// from a fresh session (no half-finished COPY or transaction left on it).
    fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Self) -> Result<T, WarehouseError>,
    ) -> Result<T, WarehouseError> {
        let runtime = self.runtime.clone();
        let result = runtime.block_on(f(self));
        if result.is_err() {
            self.client = None;
        }
        result
    }

    async fn prepare_async(
        &mut self,
        stream: &str,
        table: &str,
        schema: &Schema,
    ) -> Result<(), WarehouseError> {
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .await
            .map_err(pg("lock for creating tables"))?;
        migrate_own_tables(&tx).await?;
        let existing = existing_table(&tx, table).await?;
        let plan = migrate::plan(stream, table, schema, existing.as_ref(), &Dialect)?;
        let changes = matches!(plan, migrate::Plan::Change { .. });
        let (statements, version) = migrate::steps(plan, stream, table, schema, &Dialect);
        for statement in statements {
            tx.batch_execute(&statement)
                .await
                .map_err(pg("create or change the stream table"))?;
        }
        if changes {
            // A staging table this session made before the change lacks the new columns.
            tx.batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.{}",
                staging_table(table)
            ))
            .await
            .map_err(pg("drop the old staging table"))?;
        }
        if version.is_some() {
            let definition = serde_json::to_string(schema)
                .map_err(|e| WarehouseError::Invalid(format!("recording the schema: {e}")))?;
            // Numbered after the table's last recorded version, also when the table was
            // dropped by hand and is made again.
            tx.execute(
                "INSERT INTO tollstream_table_versions (table_name, version, stream, definition) \
                 SELECT $1::text, COALESCE(MAX(version), 0) + 1, $2::text, $3::text::jsonb \
                 FROM tollstream_table_versions WHERE table_name = $1::text",
                &[&table, &stream, &definition],
            )
            .await
            .map_err(pg("record table version"))?;
        }
        tx.commit().await.map_err(pg("commit"))
    }

    /// Inserts an alert; on a database whose own tables were never migrated (no stream
    /// was prepared on it yet), migrates them first.
    async fn record_alert_async(
        &mut self,
        alert: &crate::alerts::Alert,
        document: &str,
    ) -> Result<(), WarehouseError> {
        let ready = self.alerts_ready;
        let client = self.client().await?;
        if !ready {
            let tx = client.transaction().await.map_err(pg("begin"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
                .await
                .map_err(pg("lock for creating tables"))?;
            migrate_own_tables(&tx).await?;
            tx.commit().await.map_err(pg("commit"))?;
        }
        let client = self.client().await?;
        let time = |t: Option<jiff::Timestamp>| t.map(|t| t.to_string());
        // Text parameters cast by the server: numeric keeps the decimal text exact.
        client
            .execute(
                "INSERT INTO alerts (alert_id, rule, key, window_start, window_end, month, \
                 value, threshold, fired_at, document) \
                 VALUES ($1, $2, $3, $4::text::timestamptz, $5::text::timestamptz, $6, \
                 $7::text::numeric, $8::text::numeric, $9::text::timestamptz, $10::text::jsonb) \
                 ON CONFLICT (alert_id) DO NOTHING",
                &[
                    &alert.alert_id,
                    &alert.rule,
                    &alert.key,
                    &time(alert.window_start),
                    &time(alert.window_end),
                    &alert.month,
                    &alert.value,
                    &alert.threshold,
                    &alert.fired_at.to_string(),
                    &document,
                ],
            )
            .await
            .map_err(pg("record alert"))?;
        self.alerts_ready = true;
        Ok(())
    }

    async fn last_loaded_async(&mut self, stream: &str) -> Result<u64, WarehouseError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE(MAX(last_seq), 0) FROM loads WHERE stream = $1",
                &[&stream],
            )
            .await
            .map_err(pg("read manifest"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn load_async(&mut self, job: &LoadJob<'_>) -> Result<LoadOutcome, WarehouseError> {
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        let first_seq = seq(job.first_seq)?;
        let last_seq = seq(job.last_seq)?;
        let newest = job.newest_received_at();
        let claimed = tx
            .query_opt(
                "INSERT INTO loads (stream, object, first_seq, last_seq, newest_received_at) \
                 VALUES ($1, $2, $3, $4, $5::text::timestamptz) \
                 ON CONFLICT (stream, first_seq) DO NOTHING RETURNING load_id",
                &[&job.stream, &job.object, &first_seq, &last_seq, &newest],
            )
            .await
            .map_err(pg("write manifest"))?;
        let Some(claimed) = claimed else {
            // Dropping the transaction rolls it back.
            return Ok(LoadOutcome {
                already_loaded: true,
                ..LoadOutcome::default()
            });
        };
        let load_id: i64 = claimed.get(0);
        let staging = staging_table(job.table);
        tx.batch_execute(&format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {staging} (LIKE {} INCLUDING DEFAULTS) \
             ON COMMIT DELETE ROWS",
            job.table
        ))
        .await
        .map_err(pg("create staging table"))?;
        let columns = column_list(job.schema);
        let sink = tx
            .copy_in::<_, Bytes>(&format!("COPY {staging} ({columns}) FROM STDIN"))
            .await
            .map_err(pg("start COPY"))?;
        let mut sink = std::pin::pin!(sink);
        let mut outcome = LoadOutcome::default();
        let mut rows = BytesMut::with_capacity(CHUNK_BYTES + 4096);
        let mut rejected_rows = BytesMut::new();
        let mut rejected = Vec::new();
        let mut values = Vec::with_capacity(job.schema.columns.len());
        let load_id_text = load_id.to_string();
        let mut staged_lines = 0u64;
        for record in job.records() {
            record.for_each_line(|line| match job.schema.parse(line.line, &mut values) {
                Ok(()) => {
                    for value in &values {
                        put_value(&mut rows, value);
                        rows.put_u8(b'\t');
                    }
                    put_text(&mut rows, line.source);
                    rows.put_u8(b'\t');
                    put_text(&mut rows, line.received_at);
                    rows.put_u8(b'\t');
                    rows.put_slice(load_id_text.as_bytes());
                    rows.put_u8(b'\n');
                    staged_lines += 1;
                }
                Err(reason) => {
                    put_rejected(&mut rejected_rows, load_id, job.stream, &line, &reason);
                    outcome.rejected += 1;
                    rejected.push(RejectedLine::new(
                        line.source,
                        line.offset,
                        line.received_at,
                        reason,
                        line.line,
                    ));
                }
            });
            // Sent while the next records are parsed.
            if rows.len() >= CHUNK_BYTES {
                sink.send(rows.split().freeze())
                    .await
                    .map_err(pg("COPY rows"))?;
            }
        }
        if !rows.is_empty() {
            sink.send(rows.split().freeze())
                .await
                .map_err(pg("COPY rows"))?;
        }
        let staged = sink.as_mut().finish().await.map_err(pg("finish COPY"))?;
        debug_assert_eq!(staged, staged_lines);
        outcome.inserted = tx
            .execute(
                &format!(
                    "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} \
                     ON CONFLICT {key} DO NOTHING",
                    table = job.table,
                    key = conflict_target(job.schema)
                ),
                &[],
            )
            .await
            .map_err(pg("insert rows"))?;
        outcome.duplicates = staged - outcome.inserted;
        if !rejected_rows.is_empty() {
            let sink = tx
                .copy_in::<_, Bytes>(
                    "COPY rejected_records (load_id, stream, source, source_offset, received_at, \
                     reason, line) FROM STDIN",
                )
                .await
                .map_err(pg("start COPY of rejected lines"))?;
            let mut sink = std::pin::pin!(sink);
            sink.send(rejected_rows.freeze())
                .await
                .map_err(pg("COPY rejected lines"))?;
            sink.as_mut()
                .finish()
                .await
                .map_err(pg("finish COPY of rejected lines"))?;
        }
        let counts = [outcome.inserted, outcome.duplicates, outcome.rejected].map(|n| n as i64);
        tx.execute(
            "UPDATE loads SET inserted = $1, duplicates = $2, rejected = $3, \
             loaded_at = clock_timestamp() WHERE load_id = $4",
            &[&counts[0], &counts[1], &counts[2], &load_id],
        )
        .await
        .map_err(pg("update manifest"))?;
        // Durable before the commit: a recorded load always has its errors object.
        outcome.errors_object = job.write_rejected(&rejected)?;
        crate::crashpoint::hit("load-uncommitted");
        tx.commit().await.map_err(pg("commit"))?;
        crate::crashpoint::hit("load-committed");
        Ok(outcome)
    }
}

impl Warehouse for PostgresWarehouse {
    fn prepare(
        &mut self,
        stream: &str,
        table: &str,
        schema: &Schema,
    ) -> Result<(), WarehouseError> {
        self.run(async |w| w.prepare_async(stream, table, schema).await)
    }

    fn last_loaded(&mut self, stream: &str) -> Result<u64, WarehouseError> {
        self.run(async |w| w.last_loaded_async(stream).await)
    }

    fn newest_received_at(&mut self, stream: &str) -> Result<Option<String>, WarehouseError> {
        self.run(async |w| {
            let row = w
                .client()
                .await?
                .query_opt(
                    "SELECT to_char(newest_received_at AT TIME ZONE 'UTC', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                     FROM loads WHERE stream = $1 ORDER BY last_seq DESC LIMIT 1",
                    &[&stream],
                )
                .await
                .map_err(pg("read manifest"))?;
            Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
        })
    }

    fn load(&mut self, job: &LoadJob<'_>) -> Result<LoadOutcome, WarehouseError> {
        self.run(async |w| w.load_async(job).await)
    }

    fn record_alert(
        &mut self,
        alert: &crate::alerts::Alert,
        document: &str,
    ) -> Result<(), WarehouseError> {
        self.run(async |w| w.record_alert_async(alert, document).await)
    }
}

/// A sequence number as PostgreSQL's `bigint`.
fn seq(n: u64) -> Result<i64, WarehouseError> {
    i64::try_from(n)
        .map_err(|_| WarehouseError::Invalid(format!("sequence number {n} exceeds bigint")))
}

/// Applies the migrations of the collector's own tables that this database lacks. Runs
/// inside the caller's transaction, under the DDL lock.
async fn migrate_own_tables(tx: &tokio_postgres::Transaction<'_>) -> Result<(), WarehouseError> {
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tollstream_migrations (
            version    bigint PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(pg("create the migrations table"))?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM tollstream_migrations",
            &[],
        )
        .await
        .map_err(pg("read migrations"))?
        .get(0);
    migrate::check_not_newer(applied)?;
    for version in applied + 1..=migrate::LATEST {
        let ddl = match version {
            1 => MANIFEST,
            2 => TABLE_VERSIONS,
            _ => ALERTS,
        };
        tx.batch_execute(ddl)
            .await
            .map_err(pg("apply a migration"))?;
        tx.execute(
            "INSERT INTO tollstream_migrations (version, name) VALUES ($1, $2)",
            &[&version, &migrate::MIGRATIONS[version as usize - 1]],
        )
        .await
        .map_err(pg("record migration"))?;
    }
    Ok(())
}

/// The stream table as it is, or none.
async fn existing_table(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<Option<migrate::ExistingTable>, WarehouseError> {
    let columns: Vec<migrate::ExistingColumn> = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
             AND NOT a.attisdropped ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(pg("read table columns"))?
        .iter()
        .map(|r| migrate::ExistingColumn {
            name: r.get(0),
            sql_type: r.get(1),
            not_null: r.get(2),
        })
        .collect();
    if columns.is_empty() {
        return Ok(None);
    }
    let recorded = tx
        .query_opt(
            "SELECT version, definition::text FROM tollstream_table_versions \
             WHERE table_name = $1 ORDER BY version DESC LIMIT 1",
            &[&table],
        )
        .await
        .map_err(pg("read table versions"))?;
    let recorded = match recorded {
        None => None,
        Some(row) => {
            let version: i64 = row.get(0);
            let definition: String = row.get(1);
            Some((
                version,
                super::sqlite::recorded_schema(table, version, &definition)?,
            ))
        }
    };
    let primary_key: Vec<String> = tx
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&table],
        )
        .await
        .map_err(pg("read the table's primary key"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(migrate::ExistingTable {
        columns,
        primary_key,
        recorded,
    }))
}

/// The temporary table a load of `table` stages its rows in.
fn staging_table(table: &str) -> String {
    const PREFIX: &str = "tollstream_staging_";
    // Identifiers are at most 63 bytes: a long table name is cut and told apart by a hash.
    if PREFIX.len() + table.len() <= 63 {
        format!("{PREFIX}{table}")
    } else {
        format!(
            "{PREFIX}{}_{:08x}",
            &table[..35],
            crc32fast::hash(table.as_bytes())
        )
    }
}

/// `(key columns)`, or nothing for a stream without a natural key.
fn conflict_target(schema: &Schema) -> String {
    if schema.unique_key.is_empty() {
        String::new()
    } else {
        format!("({})", schema.unique_key.join(", "))
    }
}

/// The columns a load writes, in COPY order.
fn column_list(schema: &Schema) -> String {
    let mut list: Vec<&str> = schema.columns.iter().map(|c| c.column.as_str()).collect();
    list.extend(["source", "received_at", "load_id"]);
    list.join(", ")
}

/// Appends `text` escaped for COPY's text format.
fn put_text(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        out.put_slice(escaped);
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
}

fn put_value(out: &mut BytesMut, value: &Value) {
    match value {
        Value::Text(text) => put_text(out, text),
        Value::Integer(n) => {
            let _ = write!(Writer(out), "{n}");
        }
        // Microseconds, all that timestamptz keeps (SQLite's text keeps milliseconds).
        Value::Timestamp(ts) => {
            let _ = write!(Writer(out), "{}", ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"));
        }
        Value::Boolean(b) => out.put_u8(if *b { b't' } else { b'f' }),
        Value::Null => out.put_slice(b"\\N"),
    }
}

/// One `rejected_records` row in COPY text format; the line as `bytea` hex.
fn put_rejected(
    out: &mut BytesMut,
    load_id: i64,
    stream: &str,
    line: &super::SourceLine<'_>,
    reason: &str,
) {
    let _ = write!(Writer(out), "{load_id}\t");
    put_text(out, stream);
    out.put_u8(b'\t');
    put_text(out, line.source);
    out.put_u8(b'\t');
    match line.offset.and_then(|o| i64::try_from(o).ok()) {
        Some(offset) => {
            let _ = write!(Writer(out), "{offset}");
        }
        None => out.put_slice(b"\\N"),
    }
    out.put_u8(b'\t');
    put_text(out, line.received_at);
    out.put_u8(b'\t');
    put_text(out, reason);
    // bytea's text form is `\x` and hex digits; COPY needs its backslash doubled.
    out.put_slice(b"\t\\\\x");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in line.line {
        out.put_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
    out.put_u8(b'\n');
}

/// `fmt::Write` into a `BytesMut`.
struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_exactly_its_four_special_characters() {
        let mut out = BytesMut::new();
        put_text(&mut out, "a\\b\tc\nd\re,f\u{e9}");
        assert_eq!(&out[..], "a\\\\b\\tc\\nd\\re,f\u{e9}".as_bytes());
    }

    #[test]
    fn staging_tables_have_valid_distinct_names() {
        assert_eq!(
            staging_table("toll_transactions"),
            "tollstream_staging_toll_transactions"
        );
        let long_a = format!("{}a", "x".repeat(62));
        let long_b = format!("{}b", "x".repeat(62));
        let (a, b) = (staging_table(&long_a), staging_table(&long_b));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_toll_table_has_native_types_and_its_natural_key() {
        let ddl = migrate::create_table_sql("toll_transactions", &Schema::toll(), &Dialect);
        for column in [
            "event_time timestamp with time zone NOT NULL,",
            "transaction_id uuid NOT NULL,",
            "lane bigint NOT NULL,",
            "amount_cents bigint NOT NULL,",
            "received_at timestamp with time zone NOT NULL,",
            "load_id bigint NOT NULL,\n    PRIMARY KEY (transaction_id)\n);",
            "CREATE INDEX IF NOT EXISTS toll_transactions_event_time ON toll_transactions (event_time);",
        ] {
            assert!(ddl.contains(column), "{column} in {ddl}");
        }
    }
}
