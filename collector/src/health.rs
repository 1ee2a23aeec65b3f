//! `/healthz` (the process serves) and `/readyz` (it does its whole job now: takes batches
//! and loads them), with a JSON body that says what is wrong.
//!
//! A failing warehouse makes `/readyz` fail too although ingest still takes batches (they
//! wait in the WAL and the archive): the problem text says so, for the operator who looks.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::disk::DiskGuard;
use crate::wal::DiskUsage;
use crate::warehouse::LoadProgress;

/// What readiness looks at. It holds no WAL handle: a health request left hanging must
/// not keep a WAL writer from stopping at shutdown.
pub struct Readiness {
    /// Each stream's WAL size on disk.
    pub streams: Vec<(String, Arc<DiskUsage>)>,
    /// Most bytes one stream's WAL may hold.
    pub wal_max_bytes: u64,
    /// Free space of the data directory.
    pub disk: Arc<DiskGuard>,
    /// Each stream's loader: failing while its last warehouse attempt failed.
    pub warehouse: Vec<Arc<LoadProgress>>,
}

impl Readiness {
    /// The problems that make ingest refuse batches, or the warehouse lag, now; empty when
    /// ready.
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
        problems.extend(self.warehouse.iter().filter_map(|p| p.problem()));
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::clock::FakeClock;
    use crate::warehouse::progress::Mask;

    async fn readyz(app: &Router) -> (u16, serde_json::Value) {
        let request = Request::get("/readyz")
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body");
        let json = serde_json::from_slice(&body.to_bytes()).expect("JSON");
        (status, json)
    }

    #[tokio::test]
    async fn readyz_fails_while_the_warehouse_fails_and_recovers_at_the_first_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = FakeClock::new("2026-11-29T10:00:00Z".parse().expect("time"));
        let progress = LoadProgress::new("toll", Arc::new(clock), Mask::default());
        let app = router(Arc::new(Readiness {
            streams: Vec::new(),
            wal_max_bytes: u64::MAX,
            disk: DiskGuard::new(dir.path(), 0),
            warehouse: vec![progress.clone()],
        }));
        assert_eq!(readyz(&app).await.0, 200);
        progress.failed("warehouse connect: error connecting to server: Connection refused");
        progress.failed("warehouse connect: error connecting to server: Connection refused");
        let (status, body) = readyz(&app).await;
        assert_eq!(status, 503);
        assert_eq!(body["status"], "unavailable");
        assert_eq!(
            body["problems"][0],
            "stream toll: warehouse unavailable since 2026-11-29T10:00:00Z (2 failed attempts, \
             last error: warehouse connect: error connecting to server: Connection refused); \
             ingest still accepts batches, which wait in the WAL and the archive"
        );
        progress.loaded(None, None);
        assert_eq!(readyz(&app).await, (200, json!({ "status": "ready" })));
    }
}
