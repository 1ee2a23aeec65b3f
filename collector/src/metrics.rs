//! Metrics: the Prometheus recorder, metric descriptions, and the `/metrics` route.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder (once per process) and describes every metric.
///
/// # Errors
/// When another recorder is already installed.
///
/// # Panics
/// Outside a tokio runtime (it spawns the upkeep task).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // Histograms, not the exporter's default summaries: quantiles of summaries cannot be
    // added up across collectors or streams, buckets can.
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

/// Histogram bucket bounds of every `*_seconds` histogram: 1 ms to 1 h, roughly ×2.5 a step
/// (an fsync takes milliseconds, a load lag minutes while the warehouse is slow).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

fn describe() {
    crate::ingest::firehose::describe_metrics();
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
    describe_gauge!(
        "tollstream_collector_buffer_bytes",
        Unit::Bytes,
        "Bytes of durable WAL records gathered for the stream's next archive object (cut at buffer.max_bytes or buffer.max_age)."
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
        "Lines that did not parse, stored in rejected_records and in the archive's errors/ objects."
    );
    describe_counter!(
        "tollstream_collector_rejected_objects_total",
        "Errors objects (archive errors/<stream>/...) written by loads that committed: one per archive object with rejected lines."
    );
    describe_counter!(
        "tollstream_collector_load_errors_total",
        "Failed warehouse loads (retried)."
    );
    describe_counter!(
        "tollstream_collector_wal_gaps_given_up_total",
        "Sources whose accepted ranges had too many gaps; the oldest gap was taken as delivered."
    );
    describe_gauge!(
        "tollstream_collector_wal_disk_bytes",
        Unit::Bytes,
        "Bytes a stream's WAL segments take on disk (limit: wal.max_bytes)."
    );
    describe_gauge!(
        "tollstream_collector_disk_free_bytes",
        Unit::Bytes,
        "Free space of the data directory's file system (reserve: disk.min_free_bytes)."
    );
    describe_gauge!(
        "tollstream_collector_connections",
        "Open ingest connections (limit: ingest.max_connections)."
    );
    describe_counter!(
        "tollstream_collector_connections_refused_total",
        "Connections closed at once because ingest.max_connections were open."
    );
    describe_counter!(
        "tollstream_collector_connections_closed_total",
        "Connections the collector closed: idle (ingest.idle_timeout between requests) or header_timeout (a request head too slow)."
    );
    describe_counter!(
        "tollstream_collector_accept_errors_total",
        "Failed accepts (e.g. out of file descriptors)."
    );
    describe_counter!(
        "tollstream_collector_tls_handshake_errors_total",
        "TLS handshakes that failed or timed out."
    );
    describe_counter!(
        "tollstream_collector_reloads_total",
        "Reloads on SIGHUP, by what was reloaded and the result."
    );
    describe_gauge!(
        "tollstream_collector_ingest_buffered_bytes",
        Unit::Bytes,
        "Memory held by requests in progress (limit: ingest.max_buffered_bytes)."
    );
    describe_gauge!(
        "tollstream_collector_warehouse_freshness_seconds",
        Unit::Seconds,
        "Age of the newest loaded record's receive time: how far the warehouse is behind the collector. Grows while nothing is loaded, also when nothing arrives."
    );
    describe_gauge!(
        "tollstream_collector_warehouse_last_load_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last load this process committed."
    );
    describe_gauge!(
        "tollstream_collector_warehouse_up",
        "1 if the loader's last attempt to reach the warehouse (prepare, read the manifest, load) succeeded, 0 while it fails."
    );
    describe_gauge!(
        "tollstream_collector_warehouse_backlog_objects",
        "Archive objects written and not yet loaded into the warehouse."
    );
    describe_histogram!(
        "tollstream_collector_warehouse_load_lag_seconds",
        Unit::Seconds,
        "Per loaded object: time from receiving its oldest record to the commit of its load."
    );
    describe_histogram!(
        "tollstream_collector_load_duration_seconds",
        Unit::Seconds,
        "Duration of one object load."
    );
    describe_alerts();
}

/// The alert engine's metrics (the outbox and deliveries describe their own in `notify`).
fn describe_alerts() {
    describe_counter!(
        "tollstream_collector_alert_records_total",
        "Lines the alert engine evaluated, per stream (counted again when re-read after a crash)."
    );
    describe_counter!(
        "tollstream_collector_alert_malformed_records_total",
        "Lines the alert engine could not parse, per stream (the warehouse rejects them too)."
    );
    describe_counter!(
        "tollstream_collector_alert_late_records_total",
        "Records that arrived after their window (or month) had closed, per rule; not counted in any alert."
    );
    describe_counter!(
        "tollstream_collector_alert_future_records_total",
        "Records dated more than alerts.max_future ahead of the collector's clock, per rule; ignored by the rule."
    );
    describe_gauge!(
        "tollstream_collector_alert_keys",
        "Keys the rule holds state for (window entries plus monthly totals)."
    );
    describe_gauge!(
        "tollstream_collector_alert_open_windows",
        "Windows of the rule not yet closed."
    );
    describe_gauge!(
        "tollstream_collector_alert_watermark_timestamp_seconds",
        Unit::Seconds,
        "The stream's watermark (Unix time) as of the last checkpoint: windows ending before it are closed."
    );
    describe_counter!(
        "tollstream_collector_alert_checkpoint_errors_total",
        "Alert checkpoints that could not be written (retried) or read (moved aside)."
    );
    describe_counter!(
        "tollstream_collector_alert_wal_errors_total",
        "WAL reads of the alert engine that failed (retried every second)."
    );
    describe_counter!(
        "tollstream_collector_alert_outbox_errors_total",
        "Fired alerts that could not be stored in the outbox at the first attempt (retried)."
    );
    crate::notify::describe_metrics();
    crate::alerts::limits::describe_metrics();
    crate::alerts::reference::describe_metrics();
    crate::api::describe_metrics();
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
