//! Metrics: the Prometheus recorder, metric descriptions, and the `/metrics`,
//! `/healthz` and `/readyz` routes.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use metrics::{Unit, describe_counter, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder (once per process) and describes every metric.
///
/// # Errors
/// When another recorder is already installed.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
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
        "tollstream_agent_checkpoint_errors_total",
        "Checkpoint files found damaged or not written."
    );
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn router(handle: PrometheusHandle) -> Router {
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
            get(|| async { axum::Json(serde_json::json!({ "status": "ready" })) }),
        )
}
