//! Ingest answers, through the real router and a real WAL in a temp dir.

use std::io::Write;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use std::path::Path;

use super::*;
use crate::clock::SystemClock;
use crate::wal::WalOptions;

const TOKEN: &str = "t0ken-0123456789abcdef";
const BOOTH_TOKEN: &str = "booth-0123456789abcdef";

struct Setup {
    max_decompressed_bytes: u64,
    budget: u64,
    wal_max_bytes: u64,
    min_free: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            max_decompressed_bytes: 1 << 20,
            budget: 8 << 20,
            wal_max_bytes: 1 << 30,
            min_free: 0,
        }
    }
}

fn app(dir: &Path, max_decompressed_bytes: u64) -> (Router, std::thread::JoinHandle<()>) {
    app_with(
        dir,
        Setup {
            max_decompressed_bytes,
            ..Setup::default()
        },
    )
}

fn app_with(dir: &Path, setup: Setup) -> (Router, std::thread::JoinHandle<()>) {
    let options = WalOptions {
        segment_bytes: 1 << 20,
        consumers: vec!["archive"],
    };
    let (wal, thread) = Wal::open(&dir.join("wal"), options, Arc::new(SystemClock)).expect("wal");
    let tokens_file = dir.join("tokens");
    std::fs::write(&tokens_file, format!("{TOKEN}\nbooth-7 {BOOTH_TOKEN}\n")).expect("tokens");
    let state = IngestState {
        streams: HashMap::from([("toll-transactions".to_string(), wal)]),
        tokens: Arc::new(TokenStore::open(&tokens_file).expect("tokens")),
        body: BodyLimits {
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: setup.max_decompressed_bytes,
            body_timeout: std::time::Duration::from_secs(5),
        },
        batch: BatchLimits {
            max_records: 1000,
            max_line_bytes: 4096,
        },
        budget: Budget::new(setup.budget),
        wal_max_bytes: setup.wal_max_bytes,
        disk: crate::disk::DiskGuard::new(dir, setup.min_free),
    };
    (router(Arc::new(state)), thread)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

fn post(
    stream: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Request<Body> {
    let mut request = Request::post(format!("/v1/streams/{stream}/records"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body)).expect("request")
}

async fn send(app: &Router, request: Request<Body>) -> (u16, serde_json::Value) {
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn every_gzip_member_is_read_and_trailing_garbage_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app(dir.path(), 1 << 20);
    let body = [gzip(b"a,1\n"), gzip(b"b,2\n")].concat();
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &[("content-encoding", "gzip")],
            body,
        ),
    )
    .await;
    assert_eq!(
        (status, answer["records"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    let body = [gzip(b"a,1\n"), b"garbage".to_vec()].concat();
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &[("content-encoding", "gzip")],
            body,
        ),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &[("content-encoding", "gzip")],
            gzip(b"x\n")[..10].to_vec(),
        ),
    )
    .await;
    assert_eq!(status, 400, "truncated gzip: {answer}");
    assert!(
        answer["error"].as_str().is_some_and(|m| m.contains("gzip")),
        "{answer}"
    );
}

#[tokio::test]
async fn a_gzip_bomb_gets_413_without_being_inflated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app(dir.path(), 1 << 20);
    let bomb = gzip(&vec![b'\n'; 16 << 20]);
    assert!(bomb.len() < 1 << 20, "the bomb fits under the body limit");
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &[("content-encoding", "gzip")],
            bomb,
        ),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
}

#[tokio::test]
async fn wrong_or_missing_token_and_unknown_stream_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app(dir.path(), 1 << 20);
    let (status, answer) = send(&app, post("toll-transactions", None, &[], b"a\n".to_vec())).await;
    assert_eq!(status, 401, "{answer}");
    let (status, _) = send(
        &app,
        post("toll-transactions", Some("wrong"), &[], b"a\n".to_vec()),
    )
    .await;
    assert_eq!(status, 401);
    let (status, answer) = send(&app, post("nope", Some(TOKEN), &[], b"a\n".to_vec())).await;
    assert_eq!(status, 404);
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|m| m.contains("toll-transactions")),
        "{answer}"
    );
}

#[tokio::test]
async fn ranged_batches_are_checked_and_a_resend_is_acknowledged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app(dir.path(), 1 << 20);
    let headers = [
        ("x-tollstream-source", "booth/1-2-0"),
        ("x-tollstream-range", "0-8"),
    ];
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &headers,
            b"one\ntwo\n".to_vec(),
        ),
    )
    .await;
    assert_eq!(
        (status, answer["records"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &headers,
            b"one\ntwo\n".to_vec(),
        ),
    )
    .await;
    assert_eq!(
        (
            status,
            answer["duplicate_records"].as_u64(),
            answer["seq"].is_null()
        ),
        (200, Some(2), true),
        "{answer}"
    );
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &headers,
            b"one\nt\n".to_vec(),
        ),
    )
    .await;
    assert_eq!(status, 400, "range longer than the body: {answer}");
    // One line the agent cut to its max_line_bytes stands for more bytes than it holds.
    let cut = [
        ("x-tollstream-source", "booth/9-9-0"),
        ("x-tollstream-range", "0-5000"),
    ];
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &cut,
            b"xxxx [cut by tollstream-agent]\n".to_vec(),
        ),
    )
    .await;
    assert_eq!(
        (
            status,
            answer["records"].as_u64(),
            answer["high_water"].as_u64()
        ),
        (200, Some(1), Some(5000)),
        "a cut line alone in its batch: {answer}"
    );
    let partial = [
        ("x-tollstream-source", "booth/1-2-0"),
        ("x-tollstream-range", "8-13"),
    ];
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &partial,
            b"three".to_vec(),
        ),
    )
    .await;
    assert_eq!(
        status, 400,
        "ranged batch without a final newline: {answer}"
    );
    let (status, _) = send(
        &app,
        post(
            "toll-transactions",
            Some(TOKEN),
            &[("x-tollstream-range", "0-2")],
            b"a\n".to_vec(),
        ),
    )
    .await;
    assert_eq!(status, 400, "a range needs a source");
}

#[tokio::test]
async fn a_token_bound_to_an_agent_sends_only_that_agents_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app(dir.path(), 1 << 20);
    let own = [
        ("x-tollstream-source", "booth-7/1-2-0"),
        ("x-tollstream-range", "0-2"),
    ];
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(BOOTH_TOKEN),
            &own,
            b"a\n".to_vec(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let other = [
        ("x-tollstream-source", "booth-8/1-2-0"),
        ("x-tollstream-range", "0-2"),
    ];
    let (status, answer) = send(
        &app,
        post(
            "toll-transactions",
            Some(BOOTH_TOKEN),
            &other,
            b"a\n".to_vec(),
        ),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|m| m.contains("booth-7") && !m.contains(BOOTH_TOKEN)),
        "{answer}"
    );
}

#[tokio::test]
async fn batches_over_the_line_and_record_limits_get_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app(dir.path(), 1 << 20);
    let long = [vec![b'x'; 5000], b"\n".to_vec()].concat();
    let (status, answer) = send(&app, post("toll-transactions", Some(TOKEN), &[], long)).await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (413, Some("too_large")),
        "{answer}"
    );
    let many = b"a\n".repeat(1001);
    let (status, answer) = send(&app, post("toll-transactions", Some(TOKEN), &[], many)).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|m| m.contains("max_records_per_batch")),
        "{answer}"
    );
}

#[tokio::test]
async fn no_memory_budget_left_is_429_and_a_full_wal_or_disk_is_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app_with(
        dir.path(),
        Setup {
            budget: 16,
            ..Setup::default()
        },
    );
    let response = app
        .clone()
        .oneshot(post(
            "toll-transactions",
            Some(TOKEN),
            &[],
            [vec![b'a'; 99], b"\n".to_vec()].concat(),
        ))
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app_with(
        dir.path(),
        Setup {
            wal_max_bytes: 0,
            ..Setup::default()
        },
    );
    let (status, answer) = send(
        &app,
        post("toll-transactions", Some(TOKEN), &[], b"a\n".to_vec()),
    )
    .await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (503, Some("wal_full")),
        "{answer}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app_with(
        dir.path(),
        Setup {
            min_free: u64::MAX - 1,
            ..Setup::default()
        },
    );
    let response = app
        .clone()
        .oneshot(post("toll-transactions", Some(TOKEN), &[], b"a\n".to_vec()))
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
}

#[tokio::test]
async fn other_paths_and_methods_get_json_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, _thread) = app(dir.path(), 1 << 20);
    let get = Request::get("/v1/streams/toll-transactions/records")
        .body(Body::empty())
        .expect("request");
    let (status, answer) = send(&app, get).await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (405, Some("method_not_allowed")),
        "{answer}"
    );
    let (status, answer) = send(
        &app,
        Request::get("/nope").body(Body::empty()).expect("request"),
    )
    .await;
    assert_eq!(
        (status, answer["reason"].as_str()),
        (404, Some("no_such_endpoint")),
        "{answer}"
    );
}
