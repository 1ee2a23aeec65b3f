//! Metrics: the Prometheus recorder, metric descriptions, and the `/metrics`,
//! `/healthz` and `/readyz` routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use metrics::{Gauge, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::health::Health;

/// Installs the global recorder (once per process) and describes every metric.
///
/// # Errors
/// When another recorder is already installed.
///
/// # Panics
/// Outside a tokio runtime (it spawns the upkeep task).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // Histograms, not the exporter's default summaries: quantiles of summaries cannot be
    // added up across agents, buckets can (`histogram_quantile(0.99, sum by (le) (...))`).
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .map_err(|e| anyhow::anyhow!("configuring histogram buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing metrics recorder: {e}"))?;
    describe();
    // Histogram samples pile up until drained: by a scrape, or by this task when nobody
    // scrapes (without it, memory would grow with every batch).
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// How often histogram samples are drained into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Histogram bucket bounds of every `*_seconds` histogram: 1 ms to 10 min, roughly ×2.5
/// a step (a ship includes the collector's fsync and any retry waits).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// One file's share of its stream's lag gauges, `tollstream_agent_lag_bytes{stream}` (bytes
/// read or readable and not yet acknowledged) and `tollstream_agent_files_behind{stream}`.
///
/// Per stream rather than per path: a booth with date-named or numbered rotations makes new
/// paths without end, and a per-path series would either pile up or (expired while idle)
/// vanish exactly while a quiet file waits for a collector that is down. Per-file detail is
/// in `tollstream-agent status`. Each tailer adds the change of its own lag, and dropping
/// the share takes its part back, so the sums stay right as files come and go.
pub struct LagShare {
    bytes: Gauge,
    files: Gauge,
    last: AtomicU64,
}

impl LagShare {
    /// A share of `stream`'s gauges, at zero.
    pub fn new(stream: &str) -> Self {
        Self {
            bytes: metrics::gauge!("tollstream_agent_lag_bytes", "stream" => stream.to_owned()),
            files: metrics::gauge!("tollstream_agent_files_behind", "stream" => stream.to_owned()),
            last: AtomicU64::new(0),
        }
    }

    /// Sets this file's lag to `lag` bytes.
    pub fn set(&self, lag: u64) {
        let last = self.last.swap(lag, Ordering::Relaxed);
        if last == lag {
            return;
        }
        // Whole numbers below 2^53 add up exactly in an f64.
        self.bytes.increment(lag as f64 - last as f64);
        match (last > 0, lag > 0) {
            (false, true) => self.files.increment(1.0),
            (true, false) => self.files.decrement(1.0),
            _ => {}
        }
    }
}

impl Drop for LagShare {
    fn drop(&mut self) {
        self.set(0);
    }
}

fn describe() {
    describe_counter!(
        "tollstream_agent_read_records_total",
        "Lines read from watched files."
    );
    describe_counter!(
        "tollstream_agent_read_bytes_total",
        Unit::Bytes,
        "Bytes of lines read from watched files."
    );
    describe_counter!(
        "tollstream_agent_read_errors_total",
        "Files whose reading failed (retried at the next scan)."
    );
    describe_counter!(
        "tollstream_agent_truncations_total",
        "Files found truncated and read again from the start."
    );
    describe_counter!(
        "tollstream_agent_shipped_records_total",
        "Lines acknowledged by the collector."
    );
    describe_counter!(
        "tollstream_agent_shipped_bytes_total",
        Unit::Bytes,
        "Bytes of lines acknowledged by the collector."
    );
    describe_counter!(
        "tollstream_agent_batches_total",
        "Batches acknowledged by the collector."
    );
    describe_counter!(
        "tollstream_agent_ship_retries_total",
        "Batch sends retried, by reason."
    );
    describe_histogram!(
        "tollstream_agent_ship_duration_seconds",
        Unit::Seconds,
        "Time from a batch's first send to its ack."
    );
    describe_counter!(
        "tollstream_agent_long_lines_total",
        "Lines longer than max_line_bytes, sent cut with a marker."
    );
    describe_counter!(
        "tollstream_agent_copies_detected_total",
        "Files recognised as copies of a followed file and held back (not sent twice)."
    );
    describe_counter!(
        "tollstream_agent_split_batches_total",
        "Batches split in two because the collector answered 413."
    );
    describe_gauge!(
        "tollstream_agent_buffered_bytes",
        Unit::Bytes,
        "Bytes of lines read and not yet acknowledged, over all files (at most max_buffered_bytes)."
    );
    describe_gauge!(
        "tollstream_agent_lag_bytes",
        Unit::Bytes,
        "Bytes of followed files not yet acknowledged by the collector, summed per stream."
    );
    describe_gauge!(
        "tollstream_agent_files_behind",
        "Followed files with bytes not yet acknowledged by the collector, per stream."
    );
    describe_gauge!("tollstream_agent_files_followed", "Files being followed.");
    describe_gauge!(
        "tollstream_agent_files_unopenable",
        "Matched files the latest scan could not open (out of descriptors, no permission)."
    );
    describe_counter!(
        "tollstream_agent_open_errors_total",
        "Failed attempts to open a matched file (retried at every rescan)."
    );
    describe_counter!(
        "tollstream_agent_checkpoint_errors_total",
        "Checkpoint files found damaged or not written."
    );
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn router(
    handle: PrometheusHandle,
    health: Arc<Health>,
    budgets: crate::tail::Budgets,
) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                // Read at each scrape: permits come back wherever a batch is dropped.
                metrics::gauge!("tollstream_agent_buffered_bytes").set(budgets.used() as f64);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        handle.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            get(move || async move {
                let (ready, body) = health.verdict();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, axum::Json(body))
            }),
        )
}
