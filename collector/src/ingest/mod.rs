//! Ingest: the HTTP API agents (or `curl`) send batches to.
//!
//! Input: `POST /v1/streams/{stream}/records` with `\n`-separated records, optionally
//! gzip-encoded, a bearer token, and (for exactly-once delivery) the batch's source and
//! byte range in `X-Tollstream-Source` / `X-Tollstream-Range`. Output: [`AppendRequest`]s to
//! the stream's WAL.
//!
//! Promise: a 200 answer means the batch is fsynced in the WAL (or was already there).
//! Every other answer means nothing of it was kept, and says why in a JSON body.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use tracing::warn;

use crate::wal::{AppendRequest, Appended, Wal, WalError};

/// Header naming the batch's source: agent id and file identity.
pub const SOURCE_HEADER: &str = "x-tollstream-source";
/// Header with the batch's byte range in its source: `START-END`, END exclusive.
pub const RANGE_HEADER: &str = "x-tollstream-range";
/// Longest accepted source name.
pub const MAX_SOURCE_LEN: usize = 512;

/// Bearer tokens that may send data.
#[derive(Debug, Clone)]
pub struct Tokens(Vec<Vec<u8>>);

impl Tokens {
    /// Reads one token per line; blank lines and lines starting with `#` are skipped.
    ///
    /// # Errors
    /// An unreadable file, or a file with no token in it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading agent tokens file {}: {e}", path.display()))?;
        let tokens: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if tokens.is_empty() {
            anyhow::bail!(
                "agent tokens file {} holds no token (one per line)",
                path.display()
            );
        }
        Ok(Self(tokens))
    }

    /// Whether `candidate` is one of the tokens, in time independent of where they differ.
    fn accepts(&self, candidate: &[u8]) -> bool {
        self.0.iter().fold(false, |found, token| {
            found | constant_time_eq::constant_time_eq(token, candidate)
        })
    }
}

/// What the ingest handlers share.
pub struct IngestState {
    /// WAL per stream name.
    pub streams: HashMap<String, Wal>,
    /// Who may send.
    pub tokens: Tokens,
    /// Largest body after decompression.
    pub max_decompressed_bytes: u64,
}

/// The ingest routes.
pub fn router(state: Arc<IngestState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/streams/{stream}/records", post(post_records))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// An error answer: status plus a JSON body a person can act on.
struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reason = match self.status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            404 => "unknown_stream",
            409 => "conflict",
            413 => "too_large",
            _ => "unavailable",
        };
        metrics::counter!("tollstream_collector_ingest_errors_total", "reason" => reason)
            .increment(1);
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

async fn post_records(
    State(state): State<Arc<IngestState>>,
    UrlPath(stream): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    authorize(&state.tokens, &headers)?;
    let Some(wal) = state.streams.get(&stream) else {
        let known: Vec<&str> = state.streams.keys().map(String::as_str).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown stream {stream:?}; this collector has: {}",
                known.join(", ")
            ),
        ));
    };
    let (source, range) = batch_identity(&headers)?;
    let received_bytes = body.len() as u64;
    let data = decode_body(&headers, body, state.max_decompressed_bytes).await?;
    let data = check_framing(data, range)?;
    let records = u32::try_from(memchr::memchr_iter(b'\n', &data).count()).map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too many records in one batch",
        )
    })?;
    let request = AppendRequest {
        source,
        range,
        data,
        records,
    };
    let appended = wal.append(request).await.map_err(wal_error)?;
    metrics::counter!("tollstream_collector_ingest_bytes_total", "stream" => stream.clone())
        .increment(received_bytes);
    metrics::histogram!("tollstream_collector_ingest_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let body = match appended {
        Appended::Written {
            seq,
            records,
            skipped_records,
            high_water,
        } => {
            metrics::counter!("tollstream_collector_ingest_records_total", "stream" => stream.clone()).increment(u64::from(records));
            metrics::counter!("tollstream_collector_duplicate_records_total", "stream" => stream.clone(), "stage" => "ingest").increment(u64::from(skipped_records));
            json!({ "stream": stream, "seq": seq, "records": records, "duplicate_records": skipped_records, "high_water": high_water })
        }
        Appended::Duplicate {
            skipped_records,
            high_water,
        } => {
            metrics::counter!("tollstream_collector_duplicate_records_total", "stream" => stream.clone(), "stage" => "ingest").increment(u64::from(skipped_records));
            json!({ "stream": stream, "seq": null, "records": 0, "duplicate_records": skipped_records, "high_water": high_water })
        }
    };
    Ok(Json(body).into_response())
}

fn authorize(tokens: &Tokens, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: send 'Authorization: Bearer <token>'",
            )
        })?;
    if tokens.accepts(presented) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token is not in the collector's agent tokens file",
        ))
    }
}

/// Reads the source and byte-range headers.
fn batch_identity(headers: &HeaderMap) -> Result<(String, Option<(u64, u64)>), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let source = match headers.get(SOURCE_HEADER) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| bad(format!("{SOURCE_HEADER} must be visible ASCII")))?;
            if text.is_empty() || text.len() > MAX_SOURCE_LEN {
                return Err(bad(format!(
                    "{SOURCE_HEADER} must be 1-{MAX_SOURCE_LEN} characters"
                )));
            }
            Some(text.to_owned())
        }
    };
    let range = match headers.get(RANGE_HEADER) {
        None => None,
        Some(v) => {
            let parsed = v
                .to_str()
                .ok()
                .and_then(|t| t.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            match parsed {
                Some((start, end)) if start <= end => Some((start, end)),
                _ => {
                    return Err(bad(format!(
                        "{RANGE_HEADER} must be START-END with START <= END, e.g. 0-4096"
                    )));
                }
            }
        }
    };
    match (source, range) {
        (None, Some(_)) => Err(bad(format!(
            "{RANGE_HEADER} needs {SOURCE_HEADER} too: a range is a range of some source"
        ))),
        (source, range) => Ok((source.unwrap_or_else(|| "-".into()), range)),
    }
}

/// Undoes `Content-Encoding: gzip` (every member of a multi-member stream, as `gzip`
/// concatenations produce), refusing to inflate past `limit` bytes; bytes after the last
/// member are an error, not silently ignored.
async fn decode_body(headers: &HeaderMap, body: Bytes, limit: u64) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(body),
        Some("gzip") => {
            let inflated = tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity(body.len() * 4);
                let mut decoder = flate2::bufread::MultiGzDecoder::new(&body[..]).take(limit + 1);
                decoder.read_to_end(&mut out).map(|_| out)
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("decompression task failed: {e}"),
                )
            })?;
            match inflated {
                Ok(out) if out.len() as u64 > limit => Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body inflates to more than {limit} bytes; send smaller batches"),
                )),
                Ok(out) => Ok(Bytes::from(out)),
                Err(e) => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("body is not a valid gzip stream: {e}"),
                )),
            }
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

/// Checks that the records are whole lines and agree with the range.
fn check_framing(data: Bytes, range: Option<(u64, u64)>) -> Result<Bytes, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    match range {
        Some((start, end)) => {
            // One line the agent cut to its max_line_bytes stands for more bytes than it
            // holds; alone in its batch, it can only ever be a duplicate as a whole.
            let one_cut_line = end - start > data.len() as u64
                && memchr::memchr(b'\n', &data).is_some_and(|nl| nl + 1 == data.len());
            if end - start != data.len() as u64 && !one_cut_line {
                return Err(bad(format!(
                    "{RANGE_HEADER} {start}-{end} spans {} bytes but the body has {}",
                    end - start,
                    data.len()
                )));
            }
            if !data.is_empty() && !data.ends_with(b"\n") {
                return Err(bad(
                    "a ranged batch must end with a newline: send whole lines only".into(),
                ));
            }
            Ok(data)
        }
        None if data.is_empty() || data.ends_with(b"\n") => Ok(data),
        // Without a range nothing depends on byte counts, so a missing final newline
        // (common with `curl --data-binary @file`) is added rather than refused.
        None => Ok(Bytes::from([&data[..], b"\n"].concat())),
    }
}

fn wal_error(error: WalError) -> ApiError {
    match error {
        WalError::Misaligned { .. } => ApiError::new(StatusCode::CONFLICT, error.to_string()),
        other => {
            warn!(error = %other, "Batch not accepted: WAL unavailable.");
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not make the batch durable: {other}; retry later"),
            );
            e.retry_after = Some(1);
            e
        }
    }
}

#[cfg(test)]
mod tests;
