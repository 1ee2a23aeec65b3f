//! Request bodies: read within a deadline and a size limit, decompressed within a limit,
//! and every byte held in memory counted against one budget shared by all requests.
//!
//! The budget (`ingest.max_buffered_bytes`) is what bounds the collector's memory under any
//! load: a body is read chunk by chunk and each chunk must find room, the inflated body
//! grows in steps that must each find room, and the room is given back when the request
//! is answered (the WAL has the data by then). A request that finds no room is answered 429
//! with `Retry-After` at once, rather than queued.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ApiError, Reason};

/// Memory that requests in progress may hold, in bytes.
#[derive(Debug, Clone)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    total: u64,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        let permits = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(permits)),
            total: permits as u64,
        }
    }

    /// Bytes not held by any request now.
    pub fn available(&self) -> u64 {
        self.semaphore.available_permits() as u64
    }

    /// Bytes in all.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The memory one request holds; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Budget,
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Nothing held yet.
    pub fn new(budget: &Budget) -> Self {
        Self {
            budget: budget.clone(),
            permit: None,
        }
    }

    /// Takes `bytes` more from the budget, or says the collector is busy.
    ///
    /// # Errors
    /// [`Reason::Busy`] when the budget has no room.
    pub fn take(&mut self, bytes: usize) -> Result<(), ApiError> {
        if bytes == 0 {
            return Ok(());
        }
        let busy = || {
            ApiError::new(
                Reason::Busy,
                format!(
                    "the collector is holding its limit of {} of requests in progress \
                     (ingest.max_buffered_bytes); retry shortly",
                    bytesize::ByteSize(self.budget.total).display().iec()
                ),
            )
        };
        let n = u32::try_from(bytes).map_err(|_| busy())?;
        let permit = self
            .budget
            .semaphore
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| busy())?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        Ok(())
    }

    /// Gives `bytes` back to the budget (memory freed before the request ends).
    pub fn give_back(&mut self, bytes: usize) {
        if let Some(held) = &mut self.permit
            && let Some(freed) = held.split(bytes.min(held.num_permits()))
        {
            drop(freed);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            drop(permit);
            // Once per request: without it the gauge would keep the level of the last
            // request's arrival after a burst ended.
            metrics::gauge!("tollstream_collector_ingest_buffered_bytes")
                .set((self.budget.total() - self.budget.available()) as f64);
        }
    }
}

/// What a body buffer starts with when `Content-Length` is known (it grows, counted, as
/// bytes arrive).
const INITIAL_BODY_CAPACITY: u64 = 1 << 20;

/// Limits for reading one body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body as sent.
    pub max_body_bytes: u64,
    /// Largest body after decompression.
    pub max_decompressed_bytes: u64,
    /// Time the whole body has to arrive.
    pub body_timeout: Duration,
}

/// Reads the whole body, holding its bytes against `held`.
///
/// # Errors
/// 413 past `max_body_bytes` (at once when `Content-Length` says so), 408 past
/// `body_timeout`, 429 when the budget has no room, 400 when the connection breaks.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limits: &BodyLimits,
    held: &mut Held,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            Reason::TooLarge,
            format!(
                "request body is larger than {} (ingest.max_body_bytes); send smaller batches",
                bytesize::ByteSize(limits.max_body_bytes).display().iec()
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(too_large());
    }
    let collect = async {
        // Room is taken as bytes arrive, never for what a Content-Length merely promises:
        // a client that announces much and sends nothing holds nothing.
        let initial = declared.unwrap_or(0).min(INITIAL_BODY_CAPACITY) as usize;
        held.take(initial)?;
        let mut counted = initial;
        let mut buf = BytesMut::with_capacity(initial);
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    Reason::BadRequest,
                    format!("reading the request body failed: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // Trailers carry nothing we use.
            };
            let needed = buf.len() + data.len();
            if needed as u64 > limits.max_body_bytes {
                return Err(too_large());
            }
            if needed > buf.capacity() {
                let target = needed
                    .max(buf.capacity() * 2)
                    .min(limits.max_body_bytes as usize);
                // The old and the new allocation live together while the bytes move.
                held.take(target)?;
                let mut grown = BytesMut::with_capacity(target);
                grown.extend_from_slice(&buf);
                drop(buf);
                buf = grown;
                held.give_back(counted);
                counted = target;
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(limits.body_timeout, collect)
        .await
        .map_err(|_| {
            ApiError::new(
                Reason::Timeout,
                format!(
                    "the request body did not arrive within {} (ingest.body_timeout)",
                    humantime::format_duration(limits.body_timeout)
                ),
            )
        })?
}

/// Undoes `Content-Encoding: gzip` (every member of a multi-member stream, as `gzip`
/// concatenations produce), holding the inflated bytes against `held` as they grow and
/// refusing to inflate past `limit`; bytes after the last member are an error, not
/// silently ignored.
///
/// # Errors
/// 413 past the limit (a gzip bomb stops there), 400 for a damaged or truncated stream,
/// 415 for another encoding, 429 when the budget has no room.
pub async fn decode(
    headers: &HeaderMap,
    body: Bytes,
    limit: u64,
    held: Held,
) -> Result<(Bytes, Held), ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok((body, held)),
        Some("gzip") => tokio::task::spawn_blocking(move || inflate(&body, limit, held))
            .await
            .map_err(|e| {
                ApiError::new(
                    Reason::Unavailable,
                    format!("decompression task failed: {e}"),
                )
            })?,
        Some(other) => Err(ApiError::new(
            Reason::UnsupportedEncoding,
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

fn inflate(body: &[u8], limit: u64, mut held: Held) -> Result<(Bytes, Held), ApiError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut decoder = flate2::bufread::MultiGzDecoder::new(body);
    let start = body.len().saturating_mul(4).max(64 * 1024).min(limit);
    held.take(start)?;
    let mut out: Vec<u8> = Vec::with_capacity(start);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = decoder.read(&mut chunk).map_err(|e| {
            ApiError::new(
                Reason::BadRequest,
                format!("body is not a valid gzip stream: {e}"),
            )
        })?;
        if n == 0 {
            return Ok((Bytes::from(out), held));
        }
        if out.len() + n > limit {
            return Err(ApiError::new(
                Reason::TooLarge,
                format!(
                    "body inflates to more than {} (ingest.max_decompressed_bytes); send \
                     smaller batches",
                    bytesize::ByteSize(limit as u64).display().iec()
                ),
            ));
        }
        if out.len() + n > out.capacity() {
            // reserve_exact may still round up: count what was really allocated, and the
            // old allocation too while realloc moves the bytes.
            let grown = (out.capacity() * 2).max(out.len() + n).min(limit);
            let before = out.capacity();
            held.take(grown)?;
            out.reserve_exact(grown - out.len());
            held.take(out.capacity().saturating_sub(grown))?;
            held.give_back(before);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}
