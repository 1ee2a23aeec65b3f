//! The outbox and the deliverers against real parts: a SQLite outbox and warehouse in a temp
//! dir, the alert log, and a webhook receiver on 127.0.0.1:0 that fails the first attempts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use ring::hmac;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::FakeClock;
use crate::config::{Comparison, WebhookConfig};
use crate::warehouse::SqliteWarehouse;

const SECRET: &str = "s3cret";

fn alert(n: u32) -> Alert {
    let start: Timestamp = "2026-11-25T17:00:00Z".parse().expect("time");
    Alert {
        alert_id: format!("booth-traffic-drop/PLZ-{n:03}/2026-11-25T17:00:00Z"),
        rule: "booth-traffic-drop".into(),
        key: format!("PLZ-{n:03}"),
        stream: "toll-transactions".into(),
        window_start: Some(start),
        window_end: Some(start + jiff::SignedDuration::from_mins(30)),
        slot: Some("wed 14:00".into()),
        month: None,
        value: n.to_string(),
        threshold: "100".into(),
        comparison: Comparison::Below,
        fired_at: "2026-11-25T17:30:05.250Z".parse().expect("time"),
        event_time: None,
        records: u64::from(n),
    }
}

/// What the receiver answers to the n-th request (0-based); then 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// Never answers (the client times out).
    Hang,
    /// 429 with `Retry-After: 1`.
    TooMany,
    Ok,
}

#[derive(Debug, Clone)]
struct Received {
    key: Option<String>,
    signature: Option<String>,
    user_agent: Option<String>,
    content_type: Option<String>,
    body: String,
    answer: Answer,
    at: Instant,
}

#[derive(Default)]
struct Receiver {
    script: Vec<Answer>,
    received: Mutex<Vec<Received>>,
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// 2xx-answered requests per idempotency key.
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut per_key = BTreeMap::new();
        for r in self
            .received()
            .into_iter()
            .filter(|r| r.answer == Answer::Ok)
        {
            *per_key.entry(r.key.unwrap_or_default()).or_default() += 1;
        }
        per_key
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let answer = {
        let mut received = receiver.received.lock().expect("lock");
        let answer = receiver
            .script
            .get(received.len())
            .copied()
            .unwrap_or(Answer::Ok);
        received.push(Received {
            key: header("idempotency-key"),
            signature: header("x-tollstream-signature"),
            user_agent: header("user-agent"),
            content_type: header("content-type"),
            body,
            answer,
            at: Instant::now(),
        });
        answer
    };
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).expect("status").into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Answer::TooMany => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response(),
        Answer::Ok => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn start_receiver(script: Vec<Answer>) -> (SocketAddr, Arc<Receiver>) {
    let receiver = Arc::new(Receiver {
        script,
        received: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, receiver)
}

struct Setup {
    dir: tempfile::TempDir,
    config: NotifyConfig,
    warehouse: SharedWarehouse,
    clock: Arc<dyn Clock>,
}

fn setup(addr: SocketAddr) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("secret");
    let config = NotifyConfig {
        webhook: Some(WebhookConfig {
            url: format!("http://{addr}/hook"),
            secret_file: Some(secret_file),
            timeout: Duration::from_millis(300),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        }),
        log: dir.path().join("logs/alerts.jsonl"),
        ..NotifyConfig::default()
    };
    let warehouse: Box<dyn Warehouse> =
        Box::new(SqliteWarehouse::open(&dir.path().join("warehouse.db")).expect("warehouse"));
    Setup {
        dir,
        config,
        warehouse: Arc::new(Mutex::new(warehouse)),
        clock: Arc::new(FakeClock::new(
            "2026-11-25T17:30:06Z".parse().expect("time"),
        )),
    }
}

fn open_outbox(dir: &Path) -> Arc<Outbox> {
    Arc::new(Outbox::open(&dir.join("state/outbox.db"), &["webhook".to_owned()]).expect("outbox"))
}

/// Starts the deliverers; cancel the token and await the handle to stop them.
fn start(setup: &Setup, outbox: &Arc<Outbox>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let notifier = Notifier::new(
        outbox.clone(),
        &setup.config,
        setup.warehouse.clone(),
        setup.clock.clone(),
    )
    .expect("notifier")
    .with_builtin_backoff(
        Backoff::try_new(Duration::from_millis(10), Duration::from_millis(50)).expect("backoff"),
    );
    let token = CancellationToken::new();
    (token.clone(), tokio::spawn(notifier.run(token)))
}

/// Polls `done` every 10 ms until it holds or `within` passes.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn nothing_pending(outbox: &Outbox) -> bool {
    let status = outbox.status(Timestamp::UNIX_EPOCH).expect("status");
    status.targets.values().all(|t| t.pending == 0)
}

fn log_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("alert log")
        .lines()
        .map(|line| {
            serde_json::from_str::<Alert>(line)
                .expect("each line is an alert")
                .alert_id
        })
        .collect()
}

fn warehouse_ids(dir: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(dir.join("warehouse.db")).expect("open");
    let mut statement = conn
        .prepare("SELECT alert_id, value, threshold, document FROM alerts ORDER BY alert_id")
        .expect("prepare");
    statement
        .query_map([], |r| {
            let (id, value, document): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(3)?);
            let alert: Alert = serde_json::from_str(&document).expect("document");
            assert_eq!(
                (alert.alert_id.as_str(), alert.value.as_str()),
                (id.as_str(), value.as_str())
            );
            Ok(id)
        })
        .and_then(Iterator::collect)
        .expect("rows")
}

fn verify(signature: &str, body: &str) {
    let (t, v1) = signature
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .expect("t=…,v1=…");
    let mac: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).expect("hex"))
        .collect();
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    hmac::verify(&key, format!("{t}.{body}").as_bytes(), &mac).expect("signature verifies");
}

#[tokio::test]
async fn every_alert_reaches_a_failing_webhook_once_with_its_key_and_a_valid_signature() {
    let (addr, receiver) = start_receiver(vec![
        Answer::Status(500),
        Answer::Hang,
        Answer::TooMany,
        Answer::Status(503),
    ])
    .await;
    let setup = setup(addr);
    let outbox = open_outbox(setup.dir.path());
    let alerts: Vec<Alert> = (1..=4).map(alert).collect();
    for a in &alerts {
        assert!(outbox.insert(a, &["webhook".into()]).expect("insert"));
    }
    assert!(
        !outbox
            .insert(&alerts[0], &["webhook".into()])
            .expect("insert"),
        "a second alert with the same id is refused"
    );
    let (stop, running) = start(&setup, &outbox);
    eventually("every delivery done", Duration::from_secs(20), || {
        nothing_pending(&outbox)
    })
    .await;
    let ids: Vec<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
    let delivered = receiver.delivered();
    assert_eq!(delivered.keys().cloned().collect::<Vec<_>>(), {
        let mut sorted = ids.clone();
        sorted.sort();
        sorted
    });
    assert!(delivered.values().all(|&n| n == 1), "{delivered:?}");
    let received = receiver.received();
    let answers: Vec<Answer> = received.iter().map(|r| r.answer).collect();
    assert_eq!(
        &answers[..4],
        &[
            Answer::Status(500),
            Answer::Hang,
            Answer::TooMany,
            Answer::Status(503)
        ]
    );
    assert!(
        received[3].at - received[2].at >= Duration::from_millis(950),
        "Retry-After: 1 was honoured: {:?}",
        received[3].at - received[2].at
    );
    // Fired order; every attempt carries the alert's id, the document and a signature.
    let order: Vec<String> = received
        .iter()
        .filter_map(|r| r.key.clone())
        .collect::<Vec<_>>();
    assert!(order[..5].iter().all(|k| *k == ids[0]), "{order:?}");
    assert_eq!(&order[4..], &ids[..]);
    for r in &received {
        let key = r.key.as_deref().expect("Idempotency-Key");
        let body: Alert = serde_json::from_str(&r.body).expect("JSON body");
        assert_eq!(body.alert_id, key);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.user_agent.as_deref(), Some(webhook::user_agent()));
        verify(r.signature.as_deref().expect("signature"), &r.body);
    }
    assert_eq!(log_ids(&setup.config.log), ids);
    assert_eq!(warehouse_ids(setup.dir.path()), {
        let mut sorted = ids.clone();
        sorted.sort();
        sorted
    });
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("stops promptly")
        .expect("task");
}

#[tokio::test]
async fn a_restart_mid_way_delivers_the_rest_and_writes_the_log_and_table_once() {
    let (addr, receiver) = start_receiver(vec![]).await;
    let setup = setup(addr);
    let ids: Vec<String> = (1..=8).map(|n| alert(n).alert_id).collect();
    {
        let outbox = open_outbox(setup.dir.path());
        for n in 1..=4 {
            outbox
                .insert(&alert(n), &["webhook".into()])
                .expect("insert");
        }
        let (stop, running) = start(&setup, &outbox);
        // Stopped once the log has alerts 1-4 (so that the crash below is one that can
        // happen: the log is written in fired order) and the webhook some.
        eventually("some deliveries", Duration::from_secs(10), || {
            let status = outbox.status(Timestamp::UNIX_EPOCH).expect("status");
            status.targets[LOG_TARGET].pending == 0 && !receiver.delivered().is_empty()
        })
        .await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .expect("stops promptly")
            .expect("task");
        // While stopped, more alerts fire.
        for n in 5..=8 {
            outbox
                .insert(&alert(n), &["webhook".into()])
                .expect("insert");
        }
    }
    // A crash between the log's append and its mark: alert 5 is in the file, pending in
    // the outbox, and a torn half line follows it.
    let mut written = std::fs::read(&setup.config.log).unwrap_or_default();
    written.extend_from_slice(serde_json::to_string(&alert(5)).expect("json").as_bytes());
    written.extend_from_slice(b"\n{\"alert_id\":\"booth-traf");
    std::fs::write(&setup.config.log, written).expect("write");

    let outbox = open_outbox(setup.dir.path());
    assert!(
        !outbox
            .insert(&alert(2), &["webhook".into()])
            .expect("insert"),
        "ids survive the restart"
    );
    let (stop, running) = start(&setup, &outbox);
    eventually("every delivery done", Duration::from_secs(10), || {
        nothing_pending(&outbox)
    })
    .await;
    stop.cancel();
    running.await.expect("task");
    let mut log = log_ids(&setup.config.log);
    assert_eq!(log, ids, "the log holds each alert once, in fired order");
    log.sort();
    assert_eq!(warehouse_ids(setup.dir.path()), log);
    let delivered = receiver.delivered();
    assert_eq!(delivered.keys().cloned().collect::<Vec<_>>(), log);
}

#[test]
fn the_outbox_refuses_unknown_targets_and_keeps_ids_until_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox.db");
    let outbox = Outbox::open(&path, &["ops".to_owned()]).expect("open");
    let error = outbox
        .insert(&alert(1), &["pager".into()])
        .expect_err("unknown target");
    assert!(error.to_string().contains("\"pager\""), "{error}");
    assert!(!outbox.contains(&alert(1).alert_id).expect("lookup"));
    assert!(outbox.insert(&alert(1), &["ops".into()]).expect("insert"));
    assert!(outbox.insert(&alert(2), &[]).expect("insert"));
    drop(outbox);

    let outbox = Outbox::open(&path, &["ops".to_owned()]).expect("reopen");
    assert!(!outbox.insert(&alert(1), &[]).expect("insert"));
    let fired = alert(1).fired_at;
    let status = outbox.status(fired).expect("status");
    assert_eq!(status.alerts, 2);
    assert_eq!(status.targets["ops"].pending, 1);
    assert_eq!(status.targets[LOG_TARGET].pending, 2);
    assert_eq!(status.targets[WAREHOUSE_TARGET].pending, 2);
    let pending = outbox.pending(LOG_TARGET, 10).expect("pending");
    assert_eq!(
        pending
            .iter()
            .map(|p| p.alert_id.clone())
            .collect::<Vec<_>>(),
        [alert(1).alert_id, alert(2).alert_id]
    );

    // Long past retention, an alert with a pending delivery is kept.
    let later = fired + jiff::SignedDuration::from_hours(24 * 500);
    let retention = Duration::from_secs(400 * 24 * 3600);
    for target in [LOG_TARGET, WAREHOUSE_TARGET] {
        let seqs: Vec<i64> = outbox
            .pending(target, 10)
            .expect("pending")
            .iter()
            .map(|p| p.seq)
            .collect();
        outbox.mark_delivered(target, &seqs, fired).expect("mark");
    }
    assert_eq!(
        outbox.prune(fired, retention).expect("prune"),
        0,
        "not yet old"
    );
    assert_eq!(
        outbox.prune(later, retention).expect("prune"),
        1,
        "alert 2 only"
    );
    assert!(outbox.contains(&alert(1).alert_id).expect("lookup"));
    assert!(!outbox.contains(&alert(2).alert_id).expect("lookup"));

    let read = read_status(&path, later).expect("read").expect("exists");
    assert_eq!(read.alerts, 1);
    assert_eq!(read.targets["ops"].pending, 1);
    assert!(read.targets["ops"].oldest_pending_age_seconds.expect("age") > 400.0 * 86400.0);
    assert!(
        read_status(&dir.path().join("none.db"), later)
            .expect("read")
            .is_none()
    );
}

#[test]
fn a_webhook_named_like_a_built_in_target_or_a_missing_secret_fails_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Arc::new(
        Outbox::open(&dir.path().join("o.db"), &["log".into(), "w".into()]).expect("open"),
    );
    let hook = WebhookConfig {
        url: "http://127.0.0.1:9/hook".into(),
        secret_file: None,
        timeout: Duration::from_secs(1),
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(2),
    };
    let warehouse: Box<dyn Warehouse> =
        Box::new(SqliteWarehouse::open(&dir.path().join("w.db")).expect("warehouse"));
    let warehouse: SharedWarehouse = Arc::new(Mutex::new(warehouse));
    let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
    let mut config = NotifyConfig {
        log: dir.path().join("alerts.jsonl"),
        ..NotifyConfig::default()
    };
    config.webhooks.insert("log".into(), hook.clone());
    let error = Notifier::new(outbox.clone(), &config, warehouse.clone(), clock.clone())
        .err()
        .expect("reserved");
    assert!(error.to_string().contains("reserved"), "{error}");

    config.webhooks.clear();
    let missing = dir.path().join("missing.secret");
    config.webhooks.insert(
        "w".into(),
        WebhookConfig {
            secret_file: Some(missing.clone()),
            ..hook
        },
    );
    let error = Notifier::new(outbox, &config, warehouse, clock)
        .err()
        .expect("missing secret");
    let text = error.to_string();
    assert!(
        text.contains("notify.webhooks.w.secret_file")
            && text.contains(&missing.display().to_string()),
        "{text}"
    );
}
