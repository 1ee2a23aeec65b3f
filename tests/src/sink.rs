//! A counting sink that speaks the collector's ingest API: it decompresses each batch,
//! counts its lines and bytes, and answers 200 at once, so a benchmark measures the agent
//! and not the collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::post;

/// What the sink has counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Lines received.
    pub lines: AtomicU64,
    /// Bytes of lines received (after decompression).
    pub bytes: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

/// Serves the sink on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, counts: Arc<Counts>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/v1/streams/{stream}/records",
            post(move |headers: HeaderMap, body: Bytes| {
                let counts = counts.clone();
                async move {
                    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
                    let data = if gzip {
                        let mut out = Vec::with_capacity(body.len() * 4);
                        let mut decoder = flate2::read::MultiGzDecoder::new(&body[..]);
                        if std::io::Read::read_to_end(&mut decoder, &mut out).is_err() {
                            return (axum::http::StatusCode::BAD_REQUEST, "bad gzip");
                        }
                        out
                    } else {
                        body.to_vec()
                    };
                    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
                    counts.lines.fetch_add(lines, Ordering::Relaxed);
                    counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    (axum::http::StatusCode::OK, "{}")
                }
            }),
        )
        .layer(DefaultBodyLimit::max(256 << 20));
    axum::serve(listener, app).await
}
