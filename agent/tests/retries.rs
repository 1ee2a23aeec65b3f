//! The agent against a collector that refuses at first: every line still arrives, once and
//! in order, after the retries, splits and pauses the collector's answers ask for.
//!
//! The "collector" here is a small HTTP server in the test whose answers a policy decides,
//! so the test controls exactly which attempts fail and how.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio_util::sync::CancellationToken;
use tollstream_agent::clock::SystemClock;
use tollstream_agent::config::Config;

/// Decides the answer to attempt number `n` (1-based) of a batch of `records` lines; `None`
/// accepts it.
type Policy = Box<dyn Fn(usize, usize) -> Option<Response> + Send + Sync>;

#[derive(Default)]
struct Sink {
    attempts: usize,
    /// How long each request takes (a slow or distant collector).
    latency: Duration,
    in_progress: usize,
    max_in_progress: usize,
    /// (start, end, lines) of each accepted batch.
    accepted: Vec<(u64, u64, Vec<u8>)>,
}

impl Sink {
    fn delivered(&self) -> u64 {
        self.accepted.iter().map(|(s, e, _)| e - s).sum()
    }
}

async fn records(
    sink: Arc<Mutex<Sink>>,
    policy: Arc<Policy>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut lines = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut lines)
        .expect("gzip body");
    let records = lines.iter().filter(|&&b| b == b'\n').count();
    let latency = {
        let mut sink = sink.lock().expect("lock");
        sink.in_progress += 1;
        sink.max_in_progress = sink.max_in_progress.max(sink.in_progress);
        sink.latency
    };
    tokio::time::sleep(latency).await;
    let mut sink = sink.lock().expect("lock");
    sink.in_progress -= 1;
    sink.attempts += 1;
    if let Some(refusal) = policy(sink.attempts, records) {
        return refusal;
    }
    let range = headers
        .get("x-tollstream-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (start, end) = range.split_once('-').expect("range header");
    sink.accepted.push((
        start.parse().expect("start"),
        end.parse().expect("end"),
        lines,
    ));
    (StatusCode::OK, "{}").into_response()
}

/// A running agent tailing one file of `lines` lines into a test collector.
struct Run {
    dir: tempfile::TempDir,
    sink: Arc<Mutex<Sink>>,
    written: String,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(lines: usize, policy: Policy) -> Run {
    start_with_latency(lines, policy, Duration::ZERO).await
}

async fn start_with_latency(lines: usize, policy: Policy, latency: Duration) -> Run {
    start_configured(lines, policy, latency, "").await
}

/// Like [`start_with_latency`], with more top-level agent.yaml keys in `extra`.
async fn start_configured(lines: usize, policy: Policy, latency: Duration, extra: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("logs")).expect("logs");
    let mut file = std::fs::File::create(dir.path().join("logs/a.log")).expect("log");
    let written: String = (0..lines)
        .map(|i| format!("line {i:05},some,fields\n"))
        .collect();
    file.write_all(written.as_bytes()).expect("write");

    let sink = Arc::new(Mutex::new(Sink {
        latency,
        ..Sink::default()
    }));
    let (state, policy) = (sink.clone(), Arc::new(policy));
    let app = Router::new().route(
        "/v1/streams/{stream}/records",
        post(move |headers: HeaderMap, body: Bytes| {
            records(state.clone(), policy.clone(), headers, body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = agent_config(dir.path(), port, extra);
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics_addr = metrics_listener.local_addr().expect("addr");
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(tollstream_agent::run(
        config,
        Some(metrics_listener),
        metrics,
        Arc::new(SystemClock),
        shutdown.clone(),
    ));
    Run {
        dir,
        sink,
        written,
        metrics_addr,
        shutdown,
        agent,
    }
}

fn agent_config(dir: &Path, port: u16, extra: &str) -> Config {
    std::fs::write(dir.join("token"), "t\n").expect("token");
    let yaml = format!(
        "agent_id: retry-test\nstate_dir: state\ncollector: {{ url: \"http://127.0.0.1:{port}\", token_file: token }}\n\
         poll_interval: 50ms\n{extra}flows:\n  - stream: s\n    paths: [\"logs/*.log\"]\n    batch: {{ max_records: 700, max_age: 50ms }}\n"
    );
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).expect("config");
    Config::load(&path).expect("valid config")
}

/// Polls `check` every 20 ms until it holds, failing after `limit`.
async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(addr: SocketAddr) -> (u16, String) {
    // The agent installs the process's TLS provider when its shipper starts, which may not
    // have happened yet in this process: a client of the test's own needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

impl Run {
    /// Waits for every byte, stops the agent, and checks that the batches (in any arrival
    /// order) cover the file without gaps or overlap, byte for byte, and the checkpoint is
    /// at the end.
    async fn finish(self) -> Sink {
        let total = self.written.len() as u64;
        let sink = self.sink.clone();
        wait_until("every byte delivered", Duration::from_secs(60), || {
            sink.lock().expect("lock").delivered() >= total
        })
        .await;
        self.shutdown.cancel();
        self.agent
            .await
            .expect("agent task")
            .expect("agent exits cleanly");
        let sink = std::mem::take(&mut *self.sink.lock().expect("lock"));
        let mut offset = 0;
        let mut received = Vec::new();
        let mut accepted: Vec<_> = sink.accepted.iter().collect();
        accepted.sort_by_key(|(start, _, _)| *start);
        for (start, end, lines) in accepted {
            assert_eq!(
                *start, offset,
                "batches of one file arrive in order, without gaps or overlap"
            );
            assert_eq!(lines.len() as u64, end - start);
            received.extend_from_slice(lines);
            offset = *end;
        }
        assert_eq!(
            String::from_utf8_lossy(&received),
            self.written,
            "every line once, byte for byte"
        );
        let checkpoint = std::fs::read_to_string(self.dir.path().join("state/checkpoints.json"))
            .expect("checkpoint");
        assert!(
            checkpoint.contains(&format!("\"offset\": {total}")),
            "checkpoint at the end: {checkpoint}"
        );
        sink
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_once_after_503_and_429() {
    // Three 503s (one with Retry-After: 1), two 429s, then acceptance.
    let policy: Policy = Box::new(|attempt, _| match attempt {
        1 => Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "1")],
                "busy",
            )
                .into_response(),
        ),
        2 | 3 => Some((StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()),
        4 | 5 => Some((StatusCode::TOO_MANY_REQUESTS, "slow down").into_response()),
        _ => None,
    });
    let sink = start(5000, policy).await.finish().await;
    assert!(
        sink.attempts >= 6,
        "five refusals, then successes ({} attempts)",
        sink.attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_collector_finds_too_large_is_split_until_it_fits() {
    // Batches are cut at 700 lines; the collector takes at most 200.
    let policy: Policy = Box::new(|_, records| {
        (records > 200).then(|| (StatusCode::PAYLOAD_TOO_LARGE, "too large").into_response())
    });
    let sink = start(3000, policy).await.finish().await;
    assert!(
        sink.accepted
            .iter()
            .all(|(_, _, l)| l.iter().filter(|&&b| b == b'\n').count() <= 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_flow_makes_the_agent_not_ready_until_the_collector_accepts_it() {
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let switch = refuse.clone();
    let policy: Policy = Box::new(move |_, _| {
        switch
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| (StatusCode::UNAUTHORIZED, "wrong token").into_response())
    });
    let run = start(100, policy).await;
    let addr = run.metrics_addr;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = readyz(addr).await;
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never unready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(body.contains("401") && body.contains("paused"), "{body}");
    assert_eq!(
        run.sink.lock().expect("lock").delivered(),
        0,
        "nothing taken"
    );
    // The operator fixes the token: the slow retry (every 30 s) delivers everything.
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let sink = run.sink.clone();
    wait_until("delivery after the fix", Duration::from_secs(60), || {
        sink.lock().expect("lock").delivered() > 0
    })
    .await;
    assert_eq!(readyz(addr).await.0, 200);
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_gets_several_batches_of_one_file_at_once() {
    // 50 ms per request: one batch at a time would take 5000 / 700 * 50 ms; four at once
    // keep the link busy. Arrival order may differ from file order; coverage may not.
    let run = start_with_latency(5000, Box::new(|_, _| None), Duration::from_millis(50)).await;
    let sink = run.finish().await;
    assert!(
        sink.max_in_progress > 1,
        "batches of one file were in flight together ({} at most)",
        sink.max_in_progress
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_does_not_keep_the_agent_past_its_grace_period() {
    // Requests the collector never answers (within the 30 s request timeout): stopping must
    // not wait for them beyond shutdown_grace, or systemd's stop timeout kills the agent
    // before it writes its checkpoint.
    let run = start_configured(
        2000,
        Box::new(|_, _| None),
        Duration::from_secs(120),
        "shutdown_grace: 1s\n",
    )
    .await;
    let sink = run.sink.clone();
    wait_until("a batch in flight", Duration::from_secs(10), || {
        sink.lock().expect("lock").in_progress > 0
    })
    .await;
    run.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run.agent)
        .await
        .expect("the agent stops within its grace period (1 s) and a margin, not the request timeout (30 s)")
        .expect("agent task")
        .expect("agent exits cleanly");
    let checkpoint = std::fs::read_to_string(run.dir.path().join("state/checkpoints.json"))
        .expect("checkpoint written on the way out");
    assert!(
        checkpoint.contains("\"offset\": 0"),
        "nothing was acknowledged, so nothing is skipped next time: {checkpoint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_flow_does_not_hold_up_stopping() {
    // Every batch refused (401): they wait for the operator, not for the grace period, which
    // cannot help them (default 10 s).
    let run = start(
        100,
        Box::new(|_, _| Some((StatusCode::UNAUTHORIZED, "wrong token").into_response())),
    )
    .await;
    let sink = run.sink.clone();
    wait_until("a refused attempt", Duration::from_secs(10), || {
        sink.lock().expect("lock").attempts > 0
    })
    .await;
    run.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), run.agent)
        .await
        .expect("the agent stops at once, not after its 10 s grace period")
        .expect("agent task")
        .expect("agent exits cleanly");
    assert_eq!(sink.lock().expect("lock").delivered(), 0);
}
