//! The `notify:` section: where alerts are delivered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// Alert delivery.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A single webhook, named `webhook` (shorthand for one entry of `webhooks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    /// Named webhooks; rules pick them by name (`rules[].notify`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// JSON-lines alert log, one alert per line; relative to `data_dir`.
    #[serde(default = "default_log")]
    pub log: PathBuf,
    /// How long delivered alerts (and their ids) are kept in the outbox, which refuses a
    /// second alert with a kept id. Default 400 days.
    #[serde(default = "default_retention", with = "duration")]
    pub retention: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            webhooks: BTreeMap::new(),
            log: default_log(),
            retention: default_retention(),
        }
    }
}

impl NotifyConfig {
    /// Every webhook by name, `webhook` included (as `webhook`).
    pub fn all_webhooks(&self) -> BTreeMap<String, WebhookConfig> {
        let mut all = self.webhooks.clone();
        if let Some(hook) = &self.webhook {
            all.insert("webhook".into(), hook.clone());
        }
        all
    }
}

fn default_log() -> PathBuf {
    "alerts.jsonl".into()
}

fn default_retention() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}

/// One webhook target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives `POST` of each alert document.
    pub url: String,
    /// File holding a shared secret; when set, each request carries an HMAC-SHA256
    /// signature header. Relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Per-attempt timeout (connect + answer). Default 10s.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// First retry delay; doubles per failed attempt (with jitter). Default 1s.
    #[serde(default = "default_initial_backoff", with = "duration")]
    pub initial_backoff: Duration,
    /// Longest retry delay. Default 5m. Attempts never stop: an alert is not dropped.
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
