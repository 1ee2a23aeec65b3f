//! Admin API: customer monthly limits, with its own token.
//!
//! Input: HTTP requests on the ingest listener (the router is merged into ingest's), each
//! with `Authorization: Bearer <admin token>` from `auth.admin_token_file` (agent tokens do
//! not work here, and the admin token does not work on ingest). Output: changes to the
//! [`LimitsStore`], and the month-to-date view of the alert engine.
//!
//! ```text
//! PUT    /v1/customers/{id}/limit   {"monthly_limit":"150.00"}  → 200, the customer document
//! GET    /v1/customers/{id}/limit                              → 200 {customer_id, monthly_limit,
//!                                                                 limit_updated_at}, 404 without one
//! DELETE /v1/customers/{id}/limit                              → 204 (also when there was none)
//! GET    /v1/customers/{id}                                    → 200, the customer document
//! ```
//!
//! Promise: a 200 to `PUT` or a 204 to `DELETE` means the change is committed to disk; the
//! alert engine sees it from its next record on. Amounts are exact decimal text: a JSON
//! number is refused (many clients turn it into a float). Errors are `{"error": "..."}`
//! with 400, 401, 404, 405, 413 or 415. Without `auth.admin_token_file` every route answers
//! 404 saying how to enable it.

mod error;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tracing::{error, info};

pub use error::AdminError;

use crate::alerts::MonthToDateView;
use crate::alerts::limits::{
    LimitsError, LimitsStore, format_amount, parse_limit, validate_customer_id,
};
use crate::clock::Clock;
use crate::ingest::{TokenStore, Tokens};
use crate::schema::parse_decimal;

/// Largest request body accepted (a limit document is a few dozen bytes).
pub const MAX_BODY_BYTES: usize = 4096;

/// What the admin handlers share.
pub struct AdminState {
    /// The admin token(s); `None` when `auth.admin_token_file` is not set (every route then
    /// answers 404). Reload it on SIGHUP with [`TokenStore::reload`].
    pub tokens: Option<Arc<TokenStore>>,
    /// The limits store.
    pub limits: Arc<LimitsStore>,
    /// The alert engine's monthly totals.
    pub view: Arc<dyn MonthToDateView>,
    /// Wall-clock time (the current month when the engine has no total).
    pub clock: Arc<dyn Clock>,
    /// The operator's time zone (`timezone`).
    pub timezone: jiff::tz::TimeZone,
}

/// Opens the admin token file (`auth.admin_token_file`) for [`AdminState::tokens`], after
/// checking it with admin-worded messages: one token per line (`#` comments), at least 16
/// characters, and none that `agents` (the agent tokens) would accept — otherwise that
/// token would open both the admin API and ingest. Call it at start and in `check-config`.
///
/// # Errors
/// An unreadable file, a malformed line or a token shared with the agents (named by line
/// number, never by content), or a file without a token.
pub fn open_admin_tokens(path: &std::path::Path, agents: &Tokens) -> anyhow::Result<TokenStore> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading admin token file {}: {e}", path.display()))?;
    let mut tokens = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("admin token file {} line {}", path.display(), i + 1);
        if line.split_whitespace().count() != 1 {
            anyhow::bail!("{}: expected one token per line", at());
        }
        if line.len() < 16 {
            anyhow::bail!(
                "{}: the token is shorter than 16 characters; use a random one, e.g. from \
                 `openssl rand -hex 24`",
                at()
            );
        }
        if agents.check(Some(line.as_bytes()), "-").is_ok() {
            anyhow::bail!(
                "{}: this token is also an agent token (auth.agent_tokens_file); the admin \
                 token must differ from every agent token",
                at()
            );
        }
        tokens += 1;
    }
    if tokens == 0 {
        anyhow::bail!("admin token file {} holds no token", path.display());
    }
    TokenStore::open(path)
}

const LIMIT_ROUTE: &str = "/v1/customers/{id}/limit";
const CUSTOMER_ROUTE: &str = "/v1/customers/{id}";

/// The admin routes. It has no fallback of its own, so it merges into the ingest router
/// (whose fallback answers unknown paths).
pub fn router(state: Arc<AdminState>) -> Router {
    let limit: MethodRouter<Arc<AdminState>> = get(get_limit)
        .put(put_limit)
        .delete(delete_limit)
        .fallback(|| async { AdminError::method_not_allowed("GET, PUT, DELETE") });
    let customer: MethodRouter<Arc<AdminState>> =
        get(get_customer).fallback(|| async { AdminError::method_not_allowed("GET") });
    Router::new()
        .route(
            LIMIT_ROUTE,
            limit.layer(middleware::from_fn_with_state(LIMIT_ROUTE, count)),
        )
        .route(
            CUSTOMER_ROUTE,
            customer.layer(middleware::from_fn_with_state(CUSTOMER_ROUTE, count)),
        )
        .with_state(state)
}

/// Counts each answer by route (method and path template) and status.
async fn count(State(route): State<&'static str>, request: Request, next: Next) -> Response {
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::POST => "POST",
        _ => "OTHER",
    };
    let response = next.run(request).await;
    metrics::counter!(
        "tollstream_collector_admin_requests_total",
        "route" => format!("{method} {route}"),
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Lets in requests with an admin token; answers 404 while the API is not configured.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(tokens) = &state.tokens else {
        return Err(AdminError::not_found(
            "the admin API is not enabled: set auth.admin_token_file in the collector's config \
             to a file holding a token (e.g. from `openssl rand -hex 24`) and restart the collector",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    if presented.is_none() {
        return Err(AdminError::unauthorized(
            "missing bearer token: send 'Authorization: Bearer <admin token>'",
        ));
    }
    // "-": no source, so a line bound to an agent id works like a plain one.
    tokens.current().check(presented, "-").map_err(|_| {
        AdminError::unauthorized(
            "the bearer token is not in the collector's admin token file \
             (auth.admin_token_file); agent tokens do not work on the admin API",
        )
    })?;
    Ok(())
}

/// The customer id from the path, checked.
fn customer(path: Result<UrlPath<String>, PathRejection>) -> Result<String, AdminError> {
    let UrlPath(id) = path.map_err(|e| {
        AdminError::bad_request(format!("the customer id in the path is not valid: {e}"))
    })?;
    validate_customer_id(&id).map_err(AdminError::bad_request)?;
    Ok(id)
}

async fn put_limit(
    State(state): State<Arc<AdminState>>,
    path: Result<UrlPath<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let id = customer(path)?;
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return Err(AdminError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the limit as JSON with 'Content-Type: application/json', e.g. \
             {\"monthly_limit\":\"150.00\"}",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // Refused before reading: the connection is closed instead of drained.
        return Err(too_large());
    }
    let bytes = read_body(body).await?;
    let raw = monthly_limit(&bytes, &id)?;
    let amount = parse_limit(&raw, state.limits.scale())
        .map_err(|why| AdminError::bad_request(format!("monthly_limit: {why}")))?;
    let limits = state.limits.clone();
    let stored_id = id.clone();
    let outcome = tokio::task::spawn_blocking(move || limits.set(&stored_id, amount))
        .await
        .map_err(|e| AdminError::internal(format!("the limits store task failed: {e}")))?
        .map_err(store_error)?;
    if outcome.changed() {
        info!(customer = %id, monthly_limit = %format_amount(amount, state.limits.scale()), "Customer limit set.");
    }
    let document = tokio::task::spawn_blocking(move || customer_document(&state, &id))
        .await
        .map_err(|e| AdminError::internal(format!("reading the customer: {e}")))?;
    Ok(Json(document).into_response())
}

/// Reads at most [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<bytes::Bytes, AdminError> {
    match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(AdminError::bad_request(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

fn too_large() -> AdminError {
    AdminError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the body is larger than {MAX_BODY_BYTES} bytes; send {{\"monthly_limit\":\"150.00\"}}"
        ),
    )
}

/// The `monthly_limit` text of a PUT body, or why the body is not one.
fn monthly_limit(bytes: &[u8], id: &str) -> Result<String, AdminError> {
    let expected = "expected {\"monthly_limit\":\"150.00\"}";
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| AdminError::bad_request(format!("the body is not JSON ({e}); {expected}")))?;
    let Value::Object(mut object) = value else {
        return Err(AdminError::bad_request(format!(
            "the body is not a JSON object; {expected}"
        )));
    };
    if let Some(other) = object.keys().find(|k| *k != "monthly_limit") {
        return Err(AdminError::bad_request(format!(
            "unknown field {other:?}; {expected}"
        )));
    }
    match object.remove("monthly_limit") {
        Some(Value::String(text)) => Ok(text),
        Some(Value::Number(n)) => Err(AdminError::bad_request(format!(
            "monthly_limit must be a string with the exact amount, e.g. \"monthly_limit\":\"{n}\": \
             money is not taken as a JSON number (many clients turn numbers into floats)"
        ))),
        Some(Value::Null) => Err(AdminError::bad_request(format!(
            "monthly_limit is null; to remove the limit send DELETE /v1/customers/{id}/limit"
        ))),
        Some(_) => Err(AdminError::bad_request(format!(
            "monthly_limit must be a string; {expected}"
        ))),
        None => Err(AdminError::bad_request(format!(
            "monthly_limit is missing; {expected}"
        ))),
    }
}

fn store_error(e: LimitsError) -> AdminError {
    match e {
        LimitsError::InvalidCustomer(m) => AdminError::bad_request(m),
        LimitsError::InvalidAmount(m) => AdminError::bad_request(format!("monthly_limit: {m}")),
        other => {
            error!(error = %other, "The limits store failed; the change was not made.");
            AdminError::internal(format!(
                "the limits store failed, nothing was changed: {other}"
            ))
        }
    }
}

async fn get_limit(
    State(state): State<Arc<AdminState>>,
    path: Result<UrlPath<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let id = customer(path)?;
    let Some(limit) = state.limits.limit(&id) else {
        return Err(AdminError::not_found(format!(
            "customer {id:?} has no monthly limit; set one with PUT /v1/customers/{{id}}/limit"
        )));
    };
    Ok(Json(json!({
        "customer_id": id,
        "monthly_limit": format_amount(limit.amount, state.limits.scale()),
        "limit_updated_at": limit.updated_at,
    }))
    .into_response())
}

async fn delete_limit(
    State(state): State<Arc<AdminState>>,
    path: Result<UrlPath<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let id = customer(path)?;
    let limits = state.limits.clone();
    let deleted_id = id.clone();
    let removed = tokio::task::spawn_blocking(move || limits.delete(&deleted_id))
        .await
        .map_err(|e| AdminError::internal(format!("the limits store task failed: {e}")))?
        .map_err(store_error)?;
    if removed.is_some() {
        info!(customer = %id, "Customer limit deleted.");
    }
    // Idempotent: deleting a limit that is not there is not an error.
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_customer(
    State(state): State<Arc<AdminState>>,
    path: Result<UrlPath<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&state, &headers)?;
    let id = customer(path)?;
    // The engine's lock may be held through a checkpoint's fsync: not on a runtime thread.
    let document = tokio::task::spawn_blocking(move || customer_document(&state, &id))
        .await
        .map_err(|e| AdminError::internal(format!("reading the customer: {e}")))?;
    Ok(Json(document).into_response())
}

/// The customer's limit and month-to-date spend. A customer the collector never heard of
/// is not an error: no limit, nothing spent this month.
fn customer_document(state: &AdminState, id: &str) -> Value {
    let scale = state.limits.scale();
    let limit = state.limits.limit(id);
    let total = state.view.month_to_date(id);
    let month = total.as_ref().map_or_else(
        || {
            state
                .clock
                .now()
                .to_zoned_datetime(state.timezone.clone())
                .strftime("%Y-%m")
                .to_string()
        },
        |t| t.month.clone(),
    );
    let notified_thresholds = total.as_ref().map_or_else(Vec::new, |t| t.notified.clone());
    // Notified for the limit in force: a raised limit not crossed yet is not notified.
    let notified = match limit {
        Some(limit) => notified_thresholds
            .iter()
            .any(|t| parse_decimal(t, scale) == Some(limit.amount)),
        None => !notified_thresholds.is_empty(),
    };
    json!({
        "customer_id": id,
        "monthly_limit": limit.map(|l| format_amount(l.amount, scale)),
        "limit_updated_at": limit.map(|l| l.updated_at),
        "month": month,
        "month_to_date_spend": total.as_ref().map_or_else(|| format_amount(0, scale), |t| t.spend.clone()),
        "records": total.as_ref().map_or(0, |t| t.records),
        "rule": total.as_ref().map(|t| t.rule.clone()),
        "notified": notified,
        "notified_thresholds": notified_thresholds,
    })
}

/// Describes this module's metrics (call once after installing the recorder).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "tollstream_collector_admin_requests_total",
        "Admin API requests answered, by route (method and path template) and status."
    );
}

#[cfg(test)]
mod tests;
