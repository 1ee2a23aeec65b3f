//! Stream schemas from the config in both warehouses: typed rows from CSV and JSON lines,
//! tables that follow the config (columns added, versions recorded), and changes that are
//! refused. SQLite in a temp dir; PostgreSQL on a throwaway cluster (see
//! `tollstream_tests::postgres`), or on `TOLLSTREAM_TEST_PG_URL`.

use tollstream_collector::archive::Archive;
use tollstream_collector::schema::{Schema, SchemaConfig};
use tollstream_collector::wal::WalRecord;
use tollstream_collector::warehouse::{
    LoadJob, LoadOutcome, PostgresWarehouse, SqliteWarehouse, Warehouse, WarehouseError,
};
use tollstream_tests::postgres::TestPostgres;

/// Rows read back, every value as text.
type Rows = Vec<Vec<Option<String>>>;

/// One warehouse under test and a way to read it back.
struct Backend {
    name: &'static str,
    warehouse: Box<dyn Warehouse>,
    read: Box<dyn FnMut(&str) -> Rows>,
    archive: Archive,
    seq: u64,
    _keep: Box<dyn std::any::Any>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.db");
    let warehouse = SqliteWarehouse::open(&path).expect("open");
    let reader = rusqlite::Connection::open(&path).expect("reader");
    Backend {
        name: "sqlite",
        warehouse: Box::new(warehouse),
        read: Box::new(move |sql| {
            let mut stmt = reader.prepare(sql).expect(sql);
            let n = stmt.column_count();
            stmt.query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => None,
                            rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                            rusqlite::types::ValueRef::Text(t) => {
                                Some(String::from_utf8_lossy(t).into_owned())
                            }
                            other => Some(format!("{other:?}")),
                        })
                    })
                    .collect()
            })
            .expect(sql)
            .collect::<Result<_, _>>()
            .expect(sql)
        }),
        archive: Archive::new(&dir.path().join("archive")),
        seq: 0,
        _keep: Box::new(dir),
    }
}

fn postgres() -> Backend {
    let pg = TestPostgres::start().expect("PostgreSQL for the test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let warehouse =
        PostgresWarehouse::new(pg.url().parse().expect("url"), runtime.handle().clone());
    let mut client = pg.client().expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    Backend {
        name: "postgres",
        warehouse: Box::new(warehouse),
        read: Box::new(move |sql| {
            // The simple query protocol returns every value as text, in column order.
            client
                .simple_query(sql)
                .expect(sql)
                .iter()
                .filter_map(|message| match message {
                    postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        }),
        archive: Archive::new(&dir.path().join("archive")),
        seq: 0,
        _keep: Box::new((pg, runtime, dir)),
    }
}

impl Backend {
    fn prepare(&mut self, schema: &Schema) -> Result<(), WarehouseError> {
        self.warehouse.prepare("s", "t", schema)
    }

    /// Loads `lines` as one archive object.
    fn load(&mut self, schema: &Schema, lines: &str) -> LoadOutcome {
        self.seq += 1;
        let record = WalRecord {
            seq: self.seq,
            received_at_us: 1_764_090_000_000_000,
            source: "booth/a".into(),
            range: Some((self.seq * 10_000, self.seq * 10_000 + lines.len() as u64)),
            records: lines.matches('\n').count() as u32,
            data: lines.as_bytes().to_vec().into(),
        };
        let object = self.archive.write("s", &[record]).expect("archived");
        let (index, data) = Archive::read(&object.path).expect("readable");
        self.warehouse
            .load(&LoadJob {
                stream: "s",
                table: "t",
                schema,
                object: format!("s/{}", self.seq),
                first_seq: object.first_seq,
                last_seq: object.last_seq,
                index,
                data,
                archive: &self.archive,
            })
            .expect("loaded")
    }

    fn rows(&mut self, sql: &str) -> Rows {
        (self.read)(sql)
    }
}

fn schema(yaml: &str) -> Schema {
    yaml_serde::from_str::<SchemaConfig>(yaml)
        .expect("schema yaml")
        .build()
        .expect("valid schema")
}

fn both(test: impl Fn(Backend)) {
    test(sqlite());
    test(postgres());
}

fn text(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

#[test]
fn a_json_stream_loads_typed_rows_and_rejects_what_does_not_fit() {
    let payments = schema(
        "format: json\n\
         columns:\n\
         - { name: id, type: uuid }\n\
         - { name: amount, type: decimal, scale: 2, column: amount_cents }\n\
         - { name: settled, type: boolean }\n\
         - { name: lane, type: integer, min: 0, max: 9, optional: true }\n\
         - { name: at, type: timestamp, index: true }\n\
         unique_key: id\n",
    );
    both(|mut backend| {
        backend.prepare(&payments).expect("table created");
        let lines = concat!(
            r#"{"id":"0b9a3c4e-6f1d-4e8a-9a51-000000000001","amount":"12.50","settled":true,"lane":3,"at":"2026-11-25T14:03:27.512-03:00"}"#,
            "\n",
            r#"{"at":"2026-11-25T17:00:00Z","settled":false,"amount":0.07,"id":"0B9A3C4E-6F1D-4E8A-9A51-000000000002"}"#,
            "\n",
            r#"{"id":"0b9a3c4e-6f1d-4e8a-9a51-000000000003","amount":1.234,"settled":true,"at":"2026-11-25T17:00:00Z"}"#,
            "\n",
            r#"{"id":"0b9a3c4e-6f1d-4e8a-9a51-000000000001","amount":1,"settled":true,"at":"2026-11-25T17:00:00Z"}"#,
            "\n",
        );
        let outcome = backend.load(&payments, lines);
        assert_eq!(
            (outcome.inserted, outcome.rejected, outcome.duplicates),
            (2, 1, 1),
            "{}",
            backend.name
        );
        let rows = backend.rows("SELECT amount_cents, lane FROM t ORDER BY id");
        assert_eq!(
            rows,
            [text(&[Some("1250"), Some("3")]), text(&[Some("7"), None])],
            "{}",
            backend.name
        );
        let reasons = backend.rows("SELECT reason FROM rejected_records");
        assert_eq!(
            reasons,
            [text(&[Some(
                "amount: \"1.234\" is not a decimal number with at most 2 places"
            )])],
            "{}",
            backend.name
        );
    });
}

#[test]
fn a_column_added_in_the_config_is_added_to_the_table_and_versions_are_recorded() {
    let v1 = schema(
        "columns:\n\
         - { name: booth, type: text }\n\
         - { name: n, type: integer }\n\
         unique_key: [booth, n]\n",
    );
    let v2 = schema(
        "columns:\n\
         - { name: booth, type: text }\n\
         - { name: n, type: integer }\n\
         - { name: paid, type: boolean }\n\
         - { name: note, type: text, optional: true }\n\
         unique_key: [booth, n]\n",
    );
    both(|mut backend| {
        backend.prepare(&v1).expect("created");
        backend.load(&v1, "PLZ-1,1\nPLZ-1,2\n");
        backend.prepare(&v1).expect("unchanged");
        backend.prepare(&v2).expect("columns added");
        backend.prepare(&v2).expect("again: unchanged");
        let outcome = backend.load(&v2, "PLZ-1,3,yes,\"a, quoted note\"\nPLZ-1,1,no,\n");
        assert_eq!((outcome.inserted, outcome.duplicates), (1, 1));
        let rows = backend.rows("SELECT booth, n, note FROM t ORDER BY n");
        assert_eq!(
            rows,
            [
                text(&[Some("PLZ-1"), Some("1"), None]),
                text(&[Some("PLZ-1"), Some("2"), None]),
                text(&[Some("PLZ-1"), Some("3"), Some("a, quoted note")]),
            ],
            "{}",
            backend.name
        );
        let versions =
            backend.rows("SELECT version, stream FROM tollstream_table_versions ORDER BY version");
        assert_eq!(
            versions,
            [text(&[Some("1"), Some("s")]), text(&[Some("2"), Some("s")])],
            "{}",
            backend.name
        );
    });
}

#[test]
fn incompatible_changes_are_refused_and_change_nothing() {
    let toll = Schema::toll();
    both(|mut backend| {
        backend.prepare(&toll).expect("created");
        let mut rescaled = SchemaConfig::toll();
        rescaled.columns[7].scale = Some(3);
        let error = backend
            .prepare(&rescaled.build().expect("valid"))
            .expect_err("refused");
        assert!(
            matches!(error, WarehouseError::Incompatible(_)),
            "{}: {error}",
            backend.name
        );
        assert!(
            error
                .to_string()
                .contains("stores column amount_cents as decimal with scale 2"),
            "{error}"
        );
        let mut fewer = SchemaConfig::toll();
        fewer.columns.remove(5);
        let error = backend
            .prepare(&fewer.build().expect("valid"))
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("ALTER TABLE t DROP COLUMN transponder_id"),
            "{error}"
        );
        let mut optional = SchemaConfig::toll();
        optional.columns[4].optional = true;
        let optional = optional.build().expect("valid");
        match backend.name {
            // SQLite cannot drop NOT NULL in place; PostgreSQL can.
            "sqlite" => {
                backend.prepare(&optional).expect_err("refused");
            }
            _ => backend.prepare(&optional).expect("NOT NULL dropped"),
        }
        let versions = backend.rows("SELECT COUNT(*) FROM tollstream_table_versions");
        let expected = if backend.name == "sqlite" { "1" } else { "2" };
        assert_eq!(versions, [text(&[Some(expected)])], "{}", backend.name);
        let migrations = backend.rows("SELECT COUNT(*) FROM tollstream_migrations");
        assert_eq!(migrations, [text(&[Some("3")])], "{}", backend.name);
        assert_eq!(
            backend.rows("SELECT COUNT(*) FROM alerts"),
            [text(&[Some("0")])]
        );
    });
}

#[test]
fn a_sqlite_warehouse_migrated_by_a_newer_collector_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.db");
    drop(SqliteWarehouse::open(&path).expect("created"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "INSERT INTO tollstream_migrations (version, name) VALUES (99, 'from the future')",
        [],
    )
    .expect("future migration");
    let Err(error) = SqliteWarehouse::open(&path) else {
        panic!("a newer database opened")
    };
    assert!(
        error
            .to_string()
            .contains("at migration 99, newer than this collector knows"),
        "{error}"
    );
}
