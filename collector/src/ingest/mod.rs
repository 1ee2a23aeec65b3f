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
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tracing::warn;

pub mod auth;
pub mod body;
pub mod error;
pub mod firehose;
pub mod framing;
pub mod server;

pub use auth::{TokenStore, Tokens};
pub use body::{BodyLimits, Budget};
pub use error::{ApiError, Reason};
pub use framing::BatchLimits;

use crate::disk::DiskGuard;
use crate::wal::{AppendRequest, Appended, Wal, WalError};

/// Header naming the batch's source: agent id and file identity.
pub const SOURCE_HEADER: &str = "x-tollstream-source";
/// Header with the batch's byte range in its source: `START-END`, END exclusive.
pub const RANGE_HEADER: &str = "x-tollstream-range";
/// Longest accepted source name.
pub const MAX_SOURCE_LEN: usize = 512;
/// Highest byte offset a range may name (1 PiB): far past any log file, and low enough
/// that a bogus range cannot mark a source delivered up to the end of all offsets.
pub const MAX_SOURCE_OFFSET: u64 = 1 << 50;

/// What the ingest handlers share.
pub struct IngestState {
    /// WAL per stream name.
    pub streams: HashMap<String, Wal>,
    /// Who may send.
    pub tokens: Arc<TokenStore>,
    /// Body size, decompression and time limits.
    pub body: BodyLimits,
    /// Lines per batch and line length.
    pub batch: BatchLimits,
    /// Memory all requests in progress may hold.
    pub budget: Budget,
    /// Most bytes one stream's WAL may hold on disk.
    pub wal_max_bytes: u64,
    /// Free space of the data directory.
    pub disk: Arc<DiskGuard>,
}

/// The ingest routes.
pub fn router(state: Arc<IngestState>) -> Router {
    Router::new()
        .route(
            "/v1/streams/{stream}/records",
            post(post_records).fallback(|| async {
                ApiError::new(
                    Reason::MethodNotAllowed,
                    "only POST is served here: POST /v1/streams/{stream}/records",
                )
            }),
        )
        .fallback(|| async {
            ApiError::new(
                Reason::NoSuchEndpoint,
                "no such endpoint; send batches to POST /v1/streams/{stream}/records",
            )
        })
        .with_state(state)
}

async fn post_records(
    State(state): State<Arc<IngestState>>,
    UrlPath(stream): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    let tokens = state.tokens.current();
    // Who is asking comes before what they ask: no header checks for strangers.
    tokens.check(presented, "-").map_err(refusal)?;
    let (source, range) = batch_identity(&headers)?;
    tokens.check(presented, &source).map_err(refusal)?;
    let Some(wal) = state.streams.get(&stream) else {
        let mut known: Vec<&str> = state.streams.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(ApiError::new(
            Reason::UnknownStream,
            format!(
                "unknown stream {stream:?}; this collector has: {}",
                known.join(", ")
            ),
        ));
    };
    admit(&state, &stream, wal)?;
    let mut held = body::Held::new(&state.budget);
    let raw = body::read(&headers, body, &state.body, &mut held).await?;
    let received_bytes = raw.len() as u64;
    let (data, held) = body::decode(&headers, raw, state.body.max_decompressed_bytes, held).await?;
    let (data, records) = framing::check(data, range, &state.batch)?;
    metrics::gauge!("tollstream_collector_ingest_buffered_bytes")
        .set((state.budget.total() - state.budget.available()) as f64);
    state.disk.spend(data.len() as u64);
    let request = AppendRequest {
        source,
        range,
        data,
        records,
        // The memory stays counted until the writer is done with it, even if this request
        // is dropped (its client hung up) while the batch waits in the WAL's queue.
        lease: Some(Box::new(held)),
    };
    let appended = wal
        .append(request)
        .await
        .map_err(|e| wal_error(e, &state.disk))?;
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

fn refusal(refusal: auth::Refusal) -> ApiError {
    match refusal {
        auth::Refusal::Missing => ApiError::new(
            Reason::Unauthorized,
            "missing bearer token: send 'Authorization: Bearer <token>'",
        ),
        auth::Refusal::Unknown => ApiError::new(
            Reason::Unauthorized,
            "the bearer token is not in the collector's agent tokens file",
        ),
        auth::Refusal::WrongAgent { bound_to } => ApiError::new(
            Reason::Forbidden,
            format!(
                "this token belongs to agent {bound_to:?} and may only send sources named \
                 \"{bound_to}/...\"; check the agent's agent_id and token file"
            ),
        ),
    }
}

/// Refuses a batch the collector could not keep: the stream's WAL or the disk is full.
pub(crate) fn admit(state: &IngestState, stream: &str, wal: &Wal) -> Result<(), ApiError> {
    let wal_bytes = wal.disk_bytes();
    if wal_bytes >= state.wal_max_bytes {
        return Err(ApiError::new(
            Reason::WalFull,
            format!(
                "stream {stream}'s WAL holds {} on disk, its limit (wal.max_bytes): the archive \
                 stage is behind; the batch will be taken once it catches up",
                bytesize::ByteSize(wal_bytes).display().iec()
            ),
        ));
    }
    if state.disk.is_low() {
        return Err(ApiError::new(
            Reason::DiskFull,
            format!(
                "the collector's data directory has {} free, below its reserve of {} \
                 (disk.min_free_bytes); the batch will be taken once space returns",
                bytesize::ByteSize(state.disk.free().unwrap_or(0))
                    .display()
                    .iec(),
                bytesize::ByteSize(state.disk.min_free()).display().iec()
            ),
        ));
    }
    Ok(())
}

/// Reads the source and byte-range headers.
fn batch_identity(headers: &HeaderMap) -> Result<(String, Option<(u64, u64)>), ApiError> {
    let bad = |m: String| ApiError::new(Reason::BadRequest, m);
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
                Some((start, end)) if start <= end && end <= MAX_SOURCE_OFFSET => {
                    Some((start, end))
                }
                _ => {
                    return Err(bad(format!(
                        "{RANGE_HEADER} must be START-END with START <= END <= 2^50, e.g. 0-4096"
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

pub(crate) fn wal_error(error: WalError, disk: &Arc<DiskGuard>) -> ApiError {
    match error {
        WalError::Misaligned { .. } => ApiError::new(Reason::Conflict, error.to_string()),
        WalError::Io { ref source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull
                || source.raw_os_error() == Some(28) =>
        {
            let disk = disk.clone();
            // statvfs may block (a stuck network file system): not on a runtime thread.
            drop(tokio::task::spawn_blocking(move || disk.refresh()));
            warn!(error = %error, "Batch not accepted: the disk is full.");
            ApiError::new(
                Reason::DiskFull,
                format!("could not make the batch durable: {error}; retry once space returns"),
            )
        }
        other => {
            warn!(error = %other, "Batch not accepted: WAL unavailable.");
            ApiError::new(
                Reason::Unavailable,
                format!("could not make the batch durable: {other}; retry later"),
            )
        }
    }
}

#[cfg(test)]
mod tests;
