//! The Kinesis Firehose–compatible ingest API, so AWS SDKs, the AWS CLI, Fluent Bit and
//! Vector can send to the collector by changing only their endpoint URL.
//!
//! Input: `POST /` with `X-Amz-Target: Firehose_20150804.<Operation>` and an AWS JSON 1.1
//! body, signed with AWS Signature Version 4 by one of the configured access keys
//! (`firehose.access_keys`). Served: `PutRecord`, `PutRecordBatch`,
//! `DescribeDeliveryStream`, `ListDeliveryStreams`. Output: [`AppendRequest`]s to the WAL of
//! the stream the delivery stream maps to — the same WAL, and so the same buffer, archive,
//! warehouse and alerts, as native ingest.
//!
//! Records become lines: a record's bytes are its lines, `\n`-separated, with one final
//! `\n` optional (so `a`, `a\n` and both give the line `a`; `a\nb\n` gives two lines). An
//! empty record holds no line.
//!
//! Promise: a `RecordId` means the record's lines are fsynced in the WAL. A request is
//! refused whole (nothing of it kept) for authentication, validation and backpressure;
//! within a `PutRecordBatch` only a record with a line over `ingest.max_line_bytes` fails
//! alone. There is no batch identity in this API, so a client that resends after a lost
//! answer sends its records again: this path is at-least-once, and the stream's natural
//! key keeps the warehouse free of duplicates.

mod api;
pub mod keys;
mod put;
pub mod sigv4;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use jiff::Timestamp;
use metrics::{Unit, describe_counter};
use serde::de::DeserializeOwned;
use serde_json::json;

pub use api::{AwsError, Kind};
pub use keys::KeyStore;

use self::api::{CONTENT_TYPE, TARGET_PREFIX};
use self::keys::AccessKey;
use super::IngestState;
use super::body::{self, BodyLimits, Held};
use crate::clock::Clock;
use crate::config::FirehoseConfig;

/// How far a request's `X-Amz-Date` may be from the collector's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The service name clients sign for.
pub const SERVICE: &str = "firehose";
/// The account id in delivery stream ARNs (the collector has no AWS account).
pub const ACCOUNT_ID: &str = "000000000000";

/// What the Firehose handlers share.
pub struct FirehoseState {
    /// The native ingest state: WALs, memory budget, body timeout, WAL and disk limits.
    pub ingest: Arc<IngestState>,
    /// Access keys.
    pub keys: Arc<KeyStore>,
    /// Required credential-scope region, if any.
    pub region: Option<String>,
    /// Delivery stream name → collector stream.
    pub delivery_streams: BTreeMap<String, String>,
    /// Wall clock, for the signature date check.
    pub clock: Arc<dyn Clock>,
}

impl FirehoseState {
    /// The state for `config`, on top of the native ingest state.
    pub fn new(
        config: &FirehoseConfig,
        streams: &BTreeMap<String, crate::config::StreamConfig>,
        ingest: Arc<IngestState>,
        keys: Arc<KeyStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            ingest,
            keys,
            region: config.region.clone(),
            delivery_streams: config.delivery_streams(streams),
            clock,
        }
    }
}

/// The Firehose route: `POST /`. No fallback, so it merges with the native router.
pub fn router(state: Arc<FirehoseState>) -> Router {
    Router::new()
        .route(
            "/",
            post(handle).fallback(|| async {
                AwsError::new(
                    Kind::UnknownOperation,
                    "the Firehose API is served as POST / with an X-Amz-Target header",
                )
            }),
        )
        .with_state(state)
}

/// Describes the Firehose metrics (called with the collector's other descriptions).
pub fn describe_metrics() {
    describe_counter!(
        "tollstream_collector_firehose_requests_total",
        "Firehose API requests, by operation and outcome (ok, or the AWS error type)."
    );
    describe_counter!(
        "tollstream_collector_firehose_records_total",
        Unit::Count,
        "Firehose records, by stream and result (accepted, failed)."
    );
}

/// The operations served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    PutRecord,
    PutRecordBatch,
    DescribeDeliveryStream,
    ListDeliveryStreams,
    Unknown,
}

impl Operation {
    fn from_target(headers: &HeaderMap) -> Self {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.strip_prefix(TARGET_PREFIX));
        match target {
            Some("PutRecord") => Self::PutRecord,
            Some("PutRecordBatch") => Self::PutRecordBatch,
            Some("DescribeDeliveryStream") => Self::DescribeDeliveryStream,
            Some("ListDeliveryStreams") => Self::ListDeliveryStreams,
            _ => Self::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::PutRecord => "PutRecord",
            Self::PutRecordBatch => "PutRecordBatch",
            Self::DescribeDeliveryStream => "DescribeDeliveryStream",
            Self::ListDeliveryStreams => "ListDeliveryStreams",
            Self::Unknown => "unknown",
        }
    }
}

async fn handle(
    State(state): State<Arc<FirehoseState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = tokio::time::Instant::now();
    let operation = Operation::from_target(&headers);
    let request_id = request_id();
    let result = serve(&state, operation, &uri, &headers, body, &request_id).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => error.kind.aws_type(),
    };
    metrics::counter!("tollstream_collector_firehose_requests_total", "operation" => operation.label(), "outcome" => outcome).increment(1);
    if matches!(operation, Operation::PutRecord | Operation::PutRecordBatch) && result.is_ok() {
        metrics::histogram!("tollstream_collector_ingest_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    let mut response = match result {
        Ok(body) => {
            let mut response = body.to_string().into_response();
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// Authenticates, then runs the operation; the answer's JSON.
async fn serve(
    state: &FirehoseState,
    operation: Operation,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<serde_json::Value, AwsError> {
    let (key, region, data, held) = authenticate(state, uri, headers, body).await?;
    match operation {
        Operation::PutRecord => {
            let input: api::PutRecordInput = parse(&data)?;
            let entries = put::put(
                state,
                &key,
                &input.delivery_stream_name,
                vec![input.record],
                true,
                held,
                request_id,
            )
            .await?;
            let record_id = entries
                .into_iter()
                .next()
                .and_then(|e| e.record_id)
                .unwrap_or_default();
            Ok(json!({ "RecordId": record_id, "Encrypted": false }))
        }
        Operation::PutRecordBatch => {
            let input: api::PutRecordBatchInput = parse(&data)?;
            let entries = put::put(
                state,
                &key,
                &input.delivery_stream_name,
                input.records,
                false,
                held,
                request_id,
            )
            .await?;
            let failed = entries.iter().filter(|e| e.error_code.is_some()).count();
            Ok(json!({ "FailedPutCount": failed, "Encrypted": false, "RequestResponses": entries }))
        }
        Operation::DescribeDeliveryStream => {
            drop(held);
            let input: api::DescribeInput = parse(&data)?;
            describe(state, &input.delivery_stream_name, &region)
        }
        Operation::ListDeliveryStreams => {
            drop(held);
            let input: api::ListInput = if data.iter().all(u8::is_ascii_whitespace) {
                api::ListInput::default()
            } else {
                parse(&data)?
            };
            list(state, &input)
        }
        Operation::Unknown => {
            let target = headers
                .get("x-amz-target")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            Err(AwsError::new(
                Kind::UnknownOperation,
                format!(
                    "X-Amz-Target {target:?} names no operation served here; this collector \
                     serves {TARGET_PREFIX}PutRecord, PutRecordBatch, DescribeDeliveryStream and \
                     ListDeliveryStreams"
                ),
            ))
        }
    }
}

fn parse<T: DeserializeOwned>(data: &[u8]) -> Result<T, AwsError> {
    serde_json::from_slice(data).map_err(|e| {
        AwsError::new(
            Kind::Serialization,
            format!("the request body is not this operation's JSON: {e}"),
        )
    })
}

/// Checks the signature: the key, the scope, the date, the session token, then (with the
/// body read) the signature itself. Returns the key, the scope's region, the body
/// (decompressed, if it was gzip) and the memory it holds.
async fn authenticate(
    state: &FirehoseState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(AccessKey, String, Bytes, Held), AwsError> {
    let invalid = |m: String| AwsError::new(Kind::InvalidSignature, m);
    let Some(value) = headers.get("authorization") else {
        let presigned = uri.query().is_some_and(|q| q.contains("X-Amz-Algorithm"));
        return Err(AwsError::new(
            Kind::MissingAuthenticationToken,
            if presigned {
                "Missing Authentication Token: presigned URLs are not accepted; sign with the \
                 Authorization header"
            } else {
                "Missing Authentication Token"
            },
        ));
    };
    let value = value.to_str().map_err(|_| {
        AwsError::new(
            Kind::IncompleteSignature,
            "the Authorization header is not visible ASCII",
        )
    })?;
    let auth = sigv4::parse_authorization(value)
        .map_err(|e| AwsError::new(Kind::IncompleteSignature, e.to_string()))?;
    let Some(key) = state.keys.get(&auth.access_key_id) else {
        return Err(AwsError::new(
            Kind::UnrecognizedClient,
            "The security token included in the request is invalid.",
        ));
    };
    if auth.service != SERVICE {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: '{SERVICE}'. "
        )));
    }
    if let Some(region) = &state.region
        && &auth.region != region
    {
        return Err(invalid(format!(
            "Credential should be scoped to a valid region, not '{}'; this collector takes \
             '{region}' (firehose.region)",
            auth.region
        )));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(AwsError::new(
            Kind::IncompleteSignature,
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let amz_date = check_date(state, headers, &auth)?;
    check_session_token(headers, &key)?;
    let mut held = Held::new(&state.ingest.budget);
    let limits = BodyLimits {
        max_body_bytes: api::MAX_BODY_BYTES,
        max_decompressed_bytes: api::MAX_BODY_BYTES,
        body_timeout: state.ingest.body.body_timeout,
    };
    let raw = body::read(headers, body, &limits, &mut held)
        .await
        .map_err(|e| body_error(&e))?;
    let header_list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let parts = sigv4::RequestParts {
        method: "POST",
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &header_list,
        payload: &raw,
    };
    let canonical = sigv4::canonical_request(&parts, &auth.signed_headers)
        .map_err(|e| invalid(e.to_string()))?;
    let to_sign = sigv4::string_to_sign(&amz_date, &auth.scope(), &canonical);
    let signing_key = sigv4::signing_key(&key.secret, &auth.date, &auth.region, &auth.service);
    let expected = sigv4::signature(&signing_key, &to_sign);
    if !sigv4::signatures_match(&expected, &auth.signature) {
        return Err(invalid(format!(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.\n\nThe Canonical String for this request should have \
             been\n'{canonical}'\n\nThe String-to-Sign should have been\n'{to_sign}'\n"
        )));
    }
    let (data, held) = body::decode(headers, raw, api::MAX_BODY_BYTES, held)
        .await
        .map_err(|e| body_error(&e))?;
    Ok((key, auth.region, data, held))
}

fn body_error(error: &super::ApiError) -> AwsError {
    let mut aws = AwsError::from_ingest(error);
    if error.reason() == super::Reason::TooLarge {
        aws.message = format!(
            "the request body is larger than {} MiB, more than a Firehose request of 4 MiB of \
             records can be; send fewer records per request",
            api::MAX_BODY_BYTES >> 20
        );
    }
    aws
}

/// The request's `X-Amz-Date`, checked against the scope and the clock.
fn check_date(
    state: &FirehoseState,
    headers: &HeaderMap,
    auth: &sigv4::Authorization,
) -> Result<String, AwsError> {
    let incomplete = |m: String| AwsError::new(Kind::IncompleteSignature, m);
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            incomplete(
                "Authorization header requires existence of a 'X-Amz-Date' header (a 'Date' \
                 header alone is not accepted here)."
                    .into(),
            )
        })?;
    let at = parse_amz_date(amz_date).ok_or_else(|| {
        incomplete(format!(
            "X-Amz-Date '{amz_date}' is not in the basic ISO 8601 format YYYYMMDD'T'HHMMSS'Z'"
        ))
    })?;
    if auth.date != amz_date[..8] {
        return Err(AwsError::new(
            Kind::InvalidSignature,
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
                 from HTTP: '{}' != '{}', from '{amz_date}'.",
                auth.date,
                &amz_date[..8]
            ),
        ));
    }
    let now = state.clock.now();
    let skew = jiff::SignedDuration::try_from(MAX_CLOCK_SKEW).unwrap_or(jiff::SignedDuration::ZERO);
    let (earliest, latest) = (
        now.checked_sub(skew).unwrap_or(Timestamp::MIN),
        now.checked_add(skew).unwrap_or(Timestamp::MAX),
    );
    let minutes = MAX_CLOCK_SKEW.as_secs() / 60;
    if at < earliest {
        return Err(AwsError::new(
            Kind::InvalidSignature,
            format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - {minutes} min.)",
                amz(earliest),
                amz(now)
            ),
        ));
    }
    if at > latest {
        return Err(AwsError::new(
            Kind::InvalidSignature,
            format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + {minutes} \
                 min.)",
                amz(latest),
                amz(now)
            ),
        ));
    }
    Ok(amz_date.to_owned())
}

/// A configured session token must be presented, and none may be presented without one.
fn check_session_token(headers: &HeaderMap, key: &AccessKey) -> Result<(), AwsError> {
    let presented = headers
        .get("x-amz-security-token")
        .map(HeaderValue::as_bytes);
    let ok = match (&key.session_token, presented) {
        (Some(expected), Some(presented)) => {
            constant_time_eq::constant_time_eq(expected.as_bytes(), presented)
        }
        (None, None) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(AwsError::new(
            Kind::UnrecognizedClient,
            "The security token included in the request is invalid.",
        ))
    }
}

/// `YYYYMMDDTHHMMSSZ` as a timestamp.
fn parse_amz_date(text: &str) -> Option<Timestamp> {
    if text.len() != 16 || !text.is_ascii() {
        return None;
    }
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", text).ok()?;
    jiff::tz::TimeZone::UTC.to_timestamp(civil).ok()
}

/// A timestamp as `YYYYMMDDTHHMMSSZ`.
fn amz(at: Timestamp) -> String {
    at.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// A random request id, shaped like AWS's (`x-amzn-RequestId`).
fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros: the id is for logs, not for security.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    let hex = sigv4::hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn not_found(name: &str) -> AwsError {
    AwsError::new(
        Kind::ResourceNotFound,
        format!("Firehose {name} under account {ACCOUNT_ID} not found."),
    )
}

fn describe(
    state: &FirehoseState,
    name: &str,
    region: &str,
) -> Result<serde_json::Value, AwsError> {
    if !state.delivery_streams.contains_key(name) {
        return Err(not_found(name));
    }
    let region = state.region.as_deref().unwrap_or(region);
    Ok(json!({
        "DeliveryStreamDescription": {
            "DeliveryStreamName": name,
            "DeliveryStreamARN": format!("arn:aws:firehose:{region}:{ACCOUNT_ID}:deliverystream/{name}"),
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": "DirectPut",
            "DeliveryStreamEncryptionConfiguration": { "Status": "DISABLED" },
            "VersionId": "1",
            "Destinations": [ { "DestinationId": "destinationId-000000000001" } ],
            "HasMoreDestinations": false,
        }
    }))
}

fn list(state: &FirehoseState, input: &api::ListInput) -> Result<serde_json::Value, AwsError> {
    let limit = input.limit.unwrap_or(10);
    if !(1..=10_000).contains(&limit) {
        return Err(AwsError::new(
            Kind::Validation,
            format!(
                "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy \
                 constraint: Member must have value between 1 and 10000"
            ),
        ));
    }
    let direct = input
        .delivery_stream_type
        .as_deref()
        .is_none_or(|t| t == "DirectPut");
    let after = input.exclusive_start.as_deref().unwrap_or("");
    let names: Vec<&String> = state
        .delivery_streams
        .keys()
        .filter(|n| direct && n.as_str() > after)
        .collect();
    let limit = usize::try_from(limit).unwrap_or(10);
    Ok(json!({
        "DeliveryStreamNames": names.iter().take(limit).collect::<Vec<_>>(),
        "HasMoreDeliveryStreams": names.len() > limit,
    }))
}

#[cfg(test)]
mod tests;
