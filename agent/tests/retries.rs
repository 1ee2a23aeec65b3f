//! The agent against a collector that refuses at first: every line still arrives, once and
//! in order, after the retries the collector asked for.
//!
//! The "collector" here is a small HTTP server in the test that answers 503, 429 and then
//! 200, so the test controls exactly which attempts fail.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use tokio_util::sync::CancellationToken;
use tollstream_agent::clock::SystemClock;
use tollstream_agent::config::Config;

#[derive(Default)]
struct Sink {
    attempts: usize,
    /// (start, end, lines) of each accepted batch.
    accepted: Vec<(u64, u64, Vec<u8>)>,
}

/// Fails the first three requests with 503 (one with `Retry-After: 1`) and the next two with
/// 429, then accepts.
async fn records(sink: Arc<Mutex<Sink>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let mut sink = sink.lock().expect("lock");
    sink.attempts += 1;
    match sink.attempts {
        1 => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "1")],
                "busy",
            )
                .into_response();
        }
        2 | 3 => return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
        4 | 5 => return (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        _ => {}
    }
    let range = headers
        .get("x-tollstream-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (start, end) = range.split_once('-').expect("range header");
    let mut lines = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut lines)
        .expect("gzip body");
    sink.accepted.push((
        start.parse().expect("start"),
        end.parse().expect("end"),
        lines,
    ));
    (StatusCode::OK, "{}").into_response()
}

fn agent_config(dir: &Path, port: u16) -> Config {
    std::fs::write(dir.join("token"), "t\n").expect("token");
    let yaml = format!(
        "agent_id: retry-test\nstate_dir: state\ncollector: {{ url: \"http://127.0.0.1:{port}\", token_file: token }}\n\
         poll_interval: 50ms\nflows:\n  - stream: s\n    paths: [\"logs/*.log\"]\n    batch: {{ max_records: 700, max_age: 50ms }}\n"
    );
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).expect("config");
    Config::load(&path).expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_once_in_order_after_503_and_429() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("logs")).expect("logs");
    let mut file = std::fs::File::create(dir.path().join("logs/a.log")).expect("log");
    let written: String = (0..5000)
        .map(|i| format!("line {i:05},some,fields\n"))
        .collect();
    file.write_all(written.as_bytes()).expect("write");

    let sink = Arc::new(Mutex::new(Sink::default()));
    let state = sink.clone();
    let app = Router::new().route(
        "/v1/streams/{stream}/records",
        post(move |headers: HeaderMap, body: Bytes| records(state.clone(), headers, body)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = agent_config(dir.path(), port);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(tollstream_agent::run(
        config,
        None,
        metrics,
        Arc::new(SystemClock),
        shutdown.clone(),
    ));

    let total = written.len() as u64;
    let delivered = || {
        sink.lock()
            .expect("lock")
            .accepted
            .iter()
            .map(|(s, e, _)| e - s)
            .sum::<u64>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} bytes arrived",
            delivered()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    agent
        .await
        .expect("agent task")
        .expect("agent exits cleanly");

    let sink = sink.lock().expect("lock");
    assert!(
        sink.attempts >= 6,
        "five refusals, then successes ({} attempts)",
        sink.attempts
    );
    let mut offset = 0;
    let mut received = Vec::new();
    for (start, end, lines) in &sink.accepted {
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
        written,
        "every line once, byte for byte"
    );
    let checkpoint =
        std::fs::read_to_string(dir.path().join("state/checkpoints.json")).expect("checkpoint");
    assert!(
        checkpoint.contains(&format!("\"offset\": {total}")),
        "checkpoint at the end: {checkpoint}"
    );
}
