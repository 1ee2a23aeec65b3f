//! Metrics: the Prometheus recorder, metric descriptions, and the `/metrics`,
//! `/healthz` and `/readyz` routes.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::health::Health;

/// Installs the global recorder (once per process) and describes every metric.
///
/// # Errors
/// When another recorder is already installed.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // Per-file gauges of files no longer followed disappear after an hour without updates.
    let recorder = PrometheusBuilder::new()
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(3600)),
        )
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing metrics recorder: {e}"))?;
    describe();
    Ok(handle)
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
        "tollstream_agent_file_lag_bytes",
        Unit::Bytes,
        "Bytes of a followed file not yet acknowledged by the collector, by path."
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
pub fn router(handle: PrometheusHandle, health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
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
