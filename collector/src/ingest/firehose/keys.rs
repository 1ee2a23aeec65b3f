//! The Firehose access keys: id from the config, secret (and optional session token) from
//! files, read at start and again on SIGHUP.
//!
//! Secrets are never logged or printed; `Debug` shows only the key ids.

use std::sync::{Arc, RwLock};

use tracing::{error, info};

use crate::config::FirehoseConfig;

/// One access key as loaded.
#[derive(Clone)]
pub struct AccessKey {
    /// The access key id, as clients name it in their credential scope.
    pub id: String,
    /// The secret access key.
    pub secret: String,
    /// The session token clients must present with this key, if one is configured.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey").field("id", &self.id).finish()
    }
}

/// Reads the first line of a secret file, which must not be empty.
fn first_line(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading firehose {what} file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        anyhow::bail!(
            "firehose {what} file {} is empty; its first line is the {what}",
            path.display()
        );
    }
    Ok(line.to_owned())
}

/// Reads every key's files.
///
/// # Errors
/// An unreadable or empty file, named with the key it belongs to.
pub fn load(config: &FirehoseConfig) -> anyhow::Result<Vec<AccessKey>> {
    config
        .access_keys
        .iter()
        .map(|key| {
            let secret = first_line(&key.secret_key_file, "secret key")
                .map_err(|e| e.context(format!("firehose access key {}", key.access_key_id)))?;
            let session_token = match &key.session_token_file {
                Some(path) => Some(first_line(path, "session token").map_err(|e| {
                    e.context(format!("firehose access key {}", key.access_key_id))
                })?),
                None => None,
            };
            Ok(AccessKey {
                id: key.access_key_id.clone(),
                secret,
                session_token,
            })
        })
        .collect()
}

/// The keys in use, swapped whole on reload.
pub struct KeyStore {
    config: FirehoseConfig,
    current: RwLock<Arc<Vec<AccessKey>>>,
}

impl KeyStore {
    /// Loads the keys for the first time.
    ///
    /// # Errors
    /// As [`load`].
    pub fn open(config: &FirehoseConfig) -> anyhow::Result<Self> {
        let keys = load(config)?;
        Ok(Self {
            config: config.clone(),
            current: RwLock::new(Arc::new(keys)),
        })
    }

    /// The key with this id, if configured.
    pub fn get(&self, id: &str) -> Option<AccessKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|k| k.id == id)
            .cloned()
    }

    /// Reads the files again; on error the keys in use stay and the error is logged.
    pub fn reload(&self) -> bool {
        match load(&self.config) {
            Ok(keys) => {
                info!(keys = keys.len(), "Reloaded the firehose access keys.");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                metrics::counter!("tollstream_collector_reloads_total", "what" => "firehose_keys", "result" => "ok").increment(1);
                true
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "Firehose access keys not reloaded; the previous keys stay in use."
                );
                metrics::counter!("tollstream_collector_reloads_total", "what" => "firehose_keys", "result" => "error").increment(1);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessKeyConfig;

    #[test]
    fn keys_reload_and_a_broken_file_keeps_the_old_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "first-secret\n").expect("write");
        let config = FirehoseConfig {
            access_keys: vec![AccessKeyConfig {
                access_key_id: "AKID1".into(),
                secret_key_file: secret.clone(),
                session_token_file: None,
            }],
            region: None,
            delivery_streams: Default::default(),
        };
        let store = KeyStore::open(&config).expect("opens");
        assert_eq!(store.get("AKID1").expect("key").secret, "first-secret");
        assert!(store.get("AKID2").is_none());
        std::fs::write(&secret, "second-secret\n").expect("write");
        assert!(store.reload());
        assert_eq!(store.get("AKID1").expect("key").secret, "second-secret");
        std::fs::write(&secret, "\n").expect("write");
        assert!(!store.reload(), "an empty secret file is refused");
        assert_eq!(store.get("AKID1").expect("key").secret, "second-secret");
        let error = load(&config).expect_err("empty").to_string();
        assert!(error.contains("AKID1"), "{error}");
        assert!(
            !format!("{:?}", store.get("AKID1")).contains("second"),
            "Debug hides it"
        );
    }
}
