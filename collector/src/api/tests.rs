//! Admin API answers: through the router (`oneshot`) and over a real TCP connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::*;
use crate::alerts::MonthToDate;
use crate::alerts::limits::path_in;
use crate::clock::FakeClock;

const ADMIN: &str = "admin-0123456789abcdef";
const AGENT: &str = "agent-0123456789abcdef";

/// The engine's monthly totals, as a test sets them.
#[derive(Default)]
struct FakeView(Mutex<HashMap<String, MonthToDate>>);

impl MonthToDateView for FakeView {
    fn month_to_date(&self, key: &str) -> Option<MonthToDate> {
        self.0.lock().expect("lock").get(key).cloned()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AdminState>,
    view: Arc<FakeView>,
    agent_tokens: Arc<TokenStore>,
}

fn fixture(admin_enabled: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = FakeClock::new("2026-11-30T23:30:00-03:00".parse().expect("time"));
    let admin_file = dir.path().join("admin.token");
    std::fs::write(&admin_file, format!("# admin\n{ADMIN}\n")).expect("write");
    let agent_file = dir.path().join("agent-tokens");
    std::fs::write(&agent_file, format!("{AGENT}\n")).expect("write");
    let view = Arc::new(FakeView::default());
    let limits =
        LimitsStore::open(&path_in(dir.path()), 2, Arc::new(clock.clone())).expect("store");
    let state = Arc::new(AdminState {
        tokens: admin_enabled.then(|| Arc::new(TokenStore::open(&admin_file).expect("tokens"))),
        limits: Arc::new(limits),
        view: view.clone(),
        clock: Arc::new(clock),
        timezone: jiff::tz::TimeZone::get("America/Sao_Paulo").expect("tz"),
    });
    let agent_tokens = Arc::new(TokenStore::open(&agent_file).expect("tokens"));
    Fixture {
        _dir: dir,
        state,
        view,
        agent_tokens,
    }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("answer");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, headers, value)
}

async fn put(app: &Router, id: &str, body: &str) -> (StatusCode, HeaderMap, Value) {
    let uri = format!("/v1/customers/{id}/limit");
    call(
        app,
        "PUT",
        &uri,
        Some(ADMIN),
        Some("application/json"),
        body,
    )
    .await
}

#[tokio::test]
async fn put_get_delete_a_limit() {
    let f = fixture(true);
    let app = router(f.state.clone());
    let (status, _, doc) = put(&app, "C0001234", r#"{"monthly_limit":"150.5"}"#).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["customer_id"], "C0001234");
    assert_eq!(doc["monthly_limit"], "150.50");
    assert_eq!(doc["limit_updated_at"], "2026-12-01T02:30:00Z");
    // The clock's month in the operator's time zone: still November in São Paulo.
    assert_eq!(doc["month"], "2026-11");
    assert_eq!(doc["month_to_date_spend"], "0.00");
    assert_eq!(doc["records"], 0);
    assert_eq!(doc["notified"], false);
    assert_eq!(f.state.limits.get("C0001234"), Some(15050));

    let (status, _, doc) = call(
        &app,
        "GET",
        "/v1/customers/C0001234/limit",
        Some(ADMIN),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc,
        json!({"customer_id": "C0001234", "monthly_limit": "150.50", "limit_updated_at": "2026-12-01T02:30:00Z"})
    );

    for _ in 0..2 {
        let (status, _, body) = call(
            &app,
            "DELETE",
            "/v1/customers/C0001234/limit",
            Some(ADMIN),
            None,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(body, Value::Null);
    }
    assert_eq!(f.state.limits.get("C0001234"), None);
    let (status, _, doc) = call(
        &app,
        "GET",
        "/v1/customers/C0001234/limit",
        Some(ADMIN),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        doc["error"]
            .as_str()
            .expect("error")
            .contains("has no monthly limit"),
        "{doc}"
    );
}

#[tokio::test]
async fn the_customer_document_shows_the_engines_month_to_date() {
    let f = fixture(true);
    let app = router(f.state.clone());
    f.view.0.lock().expect("lock").insert(
        "C1".into(),
        MonthToDate {
            rule: "billing-limit".into(),
            month: "2026-11".into(),
            spend: "151.20".into(),
            records: 12,
            notified: vec!["150.00".into()],
        },
    );
    put(&app, "C1", r#"{"monthly_limit":"150.00"}"#).await;
    let (status, _, doc) = call(&app, "GET", "/v1/customers/C1", Some(ADMIN), None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["month_to_date_spend"], "151.20");
    assert_eq!(doc["records"], 12);
    assert_eq!(doc["rule"], "billing-limit");
    assert_eq!(doc["notified"], true);
    assert_eq!(doc["notified_thresholds"], json!(["150.00"]));
    // Raised: the new limit has not been crossed, so not notified (the old one is listed).
    let (_, _, doc) = put(&app, "C1", r#"{"monthly_limit":"200"}"#).await;
    assert_eq!(doc["monthly_limit"], "200.00");
    assert_eq!(doc["notified"], false);
    assert_eq!(doc["notified_thresholds"], json!(["150.00"]));
    // Someone the collector never heard of: no limit, nothing spent.
    let (status, _, doc) = call(&app, "GET", "/v1/customers/NOBODY", Some(ADMIN), None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["monthly_limit"], Value::Null);
    assert_eq!(doc["limit_updated_at"], Value::Null);
    assert_eq!(doc["month_to_date_spend"], "0.00");
}

#[tokio::test]
async fn only_the_admin_token_gets_in() {
    let f = fixture(true);
    let app = router(f.state.clone());
    for token in [None, Some(AGENT), Some("wrong-0123456789abcdef")] {
        let (status, headers, doc) = call(&app, "GET", "/v1/customers/C1", token, None, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"tollstream-admin\""
        );
        assert!(doc["error"].is_string());
    }
    let (status, _, _) = call(
        &app,
        "DELETE",
        "/v1/customers/C1/limit",
        Some(AGENT),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // And the other way round: the admin token is no agent token.
    assert!(
        f.agent_tokens
            .current()
            .check(Some(ADMIN.as_bytes()), "-")
            .is_err()
    );
}

#[tokio::test]
async fn without_an_admin_token_file_the_routes_say_how_to_enable_them() {
    let f = fixture(false);
    let app = router(f.state.clone());
    let (status, _, doc) = call(&app, "GET", "/v1/customers/C1", Some(ADMIN), None, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        doc["error"]
            .as_str()
            .expect("error")
            .contains("auth.admin_token_file"),
        "{doc}"
    );
    let (status, _, _) = put(&app, "C1", r#"{"monthly_limit":"1"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(f.state.limits.get("C1"), None);
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let f = fixture(true);
    let app = router(f.state.clone());
    let cases: [(&str, &str, StatusCode, &str); 9] = [
        (
            r#"{"monthly_limit":150.00}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "must be a string with the exact amount",
        ),
        (
            r#"{"monthly_limit":"-1"}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "negative",
        ),
        (
            r#"{"monthly_limit":"1.005"}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "3 decimal places",
        ),
        (
            r#"{"monthly_limit":null}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "send DELETE",
        ),
        (
            r#"{"limit":"1"}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "unknown field \"limit\"",
        ),
        (
            r#"{}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "monthly_limit is missing",
        ),
        (
            "150.00",
            "application/json; charset=utf-8",
            StatusCode::BAD_REQUEST,
            "not a JSON object",
        ),
        ("{", "application/json", StatusCode::BAD_REQUEST, "not JSON"),
        (
            r#"{"monthly_limit":"1"}"#,
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json",
        ),
    ];
    for (body, ct, want, part) in cases {
        let (status, _, doc) = call(
            &app,
            "PUT",
            "/v1/customers/C1/limit",
            Some(ADMIN),
            Some(ct),
            body,
        )
        .await;
        assert_eq!(status, want, "{body}: {doc}");
        let message = doc["error"].as_str().expect("error");
        assert!(message.contains(part), "{body}: {message}");
    }
    let big = format!(r#"{{"monthly_limit":"1","x":"{}"}}"#, "a".repeat(5000));
    let (status, _, doc) = put(&app, "C1", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{doc}");
    let long = "x".repeat(129);
    let (status, _, doc) = put(&app, &long, r#"{"monthly_limit":"1"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        doc["error"]
            .as_str()
            .expect("error")
            .contains("longer than 128"),
        "{doc}"
    );
    let (status, _, doc) = put(&app, "a%09b", r#"{"monthly_limit":"1"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        doc["error"]
            .as_str()
            .expect("error")
            .contains("control character"),
        "{doc}"
    );
    let (status, headers, _) = call(
        &app,
        "POST",
        "/v1/customers/C1/limit",
        Some(ADMIN),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET, PUT, DELETE");
    let (status, headers, _) = call(&app, "PUT", "/v1/customers/C1", Some(ADMIN), None, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET");
    assert!(f.state.limits.is_empty());
}

/// Sends one raw HTTP/1.1 request and reads the whole answer.
async fn http(addr: std::net::SocketAddr, request: String) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let text = String::from_utf8(answer).expect("UTF-8 answer");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serves_over_http_merged_with_another_router() {
    let f = fixture(true);
    // As lib.rs does: merged into a router that has a fallback of its own.
    let app = Router::new()
        .fallback(|| async { (StatusCode::NOT_FOUND, "ingest fallback") })
        .merge(router(f.state.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let body = r#"{"monthly_limit":"150.00"}"#;
    let (status, answer) = http(
        addr,
        format!(
            "PUT /v1/customers/C%2F1/limit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let doc: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(doc["customer_id"], "C/1");
    assert_eq!(doc["monthly_limit"], "150.00");
    let (status, answer) = http(
        addr,
        format!("GET /v1/customers/C%2F1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("\"month_to_date_spend\":\"0.00\""),
        "{answer}"
    );
    // A declared body over the limit is refused without reading it all.
    let (status, answer) = http(
        addr,
        format!(
            "PUT /v1/customers/C1/limit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n{{"
        ),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = http(
        addr,
        "GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!((status, answer.as_str()), (404, "ingest fallback"));
    server.abort();
}

#[test]
fn the_admin_token_file_is_checked_against_the_agent_tokens() {
    let f = fixture(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = f.agent_tokens.current();
    let open = |text: &str| {
        let path = dir.path().join("admin.token");
        std::fs::write(&path, text).expect("write");
        open_admin_tokens(&path, &agents)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(open(&format!("# admin\n{ADMIN}\n")), Ok(()));
    let shared = open(&format!("{ADMIN}\n{AGENT}\n")).expect_err("shared");
    assert!(
        shared.contains("line 2: this token is also an agent token"),
        "{shared}"
    );
    assert!(!shared.contains(AGENT), "never shows a token: {shared}");
    let short = open("short\n").expect_err("short");
    assert!(
        short.contains("line 1: the token is shorter than 16"),
        "{short}"
    );
    let empty = open("# nothing\n").expect_err("empty");
    assert!(empty.contains("holds no token"), "{empty}");
    let two = open(&format!("booth-1 {ADMIN}\n")).expect_err("two words");
    assert!(two.contains("expected one token per line"), "{two}");
}
