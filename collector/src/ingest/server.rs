//! The HTTP server under the ingest API: accepting connections within a limit, closing the
//! ones that stall or idle, optional TLS, and a graceful stop.
//!
//! * At most `max_connections` are open; one more is answered `503` (JSON, `Retry-After`)
//!   and closed at once, so a flood of connections cannot exhaust descriptors or memory.
//! * A request head must be complete within `header_timeout` of its first byte (of the
//!   connection's opening, for the first request): a slowloris client trickling its
//!   headers is cut off there. The body has `body_timeout` (see [`super::body`]).
//! * Between requests, a keep-alive connection may stay silent for `idle_timeout`, then it
//!   is closed. (hyper's own header read timeout also runs while a connection idles between
//!   requests, which would close an agent's pooled connection after seconds; so it is off
//!   and both clocks are kept here.)
//! * With TLS, the handshake must finish within `header_timeout` too. Certificate and key
//!   are read again on SIGHUP ([`TlsFiles::reload`]); connections made after that use them.
//! * On shutdown, no new connections are accepted, idle ones close, and requests in
//!   progress are finished (for at most `body_timeout`).

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

/// Read buffer of one connection: bounds a request head (hyper answers 431 past it).
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Refused connections answered at once; past this many more are simply closed.
const POLITE_REFUSALS: usize = 256;

/// Connection limits and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to send a complete request head (and to finish a TLS handshake).
    pub header_timeout: Duration,
    /// A connection silent in both directions this long is closed.
    pub idle_timeout: Duration,
    /// How long a request in progress may take to finish once the server is stopping.
    pub drain_timeout: Duration,
}

/// How often an idle accept loop shows it is alive (see [`crate::systemd`]).
const ACCEPT_HEARTBEAT: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown`, then drains. The accept loop beats
/// `heartbeat` at least every [`ACCEPT_HEARTBEAT`], also when no connection comes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    tls: Option<Arc<TlsFiles>>,
    heartbeat: Option<Arc<crate::systemd::Heartbeat>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let refusals = Arc::new(Semaphore::new(POLITE_REFUSALS));
    let connections = TaskTracker::new();
    let mut tick = tokio::time::interval(ACCEPT_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(heartbeat) = &heartbeat {
            heartbeat.park_until(Instant::now() + ACCEPT_HEARTBEAT);
        }
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors (EMFILE) and the like: wait instead of spinning; the
                // connections that finish meanwhile give descriptors back.
                warn!(%error, "Accepting a connection failed; pausing accepts for 100 ms.");
                metrics::counter!("tollstream_collector_accept_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("tollstream_collector_connections_refused_total").increment(1);
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse_connection(stream, options.max_connections, refusal));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            metrics::gauge!("tollstream_collector_connections").increment(1.0);
            let activity = Arc::new(Activity::new());
            let io = Tracked {
                inner: stream,
                activity: activity.clone(),
            };
            match tls {
                None => connection(io, app, options, activity, shutdown).await,
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    match tokio::time::timeout(options.header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(io)) => connection(io, app, options, activity, shutdown).await,
                        Ok(Err(error)) => {
                            debug!(%peer, %error, "TLS handshake failed.");
                            metrics::counter!("tollstream_collector_tls_handshake_errors_total")
                                .increment(1);
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out.");
                            metrics::counter!("tollstream_collector_tls_handshake_errors_total")
                                .increment(1);
                        }
                    }
                }
            }
            metrics::gauge!("tollstream_collector_connections").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers a connection over the limit with a 503 and closes it, reading (and dropping) what
/// the client sent for up to a second first, so the close does not reset the connection
/// before the answer is read.
async fn refuse_connection(
    mut stream: TcpStream,
    limit: usize,
    _refusal: tokio::sync::OwnedSemaphorePermit,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(
        "{{\"error\":\"the collector has {limit} connections open, its limit \
         (ingest.max_connections); retry shortly\",\"reason\":\"too_many_connections\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let polite = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), polite).await;
}

/// Serves HTTP/1.1 requests on one connection until it ends, idles out or the server stops.
async fn connection<I>(
    io: I,
    app: Router,
    options: ServerOptions,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| {
            let (app, activity) = (app.clone(), activity.clone());
            activity.request_started();
            async move {
                let response = app.oneshot(request).await;
                activity.request_finished();
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A small read buffer caps what a request head (or a client sending one slowly) can
    // hold per connection; bodies stream through it in pieces of this size.
    builder
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .max_headers(64);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut hard_stop: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "Connection ended with an error.");
                }
                return;
            }
            () = shutdown.cancelled(), if hard_stop.is_none() => {
                conn.as_mut().graceful_shutdown();
                hard_stop = Some(Instant::now() + options.drain_timeout);
            }
            expiry = activity.expiry(options.header_timeout, options.idle_timeout), if hard_stop.is_none() => {
                match expiry {
                    Expiry::Header => {
                        // Mid-head there is nothing to finish gracefully: cut it off.
                        metrics::counter!("tollstream_collector_connections_closed_total", "reason" => "header_timeout").increment(1);
                        return;
                    }
                    Expiry::Idle => {
                        metrics::counter!("tollstream_collector_connections_closed_total", "reason" => "idle").increment(1);
                        conn.as_mut().graceful_shutdown();
                        hard_stop = Some(Instant::now() + options.drain_timeout);
                    }
                }
            }
            () = sleep_until(hard_stop), if hard_stop.is_some() => return,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Which clock ran out on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head took longer than `header_timeout`.
    Header,
    /// Silent between requests for `idle_timeout`.
    Idle,
}

/// Waiting for the first byte of the next request.
const BETWEEN: u8 = 0;
/// Reading a request head.
const HEAD: u8 = 1;
/// A request is being served (its body is read under `body_timeout`).
const REQUEST: u8 = 2;

/// Where a connection is in its request cycle and when it last moved a byte.
struct Activity {
    base: Instant,
    phase: AtomicU8,
    /// When the current head's first byte came (for the first request: the connection's
    /// opening), in milliseconds since `base`.
    head_since_ms: AtomicU64,
    /// When a byte last moved, or a request last finished.
    last_ms: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            phase: AtomicU8::new(HEAD),
            head_since_ms: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::SeqCst);
        if self.phase.load(Ordering::SeqCst) == BETWEEN {
            // The time first, so a watcher that sees HEAD sees its start.
            self.head_since_ms.store(now, Ordering::SeqCst);
            self.phase.store(HEAD, Ordering::SeqCst);
            self.changed.notify_one();
        }
    }

    fn on_write(&self) {
        self.last_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    fn request_started(&self) {
        self.phase.store(REQUEST, Ordering::SeqCst);
        self.changed.notify_one();
    }

    fn request_finished(&self) {
        self.last_ms.store(self.now_ms(), Ordering::SeqCst);
        self.phase.store(BETWEEN, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Completes when the clock of the current phase runs out.
    async fn expiry(&self, header_timeout: Duration, idle_timeout: Duration) -> Expiry {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = match self.phase.load(Ordering::SeqCst) {
                HEAD => Some((
                    self.at(self.head_since_ms.load(Ordering::SeqCst)) + header_timeout,
                    Expiry::Header,
                )),
                BETWEEN => Some((
                    self.at(self.last_ms.load(Ordering::SeqCst)) + idle_timeout,
                    Expiry::Idle,
                )),
                _ => None,
            };
            match deadline {
                Some((deadline, expiry)) if Instant::now() >= deadline => return expiry,
                Some((deadline, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A stream that notes every byte moved in [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The TLS certificate and key files, and the server configuration made from them.
pub struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsFiles {
    /// Reads the files.
    ///
    /// # Errors
    /// Unreadable or malformed PEM, a key that does not match the certificate.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Self> {
        let config = server_config(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            config: RwLock::new(Arc::new(config)),
        })
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again (certificate renewal); on error the old ones stay in use.
    pub fn reload(&self) -> bool {
        match server_config(&self.cert_file, &self.key_file) {
            Ok(config) => {
                *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                info!(cert = %self.cert_file.display(), "Reloaded the TLS certificate and key.");
                metrics::counter!("tollstream_collector_reloads_total", "what" => "tls", "result" => "ok").increment(1);
                true
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "TLS certificate not reloaded; the previous one stays in use."
                );
                metrics::counter!("tollstream_collector_reloads_total", "what" => "tls", "result" => "error").increment(1);
                false
            }
        }
    }
}

fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading certificates from {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("reading the private key from {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} and {} do not make a usable certificate: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
