//! `peers`: other log shippers tail the same pre-written file into the same counting sink,
//! printed side by side with tollstream's agent (the `agent-throughput` runs) as ratios.
//!
//! Only peers already installed on the machine run; the harness never downloads one:
//! * syslog-ng (`apt install syslog-ng-core syslog-ng-mod-http`): `wildcard-file()` →
//!   `http()` into the sink's ingest path, tuned as ANCHORS.md describes (without tuning it
//!   sends one line per request). It has no compression.
//! * rsyslog (`apt install rsyslog rsyslog-elasticsearch`): `imfile` → `omelasticsearch` in
//!   bulk mode into the sink's `/_bulk` (Debian's rsyslog has no `omhttp`). Uncompressed.
//!
//! The two conflict in apt; either can instead be unpacked with `dpkg -x DEB ROOT` and named
//! with `TOLLBENCH_SYSLOG_NG_ROOT=ROOT` or `TOLLBENCH_RSYSLOG_ROOT=ROOT` (its libraries
//! installed by apt). Each peer runs in the foreground with its own config, state and pid
//! files in a temp directory, and, when the harness runs as root, as the user `nobody`.
//!
//! Fluent Bit and Vector are not packaged in Debian: their figures from ANCHORS.md (measured
//! elsewhere on this kind of machine, 5M lines) are printed next to ours, labelled so.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tollstream_tests::harness::Usage;
use tollstream_tests::sink::{self, Counts};

use crate::file_bytes;

/// The counting sink on a port of 127.0.0.1, served by its own one-thread runtime.
pub struct Sink {
    /// What it has counted.
    pub counts: Arc<Counts>,
    /// Its port.
    pub port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    /// Starts a sink on a free port.
    ///
    /// # Errors
    /// When no runtime can be built or no port bound.
    pub fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let counts = Arc::new(Counts::default());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        runtime.spawn(sink::serve(listener, counts.clone()));
        Ok(Self {
            counts,
            port,
            _runtime: runtime,
        })
    }

    /// Lines counted so far.
    pub fn lines(&self) -> u64 {
        self.counts.lines.load(Ordering::Relaxed)
    }
}

/// A peer's run is given up when the sink's count stands still this long.
const STALL: Duration = Duration::from_secs(30);
/// …or when it takes longer than this plus [`DEADLINE_PER_MILLION`] per million lines.
const DEADLINE: Duration = Duration::from_secs(30);
/// See [`DEADLINE`].
const DEADLINE_PER_MILLION: Duration = Duration::from_secs(30);
/// The `nobody` user and group, which the peers run as when the harness is root.
const NOBODY: u32 = 65534;

/// Runs every installed peer on `file` (`lines` lines); a peer that is not installed gives a
/// `skipped` entry. A peer's failure is reported in its entry, not as an error: the run goes
/// on.
pub fn peers(dir: &Path, file: &Path, lines: u64) -> Vec<Value> {
    let mut results = Vec::new();
    for peer in [Peer::SyslogNg, Peer::Rsyslog] {
        let entry = match peer.locate() {
            None => {
                println!(
                    "{}: skipped: not installed ({})",
                    peer.name(),
                    peer.install()
                );
                json!({ "scenario": "peers", "name": peer.name(), "skipped": format!("not installed ({})", peer.install()) })
            }
            Some(install) => run(dir, file, lines, peer, &install).unwrap_or_else(|error| {
                println!("{}: failed: {error:#}", peer.name());
                json!({ "scenario": "peers", "name": peer.name(), "failed": format!("{error:#}") })
            }),
        };
        results.push(entry);
    }
    results
}

#[derive(Clone, Copy)]
enum Peer {
    SyslogNg,
    Rsyslog,
}

/// Where a peer's binary and modules are.
struct Install {
    binary: PathBuf,
    /// The module directory, when not the binary's built-in one (a `dpkg -x` root).
    modules: Option<PathBuf>,
    version: String,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::SyslogNg => "syslog-ng wildcard-file → http()",
            Peer::Rsyslog => "rsyslog imfile → omelasticsearch bulk",
        }
    }

    fn install(self) -> &'static str {
        match self {
            Peer::SyslogNg => "apt install syslog-ng-core syslog-ng-mod-http",
            Peer::Rsyslog => "apt install rsyslog rsyslog-elasticsearch",
        }
    }

    /// The installed binary, from `TOLLBENCH_*_ROOT` or the system; `None` when absent or
    /// without the module the run needs.
    fn locate(self) -> Option<Install> {
        let (env, binary, module) = match self {
            Peer::SyslogNg => (
                "TOLLBENCH_SYSLOG_NG_ROOT",
                "usr/sbin/syslog-ng",
                "libhttp.so",
            ),
            Peer::Rsyslog => (
                "TOLLBENCH_RSYSLOG_ROOT",
                "usr/sbin/rsyslogd",
                "omelasticsearch.so",
            ),
        };
        let root = std::env::var_os(env).map_or_else(|| PathBuf::from("/"), PathBuf::from);
        let binary = root.join(binary);
        let module_dir = match self {
            Peer::SyslogNg => first_dir(&root.join("usr/lib/syslog-ng")),
            Peer::Rsyslog => std::fs::read_dir(root.join("usr/lib"))
                .ok()?
                .flatten()
                .map(|e| e.path().join("rsyslog"))
                .find(|d| d.join("imfile.so").exists()),
        }?;
        if !binary.exists() || !module_dir.join(module).exists() {
            return None;
        }
        let version = version(&binary).unwrap_or_default();
        Some(Install {
            binary,
            modules: (root != Path::new("/")).then_some(module_dir),
            version,
        })
    }
}

/// The first subdirectory of `dir` (syslog-ng keeps its modules under a version directory).
fn first_dir(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
}

/// The version the binary reports (first line of `--version` / `-v`, its version word).
fn version(binary: &Path) -> Option<String> {
    let flag = if binary.ends_with("rsyslogd") {
        "-v"
    } else {
        "--version"
    };
    let out = Command::new(binary).arg(flag).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = text.lines().next()?;
    // `syslog-ng 3 (3.38.1)`, `rsyslogd  8.2302.0 (aka 2023.02) compiled with:`: the
    // longest word of digits and dots.
    first
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .max_by_key(|w| w.len())
        .map(str::to_owned)
}

/// One peer run: config, start, wait for every line, usage, stop.
fn run(
    dir: &Path,
    file: &Path,
    lines: u64,
    peer: Peer,
    install: &Install,
) -> anyhow::Result<Value> {
    let work = dir.join(match peer {
        Peer::SyslogNg => "peer-syslog-ng",
        Peer::Rsyslog => "peer-rsyslog",
    });
    std::fs::create_dir_all(work.join("spool"))?;
    let root = is_root();
    if root {
        // The peer runs as nobody: it needs its own directory, and to reach the file.
        for d in [&work, &work.join("spool")] {
            std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY))?;
        }
        let mut up = file.parent();
        while let Some(d) = up.filter(|d| d.starts_with(dir)) {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            up = d.parent();
        }
    }
    let sink = Sink::start()?;
    let mut command = Command::new(&install.binary);
    match peer {
        Peer::SyslogNg => syslog_ng_command(&mut command, &work, file, sink.port, install)?,
        Peer::Rsyslog => rsyslog_command(&mut command, &work, file, sink.port, install)?,
    }
    if root {
        command.uid(NOBODY).gid(NOBODY);
    }
    let log = std::fs::File::create(work.join("peer.log"))?;
    let started = Instant::now();
    let mut child = PeerProcess(
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", install.binary.display()))?,
    );
    let pid = child.0.id();
    let mut usage = Usage::default();
    let (mut last, mut last_change) = (0, Instant::now());
    let deadline = DEADLINE + DEADLINE_PER_MILLION.mul_f64(lines as f64 / 1e6);
    while sink.lines() < lines {
        usage = Usage::of(pid).unwrap_or(usage);
        if let Ok(Some(status)) = child.0.try_wait() {
            anyhow::bail!(
                "exited ({status}) after {} lines: {}",
                sink.lines(),
                tail(&work)
            );
        }
        let now = sink.lines();
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > STALL {
            anyhow::bail!("stalled at {now} of {lines} lines: {}", tail(&work));
        }
        if started.elapsed() > deadline {
            anyhow::bail!(
                "too slow: {now} of {lines} lines in {:.0} s ({:.0} lines/s)",
                started.elapsed().as_secs_f64(),
                now as f64 / started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    usage = Usage::of(pid).unwrap_or(usage);
    // Anything sent twice would arrive about now.
    std::thread::sleep(Duration::from_millis(300));
    drop(child);
    let delivered = sink.lines();
    Ok(json!({
        "scenario": "peers", "name": peer.name(), "version": install.version,
        "seconds": seconds, "lines": lines, "delivered": delivered,
        "lines_per_sec": lines as f64 / seconds, "mb_per_sec": file_bytes(file) as f64 / 1e6 / seconds,
        "cpu_us_per_line": usage.cpu_seconds * 1e6 / lines as f64,
        "peak_rss_mb": usage.peak_rss_bytes as f64 / 1e6,
        "requests": sink.counts.requests.load(Ordering::Relaxed),
    }))
}

/// Whether this process runs as root (so the peer can be started as `nobody`).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The last lines of the peer's output, for an error message.
fn tail(work: &Path) -> String {
    let text = std::fs::read_to_string(work.join("peer.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// A peer process, killed when dropped.
struct PeerProcess(Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// syslog-ng, tuned as ANCHORS.md says (its defaults send one line per request). The window
/// (`log-iw-size`) of `wildcard-file()` is shared by up to `max-files` files: 100,000 over 10
/// gives each file the 10,000 of the tuning (with the default 100 files, each would get 100
/// and, with flow control, syslog-ng sends ~1,000 lines/s).
fn syslog_ng_command(
    command: &mut Command,
    work: &Path,
    file: &Path,
    port: u16,
    install: &Install,
) -> anyhow::Result<()> {
    let dir = file.parent().context("the file has no directory")?;
    let name = file.file_name().context("the file has no name")?;
    let config = work.join("syslog-ng.conf");
    std::fs::write(
        &config,
        format!(
            "@version: 3.38\n\
             options {{ stats-freq(0); keep-hostname(yes); }};\n\
             source s_file {{ wildcard-file(base-dir({:?}) filename-pattern({:?}) flags(no-parse) \
             follow-freq(1) max-files(10) log-iw-size(100000) log-fetch-limit(1000)); }};\n\
             destination d_sink {{ http(url(\"http://127.0.0.1:{port}/v1/streams/toll-transactions/records\") \
             method(\"POST\") body(\"${{MESSAGE}}\") delimiter(\"\\n\") batch-lines(1000) \
             batch-bytes(1048576) batch-timeout(100) workers(2)); }};\n\
             log {{ source(s_file); destination(d_sink); flags(flow-control); }};\n",
            dir.display().to_string(),
            name.to_string_lossy(),
        ),
    )?;
    command
        .arg("-F")
        .arg("--no-caps")
        .arg("-f")
        .arg(&config)
        .arg("--persist-file")
        .arg(work.join("spool/syslog-ng.persist"))
        .arg("--pidfile")
        .arg(work.join("spool/syslog-ng.pid"))
        .arg("--control")
        .arg(work.join("spool/syslog-ng.ctl"));
    if let Some(modules) = &install.modules {
        command.arg("--module-path").arg(modules);
    }
    Ok(())
}

/// rsyslog: `imfile` → `omelasticsearch` (bulk), with a queue that dequeues 1,000 at a time.
fn rsyslog_command(
    command: &mut Command,
    work: &Path,
    file: &Path,
    port: u16,
    install: &Install,
) -> anyhow::Result<()> {
    let config = work.join("rsyslog.conf");
    std::fs::write(
        &config,
        format!(
            "global(workDirectory={:?} maxMessageSize=\"64k\")\n\
             module(load=\"imfile\" mode=\"inotify\")\n\
             module(load=\"omelasticsearch\")\n\
             template(name=\"doc\" type=\"list\") {{ constant(value=\"{{\\\"message\\\":\\\"\") \
             property(name=\"msg\" format=\"json\") constant(value=\"\\\"}}\") }}\n\
             ruleset(name=\"ship\" queue.type=\"LinkedList\" queue.size=\"200000\" \
             queue.dequeueBatchSize=\"1000\") {{\n\
             \x20 action(type=\"omelasticsearch\" server=\"127.0.0.1\" serverport=\"{port}\" \
             template=\"doc\" searchIndex=\"toll\" bulkmode=\"on\" maxbytes=\"1m\" \
             action.resumeRetryCount=\"-1\")\n}}\n\
             input(type=\"imfile\" file={:?} tag=\"toll\" freshStartTail=\"off\" ruleset=\"ship\")\n",
            work.join("spool").display().to_string(),
            file.display().to_string(),
        ),
    )?;
    command
        .arg("-n")
        .arg("-f")
        .arg(&config)
        .arg("-i")
        .arg(work.join("spool/rsyslogd.pid"));
    if let Some(modules) = &install.modules {
        command.arg("-M").arg(modules);
    }
    Ok(())
}

/// Figures from ANCHORS.md (5M lines, measured elsewhere on this kind of machine, not in this
/// run): name, gzip?, lines/s, CPU µs/line, peak RSS MB.
const ANCHORS: &[(&str, bool, f64, f64, f64)] = &[
    (
        "Fluent Bit 5.1 tail → http, json_lines+gzip",
        true,
        514e3,
        3.5,
        314.0,
    ),
    (
        "Fluent Bit 5.1 tail → http, msgpack, no gzip",
        false,
        1.14e6,
        0.45,
        47.0,
    ),
    (
        "syslog-ng 3.38 wildcard-file → http(), tuned",
        false,
        648e3,
        1.9,
        19.0,
    ),
    (
        "rsyslog 8.2302 imfile → omhttp+gzip (from source)",
        true,
        221e3,
        5.5,
        562.0,
    ),
    (
        "rsyslog 8.2302 imfile → omelasticsearch bulk",
        false,
        181e3,
        7.0,
        578.0,
    ),
];

/// Prints peers next to the agent's runs of the same file, as ratios (agent ÷ peer for
/// speed, peer ÷ agent for CPU per line and memory: above 1 means the agent does better).
pub fn print_table(results: &[Value]) {
    let agent = |gzip: bool| {
        let name = if gzip {
            "agent → sink, gzip level 2"
        } else {
            "agent → sink, no compression"
        };
        results.iter().find(|r| r["name"] == name)
    };
    let peers: Vec<&Value> = results
        .iter()
        .filter(|r| r["scenario"] == "peers")
        .collect();
    if peers.is_empty() {
        return;
    }
    println!(
        "\n{:<64} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "peers: same file → same sink", "lines/s", "µs/line", "RSS", "agent×", "CPU×", "RSS×"
    );
    let num = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let row = |label: &str, speed: f64, cpu: f64, rss: f64, gzip: bool| {
        let (a_speed, a_cpu, a_rss) = agent(gzip).map_or((f64::NAN, f64::NAN, f64::NAN), |a| {
            (
                num(a, "lines_per_sec"),
                num(a, "cpu_us_per_line"),
                num(a, "peak_rss_mb"),
            )
        });
        println!(
            "{:<64} {:>9.0} {:>8.2} {:>5.0} MB {:>7.2}× {:>7.2}× {:>7.2}×",
            label,
            speed,
            cpu,
            rss,
            a_speed / speed,
            cpu / a_cpu,
            rss / a_rss
        );
    };
    for gzip in [false, true] {
        if let Some(a) = agent(gzip) {
            let label = format!(
                "tollstream {} (this run)",
                a["name"].as_str().unwrap_or("?")
            );
            row(
                &label,
                num(a, "lines_per_sec"),
                num(a, "cpu_us_per_line"),
                num(a, "peak_rss_mb"),
                gzip,
            );
        }
    }
    for p in &peers {
        let name = p["name"].as_str().unwrap_or("?");
        if let Some(why) = p.get("skipped").or(p.get("failed")).and_then(Value::as_str) {
            let word = if p.get("skipped").is_some() {
                "skipped"
            } else {
                "failed"
            };
            println!("{name:<64} {word}: {why}");
            continue;
        }
        let label = format!("{name} {} (this run)", p["version"].as_str().unwrap_or(""));
        row(
            &label,
            num(p, "lines_per_sec"),
            num(p, "cpu_us_per_line"),
            num(p, "peak_rss_mb"),
            false,
        );
        if p["delivered"] != p["lines"] {
            println!("  ↑ delivered {} of {} lines", p["delivered"], p["lines"]);
        }
    }
    for &(name, gzip, speed, cpu, rss) in ANCHORS {
        row(&format!("{name} [ANCHORS.md]"), speed, cpu, rss, gzip);
    }
    println!(
        "agent× = the agent's lines/s ÷ the peer's; CPU× and RSS× = the peer's ÷ the agent's \
         (above 1: the agent does better). Each is against the agent run with the same \
         compression. [ANCHORS.md] rows: 5M lines, measured elsewhere on this kind of machine, \
         not in this run."
    );
}
