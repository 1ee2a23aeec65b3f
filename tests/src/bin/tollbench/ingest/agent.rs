//! One synthetic agent: the batches of one file, sent in order the way the agent's shipper
//! sends them (same HTTP client and settings, same headers, gzip bodies, `Retry-After`
//! honoured), at most `in_flight` at once, each request timed from sending it to its answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use super::batches::Batch;

/// Consecutive failed attempts (network errors, retryable answers) after which a batch is
/// given up: the agent would retry forever, a benchmark has to end.
const MAX_ATTEMPTS: u32 = 20;

/// A synthetic agent with one file.
pub struct Agent {
    client: reqwest::Client,
    base: String,
    url: String,
    auth: HeaderValue,
    /// `<agent id>/<file key>`, shaped like the agent's.
    source: String,
    /// Its batches (indices into the shared list) with their byte ranges in its file.
    plan: Vec<(usize, u64, u64)>,
    in_flight: usize,
}

/// What an agent (or all of them) saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Time from sending each request to its 200 answer (body read).
    pub latencies: Vec<Duration>,
    /// Records the collector said it wrote to its WAL (`records` of the answers).
    pub acked_records: u64,
    /// Records the collector took for resends (`duplicate_records`); 0 when all is well.
    pub duplicate_records: u64,
    /// Answers other than 200, by status, retried ones included.
    pub non_200: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, reset, timed out).
    pub network_errors: u64,
    /// Batches given up, with the reason.
    pub failures: Vec<String>,
    /// When the last batch was acknowledged.
    pub finished: Option<Instant>,
}

impl Report {
    /// Adds `other` to this one.
    pub fn merge(&mut self, other: Report) {
        self.latencies.extend(other.latencies);
        self.acked_records += other.acked_records;
        self.duplicate_records += other.duplicate_records;
        for (status, n) in other.non_200 {
            *self.non_200.entry(status).or_default() += n;
        }
        self.network_errors += other.network_errors;
        self.failures.extend(other.failures);
        self.finished = self.finished.max(other.finished);
    }
}

impl Agent {
    /// Agent number `index` sending `plan` to the collector at `base` (`http://host:port`).
    ///
    /// # Errors
    /// An HTTP client that cannot be built.
    pub fn new(
        base: &str,
        index: usize,
        plan: Vec<(usize, u64, u64)>,
        in_flight: usize,
    ) -> anyhow::Result<Self> {
        // The agent's shipper builds its client the same way (agent/src/ship.rs).
        // The workspace's reqwest brings rustls without a crypto provider; the agent installs
        // ring, as this does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(in_flight)
            .build()?;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", tollstream_tests::harness::TOKEN))?;
        auth.set_sensitive(true);
        // The agent's file key is `<inode hex>-<birth time hex>-<first-line CRC-32 hex>`.
        let inode = 0x0004_2000 + index as u64;
        let crc = (index as u32).wrapping_mul(0x9e37_79b9);
        Ok(Self {
            client,
            base: base.to_owned(),
            url: format!("{base}/v1/streams/toll-transactions/records"),
            auth,
            source: format!("bench-{index:03}/{inode:x}-6932a1f0-{crc:08x}"),
            plan,
            in_flight: in_flight.max(1),
        })
    }

    /// Opens the agent's connections (one per request it may have in flight) before timing
    /// starts, as a running agent has them open already.
    ///
    /// # Errors
    /// When the collector does not answer `/healthz`.
    pub async fn connect(&self) -> anyhow::Result<()> {
        let mut probes = tokio::task::JoinSet::new();
        for _ in 0..self.in_flight {
            let request = self.client.get(format!("{}/healthz", self.base));
            probes.spawn(async move { request.send().await?.error_for_status() });
        }
        while let Some(probe) = probes.join_next().await {
            probe??;
        }
        Ok(())
    }

    /// Sends every batch of the plan, in order, at most `in_flight` at once.
    pub async fn run(self: Arc<Self>, batches: Arc<Vec<Batch>>) -> Report {
        let next = Arc::new(AtomicUsize::new(0));
        let mut senders = tokio::task::JoinSet::new();
        for _ in 0..self.in_flight {
            let (agent, batches, next) = (self.clone(), batches.clone(), next.clone());
            senders.spawn(async move {
                let mut report = Report::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(batch, start, end)) = agent.plan.get(i) else {
                        break;
                    };
                    if let Err(reason) = agent
                        .deliver(&batches[batch], start, end, &mut report)
                        .await
                    {
                        report
                            .failures
                            .push(format!("{} {start}-{end}: {reason}", agent.source));
                        break;
                    }
                }
                report
            });
        }
        let mut report = Report::default();
        while let Some(part) = senders.join_next().await {
            match part {
                Ok(part) => report.merge(part),
                Err(error) => report.failures.push(format!("{}: {error}", self.source)),
            }
        }
        report
    }

    /// Sends one batch until it is acknowledged; `Err` when the collector refuses it for
    /// good (what the agent would pause the flow for) or it cannot be delivered.
    async fn deliver(
        &self,
        batch: &Batch,
        start: u64,
        end: u64,
        report: &mut Report,
    ) -> Result<(), String> {
        let mut attempt = 0u32;
        loop {
            let sent = Instant::now();
            let answer = self
                .client
                .post(&self.url)
                .header(AUTHORIZATION, self.auth.clone())
                .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                .header(CONTENT_ENCODING, "gzip")
                .header("x-tollstream-source", &self.source)
                .header("x-tollstream-range", format!("{start}-{end}"))
                .body(batch.body.clone())
                .send()
                .await;
            let (problem, retry_after) = match answer {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match response.bytes().await {
                        Ok(body) if status == StatusCode::OK => {
                            let latency = sent.elapsed();
                            let answer: Value = serde_json::from_slice(&body).map_err(|e| {
                                format!("200 with a body that is not JSON ({e}): {body:?}")
                            })?;
                            report.latencies.push(latency);
                            report.acked_records += answer["records"].as_u64().unwrap_or(0);
                            report.duplicate_records +=
                                answer["duplicate_records"].as_u64().unwrap_or(0);
                            report.finished = Some(Instant::now());
                            return Ok(());
                        }
                        Ok(body) => {
                            *report.non_200.entry(status.as_u16()).or_default() += 1;
                            let text: String =
                                String::from_utf8_lossy(&body).chars().take(300).collect();
                            // What the agent retries (agent/src/ship.rs `classify`).
                            let retryable = matches!(status.as_u16(), 408 | 429)
                                || (status.is_server_error()
                                    && status != StatusCode::NOT_IMPLEMENTED);
                            if !retryable {
                                return Err(format!("{status}: {text}"));
                            }
                            (format!("{status}: {text}"), retry_after)
                        }
                        Err(error) => {
                            report.network_errors += 1;
                            (format!("reading the {status} answer: {error}"), None)
                        }
                    }
                }
                Err(error) => {
                    report.network_errors += 1;
                    (error_chain(&error), None)
                }
            };
            let delay = retry_after.unwrap_or_else(|| backoff(attempt));
            attempt += 1;
            if attempt >= MAX_ATTEMPTS {
                return Err(format!("gave up after {attempt} attempts; last: {problem}"));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// The agent's backoff before retry `attempt` (0-based): full jitter under 100 ms doubling
/// per attempt, capped at 10 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(20))
        .min(Duration::from_secs(10));
    ceiling
        .mul_f64(fastrand::f64())
        .max(Duration::from_millis(1))
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
