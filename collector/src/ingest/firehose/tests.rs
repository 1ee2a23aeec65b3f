//! Firehose answers through the real router, a real WAL in a temp dir and a fake clock;
//! requests are signed here the way the AWS SDKs sign them.

use std::collections::HashMap;
use std::path::Path;

use axum::http::Request;
use base64::Engine;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::clock::FakeClock;
use crate::config::AccessKeyConfig;
use crate::ingest::{BatchLimits, Budget, TokenStore};
use crate::wal::{Wal, WalOptions};

const KEY_ID: &str = "AKIDTOLLSTREAMTEST";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TOKEN_KEY_ID: &str = "ASIATOLLSTREAMTEST";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLEtoken";
/// 2026-11-25T14:03:27Z
const NOW: &str = "20261125T140327Z";

struct Fixture {
    app: Router,
    state: Arc<IngestState>,
    clock: FakeClock,
    _thread: std::thread::JoinHandle<()>,
}

fn fixture(dir: &Path, budget: u64) -> Fixture {
    let options = WalOptions {
        segment_bytes: 1 << 20,
        consumers: vec!["archive"],
    };
    let clock = FakeClock::new(parse_amz_date(NOW).expect("date"));
    let (wal, thread) = Wal::open(&dir.join("wal"), options, Arc::new(clock.clone())).expect("wal");
    let tokens_file = dir.join("tokens");
    std::fs::write(&tokens_file, "t0ken-0123456789abcdef\n").expect("tokens");
    let ingest = Arc::new(IngestState {
        streams: HashMap::from([("toll-transactions".to_string(), wal)]),
        tokens: Arc::new(TokenStore::open(&tokens_file).expect("tokens")),
        body: BodyLimits {
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: 1 << 20,
            body_timeout: Duration::from_secs(5),
        },
        batch: BatchLimits {
            max_records: 1000,
            max_line_bytes: 256,
        },
        budget: Budget::new(budget),
        wal_max_bytes: 1 << 30,
        disk: crate::disk::DiskGuard::new(dir, 0),
    });
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).expect("secret");
    std::fs::write(dir.join("token"), format!("{SESSION_TOKEN}\n")).expect("token");
    let config = FirehoseConfig {
        access_keys: vec![
            AccessKeyConfig {
                access_key_id: KEY_ID.into(),
                secret_key_file: dir.join("secret"),
                session_token_file: None,
            },
            AccessKeyConfig {
                access_key_id: TOKEN_KEY_ID.into(),
                secret_key_file: dir.join("secret"),
                session_token_file: Some(dir.join("token")),
            },
        ],
        region: None,
        delivery_streams: BTreeMap::from([("tolls".into(), "toll-transactions".into())]),
    };
    let keys = Arc::new(KeyStore::open(&config).expect("keys"));
    let state = FirehoseState::new(
        &config,
        &BTreeMap::new(),
        ingest.clone(),
        keys,
        Arc::new(clock.clone()),
    );
    Fixture {
        app: router(Arc::new(state)),
        state: ingest,
        clock,
        _thread: thread,
    }
}

/// How to sign a request.
struct Signer<'a> {
    key_id: &'a str,
    secret: &'a str,
    token: Option<&'a str>,
    date: &'a str,
    service: &'a str,
}

impl Default for Signer<'_> {
    fn default() -> Self {
        Self {
            key_id: KEY_ID,
            secret: SECRET,
            token: None,
            date: NOW,
            service: SERVICE,
        }
    }
}

fn request(operation: &str, body: &serde_json::Value, signer: &Signer<'_>) -> Request<Body> {
    let body = body.to_string();
    let mut headers = vec![
        ("content-type".to_owned(), CONTENT_TYPE.as_bytes().to_vec()),
        ("host".to_owned(), b"127.0.0.1:8700".to_vec()),
        ("x-amz-date".to_owned(), signer.date.as_bytes().to_vec()),
        (
            "x-amz-target".to_owned(),
            format!("{TARGET_PREFIX}{operation}").into_bytes(),
        ),
    ];
    if let Some(token) = signer.token {
        headers.push(("x-amz-security-token".to_owned(), token.as_bytes().to_vec()));
    }
    let names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    let parts = sigv4::RequestParts {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        payload: body.as_bytes(),
    };
    let canonical = sigv4::canonical_request(&parts, &names).expect("canonical");
    let day = &signer.date[..8];
    let scope = format!("{day}/us-east-1/{}/aws4_request", signer.service);
    let to_sign = sigv4::string_to_sign(signer.date, &scope, &canonical);
    let key = sigv4::signing_key(signer.secret, day, "us-east-1", signer.service);
    let authorization = format!(
        "{} Credential={}/{scope}, SignedHeaders={}, Signature={}",
        sigv4::ALGORITHM,
        signer.key_id,
        names.join(";"),
        sigv4::signature(&key, &to_sign)
    );
    let mut builder = Request::post("/").header("authorization", authorization);
    for (name, value) in &headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    builder.body(Body::from(body)).expect("request")
}

async fn call(app: &Router, request: Request<Body>) -> (u16, serde_json::Value) {
    let response = app.clone().oneshot(request).await.expect("answer");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).expect("json answer");
    (status, json)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn wal_lines(state: &IngestState) -> Vec<(String, Vec<u8>)> {
    let wal = &state.streams["toll-transactions"];
    let mut reader = wal.reader(1);
    let durable = *wal.durable().borrow();
    let mut out = Vec::new();
    while let Some(record) = reader.next(durable).expect("read") {
        out.push((record.source.clone(), record.data.to_vec()));
    }
    out
}

#[tokio::test]
async fn a_batch_is_written_in_order_and_a_long_line_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), 8 << 20);
    let long = vec![b'x'; 300];
    let body = json!({
        "DeliveryStreamName": "tolls",
        "Records": [{ "Data": b64(b"one") }, { "Data": b64(&long) }, { "Data": b64(b"two\nthree\n") }],
    });
    let (status, answer) = call(&f.app, request("PutRecordBatch", &body, &Signer::default())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["FailedPutCount"], 1);
    assert_eq!(answer["Encrypted"], false);
    let entries = answer["RequestResponses"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    assert!(entries[0]["RecordId"].is_string() && entries[2]["RecordId"].is_string());
    assert_eq!(entries[1]["ErrorCode"], "InvalidArgumentException");
    assert!(entries[1].get("RecordId").is_none());
    assert_eq!(
        wal_lines(&f.state),
        [(format!("firehose:{KEY_ID}"), b"one\ntwo\nthree\n".to_vec())]
    );
    let body = json!({ "DeliveryStreamName": "tolls", "Record": { "Data": b64(b"four") } });
    let (status, answer) = call(&f.app, request("PutRecord", &body, &Signer::default())).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["RecordId"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(wal_lines(&f.state).len(), 2);
}

#[tokio::test]
async fn signatures_are_refused_the_way_aws_refuses_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), 8 << 20);
    let body = json!({ "DeliveryStreamName": "tolls", "Record": { "Data": b64(b"x") } });
    let cases = [
        (
            Signer {
                secret: "wrong-secret",
                ..Signer::default()
            },
            "InvalidSignatureException",
            "does not match",
        ),
        (
            Signer {
                key_id: "AKIDUNKNOWN",
                ..Signer::default()
            },
            "UnrecognizedClientException",
            "security token",
        ),
        (
            Signer {
                date: "20261125T134000Z",
                ..Signer::default()
            },
            "InvalidSignatureException",
            "Signature expired",
        ),
        (
            Signer {
                date: "20261125T141000Z",
                ..Signer::default()
            },
            "InvalidSignatureException",
            "not yet current",
        ),
        (
            Signer {
                service: "kinesis",
                ..Signer::default()
            },
            "InvalidSignatureException",
            "'firehose'",
        ),
        (
            Signer {
                key_id: TOKEN_KEY_ID,
                ..Signer::default()
            },
            "UnrecognizedClientException",
            "security token",
        ),
        (
            Signer {
                key_id: TOKEN_KEY_ID,
                token: Some("another-token"),
                ..Signer::default()
            },
            "UnrecognizedClientException",
            "security token",
        ),
    ];
    for (signer, aws_type, needle) in cases {
        let (status, answer) = call(&f.app, request("PutRecord", &body, &signer)).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["__type"], aws_type, "{answer}");
        let message = answer["message"].as_str().expect("message");
        assert!(message.contains(needle), "{message}");
    }
    let right = Signer {
        key_id: TOKEN_KEY_ID,
        token: Some(SESSION_TOKEN),
        ..Signer::default()
    };
    let (status, answer) = call(&f.app, request("PutRecord", &body, &right)).await;
    assert_eq!(status, 200, "{answer}");
    // Four minutes later the same date still passes; six minutes later it has expired.
    f.clock.advance(Duration::from_secs(4 * 60));
    let (status, _) = call(&f.app, request("PutRecord", &body, &Signer::default())).await;
    assert_eq!(status, 200);
    f.clock.advance(Duration::from_secs(2 * 60));
    let (status, answer) = call(&f.app, request("PutRecord", &body, &Signer::default())).await;
    assert_eq!(
        (status, &answer["__type"]),
        (400, &json!("InvalidSignatureException"))
    );
    let unsigned = Request::post("/")
        .header("x-amz-target", "Firehose_20150804.PutRecord")
        .body(Body::from(body.to_string()))
        .expect("request");
    let (status, answer) = call(&f.app, unsigned).await;
    assert_eq!(status, 400);
    assert_eq!(answer["__type"], "MissingAuthenticationTokenException");
    assert!(wal_lines(&f.state).len() == 2, "only the two signed puts");
}

#[tokio::test]
async fn streams_are_listed_described_and_unknown_ones_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), 8 << 20);
    let signer = Signer::default();
    let (status, answer) = call(&f.app, request("ListDeliveryStreams", &json!({}), &signer)).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({ "DeliveryStreamNames": ["tolls"], "HasMoreDeliveryStreams": false })
    );
    let (status, answer) = call(
        &f.app,
        request(
            "DescribeDeliveryStream",
            &json!({ "DeliveryStreamName": "tolls" }),
            &signer,
        ),
    )
    .await;
    assert_eq!(status, 200);
    let description = &answer["DeliveryStreamDescription"];
    assert_eq!(description["DeliveryStreamStatus"], "ACTIVE");
    assert_eq!(
        description["DeliveryStreamARN"],
        "arn:aws:firehose:us-east-1:000000000000:deliverystream/tolls"
    );
    let body = json!({ "DeliveryStreamName": "nope", "Record": { "Data": b64(b"x") } });
    let (status, answer) = call(&f.app, request("PutRecord", &body, &signer)).await;
    assert_eq!(
        (status, &answer["__type"]),
        (400, &json!("ResourceNotFoundException"))
    );
    let body = json!({ "DeliveryStreamName": "bad name!", "Record": { "Data": b64(b"x") } });
    let (status, answer) = call(&f.app, request("PutRecord", &body, &signer)).await;
    assert_eq!(
        (status, &answer["__type"]),
        (400, &json!("ValidationException"))
    );
    let (status, answer) = call(&f.app, request("CreateDeliveryStream", &json!({}), &signer)).await;
    assert_eq!(
        (status, &answer["__type"]),
        (400, &json!("UnknownOperationException"))
    );
}

#[tokio::test]
async fn backpressure_is_service_unavailable_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A budget smaller than the request's decoded data: the memory guard refuses it.
    let f = fixture(dir.path(), 4096);
    let body =
        json!({ "DeliveryStreamName": "tolls", "Records": [{ "Data": b64(&[b'a'; 6000]) }] });
    let response = f
        .app
        .clone()
        .oneshot(request("PutRecordBatch", &body, &Signer::default()))
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(answer["__type"], "ServiceUnavailableException");
    assert!(wal_lines(&f.state).is_empty());
}
