//! Running the real daemons: locate the built binaries, write their configs, start,
//! signal and restart them, wait for conditions with a deadline, and query the warehouse.
//!
//! Used by the end-to-end tests, the demo and the benchmark harness alike, so what the
//! tests exercise is exactly what a user runs.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// The directory holding the built binaries: next to the running executable (`cargo run`)
/// or one level up from it (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of one of the workspace's binaries.
///
/// # Errors
/// When it has not been built (`cargo build --workspace --bins` first).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (bound and released; the daemon binds it right after).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `condition` every 50 ms until it holds, failing after `timeout` with `what`.
///
/// # Errors
/// When the deadline passes first.
#[allow(clippy::disallowed_types)] // Real elapsed time is what a deadline measures here.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 request with a bearer token and a JSON body; returns the status code
/// and body (a chunked body is returned as sent).
pub fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A minimal HTTP/1.1 GET; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// One daemon process, restartable, with its output in a log file.
pub struct Daemon {
    name: String,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Length of the log when the latest start began.
    log_mark: u64,
    /// Environment variables set at every start.
    env: Vec<(String, String)>,
}

impl Daemon {
    /// A daemon that will run `bin --config config`, logging to `log`.
    pub fn new(name: &str, bin: PathBuf, config: PathBuf, log: PathBuf) -> Self {
        Self {
            name: name.into(),
            bin,
            config,
            log,
            child: None,
            starts: 0,
            log_mark: 0,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every later start (e.g. a test clock).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Starts the process (appending to its log).
    ///
    /// # Errors
    /// When it is already running or cannot be spawned.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with_env(&[])
    }

    /// Like [`Daemon::start`], with extra environment variables for this start only (e.g.
    /// `TOLLSTREAM_CRASH_AT`).
    ///
    /// # Errors
    /// When it is already running or cannot be spawned.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = File::options().create(true).append(true).open(&self.log)?;
        self.log_mark = log.metadata()?.len();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .env(
                "TOLLSTREAM_LOG",
                std::env::var("TOLLSTREAM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// If the process has exited by itself, reaps it and returns how it ended (`None` while
    /// it runs, or when it was not started).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The log written since the latest start.
    pub fn log_since_start(&self) -> String {
        let mark = usize::try_from(self.log_mark).unwrap_or(usize::MAX);
        std::fs::read(&self.log)
            .ok()
            .and_then(|text| {
                text.get(mark..)
                    .map(|t| String::from_utf8_lossy(t).into_owned())
            })
            .unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    ///
    /// # Errors
    /// When it is not running.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait (up to `timeout`) for it to exit; returns its exit status.
    ///
    /// # Errors
    /// When it is not running or does not exit in time (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        let mut exit = None;
        let waited = wait_for(
            &format!("{} to exit after SIGTERM", self.name),
            timeout,
            || {
                exit = child.try_wait().ok().flatten();
                exit.is_some()
            },
        );
        if let Err(error) = waited {
            self.kill()?;
            return Err(error);
        }
        self.child = None;
        exit.context("exit status")
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "----- {} log ({}) -----\n{}",
            self.name,
            self.log.display(),
            all[from..].join("\n")
        )
    }

    /// Waits until the latest start has logged `needle`, e.g. "Agent started.".
    ///
    /// # Errors
    /// When it does not appear within `timeout`.
    pub fn wait_started(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let mark = usize::try_from(self.log_mark).unwrap_or(usize::MAX);
        wait_for(
            &format!("{} to log {needle:?} since its latest start", self.name),
            timeout,
            || {
                std::fs::read(&self.log).is_ok_and(|text| {
                    text.get(mark..)
                        .is_some_and(|new| String::from_utf8_lossy(new).contains(needle))
                })
            },
        )
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// CPU time and peak RSS of the running process, from `/proc`.
    pub fn usage(&self) -> Option<Usage> {
        Usage::of(self.child.as_ref()?.id())
    }

    /// The process id while it runs (started and not yet reaped).
    pub fn pid(&self) -> Option<u32> {
        Some(self.child.as_ref()?.id())
    }

    /// How many file descriptors the running process holds (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))
                .ok()?
                .count(),
        )
    }
}

/// CPU time and peak resident memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Resident set size now (VmRSS), bytes.
    pub rss_bytes: u64,
}

impl Usage {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = |key: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        // Linux reports these in USER_HZ, which is 100 on every mainstream architecture.
        Some(Self {
            cpu_seconds: ticks / 100.0,
            peak_rss_bytes: kb("VmHWM:")? * 1024,
            rss_bytes: kb("VmRSS:")? * 1024,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Settings for [`write_collector_config`].
#[derive(Debug, Clone)]
pub struct CollectorSetup {
    /// Ingest port.
    pub port: u16,
    /// Metrics port, if any.
    pub metrics_port: Option<u16>,
    /// Buffer `max_bytes`.
    pub buffer_max_bytes: &'static str,
    /// Buffer `max_age`.
    pub buffer_max_age: &'static str,
    /// Where the collector keeps its data; `None`: `collector-data` in the test directory.
    pub data_dir: Option<PathBuf>,
    /// More top-level YAML (e.g. `ingest:` or `disk:` sections), appended as is.
    pub extra: String,
    /// `warehouse.url`; `None`: `sqlite://warehouse.db`.
    pub warehouse_url: Option<String>,
    /// `warehouse.password_file`, if any.
    pub warehouse_password_file: Option<PathBuf>,
    /// `warehouse.ca_file`, if any (relative to the config file, as written).
    pub warehouse_ca_file: Option<PathBuf>,
    /// More streams after the toll stream: YAML entries indented by two spaces, as they
    /// go under `streams:`.
    pub extra_streams: String,
    /// Environment variables of the collector process (every start).
    pub env: Vec<(String, String)>,
    /// `auth.admin_token_file`, if any (relative to the config file, as written).
    pub admin_token_file: Option<String>,
}

impl Default for CollectorSetup {
    fn default() -> Self {
        Self {
            port: 0,
            metrics_port: None,
            buffer_max_bytes: "4MiB",
            buffer_max_age: "1s",
            data_dir: None,
            extra: String::new(),
            warehouse_url: None,
            warehouse_password_file: None,
            warehouse_ca_file: None,
            extra_streams: String::new(),
            env: Vec::new(),
            admin_token_file: None,
        }
    }
}

/// Settings for [`write_agent_config`].
///
/// The fields after `start_at` are optional tuning; [`AgentSetup::default`] fills them in
/// (and the rest with the values the end-to-end tests use), so callers write
/// `AgentSetup { collector_port, ..AgentSetup::default() }`.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// Collector ingest port.
    pub collector_port: u16,
    /// Metrics port, if any.
    pub metrics_port: Option<u16>,
    /// Globs to follow.
    pub paths: Vec<String>,
    /// Batch `max_age`.
    pub batch_max_age: &'static str,
    /// Batch `max_records`.
    pub batch_max_records: usize,
    /// `start_at` for files without a checkpoint: `beginning` or `end`.
    pub start_at: &'static str,
    /// Globs of files to skip (`flows[].exclude`), e.g. `*.gz`.
    pub exclude: Vec<String>,
    /// `rescan_interval`; `None` leaves the agent's default.
    pub rescan_interval: Option<&'static str>,
    /// `poll_interval` (the harness uses `100ms`; the agent's own default is `250ms`).
    pub poll_interval: &'static str,
    /// `collector.request_timeout`; `None` leaves the agent's default (30 s).
    pub request_timeout: Option<&'static str>,
    /// `flows[].multiline.start` (with `flush_after: 300ms`); `None`: no joining.
    pub multiline_start: Option<&'static str>,
    /// More keys for the flow, as YAML lines indented by four spaces.
    pub flow_extra: &'static str,
    /// `collector.max_in_flight_per_file`, if set (1 keeps batches in file order).
    pub max_in_flight_per_file: Option<usize>,
    /// The collector URL's host (`127.0.0.1`; e.g. `localhost` for a TLS certificate).
    pub collector_host: &'static str,
    /// `collector.ca_file`: trust this CA and send over `https://`.
    pub collector_ca_file: Option<PathBuf>,
    /// The flow's collector stream.
    pub stream: &'static str,
    /// More top-level keys of agent.yaml, as YAML lines (e.g. `max_buffered_bytes: 4MiB\n`).
    pub agent_extra: &'static str,
}

impl Default for AgentSetup {
    fn default() -> Self {
        Self {
            collector_port: 0,
            metrics_port: None,
            paths: vec!["logs/*.log".into()],
            stream: "toll-transactions",
            batch_max_age: "100ms",
            batch_max_records: 5000,
            start_at: "beginning",
            exclude: vec!["*.gz".into()],
            rescan_interval: None,
            poll_interval: "100ms",
            request_timeout: None,
            multiline_start: None,
            flow_extra: "",
            max_in_flight_per_file: None,
            collector_host: "127.0.0.1",
            collector_ca_file: None,
            agent_extra: "",
        }
    }
}

/// The bearer token the harness configures on both sides.
pub const TOKEN: &str = "e2e-agent-token-7f3a";

/// Writes `collector.yaml` and its token file into `dir`; data goes to `dir/collector-data`.
///
/// # Errors
/// I/O errors.
pub fn write_collector_config(dir: &Path, setup: &CollectorSetup) -> anyhow::Result<PathBuf> {
    std::fs::write(
        dir.join("agent-tokens"),
        format!("# tokens agents may use\n{TOKEN}\n"),
    )?;
    let metrics = setup
        .metrics_port
        .map(|p| format!("metrics_listen: 127.0.0.1:{p}\n"))
        .unwrap_or_default();
    let data_dir = setup
        .data_dir
        .as_ref()
        .map_or_else(|| "collector-data".to_string(), |d| d.display().to_string());
    let text = format!(
        "listen: 127.0.0.1:{}\n{metrics}data_dir: {data_dir}\nauth:\n  agent_tokens_file: agent-tokens\n{}\
         warehouse:\n  url: {:?}\n{}{}streams:\n  toll-transactions:\n    table: toll_transactions\n\
         \x20   buffer: {{ max_bytes: {}, max_age: {} }}\n{}{}",
        setup.port,
        setup
            .admin_token_file
            .as_ref()
            .map(|f| format!("  admin_token_file: {f:?}\n"))
            .unwrap_or_default(),
        setup
            .warehouse_url
            .as_deref()
            .unwrap_or("sqlite://warehouse.db"),
        setup
            .warehouse_password_file
            .as_ref()
            .map(|f| format!("  password_file: {:?}\n", f.display().to_string()))
            .unwrap_or_default(),
        setup
            .warehouse_ca_file
            .as_ref()
            .map(|f| format!("  ca_file: {:?}\n", f.display().to_string()))
            .unwrap_or_default(),
        setup.buffer_max_bytes,
        setup.buffer_max_age,
        setup.extra_streams,
        setup.extra
    );
    let path = dir.join("collector.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Writes `agent.yaml` and its token file into `dir`; state goes to `dir/agent-state`.
///
/// # Errors
/// I/O errors.
pub fn write_agent_config(dir: &Path, setup: &AgentSetup) -> anyhow::Result<PathBuf> {
    std::fs::write(dir.join("agent.token"), format!("{TOKEN}\n"))?;
    let metrics = setup
        .metrics_port
        .map(|p| format!("metrics_listen: 127.0.0.1:{p}\n"))
        .unwrap_or_default();
    let paths: Vec<String> = setup.paths.iter().map(|p| format!("{p:?}")).collect();
    let exclude: Vec<String> = setup.exclude.iter().map(|p| format!("{p:?}")).collect();
    let rescan = setup
        .rescan_interval
        .map(|i| format!("rescan_interval: {i}\n"))
        .unwrap_or_default();
    let mut collector_extra = setup
        .request_timeout
        .map(|t| format!("  request_timeout: {t}\n"))
        .unwrap_or_default();
    if let Some(n) = setup.max_in_flight_per_file {
        collector_extra.push_str(&format!("  max_in_flight_per_file: {n}\n"));
    }
    let scheme = match &setup.collector_ca_file {
        Some(ca) => {
            collector_extra.push_str(&format!("  ca_file: {:?}\n", ca.display().to_string()));
            "https"
        }
        None => "http",
    };
    let multiline = setup
        .multiline_start
        .map(|m| format!("    multiline: {{ start: {m:?}, flush_after: 300ms }}\n"))
        .unwrap_or_default();
    let text = format!(
        "agent_id: e2e-booth\nstate_dir: agent-state\n{metrics}collector:\n  url: {scheme}://{}:{}\n  token_file: agent.token\n{collector_extra}\
         poll_interval: {}\n{rescan}rotate_wait: 1s\n{}flows:\n  - stream: {}\n    paths: [{}]\n    exclude: [{}]\n\
         \x20   start_at: {}\n    batch: {{ max_records: {}, max_bytes: 1MiB, max_age: {} }}\n{multiline}{}",
        setup.collector_host,
        setup.collector_port,
        setup.poll_interval,
        setup.agent_extra,
        setup.stream,
        paths.join(", "),
        exclude.join(", "),
        setup.start_at,
        setup.batch_max_records,
        setup.batch_max_age,
        setup.flow_extra
    );
    let path = dir.join("agent.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Read-only queries on the warehouse, SQLite or PostgreSQL, with the same SQL: on
/// PostgreSQL each result column is cast to the type asked for (so `SUM` of a `bigint`,
/// which is `numeric` there, reads as an integer).
pub struct WarehouseView {
    conn: Conn,
}

enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(std::sync::Mutex<postgres::Client>),
}

impl WarehouseView {
    /// Opens the warehouse file read-only, once it exists.
    ///
    /// # Errors
    /// When it cannot be opened.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Self {
            conn: Conn::Sqlite(conn),
        })
    }

    /// Connects to a PostgreSQL warehouse (not from inside an async runtime).
    ///
    /// # Errors
    /// When it cannot be reached.
    pub fn postgres(url: &str) -> anyhow::Result<Self> {
        let client = postgres::Client::connect(url, postgres::NoTls)
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            conn: Conn::Postgres(std::sync::Mutex::new(client)),
        })
    }

    /// On PostgreSQL: the rows of `sql` with each column cast to the given type.
    fn pg_rows(&self, sql: &str, types: &[&str]) -> anyhow::Result<Option<Vec<postgres::Row>>> {
        let Conn::Postgres(client) = &self.conn else {
            return Ok(None);
        };
        let names: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
        let casts: Vec<String> = names
            .iter()
            .zip(types)
            .map(|(name, ty)| format!("{name}::{ty}"))
            .collect();
        let wrapped = format!(
            "SELECT {} FROM ({sql}) AS q({})",
            casts.join(", "),
            names.join(", ")
        );
        let mut client = client.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(client.query(&wrapped, &[])?))
    }

    /// A single integer result.
    ///
    /// # Errors
    /// SQL errors.
    pub fn count(&self, sql: &str) -> anyhow::Result<i64> {
        if let Some(rows) = self.pg_rows(sql, &["bigint"])? {
            let row = rows.first().context("no row")?;
            return Ok(row.get::<_, Option<i64>>(0).unwrap_or(0));
        }
        let Conn::Sqlite(conn) = &self.conn else {
            unreachable!("PostgreSQL answered above")
        };
        Ok(conn
            .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?
            .unwrap_or(0))
    }

    /// Rows of (text, integer, integer), e.g. per-booth counts and sums.
    ///
    /// # Errors
    /// SQL errors.
    pub fn triples(&self, sql: &str) -> anyhow::Result<Vec<(String, i64, i64)>> {
        if let Some(rows) = self.pg_rows(sql, &["text", "bigint", "bigint"])? {
            return Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect());
        }
        let Conn::Sqlite(conn) = &self.conn else {
            unreachable!("PostgreSQL answered above")
        };
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Rows of (text, text); blobs (a rejected line may be invalid UTF-8) are shown lossily.
    ///
    /// # Errors
    /// SQL errors.
    pub fn pairs(&self, sql: &str) -> anyhow::Result<Vec<(String, String)>> {
        if let Some(rows) = self.pg_rows(sql, &["text", "text"])? {
            let text = |r: &postgres::Row, i| r.get::<_, Option<String>>(i).unwrap_or_default();
            return Ok(rows.iter().map(|r| (text(r, 0), text(r, 1))).collect());
        }
        let Conn::Sqlite(conn) = &self.conn else {
            unreachable!("PostgreSQL answered above")
        };
        let lossy = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<String> {
            Ok(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                    String::from_utf8_lossy(t).into_owned()
                }
                rusqlite::types::ValueRef::Null => String::new(),
                other => format!("{other:?}"),
            })
        };
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((lossy(r, 0)?, lossy(r, 1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
