//! Webhook delivery: `POST` of the alert document to a configured URL.
//!
//! Input: one pending delivery at a time, in fired order. Output: `Ok` once the receiver
//! answered 2xx; the caller then marks the delivery done in the outbox.
//!
//! Each request carries `Content-Type: application/json`, `Idempotency-Key: <alert_id>`,
//! `User-Agent: tollstream-collector/<version>` and, with `secret_file`,
//! `X-Tollstream-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! Every failure is retried, forever (an alert is never dropped): network errors, timeouts,
//! 408, 429 and 5xx are expected to pass; any other answer (3xx, 4xx, 501) will not pass
//! until someone fixes the receiver or the configuration, so it is logged at ERROR once per
//! alert and retried with the same backoff. Redirects are not followed (a 3xx is such a
//! refusal): a `POST` turned into a `GET` would lose the alert's body.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use ring::hmac;
use tracing::warn;

use super::outbox::Pending;
use super::{Failure, NotifyError};
use crate::config::WebhookConfig;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-tollstream-signature";
/// The idempotency header (the alert id).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The longest `Retry-After` honoured; a longer one waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// One webhook target.
pub struct Webhook {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    timeout: Duration,
    secret_file: Option<PathBuf>,
    /// The HMAC key from `secret_file`; replaced on reload.
    key: RwLock<Option<Arc<hmac::Key>>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Webhook({} -> {})", self.name, self.url)
    }
}

impl Webhook {
    /// A webhook named `name` (as in `notify.webhooks`), reading its secret now.
    ///
    /// # Errors
    /// An invalid URL, an unreadable or empty secret file, or an HTTP client that cannot be
    /// built; each message names the key.
    pub fn new(name: &str, config: &WebhookConfig) -> Result<Self, NotifyError> {
        let key = |what: &str| format!("notify.webhooks.{name}.{what}");
        let url = reqwest::Url::parse(&config.url).map_err(|e| {
            NotifyError::Config(format!(
                "{}: {:?} is not a URL: {e}",
                key("url"),
                config.url
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotifyError::Config(format!(
                "{}: {:?} must start with http:// or https://",
                key("url"),
                config.url
            )));
        }
        if config.timeout.is_zero() {
            return Err(NotifyError::Config(format!(
                "{} must be > 0",
                key("timeout")
            )));
        }
        super::Backoff::try_new(config.initial_backoff, config.max_backoff)
            .map_err(|e| NotifyError::Config(format!("notify.webhooks.{name}: {e}")))?;
        // rustls with ring, as everywhere in the collector; the server's certificate is
        // checked against the system trust store. Another provider installed first (none
        // is, in this binary) would also do.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Config(format!("{}: HTTP client: {e}", key("url"))))?;
        let webhook = Self {
            name: name.to_owned(),
            url,
            client,
            timeout: config.timeout,
            secret_file: config.secret_file.clone(),
            key: RwLock::new(None),
        };
        webhook.reload_secret()?;
        Ok(webhook)
    }

    /// The target name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads `secret_file` again. On error the previous secret stays in use.
    ///
    /// # Errors
    /// The file cannot be read or holds nothing but whitespace.
    pub fn reload_secret(&self) -> Result<(), NotifyError> {
        let Some(path) = &self.secret_file else {
            return Ok(());
        };
        let where_ = format!(
            "notify.webhooks.{}.secret_file {}",
            self.name,
            path.display()
        );
        let bytes = std::fs::read(path)
            .map_err(|e| NotifyError::Config(format!("{where_}: cannot read: {e}")))?;
        let secret = bytes.trim_ascii();
        if secret.is_empty() {
            return Err(NotifyError::Config(format!("{where_}: the file is empty")));
        }
        let key = Arc::new(hmac::Key::new(hmac::HMAC_SHA256, secret));
        *self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
        Ok(())
    }

    /// Posts `pending`'s document once; `now` stamps the signature.
    ///
    /// # Errors
    /// A [`Failure`] saying why and when to retry.
    pub async fn send(&self, pending: &Pending, now: Timestamp) -> Result<(), Failure> {
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, user_agent())
            .header(IDEMPOTENCY_HEADER, &pending.alert_id)
            .body(pending.document.clone());
        let key = self
            .key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(key) = key {
            request = request.header(
                SIGNATURE_HEADER,
                signature(&key, now.as_second(), &pending.document),
            );
        }
        let response = request.send().await.map_err(|e| Failure {
            error: error_chain(&e),
            retry_after: None,
            refused: false,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(response.headers().get(RETRY_AFTER), now)
            }
            _ => None,
        };
        let text = response.text().await.unwrap_or_default();
        let body: String = text.chars().take(300).collect();
        Err(Failure {
            error: format!("{} answered {status}: {body}", self.url),
            retry_after,
            refused: refused(status),
        })
    }
}

/// `tollstream-collector/<version>`.
pub fn user_agent() -> &'static str {
    concat!("tollstream-collector/", env!("CARGO_PKG_VERSION"))
}

/// Whether an answer is a refusal that retrying soon will not fix (ERROR-logged, still
/// retried): anything but 2xx, 408, 429 and 5xx other than 501.
pub fn refused(status: StatusCode) -> bool {
    match status.as_u16() {
        200..=299 | 408 | 429 => false,
        501 => true,
        500..=599 => false,
        _ => true,
    }
}

/// The `X-Tollstream-Signature` value for `body` sent at unix second `t`:
/// `t=<t>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`.
pub fn signature(key: &hmac::Key, t: i64, body: &str) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(t.to_string().as_bytes());
    context.update(b".");
    context.update(body.as_bytes());
    format!("t={t},v1={}", hex(context.sign().as_ref()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// `Retry-After` as seconds or an HTTP date (relative to `now`), at most
/// [`MAX_RETRY_AFTER`]; `None` when absent or unreadable.
pub fn retry_after(value: Option<&HeaderValue>, now: Timestamp) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    let delay = if let Ok(seconds) = text.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = jiff::fmt::rfc2822::parse(text).ok()?.timestamp();
        let micros = at
            .as_microsecond()
            .saturating_sub(now.as_microsecond())
            .max(0);
        Duration::from_micros(u64::try_from(micros).unwrap_or(0))
    };
    if delay > MAX_RETRY_AFTER {
        warn!(retry_after = %text, "Webhook asked to wait longer than an hour; retrying in an hour.");
    }
    Some(delay.min(MAX_RETRY_AFTER))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_retryable_or_refused() {
        for ok in [200, 204, 408, 429, 500, 502, 503, 504] {
            assert!(!refused(StatusCode::from_u16(ok).expect("status")), "{ok}");
        }
        for bad in [301, 400, 401, 403, 404, 409, 413, 422, 501] {
            assert!(refused(StatusCode::from_u16(bad).expect("status")), "{bad}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_is_capped() {
        let now: Timestamp = "2026-11-25T14:00:00Z".parse().expect("time");
        let seconds = HeaderValue::from_static("7");
        assert_eq!(
            retry_after(Some(&seconds), now),
            Some(Duration::from_secs(7))
        );
        let date = HeaderValue::from_static("Wed, 25 Nov 2026 14:00:30 GMT");
        assert_eq!(retry_after(Some(&date), now), Some(Duration::from_secs(30)));
        let past = HeaderValue::from_static("Wed, 25 Nov 2026 13:00:00 GMT");
        assert_eq!(retry_after(Some(&past), now), Some(Duration::ZERO));
        let long = HeaderValue::from_static("86400");
        assert_eq!(retry_after(Some(&long), now), Some(MAX_RETRY_AFTER));
        let junk = HeaderValue::from_static("soon");
        assert_eq!(retry_after(Some(&junk), now), None);
        assert_eq!(retry_after(None, now), None);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body_in_hex() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let header = signature(&key, 1_764_079_200, "{\"a\":1}");
        let expected = hmac::sign(&key, b"1764079200.{\"a\":1}");
        assert_eq!(
            header,
            format!("t=1764079200,v1={}", hex(expected.as_ref()))
        );
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
