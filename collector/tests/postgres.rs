//! The PostgreSQL warehouse against a real server: a throwaway cluster per test (see
//! `tollstream_tests::postgres`), or a database on `TOLLSTREAM_TEST_PG_URL`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tollstream_collector::archive::{Archive, ArchiveObject, ERRORS_DIR};
use tollstream_collector::schema::Schema;
use tollstream_collector::wal::WalRecord;
use tollstream_collector::warehouse::pg_tls::PgTls;
use tollstream_collector::warehouse::{
    LoadJob, LoadOutcome, LoadProgress, Loader, PostgresWarehouse, Warehouse, WarehouseError,
};
use tollstream_tests::postgres::TestPostgres;

/// A valid toll line whose transaction id ends in `n`.
fn good(n: u32) -> String {
    format!(
        "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-{n:012},PLZ-017,3,C0001234,TX-0088231,2,12.5{}\n",
        n % 10
    )
}

fn record(seq: u64, source: &str, start: Option<u64>, lines: &[u8]) -> WalRecord {
    WalRecord {
        seq,
        received_at_us: 1_764_090_000_000_000 + seq as i64 * 1_000_000,
        source: source.into(),
        range: start.map(|s| (s, s + lines.len() as u64)),
        records: lines.iter().filter(|&&b| b == b'\n').count() as u32,
        data: lines.to_vec().into(),
    }
}

/// Records 7 and 8: three good lines, one line that is not a toll line, one that is not
/// UTF-8 and has a tab and a backslash (COPY's escapes), and a good line.
fn object_with_bad_lines(archive: &Archive) -> ArchiveObject {
    let first = [good(1), "not a toll line\n".into(), good(2)].concat();
    let second = [b"\xff,b\\a\td\r\n".to_vec(), good(3).into_bytes()].concat();
    archive
        .write(
            "s",
            &[
                record(7, "booth/a", Some(1000), first.as_bytes()),
                record(8, "-", None, &second),
            ],
        )
        .expect("written")
}

/// The backend and the runtime its connection task runs on.
struct Setup {
    _runtime: tokio::runtime::Runtime,
    warehouse: PostgresWarehouse,
    dir: tempfile::TempDir,
    archive: Archive,
}

fn setup(pg: &TestPostgres) -> Setup {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config = pg.url().parse().expect("url");
    let mut warehouse = PostgresWarehouse::new(config, runtime.handle().clone());
    warehouse
        .prepare("s", "t", &Schema::toll())
        .expect("prepare");
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = Archive::new(&dir.path().join("archive"));
    Setup {
        _runtime: runtime,
        warehouse,
        dir,
        archive,
    }
}

fn load(
    warehouse: &mut PostgresWarehouse,
    archive: &Archive,
    object: &ArchiveObject,
) -> Result<LoadOutcome, WarehouseError> {
    let (index, data) = Archive::read(&object.path).expect("readable");
    warehouse.load(&LoadJob {
        stream: "s",
        table: "t",
        schema: &Schema::toll(),
        object: format!("s/{}-{}.gz", object.first_seq, object.last_seq),
        first_seq: object.first_seq,
        last_seq: object.last_seq,
        index,
        data,
        archive,
    })
}

fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).expect(sql).get(0)
}

#[test]
fn an_object_loads_with_typed_rows_rejected_lines_and_its_manifest_row() {
    let pg = TestPostgres::start().expect("PostgreSQL for the test");
    let Setup {
        mut warehouse,
        archive,
        _runtime,
        dir: _dir,
    } = setup(&pg);
    let object = object_with_bad_lines(&archive);
    let outcome = load(&mut warehouse, &archive, &object).expect("loaded");
    assert_eq!(
        (
            outcome.inserted,
            outcome.duplicates,
            outcome.rejected,
            outcome.already_loaded
        ),
        (3, 0, 2, false)
    );
    let errors = outcome.errors_object.expect("an errors object");
    assert!(errors.exists());
    assert_eq!(Archive::read_rejected(&errors).expect("read").len(), 2);

    let mut db = pg.client().expect("client");
    // Typed columns: timestamptz in UTC, uuid, bigint cents.
    let row = db
        .query_one(
            "SELECT to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), \
             transaction_id::text, pg_typeof(transaction_id)::text, lane, amount_cents, \
             pg_typeof(amount_cents)::text, source, \
             to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), load_id \
             FROM t WHERE transaction_id = '0b9a3c4e-6f1d-4e8a-9a51-000000000001'",
            &[],
        )
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "2026-11-25 17:03:27.512");
    assert_eq!(row.get::<_, String>(2), "uuid");
    assert_eq!(row.get::<_, i64>(3), 3);
    assert_eq!(row.get::<_, i64>(4), 1251);
    assert_eq!(row.get::<_, String>(5), "bigint");
    assert_eq!(row.get::<_, String>(6), "booth/a");
    assert_eq!(row.get::<_, String>(7), "2025-11-25 17:00:07");
    let load_id: i64 = row.get(8);
    // The manifest row, in the same transaction.
    let manifest = db
        .query_one(
            "SELECT load_id, stream, object, first_seq, last_seq, inserted, duplicates, rejected, \
             newest_received_at = '2025-11-25T17:00:08Z'::timestamptz FROM loads",
            &[],
        )
        .expect("one manifest row");
    assert_eq!(manifest.get::<_, i64>(0), load_id);
    assert_eq!(manifest.get::<_, String>(2), "s/7-8.gz");
    let numbers: Vec<i64> = (3..8).map(|i| manifest.get(i)).collect();
    assert_eq!(numbers, [7, 8, 3, 0, 2]);
    assert!(manifest.get::<_, bool>(8), "newest_received_at");
    // Rejected lines, byte for byte, with source, offset and reason.
    type Rejected = (String, Option<i64>, String, Vec<u8>, i64);
    let rejected: Vec<Rejected> = db
        .query(
            "SELECT source, source_offset, reason, line, load_id FROM rejected_records ORDER BY id",
            &[],
        )
        .expect("rejected")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0].0, "booth/a");
    assert_eq!(rejected[0].1, Some(1000 + good(1).len() as i64));
    assert!(
        rejected[0].2.contains("comma-separated"),
        "{:?}",
        rejected[0]
    );
    assert_eq!(rejected[0].3, b"not a toll line");
    assert_eq!(rejected[1].1, None);
    assert!(rejected[1].2.contains("UTF-8"), "{:?}", rejected[1]);
    assert_eq!(rejected[1].3, b"\xff,b\\a\td\r");
    assert!(rejected.iter().all(|r| r.4 == load_id));
}

#[test]
fn text_with_tabs_backslashes_and_newline_escapes_arrives_unchanged() {
    let pg = TestPostgres::start().expect("PostgreSQL for the test");
    let mut s = setup(&pg);
    let line = good(1)
        .replace("PLZ-017", "PLZ\\017\t\\n\\N")
        .replace("C0001234", "\\.");
    let source = "booth/\\a\tb";
    let object = s
        .archive
        .write("s", &[record(1, source, Some(0), line.as_bytes())])
        .expect("written");
    let outcome = load(&mut s.warehouse, &s.archive, &object).expect("loaded");
    assert_eq!(outcome.inserted, 1);
    let mut db = pg.client().expect("client");
    let row = db
        .query_one("SELECT booth_id, customer_id, source FROM t", &[])
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "PLZ\\017\t\\n\\N");
    assert_eq!(row.get::<_, String>(1), "\\.");
    assert_eq!(row.get::<_, String>(2), source);
}

#[test]
fn loading_an_object_again_changes_nothing() {
    let pg = TestPostgres::start().expect("PostgreSQL for the test");
    let mut s = setup(&pg);
    let object = object_with_bad_lines(&s.archive);
    load(&mut s.warehouse, &s.archive, &object).expect("loaded");
    let again = load(&mut s.warehouse, &s.archive, &object).expect("no-op");
    assert_eq!(
        again,
        LoadOutcome {
            already_loaded: true,
            ..LoadOutcome::default()
        }
    );
    let mut db = pg.client().expect("client");
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM loads"), 1);
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM t"), 3);
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM rejected_records"), 2);
    assert_eq!(s.warehouse.last_loaded("s").expect("manifest"), 8);
    assert_eq!(s.warehouse.last_loaded("other").expect("manifest"), 0);
    // A second collector (another connection) preparing the same tables is a no-op too.
    let mut other =
        PostgresWarehouse::new(pg.url().parse().expect("url"), s._runtime.handle().clone());
    other
        .prepare("s", "t", &Schema::toll())
        .expect("prepared again");
    assert_eq!(other.last_loaded("s").expect("manifest"), 8);
    drop(s.dir);
}

#[test]
fn keys_already_loaded_are_counted_as_duplicates_and_do_not_abort_the_load() {
    let pg = TestPostgres::start().expect("PostgreSQL for the test");
    let mut s = setup(&pg);
    let first = s
        .archive
        .write(
            "s",
            &[record(
                1,
                "booth/a",
                Some(0),
                [good(1), good(2)].concat().as_bytes(),
            )],
        )
        .expect("written");
    assert_eq!(
        load(&mut s.warehouse, &s.archive, &first)
            .expect("loaded")
            .inserted,
        2
    );
    // Keys 1 and 2 again (sent as a new source), key 3 new but twice in this object.
    let lines = [good(2), good(3), good(1), good(3)].concat();
    let second = s
        .archive
        .write("s", &[record(2, "booth/b", Some(0), lines.as_bytes())])
        .expect("written");
    let outcome = load(&mut s.warehouse, &s.archive, &second).expect("loaded");
    assert_eq!(
        (outcome.inserted, outcome.duplicates, outcome.rejected),
        (1, 3, 0)
    );
    let mut db = pg.client().expect("client");
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM t"), 3);
    assert_eq!(
        count(&mut db, "SELECT COUNT(*) FROM t WHERE source = 'booth/a'"),
        2,
        "the rows loaded first stay"
    );
    assert_eq!(
        count(&mut db, "SELECT SUM(duplicates)::bigint FROM loads"),
        3
    );
}

#[test]
fn a_load_whose_errors_object_cannot_be_written_leaves_nothing_and_succeeds_when_retried() {
    let pg = TestPostgres::start().expect("PostgreSQL for the test");
    let mut s = setup(&pg);
    let object = object_with_bad_lines(&s.archive);
    let blocker = s.dir.path().join("archive").join(ERRORS_DIR);
    std::fs::write(&blocker, b"in the way").expect("block the errors tree");
    let error = load(&mut s.warehouse, &s.archive, &object).expect_err("fails");
    assert!(error.to_string().contains("errors"), "{error}");
    let mut db = pg.client().expect("client");
    for table in ["loads", "t", "rejected_records"] {
        assert_eq!(
            count(&mut db, &format!("SELECT COUNT(*) FROM {table}")),
            0,
            "nothing in {table}"
        );
    }
    std::fs::remove_file(&blocker).expect("unblock");
    let outcome = load(&mut s.warehouse, &s.archive, &object).expect("retried");
    assert_eq!((outcome.inserted, outcome.rejected), (3, 2));
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM loads"), 1);
}

/// Objects of the default buffer size (8 MiB, 80,000 lines in 16 WAL records): several COPY
/// chunks each. Prints rows/s into PostgreSQL and, for the same objects, into SQLite (run
/// with `--release --nocapture` for figures worth reading).
#[test]
fn large_objects_stream_in_chunks_and_load_every_line() {
    const LINES: u32 = 80_000;
    let pg = TestPostgres::start().expect("PostgreSQL for the test");
    let mut s = setup(&pg);
    let objects: Vec<ArchiveObject> = (0..2u32)
        .map(|o| {
            let lines: String = (o * LINES..(o + 1) * LINES).map(good).collect();
            let records: Vec<WalRecord> = lines
                .as_bytes()
                .chunks(good(0).len() * 5000)
                .enumerate()
                .map(|(i, chunk)| {
                    let seq = u64::from(o) * 100 + i as u64 + 1;
                    let start =
                        (u64::from(o) * u64::from(LINES) + i as u64 * 5000) * good(0).len() as u64;
                    record(seq, "booth/a", Some(start), chunk)
                })
                .collect();
            s.archive.write("s", &records).expect("written")
        })
        .collect();
    let mut sqlite =
        tollstream_collector::warehouse::SqliteWarehouse::open(&s.dir.path().join("w.db"))
            .expect("sqlite");
    sqlite.prepare("s", "t", &Schema::toll()).expect("prepare");
    for (name, warehouse) in [
        ("PostgreSQL", &mut s.warehouse as &mut dyn Warehouse),
        ("SQLite", &mut sqlite as &mut dyn Warehouse),
    ] {
        for (i, object) in objects.iter().enumerate() {
            let (index, data) = Archive::read(&object.path).expect("readable");
            #[allow(clippy::disallowed_types)] // A figure, not a deadline.
            let started = std::time::Instant::now();
            let outcome = warehouse
                .load(&LoadJob {
                    stream: "s",
                    table: "t",
                    schema: &Schema::toll(),
                    object: format!("s/{i}.gz"),
                    first_seq: object.first_seq,
                    last_seq: object.last_seq,
                    index,
                    data,
                    archive: &s.archive,
                })
                .expect("loaded");
            let took = started.elapsed();
            assert_eq!(outcome.inserted, u64::from(LINES));
            eprintln!(
                "{name}: object {i} of {LINES} rows loaded in {took:.2?} ({:.0} rows/s)",
                f64::from(LINES) / took.as_secs_f64()
            );
        }
    }
    let mut db = pg.client().expect("client");
    assert_eq!(
        count(&mut db, "SELECT COUNT(DISTINCT transaction_id) FROM t"),
        2 * i64::from(LINES)
    );
}

/// Password authentication (as the test cluster requires over TCP): a wrong password is an
/// error that says so without showing it, and nothing is left half-done.
#[test]
fn a_wrong_password_is_an_error_naming_the_cause_not_the_password() {
    let pg = TestPostgres::start_cluster().expect("PostgreSQL for the test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (url, password) = pg.url_and_password();
    assert!(password.is_some(), "the test cluster asks for a password");
    let mut config: tokio_postgres::Config = url.parse().expect("url");
    config.password("wrong-hunter2");
    let mut warehouse = PostgresWarehouse::new(config.clone(), runtime.handle().clone());
    let error = warehouse
        .prepare("s", "t", &Schema::toll())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    config.password(password.expect("password"));
    let mut warehouse = PostgresWarehouse::new(config, runtime.handle().clone());
    warehouse
        .prepare("s", "t", &Schema::toll())
        .expect("the right password works");
}

/// PostgreSQL down when the loader starts, and again mid-way: the loader retries, never
/// skips, and every object loads once the server is back.
#[test]
fn the_loader_waits_for_a_server_that_is_down_and_loads_everything_once_it_is_up() {
    let mut pg = TestPostgres::start_cluster().expect("PostgreSQL for the test");
    pg.stop().expect("stopped");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("archive");
    let archive = Archive::new(&root);
    archive
        .write("s", &[record(1, "booth/a", Some(0), good(1).as_bytes())])
        .expect("written");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let warehouse =
        PostgresWarehouse::new(pg.url().parse().expect("url"), runtime.handle().clone());
    let warehouse = Arc::new(Mutex::new(warehouse));
    let (objects_tx, objects) = mpsc::channel(4);
    let loader = Loader {
        // No buffer here: everything in the archive counts as archived.
        archived: tokio::sync::watch::channel(u64::MAX).1,
        stopping: tokio_util::sync::CancellationToken::new(),
        stream: "s".into(),
        table: "t".into(),
        schema: Arc::new(Schema::toll()),
        archive_root: root.clone(),
        archive: archive.clone(),
        warehouse: warehouse.clone(),
        objects,
        progress: LoadProgress::new(
            "s",
            Arc::new(tollstream_collector::clock::SystemClock),
            Default::default(),
        ),
    };
    let running = runtime.spawn(loader.run());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!running.is_finished(), "still retrying, not giving up");
    pg.restart().expect("started");
    let manifest = |pg: &TestPostgres| -> i64 {
        pg.client()
            .ok()
            .and_then(|mut c| {
                c.query_one("SELECT COALESCE(MAX(last_seq), 0) FROM loads", &[])
                    .ok()
            })
            .map_or(0, |r| r.get(0))
    };
    tollstream_tests::harness::wait_for("the first object loaded", Duration::from_secs(60), || {
        manifest(&pg) == 1
    })
    .expect("loaded once the server is up");
    // Down again while a new object arrives.
    pg.stop().expect("stopped again");
    let object = archive
        .write("s", &[record(2, "booth/a", Some(100), good(2).as_bytes())])
        .expect("written");
    objects_tx.blocking_send(object).expect("sent");
    std::thread::sleep(Duration::from_millis(1500));
    pg.restart().expect("started again");
    tollstream_tests::harness::wait_for(
        "the second object loaded",
        Duration::from_secs(60),
        || manifest(&pg) == 2,
    )
    .expect("loaded once the server is back");
    drop(objects_tx);
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), running).await })
        .expect("loader stops")
        .expect("task")
        .expect("loader");
    let mut db = pg.client().expect("client");
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM t"), 2);
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM loads"), 2);
}

/// A warehouse at `url` through verified TLS against the CA certificate `ca_pem` (written
/// to a file in `dir`, as `warehouse.ca_file` would name it).
fn tls_warehouse(
    url: &str,
    ca_pem: &str,
    dir: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
) -> PostgresWarehouse {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write the CA file");
    let tls = PgTls::new(Some(&ca_file)).expect("a usable CA file");
    PostgresWarehouse::new(url.parse().expect("url"), runtime.handle().clone()).with_tls(Some(tls))
}

/// Whether the server sees the session of `application_name` as encrypted.
fn encrypted(db: &mut postgres::Client, application_name: &str) -> Option<bool> {
    db.query_opt(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = $1",
        &[&application_name],
    )
    .expect("pg_stat_ssl")
    .map(|row| row.get(0))
}

/// Issue 5: `sslmode=require` with the CA that signed the server's certificate loads over
/// TLS (the server says the loader's session is encrypted); `sslmode=disable` against the
/// same server stays plain.
#[test]
fn sslmode_require_loads_over_verified_tls_and_disable_stays_plain() {
    let pg = TestPostgres::start_tls_cluster().expect("PostgreSQL with TLS for the test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = Archive::new(&dir.path().join("archive"));
    let url = format!("{}?sslmode=require&application_name=tls_loader", pg.url());
    let ca_pem = pg.ca_pem().expect("a TLS cluster has a CA");
    let mut warehouse = tls_warehouse(&url, ca_pem, dir.path(), &runtime);
    warehouse
        .prepare("s", "t", &Schema::toll())
        .expect("prepared over TLS");
    let object = object_with_bad_lines(&archive);
    let outcome = load(&mut warehouse, &archive, &object).expect("loaded over TLS");
    assert_eq!((outcome.inserted, outcome.rejected), (3, 2));
    let mut db = pg.client().expect("client");
    assert_eq!(encrypted(&mut db, "tls_loader"), Some(true));
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM t"), 3);

    let url = format!("{}?sslmode=disable&application_name=plain_loader", pg.url());
    let mut plain = PostgresWarehouse::new(url.parse().expect("url"), runtime.handle().clone());
    assert_eq!(plain.last_loaded("s").expect("plain still works"), 8);
    assert_eq!(encrypted(&mut db, "plain_loader"), Some(false));
}

/// Issue 5: a server certificate that does not verify fails the connection, and the error
/// names the problem (and the CA file), for the loader's WARN log and `/readyz`: a CA that
/// did not sign it, or a host name it was not issued for.
#[test]
fn tls_with_a_server_certificate_that_does_not_verify_fails_with_the_reason() {
    let pg = TestPostgres::start_tls_cluster().expect("PostgreSQL with TLS for the test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let other_ca = tollstream_tests::postgres::unrelated_ca_pem().expect("a CA");
    let url = format!("{}?sslmode=require", pg.url());
    let mut warehouse = tls_warehouse(&url, &other_ca, dir.path(), &runtime);
    let error = warehouse
        .prepare("s", "t", &Schema::toll())
        .expect_err("an unknown issuer is refused")
        .to_string();
    assert!(
        error.contains("warehouse connect: error performing TLS handshake: invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    assert!(
        error.contains("server 127.0.0.1") && error.contains("ca.pem"),
        "{error}"
    );
    // The right CA, but a host name the certificate does not carry (the address is the
    // server's: only the name is wrong).
    let (url, password) = pg.url_and_password();
    let port = url
        .parse::<tokio_postgres::Config>()
        .expect("url")
        .get_ports()[0];
    let url = format!(
        "postgres://postgres:{}@db.invalid:{port}/postgres?hostaddr=127.0.0.1&sslmode=require",
        password.unwrap_or_default()
    );
    let ca_pem = pg.ca_pem().expect("a TLS cluster has a CA");
    let mut warehouse = tls_warehouse(&url, ca_pem, dir.path(), &runtime);
    let error = warehouse
        .last_loaded("s")
        .expect_err("a wrong name is refused")
        .to_string();
    assert!(
        error.contains("invalid peer certificate") && error.contains("db.invalid"),
        "{error}"
    );
}

/// A billing alert whose value and threshold have trailing zeros (numeric must keep them).
fn billing_alert(customer: &str) -> tollstream_collector::alerts::Alert {
    tollstream_collector::alerts::Alert {
        alert_id: format!("billing-limit/{customer}/2026-11/150.00"),
        rule: "billing-limit".into(),
        key: customer.into(),
        stream: "toll-transactions".into(),
        window_start: None,
        window_end: None,
        slot: None,
        month: Some("2026-11".into()),
        value: "151.20".into(),
        threshold: "150.00".into(),
        comparison: tollstream_collector::config::Comparison::Above,
        fired_at: "2026-11-25T17:03:28.125Z".parse().expect("time"),
        event_time: Some("2026-11-25T17:03:27.512Z".parse().expect("time")),
        records: 12,
    }
}

/// The notifier's `warehouse` target with PostgreSQL down at start (and no stream ever
/// prepared on the database): the alerts wait in the outbox, and once the server is up
/// each lands in `alerts` once, with exact numeric values and the document as jsonb.
#[test]
fn alerts_wait_for_a_server_that_is_down_and_land_in_the_alerts_table_once() {
    use tollstream_collector::clock::{Clock, SystemClock};
    use tollstream_collector::config::NotifyConfig;
    use tollstream_collector::notify::{Notifier, Outbox, WAREHOUSE_TARGET};

    let mut pg = TestPostgres::start_cluster().expect("PostgreSQL for the test");
    pg.stop().expect("stopped");
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let warehouse: Box<dyn Warehouse> = Box::new(PostgresWarehouse::new(
        pg.url().parse().expect("url"),
        runtime.handle().clone(),
    ));
    let warehouse = Arc::new(Mutex::new(warehouse));
    let outbox = Arc::new(Outbox::open(&dir.path().join("outbox.db"), &[]).expect("outbox"));
    let config = NotifyConfig {
        log: dir.path().join("alerts.jsonl"),
        ..NotifyConfig::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let notifier = Notifier::new(outbox.clone(), &config, warehouse.clone(), clock)
        .expect("notifier")
        .with_builtin_backoff(
            tollstream_collector::notify::Backoff::try_new(
                Duration::from_millis(50),
                Duration::from_millis(200),
            )
            .expect("backoff"),
        );
    let stop = tokio_util::sync::CancellationToken::new();
    let running = runtime.spawn(notifier.run(stop.clone()));
    for customer in ["C0001234", "C0005678"] {
        assert!(
            outbox
                .insert(&billing_alert(customer), &[])
                .expect("insert")
        );
    }
    assert!(
        !outbox
            .insert(&billing_alert("C0001234"), &[])
            .expect("insert")
    );
    let pending = || outbox.pending_count(WAREHOUSE_TARGET).expect("count");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        pending(),
        2,
        "still waiting for the server, nothing dropped"
    );
    pg.restart().expect("started");
    tollstream_tests::harness::wait_for("alerts in the table", Duration::from_secs(60), || {
        pending() == 0
    })
    .expect("delivered once the server is up");
    // Recording again (a crash before the outbox's mark) changes nothing.
    let again = billing_alert("C0001234");
    let document = serde_json::to_string(&again).expect("json");
    let recorded = runtime.spawn_blocking({
        let warehouse = warehouse.clone();
        move || {
            warehouse
                .lock()
                .expect("lock")
                .record_alert(&again, &document)
        }
    });
    runtime
        .block_on(recorded)
        .expect("task")
        .expect("recorded again");
    stop.cancel();
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), running).await })
        .expect("stops promptly")
        .expect("task");
    let mut db = pg.client().expect("client");
    assert_eq!(count(&mut db, "SELECT COUNT(*) FROM alerts"), 2);
    let row = db
        .query_one(
            "SELECT value::text, threshold::text, month, fired_at = '2026-11-25T17:03:28.125Z', \
             document->>'alert_id', window_start IS NULL FROM alerts WHERE key = 'C0001234'",
            &[],
        )
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "151.20");
    assert_eq!(row.get::<_, String>(1), "150.00");
    assert_eq!(row.get::<_, String>(2), "2026-11");
    assert!(row.get::<_, bool>(3), "fired_at exact to the millisecond");
    assert_eq!(
        row.get::<_, String>(4),
        "billing-limit/C0001234/2026-11/150.00"
    );
    assert!(row.get::<_, bool>(5));
}
