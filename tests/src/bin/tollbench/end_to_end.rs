//! `end-to-end`: end-to-end freshness. Toll lines are written at a steady rate into one
//! watched file → the real agent → the real collector (its default configuration: WAL
//! fsync, 1 s buffer) → SQLite, or PostgreSQL; a reader polls the warehouse and notes when
//! each row becomes visible. Per line: the time from its write (after `write(2)` returns)
//! to the first poll that sees its row, matched by `transaction_id`.
//!
//! A row is seen at the first poll after its load commits, so each figure is an upper
//! bound, late by at most one poll interval plus the poll's own query (the resolution is
//! printed). The reader asks only the manifest (`MAX(load_id)`) at each poll, and reads the
//! new rows' ids once per load, so it costs the machine little.
//!
//! The row's `received_at` (the collector's ack time) splits each figure in two: write →
//! received (agent: notice, batch, ship, WAL fsync) and received → visible (collector:
//! buffer, archive, load).
//!
//! With `alerts`, the collector also runs the shipped `billing-limit` rule with a limit of
//! 0.00 for one customer in ten (imported with `limits import` before it starts), so each of
//! them crosses the limit at their first charge, spread over the run; a webhook receiver in
//! the harness notes when each alert arrives. Alert latency is the time from the crossing
//! charge's `write` to the webhook request.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jiff::Timestamp;
use serde_json::{Value, json};
use tollstream_tests::harness::{Daemon, Usage, binary, free_port, http_get, wait_for};
use tollstream_tests::postgres::TestPostgres;
use tollstream_tests::sim::{Mode, SimConfig, Simulator};

/// How the scenario is run.
pub struct Options {
    /// Lines written per second.
    pub rate: f64,
    /// How long lines are written.
    pub seconds: f64,
    /// How often the reader polls the warehouse.
    pub poll: Duration,
    /// Names the run's work directory (`end-to-end-<backend><tag>`), so runs do not share one.
    pub tag: String,
    /// Stop writing as soon as this share of the lines is certain to be later than this
    /// many seconds (the rate search's "p99 under 5 s" fails then, whatever comes next):
    /// `(0.01, 5.0)`. `None`: write every line.
    pub stop_when_late: Option<(f64, f64)>,
    /// Run the billing rule and measure alert latency.
    pub alerts: bool,
}

/// Customers `C0000001` to this get a limit of 0.00 in the alert runs.
const LIMITED_CUSTOMERS: u32 = 2_000;

/// Lines are written this often, each time all the lines due by then.
const WRITE_TICK: Duration = Duration::from_millis(10);
/// Not one of the simulator's transaction ids, so the reader's match leaves it out.
const WARM_UP_LINE: &str = "2026-11-25T14:03:27.512-03:00,00000000-0000-4000-8000-000000000000,\
                            PLZ-001,1,C9999999,TX-0000001,1,12.50\n";
/// How long the last rows may take to show up after the writing stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// One run into SQLite, or into PostgreSQL when `postgres` is given.
///
/// # Errors
/// Daemons that do not start, a warehouse that cannot be read, rows that do not all show up.
pub fn end_to_end(
    dir: &Path,
    options: &Options,
    postgres: Option<&TestPostgres>,
) -> anyhow::Result<Value> {
    let backend = if postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let work = dir.join(format!("end-to-end-{backend}{}", options.tag));
    std::fs::create_dir_all(work.join("logs"))?;
    // A warm-up line goes all the way through before the measured lines start, so they do
    // not wait for the daemons to start or the file to be discovered.
    let log = work.join("logs/booths.log");
    std::fs::write(&log, WARM_UP_LINE)?;
    let receiver = if options.alerts {
        Some(tollstream_tests::webhook::Receiver::start(0)?)
    } else {
        None
    };
    let (mut collector, mut agent) =
        start_daemons(&work, postgres, receiver.as_ref().map(|r| r.url()))?;
    let reader = Reader::open(&work, postgres)?;
    wait_for(
        "the warm-up line in the warehouse",
        Duration::from_secs(60),
        || reader.newest_load().is_ok_and(|n| n > 0),
    )
    .map_err(|e| {
        e.context(format!(
            "{}\n{}",
            collector.log_tail(20),
            agent.log_tail(20)
        ))
    })?;
    reader.last_load.set(reader.newest_load()?);

    let lines = (options.rate * options.seconds).round().max(1.0) as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let mut writer = Some({
        let (log, rate) = (log.clone(), options.rate);
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || write_lines(&log, lines, rate, &stop, &progress))
    });
    // (when, lines written by then), to know which lines are older than `stop_when_late`.
    let mut progress_log = std::collections::VecDeque::new();
    let (mut stopped_early, mut overdue) = (None, 0u64);
    let started = Instant::now();
    let mut seen = Vec::with_capacity(lines as usize);
    let (mut agent_usage, mut collector_usage) = (Usage::default(), Usage::default());
    let mut poll_max = Duration::ZERO;
    let (mut written, mut drain_deadline) = (None, None);
    let mut crossings = HashMap::new();
    // Until every line written (all of them, or those before an early stop) is visible.
    while written
        .as_ref()
        .is_none_or(|w: &HashMap<String, i64>| seen.len() < w.len())
    {
        let polled = Instant::now();
        reader.poll(&mut seen)?;
        poll_max = poll_max.max(polled.elapsed());
        agent_usage = agent.usage().unwrap_or(agent_usage);
        collector_usage = collector.usage().unwrap_or(collector_usage);
        if let Some((share, late)) = options.stop_when_late
            && stopped_early.is_none()
            && writer.is_some()
        {
            // Lines written more than `late` seconds ago and not yet visible will all be
            // later than that.
            progress_log.push_back((Instant::now(), progress.load(Ordering::Relaxed)));
            while let Some(&(at, n)) = progress_log.front()
                && at.elapsed().as_secs_f64() > late
            {
                overdue = n;
                progress_log.pop_front();
            }
            if overdue as f64 - seen.len() as f64 > share * lines as f64 {
                stop.store(true, Ordering::Relaxed);
                stopped_early = Some(started.elapsed().as_secs_f64());
            }
        }
        if let Some(done) = writer.take_if(|w| w.is_finished()) {
            let (lines, charges) = done
                .join()
                .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
            written = Some(lines);
            crossings = charges;
            drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            bail!(
                "only {} of {} rows visible {DRAIN_TIMEOUT:?} after the last write\n{}\n{}",
                seen.len(),
                written.as_ref().map_or(lines, |w| w.len() as u64),
                collector.log_tail(20),
                agent.log_tail(20)
            );
        }
        std::thread::sleep(options.poll.saturating_sub(polled.elapsed()));
    }
    let written = written.unwrap_or_default();
    let wall = started.elapsed().as_secs_f64();
    let alert_latency = match &receiver {
        Some(receiver) => Some(alert_latency(receiver, &crossings)?),
        None => None,
    };
    agent.terminate(Duration::from_secs(60))?;
    collector.terminate(Duration::from_secs(60))?;
    let mut summary = summarize(
        backend,
        options,
        &written,
        &seen,
        wall,
        poll_max,
        (agent_usage, collector_usage),
    )?;
    summary["stopped_early_after_seconds"] = json!(stopped_early);
    summary["alert_latency_seconds"] = json!(alert_latency);
    Ok(summary)
}

/// Waits for the alerts of every limited customer who was charged, then: charge written →
/// webhook request, p50/p99/max.
fn alert_latency(
    receiver: &tollstream_tests::webhook::Receiver,
    crossings: &HashMap<(String, i64), i64>,
) -> anyhow::Result<Value> {
    let customers: std::collections::HashSet<&String> = crossings.keys().map(|(c, _)| c).collect();
    wait_for(
        "every limited customer's alert",
        Duration::from_secs(60),
        || receiver.accepted().len() >= customers.len(),
    )?;
    let mut latencies = Vec::new();
    for delivery in receiver.accepted() {
        let doc = &delivery.document;
        let key = doc["key"].as_str().unwrap_or_default().to_owned();
        let event: Timestamp = doc["event_time"]
            .as_str()
            .context("an alert without event_time")?
            .parse()?;
        let written = crossings
            .get(&(key.clone(), event.as_millisecond()))
            .with_context(|| format!("alert for {key} at {event}: no such charge was written"))?;
        latencies.push(delivery.received_us - written);
    }
    let sorted = seconds_sorted(latencies.into_iter());
    Ok(json!({
        "alerts": sorted.len(),
        "p50": quantile(&sorted, 0.5),
        "p99": quantile(&sorted, 0.99),
        "max": quantile(&sorted, 1.0),
    }))
}

/// Writes the configs and starts collector and agent (defaults, but for addresses and the
/// watched path).
fn start_daemons(
    work: &Path,
    postgres: Option<&TestPostgres>,
    webhook: Option<String>,
) -> anyhow::Result<(Daemon, Daemon)> {
    let port = free_port()?;
    let token = tollstream_tests::harness::TOKEN;
    std::fs::write(work.join("agent-tokens"), format!("{token}\n"))?;
    std::fs::write(work.join("agent.token"), format!("{token}\n"))?;
    let url = postgres.map_or("sqlite://warehouse.db".to_owned(), |p| p.url().to_owned());
    let collector_config = work.join("collector.yaml");
    std::fs::write(
        &collector_config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: collector-data\n\
             auth: {{ agent_tokens_file: agent-tokens }}\nwarehouse: {{ url: {url:?} }}\n{}",
            webhook.as_ref().map_or(String::new(), |url| format!(
                "rules:\n  - {{ name: billing-limit, key: customer_id, period: month, aggregate: sum, \
                 column: amount, threshold: limits, when: above }}\n\
                 notify: {{ webhook: {{ url: {url:?} }} }}\n"
            ))
        ),
    )?;
    if webhook.is_some() {
        let csv = work.join("limits.csv");
        let mut text = String::from("customer_id,monthly_limit\n");
        for n in 1..=LIMITED_CUSTOMERS {
            text.push_str(&format!("{},0.00\n", tollstream_tests::sim::customer_id(n)));
        }
        std::fs::write(&csv, text)?;
        let status = std::process::Command::new(binary("tollstream-collector")?)
            .arg("--config")
            .arg(&collector_config)
            .args(["limits", "import"])
            .arg(&csv)
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "limits import failed: {status}");
    }
    let agent_config = work.join("agent.yaml");
    std::fs::write(
        &agent_config,
        format!(
            "agent_id: bench\nstate_dir: agent-state\n\
             collector: {{ url: \"http://127.0.0.1:{port}\", token_file: agent.token }}\n\
             flows:\n  - stream: toll-transactions\n    paths: [\"logs/*.log\"]\n"
        ),
    )?;
    let mut collector = Daemon::new(
        "collector",
        binary("tollstream-collector")?,
        collector_config,
        work.join("collector.log"),
    );
    collector.start()?;
    wait_for("the collector to start", Duration::from_secs(30), || {
        http_get(([127, 0, 0, 1], port).into(), "/healthz").is_some()
    })
    .map_err(|e| e.context(collector.log_tail(20)))?;
    let mut agent = Daemon::new(
        "agent",
        binary("tollstream-agent")?,
        agent_config,
        work.join("agent.log"),
    );
    agent.start()?;
    Ok((collector, agent))
}

fn unix_us(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What a writer wrote: per transaction id, and per (limited customer, event time in ms),
/// the time (µs since the epoch) its `write` returned.
type Written = (HashMap<String, i64>, HashMap<(String, i64), i64>);

/// Writes `lines` toll lines at `rate` into `path`, stamped with the wall clock; returns
/// when each line's (and each limited customer's charge's) `write` returned. Stops early
/// when `stop` is set; keeps `progress` at the lines written so far.
fn write_lines(
    path: &Path,
    lines: u64,
    rate: f64,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> anyhow::Result<Written> {
    let mut sim = Simulator::new(&SimConfig::default(), Mode::Count { lines })?;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    let mut written = HashMap::with_capacity(lines as usize);
    let mut charges = HashMap::new();
    let mut charged = std::collections::HashSet::new();
    let (mut chunk, mut line, mut ids, mut limited) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    let mut done = 0u64;
    while done < lines && !stop.load(Ordering::Relaxed) {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(lines);
        let now = Timestamp::try_from(SystemTime::now())?;
        while done < due {
            line.clear();
            if sim.next_into_at(now, &mut line).is_none() {
                bail!("the simulator ran out after {done} lines");
            }
            let id = line
                .split(|&b| b == b',')
                .nth(1)
                .context("a generated line without a transaction id")?;
            ids.push(String::from_utf8_lossy(id).to_ascii_lowercase());
            if let Some(customer) = line.split(|&b| b == b',').nth(4)
                && let Ok(text) = std::str::from_utf8(customer)
                && text
                    .strip_prefix('C')
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| (1..=LIMITED_CUSTOMERS).contains(&n))
            {
                limited.push((text.to_owned(), now.as_millisecond()));
            }
            chunk.extend_from_slice(&line);
            done += 1;
        }
        if !chunk.is_empty() {
            file.write_all(&chunk)?;
            let at = unix_us(SystemTime::now());
            written.extend(ids.drain(..).map(|id| (id, at)));
            // The first charge of a limited customer is the crossing one.
            for key in limited.drain(..) {
                if charged.insert(key.0.clone()) {
                    charges.insert(key, at);
                }
            }
            progress.store(done, Ordering::Relaxed);
            chunk.clear();
        }
        // Sleep to the next tick, not for a fixed time, so the rate stays steady.
        let tick = WRITE_TICK.as_secs_f64();
        let next = tick * ((started.elapsed().as_secs_f64() / tick).floor() + 1.0);
        std::thread::sleep(Duration::from_secs_f64(next).saturating_sub(started.elapsed()));
    }
    Ok((written, charges))
}

/// A row seen by the reader: transaction id, when the collector received it and when the
/// reader first saw it (µs since the epoch).
struct Seen {
    id: String,
    received_us: i64,
    visible_us: i64,
}

/// Polls the warehouse's manifest and reads the rows of each new load.
struct Reader {
    conn: ReaderConn,
    last_load: std::cell::Cell<i64>,
}

enum ReaderConn {
    Sqlite(rusqlite::Connection),
    Postgres(std::cell::RefCell<postgres::Client>),
}

impl Reader {
    fn open(work: &Path, postgres: Option<&TestPostgres>) -> anyhow::Result<Self> {
        let conn = match postgres {
            Some(pg) => ReaderConn::Postgres(std::cell::RefCell::new(pg.client()?)),
            None => {
                let path = work.join("collector-data/warehouse.db");
                wait_for("the warehouse file", Duration::from_secs(30), || {
                    path.exists()
                })?;
                let conn = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                conn.busy_timeout(Duration::from_secs(5))?;
                ReaderConn::Sqlite(conn)
            }
        };
        Ok(Self {
            conn,
            last_load: std::cell::Cell::new(0),
        })
    }

    /// One poll: if loads committed since the last one, appends their rows to `seen`, all
    /// stamped with now.
    fn poll(&self, seen: &mut Vec<Seen>) -> anyhow::Result<()> {
        let newest = self.newest_load()?;
        let visible_us = unix_us(SystemTime::now());
        let last = self.last_load.get();
        if newest <= last {
            return Ok(());
        }
        for (id, received_at) in self.rows(last, newest)? {
            let received: Timestamp = received_at
                .parse()
                .with_context(|| format!("received_at {received_at:?}"))?;
            seen.push(Seen {
                id: id.to_ascii_lowercase(),
                received_us: received.as_microsecond(),
                visible_us,
            });
        }
        self.last_load.set(newest);
        Ok(())
    }

    fn newest_load(&self) -> anyhow::Result<i64> {
        const SQL: &str = "SELECT COALESCE(MAX(load_id), 0) FROM loads";
        Ok(match &self.conn {
            // The tables appear with the first load's preparation.
            ReaderConn::Sqlite(conn) => conn.query_row(SQL, [], |r| r.get(0)).unwrap_or(0),
            ReaderConn::Postgres(client) => client
                .borrow_mut()
                .query_one(SQL, &[])
                .map_or(0, |r| r.get::<_, i64>(0)),
        })
    }

    /// Transaction id and `received_at` (RFC 3339, UTC) of the rows of loads `(after, upto]`.
    fn rows(&self, after: i64, upto: i64) -> anyhow::Result<Vec<(String, String)>> {
        Ok(match &self.conn {
            ReaderConn::Sqlite(conn) => {
                let mut stmt = conn.prepare(
                    "SELECT transaction_id, received_at FROM toll_transactions \
                     WHERE load_id > ?1 AND load_id <= ?2",
                )?;
                stmt.query_map([after, upto], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?
            }
            ReaderConn::Postgres(client) => client
                .borrow_mut()
                .query(
                    "SELECT transaction_id::text, to_char(received_at AT TIME ZONE 'UTC', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM toll_transactions \
                     WHERE load_id > $1 AND load_id <= $2",
                    &[&after, &upto],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
        })
    }
}

/// The value at quantile `q` of sorted `values`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn seconds_sorted(values: impl Iterator<Item = i64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.map(|us| us as f64 / 1e6).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The slope of freshness over write time (least squares over `(write µs, row)` pairs).
fn growth(matched: &[(i64, &Seen)]) -> f64 {
    let Some(first) = matched.iter().map(|(w, _)| *w).min() else {
        return f64::NAN;
    };
    let n = matched.len() as f64;
    let points = matched
        .iter()
        .map(|(w, r)| ((w - first) as f64 / 1e6, (r.visible_us - w) as f64 / 1e6));
    let (sx, sy, sxx, sxy) = points.fold((0.0, 0.0, 0.0, 0.0), |(sx, sy, sxx, sxy), (x, y)| {
        (sx + x, sy + y, sxx + x * x, sxy + x * y)
    });
    (n * sxy - sx * sy) / (n * sxx - sx * sx)
}

/// The run's figures as JSON; `usage` is the agent's and the collector's.
fn summarize(
    backend: &str,
    options: &Options,
    written: &HashMap<String, i64>,
    seen: &[Seen],
    wall: f64,
    poll_max: Duration,
    (agent, collector): (Usage, Usage),
) -> anyhow::Result<Value> {
    let mut matched = Vec::with_capacity(seen.len());
    for row in seen {
        let at = written
            .get(&row.id)
            .with_context(|| format!("row {} was never written by this run", row.id))?;
        matched.push((*at, row));
    }
    if matched.len() != written.len() {
        bail!(
            "{} rows seen for {} lines written",
            matched.len(),
            written.len()
        );
    }
    let freshness = seconds_sorted(matched.iter().map(|(w, r)| r.visible_us - w));
    let growth = growth(&matched);
    let to_received = seconds_sorted(matched.iter().map(|(w, r)| r.received_us - w));
    let to_visible = seconds_sorted(matched.iter().map(|(_, r)| r.visible_us - r.received_us));
    let first_write = written.values().min().copied().unwrap_or(0);
    let last_write = written.values().max().copied().unwrap_or(0);
    let last_visible = seen.iter().map(|r| r.visible_us).max().unwrap_or(0);
    let first_visible = seen.iter().map(|r| r.visible_us).min().unwrap_or(0);
    let first_poll_rows = seen
        .iter()
        .filter(|r| r.visible_us == first_visible)
        .count() as f64;
    let lines = written.len() as f64;
    let name = match backend {
        "postgres" => "file → agent → collector → PostgreSQL",
        _ => "file → agent → collector → SQLite",
    };
    let stats = |v: &[f64]| json!({ "p50": quantile(v, 0.5), "p99": quantile(v, 0.99), "max": quantile(v, 1.0) });
    Ok(json!({
        "scenario": format!("end-to-end-{backend}"), "name": name,
        "target_lines_per_sec": options.rate,
        "write_seconds": (last_write - first_write) as f64 / 1e6,
        "lines": written.len(),
        "written_lines_per_sec": lines / ((last_write - first_write).max(1) as f64 / 1e6),
        "lines_per_sec": lines / ((last_write - first_write).max(1) as f64 / 1e6),
        // Loading throughput: rows made visible between the first poll that saw some and the
        // last one (the first poll's rows are not counted: they arrived before it).
        "rows_per_sec": (lines - first_poll_rows) / ((last_visible - first_visible).max(1) as f64 / 1e6),
        "seconds": wall,
        "freshness_seconds": stats(&freshness),
        // Seconds of freshness gained per second of writing (least squares): ~0 while the
        // pipeline keeps up, the share of the rate it falls behind by when it does not.
        "freshness_growth": growth,
        "write_to_received_seconds": stats(&to_received),
        "received_to_visible_seconds": stats(&to_visible),
        "poll_interval_ms": options.poll.as_secs_f64() * 1e3,
        "slowest_poll_ms": poll_max.as_secs_f64() * 1e3,
        "cpu_us_per_line": (agent.cpu_seconds + collector.cpu_seconds) * 1e6 / lines,
        "peak_rss_mb": agent.peak_rss_bytes.max(collector.peak_rss_bytes) as f64 / 1e6,
        "collector_peak_rss_mb": collector.peak_rss_bytes as f64 / 1e6,
    }))
}

/// Prints the freshness table of the `end-to-end` results among `results`.
pub fn print_table(results: &[Value]) {
    let runs: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("freshness_seconds").is_some())
        .collect();
    if runs.is_empty() {
        return;
    }
    println!(
        "\n{:<40} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>20}",
        "end-to-end freshness (write → row visible)",
        "lines/s",
        "rows/s",
        "p50",
        "p99",
        "max",
        "→recv p50",
        "recv→ p50",
        "poll",
        "alert p50 / p99 (n)"
    );
    for r in runs {
        let num = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let q = |k: &str, q: &str| r[k][q].as_f64().unwrap_or(f64::NAN);
        let alerts = &r["alert_latency_seconds"];
        let alert = if alerts.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{:.2}s / {:.2}s ({})",
                alerts["p50"].as_f64().unwrap_or(f64::NAN),
                alerts["p99"].as_f64().unwrap_or(f64::NAN),
                alerts["alerts"].as_u64().unwrap_or(0)
            )
        };
        println!(
            "{:<40} {:>9.0} {:>8.0} {:>7.2}s {:>7.2}s {:>7.2}s {:>9.2}s {:>9.2}s {:>5.0} ms {:>20}",
            r["name"].as_str().unwrap_or("?"),
            num("written_lines_per_sec"),
            num("rows_per_sec"),
            q("freshness_seconds", "p50"),
            q("freshness_seconds", "p99"),
            q("freshness_seconds", "max"),
            q("write_to_received_seconds", "p50"),
            q("received_to_visible_seconds", "p50"),
            num("poll_interval_ms"),
            alert,
        );
    }
}
