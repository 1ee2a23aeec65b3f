//! `reload` into a real PostgreSQL server (a throwaway cluster, or a database on
//! `TOLLSTREAM_TEST_PG_URL`): two reloads racing for the same objects load each once, and a
//! third run loads nothing.

use std::path::Path;

use jiff::Timestamp;
use tollstream_collector::archive::Archive;
use tollstream_collector::config::Config;
use tollstream_collector::reload::{Plan, Request, Summary, run};
use tollstream_collector::wal::WalRecord;
use tollstream_tests::postgres::TestPostgres;

const OBJECTS: u64 = 30;

fn good(n: u64) -> String {
    format!(
        "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-{n:012},PLZ-017,3,C0001234,TX-0088231,2,12.50\n"
    )
}

fn reload(config: &Config, url: &str) -> anyhow::Result<Summary> {
    let request = Request {
        warehouse: Some(url.to_owned()),
        ..Request::default()
    };
    let plan = Plan::new(config, &request, Timestamp::UNIX_EPOCH).map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    run(config, &plan, &mut out).map_err(|e| e.context(String::from_utf8_lossy(&out).into_owned()))
}

#[test]
fn two_reloads_racing_into_one_postgres_database_load_each_object_once() -> anyhow::Result<()> {
    let pg = TestPostgres::start()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let archive = Archive::new(&data.join("archive"));
    for seq in 1..=OBJECTS {
        // Two good lines and a bad one per object.
        let lines = good(2 * seq) + &good(2 * seq + 1) + "not a toll line\n";
        archive.write(
            "s",
            &[WalRecord {
                seq,
                received_at_us: 1_795_600_800_000_000 + seq as i64 * 1_000_000,
                source: format!("booth/{seq}"),
                range: Some((0, lines.len() as u64)),
                records: 3,
                data: lines.into_bytes().into(),
            }],
        )?;
    }
    let text = format!(
        "listen: 127.0.0.1:8700\ndata_dir: {}\nauth: {{ agent_tokens_file: tokens }}\n\
         streams:\n  s:\n    table: t\n",
        data.display()
    );
    let config = Config::parse(&text, Path::new("collector.yaml"))?;
    let summaries = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| reload(&config, pg.url())))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("reload thread"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let loaded: u64 = summaries.iter().map(|s| s.streams[0].loaded).sum();
    let already: u64 = summaries.iter().map(|s| s.streams[0].already_loaded).sum();
    assert_eq!((loaded, already), (OBJECTS, OBJECTS), "{summaries:?}");
    let again = reload(&config, pg.url())?;
    assert_eq!(again.streams[0].loaded, 0);
    assert_eq!(again.streams[0].already_loaded, OBJECTS);
    let mut client = pg.client()?;
    let count = |client: &mut postgres::Client, sql: &str| -> anyhow::Result<i64> {
        Ok(client.query_one(sql, &[])?.get(0))
    };
    assert_eq!(count(&mut client, "SELECT COUNT(*) FROM loads")?, 30);
    assert_eq!(count(&mut client, "SELECT COUNT(*) FROM t")?, 60);
    assert_eq!(
        count(&mut client, "SELECT COUNT(*) FROM rejected_records")?,
        30
    );
    assert_eq!(
        count(&mut client, "SELECT SUM(duplicates)::bigint FROM loads")?,
        0
    );
    Ok(())
}
