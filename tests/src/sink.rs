//! A counting sink for benchmarks: it decompresses each batch, counts its lines and bytes,
//! and answers 200 at once, so a benchmark measures the shipper and not the receiver.
//!
//! It takes what the shippers compared in `tollbench` send:
//! * the collector's ingest API, `POST /v1/streams/{stream}/records` (tollstream's agent;
//!   also syslog-ng's `http()` pointed at it): newline-delimited lines, gzip or not. A body
//!   whose last line has no `\n` (syslog-ng puts its delimiter only *between* records)
//!   still counts that line;
//! * the Elasticsearch bulk API, `POST /_bulk` (rsyslog's `omelasticsearch`, as Debian's
//!   rsyslog has no `omhttp`): pairs of an action line and a document line; each action
//!   line counts as one record, and the answer says `"errors": false`;
//! * any `GET`/`HEAD` (rsyslog probes the server's root before sending) gets `200 {}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::post;

/// What the sink has counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Lines (records) received.
    pub lines: AtomicU64,
    /// Bytes of the bodies received (after decompression), framing included.
    pub bytes: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

/// How a body's records are framed.
#[derive(Clone, Copy)]
enum Framing {
    /// One record per line.
    Lines,
    /// Elasticsearch bulk: an action line (`{"index":…}`) before each document.
    Bulk,
}

/// Serves the sink on `listener` until the runtime stops.
///
/// # Errors
/// When serving fails.
pub async fn serve(listener: tokio::net::TcpListener, counts: Arc<Counts>) -> std::io::Result<()> {
    let lines = counts.clone();
    let bulk = counts;
    let app = Router::new()
        .route(
            "/v1/streams/{stream}/records",
            post(move |headers: HeaderMap, body: Bytes| {
                let counts = lines.clone();
                async move { receive(&counts, &headers, &body, Framing::Lines) }
            }),
        )
        .route(
            "/_bulk",
            post(move |headers: HeaderMap, body: Bytes| {
                let counts = bulk.clone();
                async move { receive(&counts, &headers, &body, Framing::Bulk) }
            }),
        )
        // Probes of the server (rsyslog asks its root); a POST elsewhere is a mistake.
        .fallback(|method: Method| async move {
            if method == Method::GET || method == Method::HEAD {
                (StatusCode::OK, "{}")
            } else {
                (StatusCode::NOT_FOUND, "not a sink path")
            }
        })
        .layer(DefaultBodyLimit::max(256 << 20));
    axum::serve(listener, app).await
}

/// Counts one body; answers 400 to a body that claims gzip and is not.
fn receive(
    counts: &Counts,
    headers: &HeaderMap,
    body: &[u8],
    framing: Framing,
) -> (StatusCode, &'static str) {
    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let unzipped;
    let data = if gzip {
        let mut out = Vec::with_capacity(body.len() * 4);
        let mut decoder = flate2::read::MultiGzDecoder::new(body);
        if std::io::Read::read_to_end(&mut decoder, &mut out).is_err() {
            return (StatusCode::BAD_REQUEST, "bad gzip");
        }
        unzipped = out;
        &unzipped[..]
    } else {
        body
    };
    let (records, answer) = match framing {
        Framing::Lines => (count_lines(data), "{}"),
        Framing::Bulk => (
            data.split(|&b| b == b'\n')
                .filter(|line| line.starts_with(b"{\"index\"") || line.starts_with(b"{\"create\""))
                .count() as u64,
            r#"{"took":0,"errors":false,"items":[]}"#,
        ),
    };
    counts.lines.fetch_add(records, Ordering::Relaxed);
    counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    counts.requests.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, answer)
}

/// Lines in `data`, counting a last line without its `\n`.
fn count_lines(data: &[u8]) -> u64 {
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
}

#[cfg(test)]
mod tests {
    use super::count_lines;

    #[test]
    fn counts_a_last_line_without_its_newline() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        assert_eq!(count_lines(b"a\nb"), 2);
    }
}
