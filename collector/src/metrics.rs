//! Metrics: the Prometheus recorder, metric descriptions, and the `/metrics`,
//! `/healthz` and `/readyz` routes.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
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
        "tollstream_collector_ingest_bytes_total",
        Unit::Bytes,
        "Request body bytes accepted, as sent (compressed)."
    );
    describe_counter!(
        "tollstream_collector_ingest_records_total",
        "Records written to the WAL."
    );
    describe_counter!(
        "tollstream_collector_ingest_errors_total",
        "Ingest requests refused, by reason."
    );
    describe_histogram!(
        "tollstream_collector_ingest_duration_seconds",
        Unit::Seconds,
        "Time from request to durable answer."
    );
    describe_counter!(
        "tollstream_collector_duplicate_records_total",
        "Records recognised as already delivered, by stage."
    );
    describe_counter!(
        "tollstream_collector_wal_bytes_total",
        Unit::Bytes,
        "Bytes appended to the WAL."
    );
    describe_counter!(
        "tollstream_collector_wal_write_errors_total",
        "WAL group writes that failed and were refused."
    );
    describe_counter!(
        "tollstream_collector_wal_torn_bytes_total",
        Unit::Bytes,
        "Bytes of torn WAL tail cut off at recovery."
    );
    describe_histogram!(
        "tollstream_collector_wal_fsync_seconds",
        Unit::Seconds,
        "Duration of one WAL group write and fsync."
    );
    describe_counter!(
        "tollstream_collector_archive_objects_total",
        "Archive objects written."
    );
    describe_counter!(
        "tollstream_collector_archive_records_total",
        "Records written to archive objects."
    );
    describe_counter!(
        "tollstream_collector_archive_errors_total",
        "Failed archive writes (retried)."
    );
    describe_counter!(
        "tollstream_collector_loads_total",
        "Archive objects loaded into the warehouse."
    );
    describe_counter!(
        "tollstream_collector_loaded_records_total",
        "Rows inserted into the warehouse."
    );
    describe_counter!(
        "tollstream_collector_rejected_records_total",
        "Lines that did not parse, stored in rejected_records."
    );
    describe_counter!(
        "tollstream_collector_load_errors_total",
        "Failed warehouse loads (retried)."
    );
    describe_histogram!(
        "tollstream_collector_load_duration_seconds",
        Unit::Seconds,
        "Duration of one object load."
    );
}

/// `/metrics` in Prometheus text format.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
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
}

/// `/healthz` and `/readyz`: the process is up and serving.
pub fn health_router() -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async {
                (
                    StatusCode::OK,
                    axum::Json(serde_json::json!({ "status": "ok" })),
                )
                    .into_response()
            }),
        )
        .route(
            "/readyz",
            get(|| async {
                (
                    StatusCode::OK,
                    axum::Json(serde_json::json!({ "status": "ready" })),
                )
                    .into_response()
            }),
        )
}
