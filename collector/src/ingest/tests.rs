//! Ingest answers, through the real router and a real WAL in a temp dir.

use std::io::Write;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::clock::SystemClock;
use crate::wal::WalOptions;

const TOKEN: &str = "t0ken";

fn app(dir: &Path, max_decompressed_bytes: u64) -> (Router, std::thread::JoinHandle<()>) {
    let options = WalOptions {
        segment_bytes: 1 << 20,
        consumers: vec!["archive"],
    };
    let (wal, thread) = Wal::open(dir, options, Arc::new(SystemClock)).expect("wal");
    let state = IngestState {
        streams: HashMap::from([("toll-transactions".to_string(), wal)]),
        tokens: Tokens(vec![TOKEN.as_bytes().to_vec()]),
        max_decompressed_bytes,
    };
    (router(Arc::new(state), 1 << 20), thread)
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
