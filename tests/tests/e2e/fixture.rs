//! A collector and an agent in one temporary directory, with helpers to drive them and to
//! check what reached the warehouse and the archive. On a failing test, the tail of both
//! daemons' logs is printed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollstream_tests::harness::{
    AgentSetup, CollectorSetup, Daemon, WarehouseView, binary, free_port, http_get, wait_for,
    write_agent_config, write_collector_config,
};
use tollstream_tests::postgres::TestPostgres;
use tollstream_tests::sim::{Mode, Pacing, SimConfig, SimWriter, Summary, WriteOptions};

/// How long a test waits for data to arrive before failing.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a daemon gets to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub collector: Daemon,
    pub agent: Daemon,
    pub collector_port: u16,
    /// The collector's `/metrics` port.
    pub collector_metrics_port: u16,
    /// The agent's `/metrics` port.
    pub agent_metrics_port: u16,
    /// The collector's data directory.
    pub data_dir: PathBuf,
    /// Set once both daemons stopped cleanly; a test that ends earlier failed.
    pub stopped: bool,
    /// The PostgreSQL warehouse, when the collector loads into one instead of SQLite.
    /// Dropped last, after both daemons.
    pub postgres: Option<TestPostgres>,
}

impl Pipeline {
    /// Writes configs for both daemons and starts them; the agent follows `logs/*.log`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| ())
    }

    /// Like [`Pipeline::start`], with the agent's settings adjusted by `adjust` and
    /// `prepare` run on the test directory before the agent starts.
    pub fn start_with(adjust: impl FnOnce(&mut AgentSetup)) -> anyhow::Result<Self> {
        Self::start_prepared(adjust, |_| Ok(()))
    }

    /// `prepare` runs after the collector is up, before the agent starts.
    pub fn start_prepared(
        adjust: impl FnOnce(&mut AgentSetup),
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::start_routed(Ok, adjust, prepare)
    }

    /// The general form: once the collector is up, `route` gets its ingest port and returns
    /// the port the agent sends to (the same one, or a proxy's in front of it); then
    /// `prepare` runs on the test directory and the agent starts.
    pub fn start_routed(
        route: impl FnOnce(u16) -> anyhow::Result<u16>,
        adjust: impl FnOnce(&mut AgentSetup),
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::start_full(|_, _| Ok(()), route, adjust, prepare)
    }

    /// Like [`Pipeline::start`], loading into PostgreSQL: `postgres` (already started, and
    /// maybe stopped again by the test) is the warehouse. Its password goes in a
    /// `warehouse.password_file`, as an operator would keep it.
    pub fn start_postgres(postgres: TestPostgres) -> anyhow::Result<Self> {
        let mut pipeline = Self::start_full(
            |dir, setup| use_postgres(dir, setup, &postgres),
            Ok,
            |_| (),
            |_| Ok(()),
        )?;
        pipeline.postgres = Some(postgres);
        Ok(pipeline)
    }

    /// The PostgreSQL warehouse of a pipeline started with [`Pipeline::start_postgres`].
    pub fn postgres(&mut self) -> &mut TestPostgres {
        self.postgres.as_mut().expect("a pipeline on PostgreSQL")
    }

    /// The most general form: `collector` adjusts the collector's settings first (it gets
    /// the test directory, e.g. to mount a small file system for the data).
    pub fn start_full(
        collector: impl FnOnce(&Path, &mut CollectorSetup) -> anyhow::Result<()>,
        route: impl FnOnce(u16) -> anyhow::Result<u16>,
        adjust: impl FnOnce(&mut AgentSetup),
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tollstream-e2e-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("logs"))?;
        let collector_port = free_port()?;
        let collector_metrics_port = free_port()?;
        let mut setup = CollectorSetup {
            port: collector_port,
            metrics_port: Some(collector_metrics_port),
            ..CollectorSetup::default()
        };
        collector(dir.path(), &mut setup)?;
        let data_dir = setup
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("collector-data"));
        let collector_config = write_collector_config(dir.path(), &setup)?;
        let mut collector = Daemon::new(
            "collector",
            binary("tollstream-collector")?,
            collector_config,
            dir.path().join("collector.log"),
        );
        for (key, value) in &setup.env {
            collector.set_env(key, value);
        }
        collector.start()?;
        let mut pipeline = Self {
            dir,
            collector,
            agent: Daemon::new("unused", PathBuf::new(), PathBuf::new(), PathBuf::new()),
            collector_port,
            collector_metrics_port,
            agent_metrics_port: 0,
            data_dir,
            stopped: false,
            postgres: None,
        };
        pipeline.wait_collector_ready()?;
        let mut setup = AgentSetup {
            collector_port: route(collector_port)?,
            metrics_port: Some(free_port()?),
            ..AgentSetup::default()
        };
        adjust(&mut setup);
        pipeline.agent_metrics_port = setup.metrics_port.unwrap_or(0);
        let agent_config = write_agent_config(pipeline.dir.path(), &setup)?;
        let mut agent = Daemon::new(
            "agent",
            binary("tollstream-agent")?,
            agent_config,
            pipeline.dir.path().join("agent.log"),
        );
        prepare(pipeline.dir.path())?;
        agent.start()?;
        pipeline.agent = agent;
        Ok(pipeline)
    }

    /// The sum of a metric's samples (all label sets, or those whose labels contain
    /// `labels`, e.g. `stage="ingest"`) from a daemon's `/metrics`; `None` if unreachable.
    pub fn metric(port: u16, name: &str, labels: &str) -> Option<f64> {
        let (status, text) = http_get(([127, 0, 0, 1], port).into(), "/metrics")?;
        if status != 200 {
            return None;
        }
        let mut sum = 0.0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (series, value) = rest.rsplit_once(' ')?;
            let labelled = series.starts_with('{');
            if !(series.is_empty() || labelled) || !series.contains(labels) {
                continue;
            }
            sum += value.parse::<f64>().ok()?;
        }
        Some(sum)
    }

    pub fn agent_metric(&self, name: &str, labels: &str) -> Option<f64> {
        Self::metric(self.agent_metrics_port, name, labels)
    }

    pub fn collector_metric(&self, name: &str, labels: &str) -> Option<f64> {
        Self::metric(self.collector_metrics_port, name, labels)
    }

    pub fn wait_collector_ready(&self) -> anyhow::Result<()> {
        // The metrics port serves /healthz too, over plain HTTP even when ingest is TLS.
        let addr = ([127, 0, 0, 1], self.collector_metrics_port).into();
        wait_for(
            "the collector to answer /healthz",
            Duration::from_secs(30),
            || http_get(addr, "/healthz").is_some_and(|(status, _)| status == 200),
        )
    }

    /// The simulator's log files: `logs/booths-{i}.log`.
    pub fn log_files(&self, count: usize) -> Vec<PathBuf> {
        (0..count)
            .map(|i| self.dir.path().join("logs").join(format!("booths-{i}.log")))
            .collect()
    }

    /// A writer of `lines` toll lines (with `malformed` of them broken) over three files,
    /// flushing often and sometimes in the middle of a line.
    pub fn writer(&self, lines: u64, malformed: usize) -> anyhow::Result<SimWriter> {
        self.writer_with(lines, malformed, 3, Pacing::AsFastAsPossible)
    }

    /// Like [`Pipeline::writer`], over `files` files and at the given pace.
    pub fn writer_with(
        &self,
        lines: u64,
        malformed: usize,
        files: usize,
        pacing: Pacing,
    ) -> anyhow::Result<SimWriter> {
        let config = SimConfig {
            malformed,
            ..SimConfig::default()
        };
        let options = WriteOptions {
            pacing,
            split_writes: true,
            flush_every_lines: 500,
        };
        Ok(SimWriter::with_options(
            &config,
            Mode::Count { lines },
            &self.log_files(files),
            options,
        )?)
    }

    pub fn warehouse_path(&self) -> PathBuf {
        self.data_dir.join("warehouse.db")
    }

    pub fn warehouse(&self) -> anyhow::Result<WarehouseView> {
        if let Some(postgres) = &self.postgres {
            return WarehouseView::postgres(postgres.url());
        }
        let path = self.warehouse_path();
        wait_for("the warehouse file", Duration::from_secs(30), || {
            path.exists()
        })?;
        WarehouseView::open(&path)
    }

    /// Waits until the warehouse holds `rows` rows and `rejected` rejected lines.
    pub fn wait_loaded(&self, rows: u64, rejected: u64) -> anyhow::Result<()> {
        let warehouse = self.warehouse()?;
        let mut seen = (0, 0);
        let result = wait_for(
            &format!("{rows} rows and {rejected} rejected lines in the warehouse"),
            ARRIVAL_TIMEOUT,
            || {
                let loaded = warehouse
                    .count("SELECT COUNT(*) FROM toll_transactions")
                    .unwrap_or(-1);
                let bad = warehouse
                    .count("SELECT COUNT(*) FROM rejected_records")
                    .unwrap_or(-1);
                seen = (loaded, bad);
                loaded >= rows as i64 && bad >= rejected as i64
            },
        );
        result.map_err(|e| e.context(format!("last seen: {} rows, {} rejected", seen.0, seen.1)))
    }

    /// Waits until at least `rows` rows are loaded: the pipeline is demonstrably mid-stream.
    pub fn wait_rows_at_least(&self, rows: u64) -> anyhow::Result<()> {
        let warehouse = self.warehouse()?;
        wait_for(&format!("at least {rows} rows"), ARRIVAL_TIMEOUT, || {
            warehouse
                .count("SELECT COUNT(*) FROM toll_transactions")
                .unwrap_or(0)
                >= rows as i64
        })
    }

    /// Stops both daemons cleanly (each must exit 0), so nothing is in flight afterwards.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let agent = self.agent.terminate(EXIT_TIMEOUT)?;
        anyhow::ensure!(agent.success(), "agent exited with {agent}");
        let collector = self.collector.terminate(EXIT_TIMEOUT)?;
        anyhow::ensure!(collector.success(), "collector exited with {collector}");
        self.stopped = true;
        Ok(())
    }

    /// Asserts the warehouse and the archive hold exactly what the simulator wrote.
    pub fn assert_exactly_once(&self, written: &Summary) -> anyhow::Result<()> {
        let warehouse = self.warehouse()?;
        let rows = warehouse.count("SELECT COUNT(*) FROM toll_transactions")?;
        let distinct =
            warehouse.count("SELECT COUNT(DISTINCT transaction_id) FROM toll_transactions")?;
        assert_eq!(
            rows as u64, written.valid_lines,
            "rows in the warehouse vs valid lines written"
        );
        assert_eq!(distinct, rows, "each transaction_id once");
        // The table's natural key would hide a line delivered twice; the manifest counts them.
        let key_duplicates = warehouse.count("SELECT SUM(duplicates) FROM loads")?;
        assert_eq!(key_duplicates, 0, "no line reached the loader twice");
        let per_booth = warehouse.triples("SELECT booth_id, COUNT(*), SUM(amount_cents) FROM toll_transactions GROUP BY booth_id ORDER BY booth_id")?;
        let expected: Vec<(String, i64, i64)> = written
            .booths
            .iter()
            .map(|(booth, s)| (booth.clone(), s.lines as i64, s.amount_cents))
            .collect();
        assert_eq!(per_booth, expected, "per-booth counts and amounts");
        let archived = archive_lines(&self.data_dir.join("archive"))?;
        assert_eq!(
            archived, written.total_lines,
            "every line in the archive exactly once"
        );
        Ok(())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let keep = std::env::var_os("TOLLSTREAM_E2E_KEEP").is_some();
        let failed = std::thread::panicking() || !self.stopped;
        if failed || keep {
            if failed {
                eprintln!(
                    "{}\n{}",
                    self.collector.log_tail(60),
                    self.agent.log_tail(60)
                );
                if let Some(postgres) = &self.postgres {
                    let log = postgres.log();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    eprintln!("----- PostgreSQL log -----\n{}", tail.join("\n"));
                }
            }
            eprintln!(
                "test directory kept for inspection: {}",
                self.dir.path().display()
            );
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = dir.keep();
        }
    }
}

/// Points the collector at `postgres`, its password in a `warehouse.password_file` in
/// `dir`, as an operator would keep it. A cluster with TLS is reached with
/// `sslmode=require`, its CA in `warehouse-ca.pem` named by `warehouse.ca_file` (relative
/// to the config file).
pub fn use_postgres(
    dir: &Path,
    setup: &mut CollectorSetup,
    postgres: &TestPostgres,
) -> anyhow::Result<()> {
    let (mut url, password) = postgres.url_and_password();
    if let Some(ca_pem) = postgres.ca_pem() {
        std::fs::write(dir.join(WAREHOUSE_CA), ca_pem)?;
        setup.warehouse_ca_file = Some(WAREHOUSE_CA.into());
        url.push_str(if url.contains('?') { "&" } else { "?" });
        url.push_str("sslmode=require");
    }
    setup.warehouse_url = Some(url);
    if let Some(password) = password {
        let file = dir.join("warehouse.password");
        std::fs::write(&file, format!("{password}\n"))?;
        setup.warehouse_password_file = Some(file);
    }
    Ok(())
}

/// The CA file of a pipeline on a PostgreSQL cluster with TLS, in its directory.
pub const WAREHOUSE_CA: &str = "warehouse-ca.pem";

/// Bytes in MiB, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Lines in every archive object under `root`; the errors objects under `root/errors` are
/// left out (their lines are copies of lines in the objects).
pub fn archive_lines(root: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for path in gz_files(root)? {
        if !path.starts_with(root.join("errors")) {
            total += gunzip(&path)?.iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
    Ok(total)
}

/// The errors objects under `root/errors`, sorted by name: each one's path relative to
/// `root/errors` (which is the name of the archive object its lines came from) and its
/// JSON documents, one per rejected line.
pub fn errors_objects(root: &Path) -> anyhow::Result<Vec<(String, Vec<serde_json::Value>)>> {
    let errors = root.join("errors");
    let mut objects = Vec::new();
    if !errors.exists() {
        return Ok(objects);
    }
    for path in gz_files(&errors)? {
        let name = path.strip_prefix(&errors)?.to_string_lossy().into_owned();
        let documents = gunzip(&path)?
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(serde_json::from_slice)
            .collect::<Result<_, _>>()?;
        objects.push((name, documents));
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(objects)
}

/// The `.gz` files under `root`, recursively.
fn gz_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "gz") {
                files.push(path);
            }
        }
    }
    Ok(files)
}

fn gunzip(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_end(&mut data)?;
    Ok(data)
}

/// Decodes standard base64 with padding (what errors objects use for lines that are not
/// UTF-8).
pub fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digits = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut bits, mut n) = (0u32, 0);
    for &c in digits {
        let value = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| anyhow::anyhow!("{c:?} is not a base64 digit in {text:?}"))?;
        bits = bits << 6 | value as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Ok(out)
}

/// A valid toll line with a transaction id derived from `n`.
pub fn line(n: usize) -> String {
    format!(
        "2026-11-25T14:03:27.512-03:00,00000000-0000-4000-8000-{n:012},PLZ-001,1,C0000001,TX-0000001,1,12.50\n"
    )
}

/// Appends `lines` to `path` in one write, creating it if needed.
pub fn append(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    file.write_all(lines.concat().as_bytes())?;
    Ok(())
}
