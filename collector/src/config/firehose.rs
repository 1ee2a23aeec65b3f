//! The `firehose:` section: the Kinesis Firehose–compatible ingest API (see
//! [`crate::ingest::firehose`]). Absent: the API is off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StreamConfig, resolve};

/// Who may send through the Firehose API, and which delivery stream goes to which stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirehoseConfig {
    /// Access keys clients sign with (AWS Signature Version 4). At least one.
    pub access_keys: Vec<AccessKeyConfig>,
    /// The region clients must name in their credential scope (e.g. `us-east-1`); unset:
    /// any region is accepted (the SDK's configured region is then irrelevant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `DeliveryStreamName` → collector stream. Empty (the default): every stream is a
    /// delivery stream of its own name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delivery_streams: BTreeMap<String, String>,
}

/// One access key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// The access key id (letters and digits, like `AKIA…`), not secret.
    pub access_key_id: String,
    /// File whose first line is the secret access key. Relative to the config file.
    pub secret_key_file: PathBuf,
    /// File whose first line is a session token that requests with this key must carry in
    /// `X-Amz-Security-Token`; unset: requests with this key must carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_file: Option<PathBuf>,
}

/// Longest access key id accepted.
const MAX_KEY_ID_LEN: usize = 128;

impl FirehoseConfig {
    /// Resolves the key files against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for key in &mut self.access_keys {
            key.secret_key_file = resolve(base, &key.secret_key_file);
            if let Some(file) = &mut key.session_token_file {
                *file = resolve(base, file);
            }
        }
    }

    /// The delivery streams clients may name, each with its collector stream.
    pub fn delivery_streams(
        &self,
        streams: &BTreeMap<String, StreamConfig>,
    ) -> BTreeMap<String, String> {
        if self.delivery_streams.is_empty() {
            streams.keys().map(|s| (s.clone(), s.clone())).collect()
        } else {
            self.delivery_streams.clone()
        }
    }

    /// Checks keys, region and mapping.
    ///
    /// # Errors
    /// A message starting with the key path.
    pub fn validate(&self, streams: &BTreeMap<String, StreamConfig>) -> Result<(), String> {
        if self.access_keys.is_empty() {
            return Err(
                "firehose.access_keys must list at least one key (access_key_id, \
                 secret_key_file)"
                    .into(),
            );
        }
        for (i, key) in self.access_keys.iter().enumerate() {
            let id = &key.access_key_id;
            if !(1..=MAX_KEY_ID_LEN).contains(&id.len())
                || !id.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(format!(
                    "firehose.access_keys[{i}].access_key_id: {id:?} must be 1-{MAX_KEY_ID_LEN} \
                     letters or digits, like AKIAIOSFODNN7EXAMPLE"
                ));
            }
            if self.access_keys[..i].iter().any(|k| &k.access_key_id == id) {
                return Err(format!(
                    "firehose.access_keys[{i}].access_key_id: {id} is listed twice"
                ));
            }
        }
        if let Some(region) = &self.region
            && (region.is_empty()
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return Err(format!(
                "firehose.region: {region:?} is not a region name like us-east-1; leave it \
                 out to accept any region"
            ));
        }
        for (name, stream) in &self.delivery_streams {
            if !valid_delivery_stream_name(name) {
                return Err(format!(
                    "firehose.delivery_streams.{name}: a delivery stream name is 1-64 \
                     characters of a-z, A-Z, 0-9, '_', '.' or '-'"
                ));
            }
            if !streams.contains_key(stream) {
                let known: Vec<&str> = streams.keys().map(String::as_str).collect();
                return Err(format!(
                    "firehose.delivery_streams.{name}: {stream:?} is not a stream of this \
                     collector ({})",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Firehose's rule for delivery stream names: 1-64 of `[a-zA-Z0-9_.-]`.
pub fn valid_delivery_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const MINIMAL: &str = "listen: 127.0.0.1:8700\ndata_dir: data\nauth:\n  agent_tokens_file: t\n";

    fn parse(firehose: &str) -> Result<Config, String> {
        let text = format!("{MINIMAL}firehose:\n{firehose}");
        let config = Config::parse(&text, Path::new("c.yaml")).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn every_stream_is_a_delivery_stream_unless_mapped() {
        let config = parse("  access_keys:\n    - { access_key_id: AKID1, secret_key_file: s }\n")
            .expect("valid");
        let firehose = config.firehose.as_ref().expect("firehose");
        assert_eq!(
            firehose.delivery_streams(&config.streams),
            [(
                "toll-transactions".to_owned(),
                "toll-transactions".to_owned()
            )]
            .into()
        );
        let config = parse(
            "  access_keys:\n    - { access_key_id: AKID1, secret_key_file: s }\n  \
             delivery_streams: { Tolls.Prod: toll-transactions }\n",
        )
        .expect("valid");
        let firehose = config.firehose.as_ref().expect("firehose");
        assert_eq!(
            firehose.delivery_streams(&config.streams),
            [("Tolls.Prod".to_owned(), "toll-transactions".to_owned())].into()
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_key() {
        let key = "  access_keys:\n    - { access_key_id: AKID1, secret_key_file: s }\n";
        for (firehose, expected) in [
            (
                "  access_keys:\n    - { access_key_id: AKID1, secret_key: s }\n",
                "secret_key",
            ),
            ("  access_keys: []\n", "at least one key"),
            (
                "  access_keys:\n    - { access_key_id: 'AK/1', secret_key_file: s }\n",
                "access_keys[0].access_key_id",
            ),
            (
                "  access_keys:\n    - { access_key_id: AKID1, secret_key_file: s }\n    - { access_key_id: AKID1, secret_key_file: s }\n",
                "listed twice",
            ),
            (&format!("{key}  region: US East\n"), "firehose.region"),
            (
                &format!("{key}  delivery_streams: {{ 'bad name': toll-transactions }}\n"),
                "1-64 characters",
            ),
            (
                &format!("{key}  delivery_streams: {{ tolls: nope }}\n"),
                "not a stream",
            ),
            (&format!("{key}  regoin: us-east-1\n"), "regoin"),
        ] {
            let error = parse(firehose).expect_err(firehose);
            assert!(error.contains(expected), "{firehose}: {error}");
        }
    }
}
