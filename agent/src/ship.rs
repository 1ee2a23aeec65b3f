//! Shipping: POSTs batches to the collector until each is acknowledged.
//!
//! Input: [`ShipRequest`]s from tailers, a file's batches in order (up to
//! `max_in_flight_per_file` of them at once; the collector puts each byte range in its
//! place, so a retried batch may land after a later one). Output: an ack per request, sent
//! only after the collector answered 2xx — which it does only once the batch is durable.
//!
//! Never drops a batch. Network errors, timeouts, 408, 429 and 5xx (but 501) are retried
//! with capped exponential backoff and full jitter, honouring `Retry-After` (bounded to
//! 100 ms-60 s). A 413 splits the batch in two halves sent one after the other. Anything
//! else (401, 403, 404, 409, a single line still too large, …) cannot succeed by retrying
//! soon: the flow is paused loudly (ERROR log, metric, `/readyz` fails) and retried slowly,
//! in case an operator fixes the cause.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::batch::Batch;
use crate::health::Health;

/// Delay before retrying a permanent error (wrong token, unknown stream).
const PERMANENT_RETRY: Duration = Duration::from_secs(30);

/// Shortest wait a `Retry-After` can ask for: `0` would otherwise resend at once, a hot
/// loop against a collector that keeps saying so.
const RETRY_AFTER_MIN: Duration = Duration::from_millis(100);
/// Longest wait a `Retry-After` can ask for: a collector saying `86400` (misconfigured, or
/// a proxy in between) would otherwise stall the flow for a day without anyone noticing.
/// Well above what the collector asks (1-2 s) and the backoff's own cap (10 s).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// A batch and where to report its acknowledgement.
pub struct ShipRequest {
    /// The batch.
    pub batch: Batch,
    /// Its request body, already encoded by the tailer.
    pub body: Bytes,
    /// Whether `body` is gzip.
    pub gzip: bool,
    /// Receives `Ok` once the collector made it durable, `Err` if shutdown came first.
    pub ack: oneshot::Sender<Result<(), ShipError>>,
}

/// Why a batch was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The agent is stopping; the batch stays in the file for the next start.
    #[error("shutting down before the batch was acknowledged")]
    ShuttingDown,
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`.
    ///
    /// # Errors
    /// When `min` is zero or `max < min`.
    pub fn try_new(min: Duration, max: Duration) -> Result<Self, String> {
        if min.is_zero() {
            return Err("backoff minimum must be > 0".into());
        }
        if max < min {
            return Err("backoff maximum must not be less than minimum".into());
        }
        Ok(Self { min, max })
    }

    /// Delay before retry number `attempt` (0-based): uniform in `[0, min * 2^attempt]`,
    /// capped at `max`, never below a millisecond.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let jittered = ceiling.mul_f64(fastrand::f64());
        jittered.max(Duration::from_millis(1))
    }
}

/// What to do after an answer.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Done,
    Retry(Option<Duration>),
    TooLarge,
    Permanent,
}

/// The verdict on an answer. `Retry-After` is honoured in whole seconds, bounded to
/// [`RETRY_AFTER_MIN`]..=[`RETRY_AFTER_MAX`]; any other form (an HTTP date, which the
/// collector never sends) leaves the wait to the backoff.
fn classify(status: StatusCode, retry_after: Option<&HeaderValue>) -> Verdict {
    let after = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds).clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX));
    match status.as_u16() {
        200..=299 => Verdict::Done,
        408 | 429 => Verdict::Retry(after),
        413 => Verdict::TooLarge,
        501 => Verdict::Permanent,
        500..=599 => Verdict::Retry(after),
        _ => Verdict::Permanent,
    }
}

/// Sends batches to the collector.
pub struct Shipper {
    client: reqwest::Client,
    url: String,
    auth: HeaderValue,
    backoff: Backoff,
    in_flight: Arc<Semaphore>,
    gzip_level: u32,
    health: Arc<Health>,
    shutdown: CancellationToken,
    stopping: CancellationToken,
}

/// Settings of a [`Shipper`].
pub struct ShipperConfig<'a> {
    /// Collector base URL.
    pub url: &'a str,
    /// Bearer token.
    pub token: &'a str,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Requests on the wire at once.
    pub max_in_flight: usize,
    /// gzip level for bodies the shipper encodes itself (halves of a split batch).
    pub gzip_level: u32,
    /// The only CAs trusted for an `https://` collector; `None`: the system's.
    pub ca_file: Option<&'a std::path::Path>,
}

type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), ShipError>> + Send + 'a>>;

impl Shipper {
    /// A shipper for `url` with a bearer `token`.
    ///
    /// # Errors
    /// A token that is not a valid header value, or an HTTP client that cannot be built.
    pub fn new(
        config: &ShipperConfig<'_>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let ShipperConfig {
            url,
            token,
            timeout,
            max_in_flight,
            gzip_level,
            ca_file,
        } = *config;
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            anyhow::anyhow!("the collector token contains characters not allowed in an HTTP header")
        })?;
        auth.set_sensitive(true);
        // rustls with ring: pure Rust apart from ring's assembly, no C toolchain needed.
        // Another provider installed first (none is, in this binary) would also do.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(max_in_flight);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("reading collector.ca_file {}: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "collector.ca_file {} is not PEM certificates: {e}",
                    path.display()
                )
            })?;
            anyhow::ensure!(
                !certs.is_empty(),
                "collector.ca_file {} holds no certificate",
                path.display()
            );
            builder = builder.tls_certs_only(certs);
        }
        let client = builder.build()?;
        Ok(Self {
            client,
            url: url.trim_end_matches('/').to_owned(),
            auth,
            backoff: Backoff::try_new(Duration::from_millis(100), Duration::from_secs(10))
                .map_err(anyhow::Error::msg)?,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            gzip_level,
            health,
            shutdown,
            stopping: CancellationToken::new(),
        })
    }

    /// Once `stopping` is cancelled (the agent was asked to stop), batches of a paused flow
    /// give up at once instead of waiting out the grace period (`shutdown`).
    #[must_use]
    pub fn stopping_on(mut self, stopping: CancellationToken) -> Self {
        self.stopping = stopping;
        self
    }

    /// Serves requests until every tailer has dropped its sender.
    ///
    /// Each request gets its own task (the tailers' in-flight limits and memory budget bound
    /// how many there are); the semaphore bounds
    /// how many are on the wire at once, and is released between attempts, so a file the
    /// collector keeps refusing does not hold up the others.
    pub async fn run(self, mut requests: mpsc::Receiver<ShipRequest>) {
        let this = Arc::new(self);
        let tasks = tokio_util::task::TaskTracker::new();
        while let Some(request) = requests.recv().await {
            let shipper = this.clone();
            tasks.spawn(async move {
                let result = shipper
                    .deliver(&request.batch, &request.body, request.gzip)
                    .await;
                let _ = request.ack.send(result); // The tailer may have stopped waiting.
            });
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Sends one batch until the collector acknowledges it or shutdown is requested.
    async fn deliver(&self, batch: &Batch, body: &Bytes, gzip: bool) -> Result<(), ShipError> {
        let url = format!("{}/v1/streams/{}/records", self.url, batch.stream);
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            // Past the shutdown grace period, neither wait for a slot nor for an answer: the
            // batch stays in the file, and the agent exits before systemd kills it.
            let attempt_once = async {
                // The semaphore is never closed, so acquiring only fails if it were.
                let Ok(_permit) = self.in_flight.acquire().await else {
                    return None;
                };
                Some(self.post(&url, batch, body.clone(), gzip).await)
            };
            let answer = tokio::select! {
                answer = attempt_once => answer.ok_or(ShipError::ShuttingDown)?,
                () = self.shutdown.cancelled() => return Err(ShipError::ShuttingDown),
            };
            let mut paused = false;
            let delay = match answer {
                Ok((Verdict::Done, _)) => {
                    self.health.delivered(&batch.source);
                    metrics::counter!("tollstream_agent_shipped_records_total")
                        .increment(batch.records as u64);
                    metrics::counter!("tollstream_agent_shipped_bytes_total")
                        .increment(batch.data.len() as u64);
                    metrics::counter!("tollstream_agent_batches_total").increment(1);
                    metrics::histogram!("tollstream_agent_ship_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Ok((Verdict::TooLarge, status)) if batch.records > 1 => {
                    if let Some((first, second)) = batch.split() {
                        warn!(source = %batch.source, %status, records = batch.records, "Collector says the batch is too large; sending it as two halves.");
                        metrics::counter!("tollstream_agent_split_batches_total").increment(1);
                        self.deliver_encoded(first).await?;
                        return self.deliver_encoded(second).await;
                    }
                    paused = true;
                    self.refused(batch, status)
                }
                Ok((Verdict::Retry(after), status)) => {
                    self.health.reached();
                    let delay = after.unwrap_or_else(|| self.backoff.delay(attempt));
                    warn!(source = %batch.source, %status, retry_in = ?delay, "Collector asked to retry.");
                    metrics::counter!("tollstream_agent_ship_retries_total", "reason" => "status")
                        .increment(1);
                    delay
                }
                Ok((Verdict::Permanent | Verdict::TooLarge, status)) => {
                    paused = true;
                    self.refused(batch, status)
                }
                Err(error) => {
                    let delay = self.backoff.delay(attempt);
                    let error = error_chain(&error);
                    warn!(source = %batch.source, %error, retry_in = ?delay, "Could not reach the collector.");
                    self.health.unreachable(error);
                    metrics::counter!("tollstream_agent_ship_retries_total", "reason" => "network")
                        .increment(1);
                    delay
                }
            };
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Err(ShipError::ShuttingDown),
                // A paused flow cannot succeed within the grace period: stop at once.
                () = self.stopping.cancelled(), if paused => return Err(ShipError::ShuttingDown),
            }
        }
    }

    /// A refusal that retrying soon cannot fix: pause the flow loudly.
    fn refused(&self, batch: &Batch, status: StatusCode) -> Duration {
        error!(source = %batch.source, stream = %batch.stream, %status, retry_in = ?PERMANENT_RETRY, "Collector refused the batch; this flow is paused until the cause is fixed. The data waits in the log file.");
        metrics::counter!("tollstream_agent_ship_retries_total", "reason" => "refused")
            .increment(1);
        self.health.refused(&batch.source, status.to_string());
        PERMANENT_RETRY
    }

    /// Encodes and delivers a batch the shipper cut itself.
    fn deliver_encoded(&self, batch: Batch) -> Delivery<'_> {
        Box::pin(async move {
            let level = self.gzip_level;
            let body = if level > 0 {
                let data = batch.clone();
                tokio::task::spawn_blocking(move || data.encode(level))
                    .await
                    .ok()
            } else {
                None
            };
            let gzip = body.is_some();
            let body = body.unwrap_or_else(|| batch.data.clone());
            self.deliver(&batch, &body, gzip).await
        })
    }

    async fn post(
        &self,
        url: &str,
        batch: &Batch,
        body: Bytes,
        gzip: bool,
    ) -> Result<(Verdict, StatusCode), reqwest::Error> {
        let mut request = self
            .client
            .post(url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header("x-tollstream-source", &batch.source)
            .header(
                "x-tollstream-range",
                format!("{}-{}", batch.start, batch.end()),
            );
        if gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let response = request.body(body).send().await?;
        let status = response.status();
        let verdict = classify(status, response.headers().get(RETRY_AFTER));
        if verdict != Verdict::Done {
            let text = response.text().await.unwrap_or_default();
            warn!(%status, body = %text.chars().take(300).collect::<String>(), "Collector answer.");
        }
        Ok((verdict, status))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_the_style_guide_says() {
        assert_eq!(classify(StatusCode::OK, None), Verdict::Done);
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&HeaderValue::from_static("3"))
            ),
            Verdict::Retry(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None),
            Verdict::Retry(None)
        );
        assert_eq!(
            classify(StatusCode::REQUEST_TIMEOUT, None),
            Verdict::Retry(None)
        );
        assert_eq!(
            classify(StatusCode::NOT_IMPLEMENTED, None),
            Verdict::Permanent
        );
        assert_eq!(classify(StatusCode::UNAUTHORIZED, None), Verdict::Permanent);
        assert_eq!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None),
            Verdict::TooLarge
        );
        assert_eq!(classify(StatusCode::NOT_FOUND, None), Verdict::Permanent);
    }

    #[test]
    fn retry_after_is_bounded_and_a_date_leaves_the_wait_to_the_backoff() {
        let retry = |value: &'static str| {
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&HeaderValue::from_static(value)),
            )
        };
        assert_eq!(retry("2"), Verdict::Retry(Some(Duration::from_secs(2))));
        assert_eq!(retry(" 7 "), Verdict::Retry(Some(Duration::from_secs(7))));
        // Not a hot loop…
        assert_eq!(retry("0"), Verdict::Retry(Some(RETRY_AFTER_MIN)));
        // …nor a day's stall.
        assert_eq!(retry("86400"), Verdict::Retry(Some(RETRY_AFTER_MAX)));
        assert_eq!(
            retry("18446744073709551615"),
            Verdict::Retry(Some(RETRY_AFTER_MAX))
        );
        assert_eq!(retry("60"), Verdict::Retry(Some(Duration::from_secs(60))));
        assert_eq!(retry("Wed, 21 Oct 2015 07:28:00 GMT"), Verdict::Retry(None));
        assert_eq!(retry("-1"), Verdict::Retry(None));
        assert_eq!(retry("1.5"), Verdict::Retry(None));
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let backoff =
            Backoff::try_new(Duration::from_millis(100), Duration::from_secs(10)).expect("valid");
        for attempt in 0..40 {
            let delay = backoff.delay(attempt);
            assert!(delay <= Duration::from_secs(10), "{delay:?}");
            assert!(delay >= Duration::from_millis(1));
        }
        assert!(Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
        assert!(Backoff::try_new(Duration::ZERO, Duration::from_secs(1)).is_err());
    }
}
