//! The Firehose wire format (AWS JSON 1.1): request and response bodies of the served
//! operations, and the error documents `{"__type": …, "message": …}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::ingest::{ApiError, Reason};

/// The content type of every request and answer.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Prefix of `X-Amz-Target` values.
pub const TARGET_PREFIX: &str = "Firehose_20150804.";

/// Largest `Data` of one record, decoded (Firehose: 1,000 KiB).
pub const MAX_RECORD_BYTES: usize = 1_024_000;
/// Most records in one `PutRecordBatch`.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Largest total of decoded `Data` in one request (Firehose: 4 MiB).
pub const MAX_REQUEST_DATA_BYTES: usize = 4 << 20;
/// Largest request body: 4 MiB of data as base64 plus the JSON around 500 records.
pub const MAX_BODY_BYTES: u64 = 6 << 20;

/// `PutRecord` input.
#[derive(Debug, Deserialize)]
pub struct PutRecordInput {
    /// The delivery stream.
    #[serde(rename = "DeliveryStreamName")]
    pub delivery_stream_name: String,
    /// The record.
    #[serde(rename = "Record")]
    pub record: RecordIn,
}

/// `PutRecordBatch` input.
#[derive(Debug, Deserialize)]
pub struct PutRecordBatchInput {
    /// The delivery stream.
    #[serde(rename = "DeliveryStreamName")]
    pub delivery_stream_name: String,
    /// The records, in order.
    #[serde(rename = "Records")]
    pub records: Vec<RecordIn>,
}

/// One record: base64 data.
#[derive(Debug, Deserialize)]
pub struct RecordIn {
    /// Base64 of the record's bytes.
    #[serde(rename = "Data")]
    pub data: String,
}

/// `DescribeDeliveryStream` input (`Limit` and `ExclusiveStartDestinationId` are accepted
/// and have nothing to page through).
#[derive(Debug, Deserialize)]
pub struct DescribeInput {
    /// The delivery stream.
    #[serde(rename = "DeliveryStreamName")]
    pub delivery_stream_name: String,
}

/// `ListDeliveryStreams` input.
#[derive(Debug, Default, Deserialize)]
pub struct ListInput {
    /// Most names to return (1-10000), default 10.
    #[serde(rename = "Limit")]
    pub limit: Option<i64>,
    /// `DirectPut` (every stream here is) or another type (none is).
    #[serde(rename = "DeliveryStreamType")]
    pub delivery_stream_type: Option<String>,
    /// List names after this one.
    #[serde(rename = "ExclusiveStartDeliveryStreamName")]
    pub exclusive_start: Option<String>,
}

/// One entry of a `PutRecordBatch` answer.
#[derive(Debug, Serialize)]
pub struct ResponseEntry {
    /// Set when the record was accepted.
    #[serde(rename = "RecordId", skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    /// Set when it was not.
    #[serde(rename = "ErrorCode", skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// Why not.
    #[serde(rename = "ErrorMessage", skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// The kinds of refusal, each with its AWS `__type` and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No `Authorization` header.
    MissingAuthenticationToken,
    /// A malformed `Authorization` header or missing `X-Amz-Date`.
    IncompleteSignature,
    /// Wrong signature, scope or a date outside the allowed skew.
    InvalidSignature,
    /// An access key id (or session token) this collector does not know.
    UnrecognizedClient,
    /// `X-Amz-Target` names no operation served here.
    UnknownOperation,
    /// A body that is not the operation's JSON, or `Data` that is not base64.
    Serialization,
    /// A value outside the API's constraints (record size, record count, name pattern).
    Validation,
    /// A request over the 4 MiB limit, or a value that cannot be served.
    InvalidArgument,
    /// No such delivery stream.
    ResourceNotFound,
    /// The body did not arrive in time.
    RequestTimeout,
    /// Backpressure: memory, WAL or disk full, or the WAL unavailable.
    ServiceUnavailable,
}

impl Kind {
    /// The `__type` AWS answers with; also the `outcome` label of the request metric.
    pub fn aws_type(self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature => "IncompleteSignatureException",
            Self::InvalidSignature => "InvalidSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::UnknownOperation => "UnknownOperationException",
            Self::Serialization => "SerializationException",
            Self::Validation => "ValidationException",
            Self::InvalidArgument => "InvalidArgumentException",
            Self::ResourceNotFound => "ResourceNotFoundException",
            Self::RequestTimeout => "RequestTimeoutException",
            Self::ServiceUnavailable => "ServiceUnavailableException",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answer: `{"__type": "…", "message": "…"}` with the status AWS JSON services use.
#[derive(Debug)]
pub struct AwsError {
    /// What kind.
    pub kind: Kind,
    /// What was wrong and what to do.
    pub message: String,
    /// Seconds to wait before retrying (backpressure only).
    pub retry_after: Option<u32>,
}

impl AwsError {
    /// An error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The Firehose form of a refusal of the shared ingest code (body reading, backpressure,
    /// WAL).
    pub fn from_ingest(error: &ApiError) -> Self {
        let kind = match error.reason() {
            Reason::Busy | Reason::WalFull | Reason::DiskFull | Reason::Unavailable => {
                Kind::ServiceUnavailable
            }
            Reason::TooLarge => Kind::InvalidArgument,
            Reason::Timeout => Kind::RequestTimeout,
            _ => Kind::Serialization,
        };
        let retry_after = match error.reason() {
            Reason::Busy | Reason::Unavailable => Some(1),
            Reason::WalFull | Reason::DiskFull => Some(2),
            _ => None,
        };
        Self {
            kind,
            message: error.message().to_owned(),
            retry_after,
        }
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.kind.aws_type(), "message": self.message });
        let mut response = (self.kind.status(), body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
