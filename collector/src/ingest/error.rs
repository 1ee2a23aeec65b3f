//! The answers ingest gives when it does not accept a batch: a status, a reason label for
//! the metric, and a JSON body a person can act on.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request was refused; the label of `tollstream_collector_ingest_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Malformed request (headers, framing, gzip).
    BadRequest,
    /// No or unknown token.
    Unauthorized,
    /// A token bound to another agent.
    Forbidden,
    /// No such stream.
    UnknownStream,
    /// Body, decompressed body, batch or line over its limit.
    TooLarge,
    /// The body did not arrive within `ingest.body_timeout`.
    Timeout,
    /// Overlap with accepted data that does not fall on a line boundary.
    Conflict,
    /// Requests in progress hold `ingest.max_buffered_bytes`.
    Busy,
    /// The stream's WAL is at `wal.max_bytes`.
    WalFull,
    /// Free disk space below `disk.min_free_bytes`, or a write hit a full disk.
    DiskFull,
    /// The WAL could not make the batch durable for another reason.
    Unavailable,
    /// Unsupported content encoding.
    UnsupportedEncoding,
    /// A path the API does not have.
    NoSuchEndpoint,
    /// A method the path does not serve.
    MethodNotAllowed,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::UnknownStream => "unknown_stream",
            Self::TooLarge => "too_large",
            Self::Timeout => "timeout",
            Self::Conflict => "conflict",
            Self::Busy => "busy",
            Self::WalFull => "wal_full",
            Self::DiskFull => "disk_full",
            Self::Unavailable => "unavailable",
            Self::UnsupportedEncoding => "unsupported_encoding",
            Self::NoSuchEndpoint => "no_such_endpoint",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UnknownStream => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Busy => StatusCode::TOO_MANY_REQUESTS,
            Self::WalFull | Self::DiskFull | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NoSuchEndpoint => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Seconds a client should wait before sending again, for refusals that pass.
    fn retry_after(self) -> Option<u32> {
        match self {
            Self::Busy | Self::Unavailable => Some(1),
            Self::WalFull | Self::DiskFull => Some(2),
            _ => None,
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    reason: Reason,
    message: String,
}

impl ApiError {
    /// An answer for `reason` with a message saying what was wrong and what to do.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.reason.status();
        metrics::counter!("tollstream_collector_ingest_errors_total", "reason" => self.reason.label())
            .increment(1);
        let retry_after = self.reason.retry_after();
        let mut body = json!({ "error": self.message, "reason": self.reason.label() });
        if let Some(seconds) = retry_after {
            body["retry_after_seconds"] = json!(seconds);
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
