//! `/healthz` (the process serves) and `/readyz` (it can take batches now), with a JSON body
//! that says what is wrong.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::disk::DiskGuard;
use crate::wal::DiskUsage;

/// What readiness looks at. It holds no WAL handle: a health request left hanging must
/// not keep a WAL writer from stopping at shutdown.
pub struct Readiness {
    /// Each stream's WAL size on disk.
    pub streams: Vec<(String, Arc<DiskUsage>)>,
    /// Most bytes one stream's WAL may hold.
    pub wal_max_bytes: u64,
    /// Free space of the data directory.
    pub disk: Arc<DiskGuard>,
}

impl Readiness {
    /// The problems that make ingest refuse batches now; empty when ready.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.disk.is_low() {
            problems.push(format!(
                "the data directory has {} bytes free, below disk.min_free_bytes ({})",
                self.disk.free().unwrap_or(0),
                self.disk.min_free()
            ));
        }
        for (name, usage) in &self.streams {
            let bytes = usage.bytes();
            if bytes >= self.wal_max_bytes {
                problems.push(format!(
                    "stream {name}'s WAL holds {bytes} bytes, at wal.max_bytes ({}): the archive stage is behind",
                    self.wal_max_bytes
                ));
            }
        }
        problems
    }
}

/// The health routes.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { (StatusCode::OK, axum::Json(json!({ "status": "ok" }))) }),
        )
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let problems = readiness.problems();
                    if problems.is_empty() {
                        (StatusCode::OK, axum::Json(json!({ "status": "ready" }))).into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(json!({ "status": "unavailable", "problems": problems })),
                        )
                            .into_response()
                    }
                }
            }),
        )
}
