//! A fault-injecting HTTP/1.1 reverse proxy, for end-to-end tests of delivery under
//! collector faults.
//!
//! It listens on 127.0.0.1 between the agent and the real collector and forwards each
//! request byte for byte — request line, headers and body untouched, since the collector
//! deduplicates by the `x-tollstream-source` and `x-tollstream-range` headers — or, chosen
//! per request by a seeded RNG with configurable probabilities ([`FaultConfig`]), injects
//! one [`Fault`]:
//!
//! * [`Fault::TooManyRequests`]: answers `429` with `Retry-After: 1`; nothing forwarded;
//! * [`Fault::Unavailable`]: answers `503` with `Retry-After: 1`; nothing forwarded;
//! * [`Fault::DropRequest`]: reads the whole request, then closes the connection without
//!   forwarding it or answering;
//! * [`Fault::LoseAnswer`]: forwards the request, reads the collector's whole answer (so a
//!   `200` means the batch is durable), then closes the connection without passing the
//!   answer on: the client must retry, and its retry must not create a duplicate;
//! * [`Fault::Stall`]: holds the request for [`FaultConfig::stall_for`] (set it longer than
//!   the client's request timeout), then forwards it anyway — a late copy, as from a slow
//!   network or an overloaded collector that still processes what its client gave up on —
//!   and closes the connection.
//!
//! A test can also script the next answers ([`ChaosProxy::refuse_next`]: a status and a
//! `Retry-After` value of its choosing, ahead of any random draw), and read the log of every
//! request the proxy read ([`ChaosProxy::requests`]: when, which source and range, and what
//! the proxy answered itself), e.g. to measure how long a client waited before resending.
//!
//! Besides, [`ChaosProxy::set_down`] takes the proxy down: the listening socket is closed
//! (connects are refused) and every open connection is cut, until it is set up again (the
//! same port is bound again). When the collector itself cannot be reached, the proxy answers
//! `502 Bad Gateway` and counts an upstream error.
//!
//! The proxy understands HTTP/1.1 framing (`Content-Length`, chunked bodies, keep-alive,
//! `Connection: close`, HTTP/1.0), so client connections stay alive across requests and it
//! knows where each request and answer ends. It opens one connection to the collector per
//! forwarded request. Not supported, because the agent does not use them:
//! `Expect: 100-continue`, interim `1xx` answers, protocol upgrades.
//!
//! The proxy runs on its own small tokio runtime, so synchronous tests drive it through a
//! plain handle; call the handle's methods from outside any tokio runtime.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Largest request or answer head (request line or status line plus headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A fault the proxy injects into one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `429 Too Many Requests` with `Retry-After: 1`, without forwarding.
    TooManyRequests,
    /// `503 Service Unavailable` with `Retry-After: 1`, without forwarding.
    Unavailable,
    /// Close the connection after reading the request, without forwarding it.
    DropRequest,
    /// Forward the request, then close the connection without returning the answer.
    LoseAnswer,
    /// Hold the request for [`FaultConfig::stall_for`], then forward it and close.
    Stall,
}

/// Probability of each fault per request (each in `0..=1`, together at most 1; the rest
/// of the requests are forwarded faithfully), and how long a stall lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    /// Probability of [`Fault::TooManyRequests`].
    pub too_many_requests: f64,
    /// Probability of [`Fault::Unavailable`].
    pub unavailable: f64,
    /// Probability of [`Fault::DropRequest`].
    pub drop_request: f64,
    /// Probability of [`Fault::LoseAnswer`].
    pub lose_answer: f64,
    /// Probability of [`Fault::Stall`].
    pub stall: f64,
    /// How long a stalled request is held before it is forwarded.
    pub stall_for: Duration,
}

impl FaultConfig {
    /// No faults: every request is forwarded and answered faithfully.
    pub fn none() -> Self {
        Self {
            too_many_requests: 0.0,
            unavailable: 0.0,
            drop_request: 0.0,
            lose_answer: 0.0,
            stall: 0.0,
            stall_for: Duration::ZERO,
        }
    }

    /// Every fault kind with the same probability `p`, stalls lasting `stall_for`.
    pub fn each(p: f64, stall_for: Duration) -> Self {
        Self {
            too_many_requests: p,
            unavailable: p,
            drop_request: p,
            lose_answer: p,
            stall: p,
            stall_for,
        }
    }

    fn weighted(&self) -> [(f64, Fault); 5] {
        [
            (self.too_many_requests, Fault::TooManyRequests),
            (self.unavailable, Fault::Unavailable),
            (self.drop_request, Fault::DropRequest),
            (self.lose_answer, Fault::LoseAnswer),
            (self.stall, Fault::Stall),
        ]
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut total = 0.0;
        for (p, fault) in self.weighted() {
            if !(0.0..=1.0).contains(&p) {
                bail!("the probability of {fault:?} must be in 0..=1, got {p}");
            }
            total += p;
        }
        if total > 1.0 + 1e-9 {
            bail!("the fault probabilities add up to {total}, more than 1");
        }
        Ok(())
    }
}

/// What the proxy has seen and done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests read completely from clients.
    pub requests: u64,
    /// Requests passed on to the collector (faithfully, or before losing the answer, or
    /// late after a stall).
    pub forwarded: u64,
    /// Collector answers passed back to the client.
    pub answered: u64,
    /// [`Fault::TooManyRequests`] injected.
    pub too_many_requests: u64,
    /// [`Fault::Unavailable`] injected.
    pub unavailable: u64,
    /// [`Fault::DropRequest`] injected.
    pub dropped_requests: u64,
    /// [`Fault::LoseAnswer`] injected (counted once the collector's answer was read).
    pub lost_answers: u64,
    /// [`Fault::Stall`] injected.
    pub stalls: u64,
    /// Times the proxy was taken down.
    pub down_periods: u64,
    /// Client connections cut because the proxy went down.
    pub connections_cut: u64,
    /// Requests answered `502` because the collector could not be reached or answered
    /// something unreadable.
    pub upstream_errors: u64,
}

impl FaultCounts {
    /// The count of one fault kind.
    pub fn of(&self, fault: Fault) -> u64 {
        match fault {
            Fault::TooManyRequests => self.too_many_requests,
            Fault::Unavailable => self.unavailable,
            Fault::DropRequest => self.dropped_requests,
            Fault::LoseAnswer => self.lost_answers,
            Fault::Stall => self.stalls,
        }
    }

    /// Every fault kind.
    pub const KINDS: [Fault; 5] = [
        Fault::TooManyRequests,
        Fault::Unavailable,
        Fault::DropRequest,
        Fault::LoseAnswer,
        Fault::Stall,
    ];
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    answered: AtomicU64,
    too_many_requests: AtomicU64,
    unavailable: AtomicU64,
    dropped_requests: AtomicU64,
    lost_answers: AtomicU64,
    stalls: AtomicU64,
    down_periods: AtomicU64,
    connections_cut: AtomicU64,
    upstream_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// An answer the proxy gives instead of forwarding, queued by [`ChaosProxy::refuse_next`].
#[derive(Debug, Clone)]
struct Scripted {
    status: String,
    retry_after: Option<String>,
}

/// One request the proxy read completely, in [`ChaosProxy::requests`].
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// When the proxy had read it.
    pub at: Instant,
    /// Its `x-tollstream-source` header.
    pub source: Option<String>,
    /// Its `x-tollstream-range` header.
    pub range: Option<String>,
    /// The status the proxy answered itself (a scripted answer, or an injected 429 or
    /// 503); `None` when the request was forwarded, dropped or stalled.
    pub refused_with: Option<u16>,
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<FaultConfig>,
    rng: Mutex<fastrand::Rng>,
    counters: Counters,
    /// Answers for the next requests, ahead of the random draws.
    script: Mutex<VecDeque<Scripted>>,
    /// Every request read, in order.
    seen: Mutex<Vec<SeenRequest>>,
    /// Client connections being served.
    connections: AtomicUsize,
}

impl Shared {
    /// The fault for the next request, if any, drawn from the seeded RNG.
    fn choose(&self) -> Option<Fault> {
        let config = *self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let x = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .f64();
        let mut edge = 0.0;
        for (p, fault) in config.weighted() {
            edge += p;
            if x < edge {
                return Some(fault);
            }
        }
        None
    }

    fn stall_for(&self) -> Duration {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stall_for
    }
}

/// A running proxy; dropping it stops it.
pub struct ChaosProxy {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Whether the proxy should be down.
    down: watch::Sender<bool>,
    /// Whether the listening socket is open (the accept loop's answer to `down`).
    listening: watch::Receiver<bool>,
}

impl ChaosProxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to `upstream`, injecting
    /// `faults` with choices drawn from an RNG seeded with `seed`.
    ///
    /// # Errors
    /// Invalid probabilities, or no runtime or socket could be made.
    pub fn start(upstream: SocketAddr, faults: FaultConfig, seed: u64) -> anyhow::Result<Self> {
        faults.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()
            .context("building the chaos proxy's runtime")?;
        let listener = {
            let _entered = runtime.enter();
            bind(([127, 0, 0, 1], 0).into()).context("binding the chaos proxy")?
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            config: Mutex::new(faults),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counters: Counters::default(),
            script: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let (down, down_rx) = watch::channel(false);
        let (listening_tx, listening) = watch::channel(true);
        runtime.spawn(accept_loop(
            listener,
            addr,
            shared.clone(),
            down_rx,
            listening_tx,
        ));
        Ok(Self {
            runtime: Some(runtime),
            shared,
            addr,
            down,
            listening,
        })
    }

    /// The address the proxy listens on (also while down: it comes back on the same one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces the fault probabilities (e.g. [`FaultConfig::none`] to switch faults off);
    /// requests already being handled keep the fault they were given.
    ///
    /// # Errors
    /// Invalid probabilities.
    pub fn set_faults(&self, faults: FaultConfig) -> anyhow::Result<()> {
        faults.validate()?;
        *self
            .shared
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = faults;
        Ok(())
    }

    /// Takes the proxy down (stop listening: connects are refused; cut every open
    /// connection, requests in progress included) or brings it back up on the same port.
    /// Returns once that took effect.
    ///
    /// # Errors
    /// When it did not take effect within 10 s (e.g. the port was taken meanwhile).
    pub fn set_down(&self, down: bool) -> anyhow::Result<()> {
        if *self.down.borrow() == down {
            return Ok(());
        }
        if down {
            bump(&self.shared.counters.down_periods);
        }
        self.down.send_replace(down);
        let runtime = self.runtime.as_ref().context("the proxy is stopped")?;
        let mut listening = self.listening.clone();
        let shared = self.shared.clone();
        runtime.block_on(async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                listening
                    .wait_for(|l| *l != down)
                    .await
                    .context("the accept loop ended")?;
                while down && shared.connections.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                anyhow::Ok(())
            })
            .await
            .with_context(|| format!("the chaos proxy did not go {}", updown(down)))?
        })
    }

    /// Answers the next `count` requests itself with `status` (e.g. `503 Service
    /// Unavailable`) and, if given, `Retry-After: <retry_after>` (sent as is: seconds, an
    /// HTTP date, or anything else), without forwarding them; ahead of any fault draw.
    pub fn refuse_next(&self, count: usize, status: &str, retry_after: Option<&str>) {
        let mut script = self
            .shared
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for _ in 0..count {
            script.push_back(Scripted {
                status: status.to_owned(),
                retry_after: retry_after.map(str::to_owned),
            });
        }
    }

    /// Every request the proxy has read so far, in the order it finished reading them.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the proxy is down.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// What the proxy has seen and injected so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            requests: get(&c.requests),
            forwarded: get(&c.forwarded),
            answered: get(&c.answered),
            too_many_requests: get(&c.too_many_requests),
            unavailable: get(&c.unavailable),
            dropped_requests: get(&c.dropped_requests),
            lost_answers: get(&c.lost_answers),
            stalls: get(&c.stalls),
            down_periods: get(&c.down_periods),
            connections_cut: get(&c.connections_cut),
            upstream_errors: get(&c.upstream_errors),
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn updown(down: bool) -> &'static str {
    if down { "down" } else { "up" }
}

/// A listening socket that can be bound again right after it was closed (connections it
/// accepted may linger in TIME_WAIT).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections while up; closes the listener while down.
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut down: watch::Receiver<bool>,
    listening: watch::Sender<bool>,
) {
    let mut listener = Some(listener);
    loop {
        // Up: (re)bind if needed.
        let current = match listener.take() {
            Some(l) => l,
            None => match bind(addr) {
                Ok(l) => l,
                Err(error) => {
                    eprintln!("chaos proxy: binding {addr} again failed ({error}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        listening.send_replace(true);
        loop {
            tokio::select! {
                accepted = current.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let _ = stream.set_nodelay(true);
                        shared.connections.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(connection(stream, shared.clone(), down.clone()));
                    }
                }
                changed = down.changed() => {
                    if changed.is_err() {
                        return; // The handle is gone.
                    }
                    if *down.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        drop(current); // Down: connects are refused from here on.
        listening.send_replace(false);
        loop {
            if down.changed().await.is_err() {
                return;
            }
            if !*down.borrow_and_update() {
                break;
            }
        }
    }
}

/// Serves one client connection until it ends, or cuts it when the proxy goes down.
async fn connection(mut client: TcpStream, shared: Arc<Shared>, mut down: watch::Receiver<bool>) {
    tokio::select! {
        served = serve(&mut client, &shared) => {
            if let Err(error) = served
                && error.kind() == std::io::ErrorKind::InvalidData
            {
                eprintln!("chaos proxy: closing a connection: {error}");
            }
        }
        () = wait_down(&mut down) => bump(&shared.counters.connections_cut),
    }
    drop(client);
    shared.connections.fetch_sub(1, Ordering::SeqCst);
}

async fn wait_down(down: &mut watch::Receiver<bool>) {
    if down.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await; // The handle is gone; the runtime stops soon.
    }
}

/// Requests on one client connection, in order. Returns when the connection should close.
async fn serve(client: &mut TcpStream, shared: &Shared) -> std::io::Result<()> {
    let c = &shared.counters;
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_message(client, &mut buf, Side::Request).await? else {
            return Ok(()); // The client closed between requests.
        };
        bump(&c.requests);
        let scripted = shared
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let choice = match &scripted {
            Some(_) => None,
            None => shared.choose(),
        };
        let refused_with = match (&scripted, choice) {
            (Some(s), _) => s.status.split(' ').next().and_then(|c| c.parse().ok()),
            (None, Some(Fault::TooManyRequests)) => Some(429),
            (None, Some(Fault::Unavailable)) => Some(503),
            (None, _) => None,
        };
        shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(SeenRequest {
                at: Instant::now(),
                source: header(&request.raw, "x-tollstream-source"),
                range: header(&request.raw, "x-tollstream-range"),
                refused_with,
            });
        if let Some(scripted) = scripted {
            client
                .write_all(&canned(
                    &scripted.status,
                    request.close,
                    "scripted by the test",
                    scripted.retry_after.as_deref(),
                ))
                .await?;
            if request.close {
                return Ok(());
            }
            continue;
        }
        match choice {
            Some(fault @ (Fault::TooManyRequests | Fault::Unavailable)) => {
                let (counter, status) = match fault {
                    Fault::TooManyRequests => (&c.too_many_requests, "429 Too Many Requests"),
                    _ => (&c.unavailable, "503 Service Unavailable"),
                };
                bump(counter);
                client
                    .write_all(&canned(
                        status,
                        request.close,
                        "injected by the chaos proxy",
                        Some("1"),
                    ))
                    .await?;
                if request.close {
                    return Ok(());
                }
            }
            Some(Fault::DropRequest) => {
                bump(&c.dropped_requests);
                return Ok(());
            }
            Some(Fault::LoseAnswer) => {
                // Only a request the collector answered counts as an answer lost.
                if forward(shared, &request.raw).await.is_ok() {
                    bump(&c.lost_answers);
                }
                return Ok(());
            }
            Some(Fault::Stall) => {
                bump(&c.stalls);
                tokio::time::sleep(shared.stall_for()).await;
                // Delivered late; the client has most likely given up and retried.
                if let Ok(answer) = forward(shared, &request.raw).await
                    && client.write_all(&answer.raw).await.is_ok()
                {
                    bump(&c.answered);
                }
                return Ok(());
            }
            None => match forward(shared, &request.raw).await {
                Ok(answer) => {
                    client.write_all(&answer.raw).await?;
                    bump(&c.answered);
                    if request.close || answer.close {
                        return Ok(());
                    }
                }
                Err(error) => {
                    bump(&c.upstream_errors);
                    let why = format!("the chaos proxy could not reach the collector: {error}");
                    client
                        .write_all(&canned("502 Bad Gateway", true, &why, None))
                        .await?;
                    return Ok(());
                }
            },
        }
    }
}

/// Sends `request` to the collector on a new connection and reads its answer.
async fn forward(shared: &Shared, request: &[u8]) -> std::io::Result<Message> {
    let mut upstream = TcpStream::connect(shared.upstream).await?;
    upstream.set_nodelay(true)?;
    upstream.write_all(request).await?;
    bump(&shared.counters.forwarded);
    let mut buf = Vec::new();
    read_message(&mut upstream, &mut buf, Side::Response)
        .await?
        .ok_or_else(|| eof("the collector closed the connection without answering"))
}

/// An answer made up by the proxy, JSON like the collector's.
fn canned(status: &str, close: bool, why: &str, retry_after: Option<&str>) -> Vec<u8> {
    let body = serde_json::json!({ "error": why }).to_string();
    let connection = if close { "Connection: close\r\n" } else { "" };
    let retry_after = retry_after
        .map(|r| format!("Retry-After: {r}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\n{retry_after}Content-Type: application/json\r\n{connection}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The value of header `name` in a message's head, if present.
fn header(raw: &[u8], name: &str) -> Option<String> {
    let head_end = find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// One complete HTTP/1.x message, exactly as it was read.
#[derive(Debug)]
struct Message {
    raw: Vec<u8>,
    /// The connection ends after this message.
    close: bool,
}

/// How a message's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilEof,
}

fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

fn eof(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned())
}

/// Reads more bytes into `buf`; 0 at end of stream.
async fn read_more(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads until `buf` holds at least `len` bytes.
async fn fill_to(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    len: usize,
) -> std::io::Result<()> {
    while buf.len() < len {
        if read_more(stream, buf).await? == 0 {
            return Err(eof(
                "the peer closed the connection in the middle of a message",
            ));
        }
    }
    Ok(())
}

/// The position of the first `\r\n` at or after `from`, reading more as needed.
async fn line_end(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    from: usize,
) -> std::io::Result<usize> {
    loop {
        if let Some(i) = find(&buf[from.min(buf.len())..], b"\r\n") {
            return Ok(from + i);
        }
        if buf.len() - from > MAX_HEAD_BYTES {
            return Err(invalid("a chunk-size or trailer line is too long"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(eof(
                "the peer closed the connection in the middle of a message",
            ));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one message from `stream`, with `buf` holding bytes already read past the
/// previous one (and keeping those past this one). `None` when the stream ends cleanly
/// before a new message starts.
async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    side: Side,
) -> std::io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(invalid("the message head is larger than 64 KiB"));
        }
        if read_more(stream, buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(eof(
                "the peer closed the connection in the middle of a head",
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end - 4])
        .map_err(|_| invalid("the message head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let (version, status) = match side {
        Side::Request => (start.rsplit(' ').next().unwrap_or_default(), None),
        Side::Response => {
            let mut parts = start.splitn(3, ' ');
            let version = parts.next().unwrap_or_default();
            let status = parts
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| invalid(format!("not a status line: {start:?}")))?;
            (version, Some(status))
        }
    };
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("not HTTP/1.x: {start:?}")));
    }
    let mut content_length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("not a header line: {line:?}")))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    let framing = match (side, status) {
        (_, Some(s)) if (100..200).contains(&s) || s == 204 || s == 304 => Framing::Length(0),
        _ if chunked => Framing::Chunked,
        _ => match (content_length, side) {
            (Some(n), _) => Framing::Length(n),
            (None, Side::Request) => Framing::Length(0),
            (None, Side::Response) => Framing::UntilEof,
        },
    };
    let end = match framing {
        Framing::Length(n) => {
            fill_to(stream, buf, head_end + n).await?;
            head_end + n
        }
        Framing::Chunked => {
            let mut at = head_end;
            loop {
                let size_end = line_end(stream, buf, at).await?;
                let size_text = std::str::from_utf8(&buf[at..size_end]).unwrap_or_default();
                let size_text = size_text.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
                at = size_end + 2;
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        let trailer_end = line_end(stream, buf, at).await?;
                        let empty = trailer_end == at;
                        at = trailer_end + 2;
                        if empty {
                            break;
                        }
                    }
                    break at;
                }
                at += size + 2;
                fill_to(stream, buf, at).await?;
            }
        }
        Framing::UntilEof => {
            while read_more(stream, buf).await? > 0 {}
            close = true;
            buf.len()
        }
    };
    let raw: Vec<u8> = buf.drain(..end).collect();
    Ok(Some(Message { raw, close }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], side: Side) -> std::io::Result<(Vec<Message>, Vec<u8>)> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(async {
                let mut stream = bytes;
                let mut buf = Vec::new();
                let mut messages = Vec::new();
                while let Some(m) = read_message(&mut stream, &mut buf, side).await? {
                    messages.push(m);
                }
                Ok((messages, buf))
            })
    }

    #[test]
    fn keep_alive_requests_are_split_at_their_content_length() {
        let one = b"POST /v1/streams/s/records HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\nx-tollstream-range: 0-4\r\n\r\nabc\n";
        let two = b"POST /v1/streams/s/records HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nd\n";
        let (messages, rest) = parse(&[&one[..], &two[..]].concat(), Side::Request).expect("parse");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].raw, one);
        assert!(!messages[0].close);
        assert_eq!(
            header(&messages[0].raw, "X-Tollstream-Range").as_deref(),
            Some("0-4")
        );
        assert_eq!(header(&messages[1].raw, "x-tollstream-range"), None);
        assert_eq!(messages[1].raw, two);
        assert!(messages[1].close);
        assert!(rest.is_empty());
    }

    #[test]
    fn chunked_answers_and_answers_without_length_are_read_whole() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n";
        let (messages, _) = parse(chunked, Side::Response).expect("parse");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].raw, chunked);
        let no_length = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
        let (messages, _) = parse(no_length, Side::Response).expect("parse");
        assert_eq!(messages[0].raw, no_length);
        assert!(messages[0].close);
        let no_body = b"HTTP/1.1 204 No Content\r\n\r\n";
        let (messages, _) = parse(no_body, Side::Response).expect("parse");
        assert_eq!(messages[0].raw, no_body);
    }

    #[test]
    fn a_message_cut_short_is_an_error() {
        let cut = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        let error = parse(cut, Side::Request).expect_err("cut short");
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(parse(b"GARBAGE\r\n\r\n", Side::Response).is_err());
    }

    #[test]
    fn faults_are_drawn_with_their_probabilities_from_the_seed() {
        let shared = |config: FaultConfig, seed| Shared {
            upstream: ([127, 0, 0, 1], 1).into(),
            config: Mutex::new(config),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counters: Counters::default(),
            script: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        };
        let a = shared(FaultConfig::each(0.1, Duration::ZERO), 7);
        let b = shared(FaultConfig::each(0.1, Duration::ZERO), 7);
        let draws: Vec<_> = (0..10_000).map(|_| a.choose()).collect();
        assert_eq!(draws, (0..10_000).map(|_| b.choose()).collect::<Vec<_>>());
        for kind in FaultCounts::KINDS {
            let n = draws.iter().filter(|d| **d == Some(kind)).count();
            assert!((800..1200).contains(&n), "{kind:?}: {n} of 10000");
        }
        let none = shared(FaultConfig::none(), 7);
        assert!((0..1000).all(|_| none.choose().is_none()));
        assert!(FaultConfig::each(0.3, Duration::ZERO).validate().is_err());
    }
}
