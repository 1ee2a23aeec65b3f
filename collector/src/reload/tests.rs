//! Reload against real archives and real SQLite files (PostgreSQL: `collector/tests/` and
//! the end-to-end tests).

use std::path::Path;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::mpsc;

use super::*;
use crate::wal::WalRecord;
use crate::warehouse::{Loader, SqliteWarehouse};

/// 2026-11-25T10:00:00Z in microseconds.
const T10: i64 = 1_795_600_800_000_000;
const MINUTE: i64 = 60_000_000;

fn at(text: &str) -> Timestamp {
    text.parse().expect("a timestamp")
}

fn good(n: u64) -> String {
    format!(
        "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-{n:012},PLZ-017,3,C0001234,TX-0088231,2,12.5{}\n",
        n % 10
    )
}

/// A data directory with a config for one stream `s` → table `t`, SQLite by default.
struct Setup {
    dir: tempfile::TempDir,
    config: Config,
    archive: Archive,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "listen: 127.0.0.1:8700\ndata_dir: {}\nauth: {{ agent_tokens_file: tokens }}\n\
             streams:\n  s:\n    table: t\n",
            dir.path().join("data").display()
        );
        let config = Config::parse(&text, Path::new("collector.yaml")).expect("config");
        let archive = Archive::new(&dir.path().join("data").join("archive"));
        std::fs::create_dir_all(dir.path().join("data").join("archive")).expect("archive dir");
        Self {
            dir,
            config,
            archive,
        }
    }

    /// Writes object `seq..=seq` received at `received_at_us`: two good lines (transaction
    /// ids `2*seq`, `2*seq+1`) and, for even `seq`, one bad line.
    fn object(&self, seq: u64, received_at_us: i64) -> ArchiveObject {
        let mut data = good(2 * seq) + &good(2 * seq + 1);
        if seq.is_multiple_of(2) {
            data.push_str(&format!("bad line {seq}\n"));
        }
        let lines = data.lines().count() as u32;
        let record = WalRecord {
            seq,
            received_at_us,
            source: format!("booth/{seq}"),
            range: Some((seq * 1000, seq * 1000 + data.len() as u64)),
            records: lines,
            data: data.into_bytes().into(),
        };
        self.archive.write("s", &[record]).expect("written")
    }

    fn request(&self) -> Request {
        Request::default()
    }

    /// Runs a reload; returns the summary and the report.
    fn reload(&self, request: &Request) -> anyhow::Result<(Summary, String)> {
        let plan = Plan::new(&self.config, request, at("2026-11-26T00:00:00Z"))
            .map_err(anyhow::Error::msg)?;
        let mut out = Vec::new();
        let summary = run(&self.config, &plan, &mut out);
        let text = String::from_utf8(out).expect("UTF-8 report");
        summary
            .map(|s| (s, text.clone()))
            .map_err(|e| e.context(text))
    }

    fn to_db(&self, name: &str) -> Request {
        Request {
            warehouse: Some(format!("sqlite://{}", self.dir.path().join(name).display())),
            ..self.request()
        }
    }

    fn db(&self, name: &str) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join(name)).expect("open")
    }
}

fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// Every row of `t` and of `rejected_records`, without `load_id` and ids, in key order.
fn contents(db: &rusqlite::Connection) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let rows = |sql: &str| -> Vec<Vec<String>> {
        let mut stmt = db.prepare(sql).expect(sql);
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                    })
                })
                .collect()
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    };
    (
        rows(
            "SELECT event_time, transaction_id, booth_id, lane, customer_id, transponder_id, \
             vehicle_class, amount_cents, source, received_at FROM t ORDER BY transaction_id",
        ),
        rows(
            "SELECT stream, source, source_offset, received_at, reason, line \
             FROM rejected_records ORDER BY source, source_offset",
        ),
    )
}

#[test]
fn times_are_rfc_3339_dates_or_durations_before_now() {
    let now = at("2026-11-29T10:42:00Z");
    assert_eq!(
        parse_time("2026-11-25T14:00:00Z", now),
        Ok(at("2026-11-25T14:00:00Z"))
    );
    assert_eq!(
        parse_time("2026-11-25T11:00:00.5-03:00", now),
        Ok(at("2026-11-25T14:00:00.5Z"))
    );
    assert_eq!(
        parse_time("2026-11-25", now),
        Ok(at("2026-11-25T00:00:00Z"))
    );
    assert_eq!(parse_time("2h", now), Ok(at("2026-11-29T08:42:00Z")));
    assert_eq!(parse_time("7d", now), Ok(at("2026-11-22T10:42:00Z")));
    let no_offset = parse_time("2026-11-25T14:00:00", now).expect_err("needs an offset");
    assert!(no_offset.contains("no offset"), "{no_offset}");
    let garbage = parse_time("yesterday", now).expect_err("not a time");
    assert!(garbage.contains("RFC 3339"), "{garbage}");
    assert!(parse_time("2026-13-01", now).is_err());
}

#[test]
fn a_window_is_half_open_and_hours_are_decided_by_their_name_where_they_can_be() {
    let window = Window {
        since: Some(at("2026-11-25T10:30:00Z")),
        until: Some(at("2026-11-25T13:00:00Z")),
    };
    assert!(window.contains(at("2026-11-25T10:30:00Z")));
    assert!(!window.contains(at("2026-11-25T10:29:59.999999Z")));
    assert!(window.contains(at("2026-11-25T12:59:59.999999Z")));
    assert!(!window.contains(at("2026-11-25T13:00:00Z")));
    assert_eq!(window.hour(at("2026-11-25T09:00:00Z")), Overlap::Outside);
    assert_eq!(window.hour(at("2026-11-25T10:00:00Z")), Overlap::Partly);
    assert_eq!(window.hour(at("2026-11-25T11:00:00Z")), Overlap::Inside);
    assert_eq!(window.hour(at("2026-11-25T12:00:00Z")), Overlap::Inside);
    assert_eq!(window.hour(at("2026-11-25T13:00:00Z")), Overlap::Outside);
    let open = Window::default();
    assert_eq!(open.hour(at("1970-01-01T00:00:00Z")), Overlap::Inside);
    assert_eq!(open.describe(), "the whole archive");
    assert!(
        window
            .describe()
            .contains("at or after 2026-11-25T10:30:00.000Z and before")
    );
}

#[test]
fn a_window_loads_exactly_the_objects_whose_first_record_it_holds() {
    let setup = Setup::new();
    // Seq → first receive time: 09:59, 10:29:59.999999, 10:30, 11:15, 12:59, 13:00.
    let times = [
        T10 - MINUTE,
        T10 + 30 * MINUTE - 1,
        T10 + 30 * MINUTE,
        T10 + 75 * MINUTE,
        T10 + 179 * MINUTE,
        T10 + 180 * MINUTE,
    ];
    for (i, us) in times.iter().enumerate() {
        setup.object(i as u64 + 1, *us);
    }
    let window = |since: &str, until: &str| Request {
        since: Some(since.into()),
        until: Some(until.into()),
        ..setup.to_db("w.db")
    };
    let (dry, text) = setup
        .reload(&Request {
            dry_run: true,
            ..window("2026-11-25T10:30:00Z", "2026-11-25T13:00:00Z")
        })
        .expect("dry run");
    assert_eq!(
        (dry.streams[0].found, dry.streams[0].loaded),
        (3, 3),
        "{text}"
    );
    for seq in [3, 4, 5] {
        assert!(
            text.contains(&format!("s-{seq:020}-{seq:020}.gz")),
            "{seq}: {text}"
        );
    }
    let (summary, text) = setup
        .reload(&window("2026-11-25T10:30:00Z", "2026-11-25T13:00:00Z"))
        .expect("reloaded");
    let s = &summary.streams[0];
    assert_eq!((s.found, s.loaded, s.already_loaded), (3, 3, 0), "{text}");
    assert_eq!((s.inserted, s.rejected), (6, 1), "{text}");
    let db = setup.db("w.db");
    let seqs: Vec<i64> = db
        .prepare("SELECT first_seq FROM loads ORDER BY first_seq")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(seqs, [3, 4, 5]);
    // Objects 1 and 2 are older than the newest loaded and missing: a gap, said so.
    assert_eq!((s.gaps, s.loaded_through), (2, 5));
    assert!(text.contains("gaps       2 archive objects"), "{text}");
    // The adjacent windows load the rest, each object once.
    let (before, _) = setup
        .reload(&Request {
            until: Some("2026-11-25T10:30:00Z".into()),
            ..setup.to_db("w.db")
        })
        .expect("before");
    assert_eq!(before.streams[0].loaded, 2);
    let (after, text) = setup
        .reload(&Request {
            since: Some("2026-11-25T13:00:00Z".into()),
            ..setup.to_db("w.db")
        })
        .expect("after");
    assert_eq!(after.streams[0].loaded, 1, "{text}");
    assert_eq!(after.streams[0].gaps, 0, "{text}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM loads"), 6);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM t"), 12);
    assert_eq!(count(&db, "SELECT SUM(duplicates) FROM loads"), 0);
}

#[test]
fn a_dry_run_lists_what_would_load_and_writes_nothing() {
    let setup = Setup::new();
    for seq in 1..=4 {
        setup.object(seq, T10 + seq as i64 * MINUTE);
    }
    let errors = setup.archive.errors_root("s");
    let (summary, text) = setup
        .reload(&Request {
            dry_run: true,
            ..setup.to_db("fresh.db")
        })
        .expect("dry run");
    assert_eq!(
        (summary.streams[0].found, summary.streams[0].loaded),
        (4, 4)
    );
    assert_eq!(text.matches("would load").count(), 4, "{text}");
    assert!(text.starts_with("dry run, nothing is written"), "{text}");
    assert!(
        !setup.dir.path().join("fresh.db").exists(),
        "no database created"
    );
    assert!(!errors.exists(), "no errors objects written");
    // Against a warehouse holding some: those are counted, not listed.
    setup
        .reload(&Request {
            until: Some("2026-11-25T10:02:30Z".into()),
            ..setup.to_db("fresh.db")
        })
        .expect("two loaded");
    let db = setup.db("fresh.db");
    let before = count(&db, "SELECT COUNT(*) FROM loads");
    let (summary, text) = setup
        .reload(&Request {
            dry_run: true,
            ..setup.to_db("fresh.db")
        })
        .expect("dry run");
    let s = &summary.streams[0];
    assert_eq!((s.found, s.loaded, s.already_loaded), (4, 2, 2), "{text}");
    assert_eq!(text.matches("would load").count(), 2, "{text}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM loads"), before);
}

#[test]
fn a_second_run_changes_nothing_and_rewrites_no_errors_object() {
    let setup = Setup::new();
    for seq in 1..=5 {
        setup.object(seq, T10 + seq as i64 * MINUTE);
    }
    let (first, _) = setup.reload(&setup.to_db("w.db")).expect("first");
    assert_eq!(first.streams[0].loaded, 5);
    assert_eq!(first.streams[0].rejected, 2);
    let db = setup.db("w.db");
    let contents_before = contents(&db);
    let errors_before = errors_objects(&setup.archive);
    assert_eq!(errors_before.len(), 2);
    let (second, text) = setup.reload(&setup.to_db("w.db")).expect("second");
    let s = &second.streams[0];
    assert_eq!((s.found, s.loaded, s.already_loaded), (5, 0, 5), "{text}");
    assert_eq!((s.inserted, s.duplicates, s.rejected), (0, 0, 0));
    assert_eq!(contents(&db), contents_before);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM loads"), 5);
    assert_eq!(errors_objects(&setup.archive), errors_before, "untouched");
}

/// Each errors object's path, bytes and modification time.
fn errors_objects(archive: &Archive) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut found = Vec::new();
    archive
        .errors_newest_first("s", |o| {
            found.push(o.path);
            true
        })
        .expect("listed");
    found
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read");
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("mtime");
            (path, bytes, modified)
        })
        .collect()
}

#[test]
fn a_damaged_object_is_named_and_the_others_are_loaded() {
    let setup = Setup::new();
    let objects: Vec<_> = (1..=4)
        .map(|seq| setup.object(seq, T10 + seq as i64 * MINUTE))
        .collect();
    let bytes = std::fs::read(&objects[1].path).expect("read");
    std::fs::write(&objects[1].path, &bytes[..bytes.len() - 10]).expect("truncate");
    let (summary, text) = setup.reload(&setup.to_db("w.db")).expect("runs to the end");
    let s = &summary.streams[0];
    assert_eq!(summary.unreadable(), 1);
    assert_eq!((s.found, s.loaded, s.unreadable.len()), (4, 3, 1), "{text}");
    assert_eq!(
        s.unreadable[0].0,
        "s/2026/11/25/10/s-00000000000000000002-00000000000000000002.gz"
    );
    assert!(
        text.contains("unreadable s/2026/11/25/10/s-00000000000000000002-"),
        "{text}"
    );
    // The gap it leaves is named too.
    assert_eq!(
        (s.gaps, s.first_gap.as_deref()),
        (1, Some(s.unreadable[0].0.as_str()))
    );
    let db = setup.db("w.db");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM t"), 6);
    // A damaged header in an hour a bound falls in: cannot tell, so named as well.
    let (summary, text) = setup
        .reload(&Request {
            since: Some("2026-11-25T10:01:30Z".into()),
            ..setup.to_db("w2.db")
        })
        .expect("runs");
    std::fs::write(&objects[1].path, b"not gzip at all").expect("damage");
    let (damaged, text2) = setup
        .reload(&Request {
            since: Some("2026-11-25T10:01:30Z".into()),
            ..setup.to_db("w3.db")
        })
        .expect("runs");
    // Objects 2 to 4 are in the window; 2 cannot be read.
    assert_eq!(summary.streams[0].loaded, 2, "{text}");
    assert_eq!(summary.unreadable(), 1, "{text}");
    assert_eq!(damaged.streams[0].loaded, 2, "{text2}");
    assert_eq!(
        damaged.streams[0].found, 3,
        "counted, it may be in the window: {text2}"
    );
    assert!(
        text2.contains("cannot tell whether it is in the window"),
        "{text2}"
    );
}

#[test]
fn reload_into_an_empty_database_gives_the_live_loaders_rows() {
    let setup = Setup::new();
    for seq in 1..=6 {
        setup.object(seq, T10 + seq as i64 * 7 * MINUTE);
    }
    // A duplicate key across objects: the first object wins, in both loads.
    let data = good(4) + "another bad one\n";
    setup
        .archive
        .write(
            "s",
            &[WalRecord {
                seq: 7,
                received_at_us: T10 + 60 * MINUTE,
                source: "-".into(),
                range: None,
                records: 2,
                data: data.into_bytes().into(),
            }],
        )
        .expect("written");
    live_load(&setup, &setup.dir.path().join("live.db"));
    let errors_live = errors_objects(&setup.archive);
    let (summary, text) = setup.reload(&setup.to_db("rebuilt.db")).expect("reload");
    assert_eq!(summary.streams[0].duplicates, 1, "{text}");
    let (live, rebuilt) = (setup.db("live.db"), setup.db("rebuilt.db"));
    assert_eq!(contents(&rebuilt), contents(&live));
    assert_eq!(count(&rebuilt, "SELECT COUNT(*) FROM rejected_records"), 4);
    let manifest = "SELECT group_concat(object || ':' || inserted || ':' || duplicates || ':' || \
                    rejected || ':' || newest_received_at, ' ') FROM (SELECT * FROM loads ORDER BY first_seq)";
    let text = |db: &rusqlite::Connection| -> String {
        db.query_row(manifest, [], |r| r.get(0)).expect("manifest")
    };
    assert_eq!(text(&rebuilt), text(&live));
    // The errors objects were written again, byte for byte the same.
    let errors_rebuilt = errors_objects(&setup.archive);
    assert_eq!(errors_rebuilt.len(), errors_live.len());
    for (live, rebuilt) in errors_live.iter().zip(&errors_rebuilt) {
        assert_eq!((&live.0, &live.1), (&rebuilt.0, &rebuilt.1));
    }
}

/// Loads the archive as the running collector does: its [`Loader`] catching up at start.
fn live_load(setup: &Setup, db: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let warehouse = SqliteWarehouse::open(db).expect("open");
        let (objects_tx, objects) = mpsc::channel(1);
        drop(objects_tx); // Catch up, then stop.
        let root = setup.config.data_dir.join("archive");
        Loader {
            // No buffer here: everything in the archive counts as archived.
            archived: tokio::sync::watch::channel(u64::MAX).1,
            stopping: tokio_util::sync::CancellationToken::new(),
            progress: crate::warehouse::LoadProgress::new(
                "s",
                Arc::new(crate::clock::SystemClock),
                crate::warehouse::progress::Mask::default(),
            ),
            stream: "s".into(),
            table: "t".into(),
            schema: Arc::new(Schema::toll()),
            archive_root: root.clone(),
            archive: Archive::new(&root),
            warehouse: Arc::new(Mutex::new(warehouse)),
            objects,
        }
        .run()
        .await
        .expect("loaded");
    });
}

#[test]
fn two_reloads_at_once_into_one_database_load_each_object_once() {
    let setup = Setup::new();
    for seq in 1..=40 {
        setup.object(seq, T10 + seq as i64 * MINUTE);
    }
    // Create the tables first, so both start loading at once.
    setup
        .reload(&Request {
            until: Some("2026-11-25T10:00:30Z".into()),
            ..setup.to_db("w.db")
        })
        .expect("prepared");
    let summaries: Vec<Summary> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| setup.reload(&setup.to_db("w.db")).map(|(s, _)| s)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("thread").expect("reload succeeds"))
            .collect()
    });
    let loaded: u64 = summaries.iter().map(|s| s.streams[0].loaded).sum();
    let already: u64 = summaries.iter().map(|s| s.streams[0].already_loaded).sum();
    assert_eq!(loaded, 40, "{summaries:?}");
    assert_eq!(already, 40);
    let db = setup.db("w.db");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM loads"), 40);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM t"), 80);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM rejected_records"), 20);
    assert_eq!(count(&db, "SELECT SUM(duplicates) FROM loads"), 0);
}

#[test]
fn requests_that_cannot_work_are_refused_with_the_reason() {
    let setup = Setup::new();
    let now = at("2026-11-26T00:00:00Z");
    let refused = |request: Request| Plan::new(&setup.config, &request, now).expect_err("refused");
    let message = refused(Request {
        since: Some("2026-11-25".into()),
        until: Some("2026-11-25".into()),
        ..Request::default()
    });
    assert!(message.contains("the window is empty"), "{message}");
    let message = refused(Request {
        streams: vec!["nope".into()],
        ..Request::default()
    });
    assert!(
        message.contains("--stream nope") && message.contains("streams: s"),
        "{message}"
    );
    let message = refused(Request {
        password_file: Some("pw".into()),
        ..Request::default()
    });
    assert!(message.contains("--warehouse-password-file"), "{message}");
    let message = refused(Request {
        warehouse: Some("mysql://x".into()),
        ..Request::default()
    });
    assert!(message.starts_with("--warehouse: "), "{message}");
    let message = refused(Request {
        warehouse: Some("sqlite://w.db".into()),
        password_file: Some("pw".into()),
        ..Request::default()
    });
    assert!(
        message.starts_with("--warehouse-password-file: "),
        "{message}"
    );
    // Issue 5: the CA file goes with --warehouse, and with sslmode=require in its URL.
    let message = refused(Request {
        ca_file: Some("ca.pem".into()),
        ..Request::default()
    });
    assert!(
        message.contains("--warehouse-ca-file goes with --warehouse"),
        "{message}"
    );
    let message = refused(Request {
        warehouse: Some("postgres://u@127.0.0.1/db".into()),
        ca_file: Some("ca.pem".into()),
        ..Request::default()
    });
    assert!(
        message.starts_with("--warehouse-ca-file goes with TLS")
            && message.contains("add sslmode=require"),
        "{message}"
    );
    let message = refused(Request {
        warehouse: Some("postgres://u@127.0.0.1/db?sslmode=require".into()),
        ca_file: Some("no-such-ca.pem".into()),
        ..Request::default()
    });
    assert!(
        message.starts_with("--warehouse-ca-file: cannot read")
            && message.contains("no-such-ca.pem"),
        "{message}"
    );
    let message = refused(Request {
        until: Some("tomorrow".into()),
        ..Request::default()
    });
    assert!(message.starts_with("--until: \"tomorrow\""), "{message}");
    // A relative SQLite path is relative to the current directory, not to data_dir.
    let plan = Plan::new(
        &setup.config,
        &Request {
            warehouse: Some("sqlite://rebuilt.db".into()),
            ..Request::default()
        },
        now,
    )
    .expect("plan");
    let WarehouseTarget::Sqlite(path) = plan.target else {
        panic!("a SQLite target");
    };
    assert_eq!(
        path,
        std::env::current_dir().expect("cwd").join("rebuilt.db")
    );
    // The configured warehouse by default, every stream.
    let plan = Plan::new(&setup.config, &Request::default(), now).expect("plan");
    assert_eq!(plan.streams, ["s"]);
    assert!(
        matches!(&plan.target, WarehouseTarget::Sqlite(p) if p == &setup.config.data_dir.join("warehouse.db"))
    );
}

#[test]
fn an_unreachable_warehouse_or_a_missing_archive_ends_the_command_with_the_reason() {
    let setup = Setup::new();
    setup.object(1, T10);
    // A PostgreSQL server nobody listens for.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let error = setup
        .reload(&Request {
            warehouse: Some(format!("postgres://u:secret@127.0.0.1:{port}/db")),
            ..Request::default()
        })
        .expect_err("unreachable");
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("postgres://u:***@127.0.0.1:{port}/db")),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");
    // A SQLite file in a directory that does not exist.
    let error = setup
        .reload(&Request {
            warehouse: Some(format!(
                "sqlite://{}",
                setup.dir.path().join("no/such/dir/w.db").display()
            )),
            ..Request::default()
        })
        .expect_err("cannot open");
    assert!(
        format!("{error:#}").contains("no/such/dir/w.db"),
        "{error:#}"
    );
    std::fs::remove_dir_all(setup.config.data_dir.join("archive")).expect("remove");
    let error = setup.reload(&Request::default()).expect_err("no archive");
    assert!(format!("{error:#}").contains("no archive at"), "{error:#}");
}
