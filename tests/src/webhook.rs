//! A webhook receiver for the alert tests: a real HTTP server on 127.0.0.1 that records
//! every delivery (its `Idempotency-Key`, signature header and JSON body) and can fail the
//! first attempts of each alert — a 500, then a 503 — before it accepts, the way a flaky
//! receiver would. (`Retry-After` is tested with the notify stage itself; here it would
//! only slow every alert down.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `Idempotency-Key` header (empty when missing).
    pub idempotency_key: String,
    /// The signature header, if any.
    pub signature: Option<String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The parsed body (`Null` when it is not JSON).
    pub document: serde_json::Value,
    /// The status the receiver answered.
    pub status: u16,
    /// When it arrived (µs since the Unix epoch, system clock).
    pub received_us: i64,
}

/// What was received.
#[derive(Debug, Default)]
pub struct Received {
    /// Every request, in arrival order.
    pub deliveries: Vec<Delivery>,
    attempts: HashMap<String, u32>,
}

/// A running receiver; stops with its runtime (the value is dropped).
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it got.
    pub received: Arc<Mutex<Received>>,
    _runtime: tokio::runtime::Runtime,
}

/// The header the collector signs deliveries with.
pub const SIGNATURE_HEADER: &str = "x-tollstream-signature";

impl Receiver {
    /// Starts a receiver that fails the first `fail_first` attempts of each alert id.
    ///
    /// # Errors
    /// No port could be bound.
    pub fn start(fail_first: u32) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let state = received.clone();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { handle(&state, fail_first, &headers, &body) }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            addr,
            received,
            _runtime: runtime,
        })
    }

    /// The URL to configure as the webhook.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The accepted (2xx) deliveries.
    pub fn accepted(&self) -> Vec<Delivery> {
        let received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        received
            .deliveries
            .iter()
            .filter(|d| (200..300).contains(&d.status))
            .cloned()
            .collect()
    }

    /// Every request (accepted or failed on purpose).
    pub fn all(&self) -> Vec<Delivery> {
        let received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        received.deliveries.clone()
    }
}

fn handle(
    state: &Mutex<Received>,
    fail_first: u32,
    headers: &HeaderMap,
    body: &[u8],
) -> axum::response::Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let key = header("idempotency-key").unwrap_or_default();
    let mut received = state.lock().unwrap_or_else(|p| p.into_inner());
    let attempt = {
        let n = received.attempts.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let status = if attempt > fail_first {
        StatusCode::OK
    } else if attempt % 2 == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The benchmark compares this with the writer's wall clock; the tests only read ids.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    received.deliveries.push(Delivery {
        idempotency_key: key,
        signature: header(SIGNATURE_HEADER),
        body: body.to_vec(),
        document: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
        status: status.as_u16(),
        received_us: now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
    });
    drop(received);
    (status, "").into_response()
}
