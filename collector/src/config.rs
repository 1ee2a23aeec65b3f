//! Collector configuration: YAML in, a validated [`Config`] out.
//!
//! Input: the path given with `--config`. Output: a [`Config`] whose relative paths are
//! already resolved (against the config file's directory, or against `data_dir` where the
//! field's documentation says so). Unknown keys are rejected so a misspelt key fails at
//! start instead of being silently ignored; errors name the key path and the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML was malformed or a key had the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The key path, e.g. `streams.toll-transactions.buffer.max_bytes`.
        key: String,
        /// What the parser expected, with line and column.
        message: String,
    },
    /// The values parsed but do not make sense together.
    #[error("{path}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Which key is wrong and how to fix it.
        message: String,
    },
}

/// The whole collector configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the ingest API (and `/healthz`, `/readyz`).
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint; none disables it.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory that holds `wal/`, `archive/`, `state/` and, by default, the warehouse.
    pub data_dir: PathBuf,
    /// IANA time zone of the operator (alert windows and months).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Who may send data.
    pub auth: AuthConfig,
    /// Where records are loaded.
    #[serde(default)]
    pub warehouse: WarehouseConfig,
    /// Request limits of the ingest API.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Write-ahead log tuning.
    #[serde(default)]
    pub wal: WalConfig,
    /// Stream name → definition. The toll stream is the shipped default.
    #[serde(default = "default_streams")]
    pub streams: BTreeMap<String, StreamConfig>,
    /// How long to wait for in-flight work on SIGTERM.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
}

/// Authentication of agents.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File with one bearer token per line (`#` starts a comment). Relative to the config file.
    pub agent_tokens_file: PathBuf,
}

/// The warehouse the loader writes to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// `sqlite://PATH` (PATH relative to `data_dir`).
    pub url: String,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://warehouse.db".into(),
        }
    }
}

/// Limits on one ingest request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body as sent (compressed), default 16MiB.
    #[serde(with = "size")]
    pub max_body_bytes: u64,
    /// Largest body after gzip decompression, default 64MiB.
    #[serde(with = "size")]
    pub max_decompressed_bytes: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

/// Write-ahead log tuning.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// A segment file is closed and a new one started past this size, default 64MiB.
    #[serde(with = "size")]
    pub segment_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// One stream: where its records go and how they are buffered.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Warehouse table.
    pub table: String,
    /// When the buffer cuts an archive object.
    #[serde(default)]
    pub buffer: BufferConfig,
}

/// Firehose-style buffering hints: an object is cut when either is reached.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Cut an object once this many uncompressed bytes are buffered, default 8MiB.
    #[serde(with = "size")]
    pub max_bytes: u64,
    /// Cut an object once its oldest record has waited this long, default 2s.
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 20,
            max_age: Duration::from_secs(2),
        }
    }
}

fn default_timezone() -> String {
    "America/Sao_Paulo".into()
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_streams() -> BTreeMap<String, StreamConfig> {
    BTreeMap::from([(
        "toll-transactions".to_string(),
        StreamConfig {
            table: "toll_transactions".into(),
            buffer: BufferConfig::default(),
        },
    )])
}

impl Config {
    /// Reads, parses and validates the file, resolving relative paths.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key path and what was expected.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        // Absolute, so paths match what file events and logs report.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        let base = base.as_path();
        config.data_dir = resolve(base, &config.data_dir);
        config.auth.agent_tokens_file = resolve(base, &config.auth.agent_tokens_file);
        config.validate(path)?;
        Ok(config)
    }

    /// Parses YAML text; `path` is only used in messages.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with the key path, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().to_string();
            // The YAML parser often prefixes the enclosing key; say the full key once instead.
            let parent = key
                .rsplit_once('.')
                .map_or(key.as_str(), |(parent, _)| parent);
            let message = match message.strip_prefix(&format!("{parent}: ")) {
                _ if key == "." => message,
                Some(rest) => format!("{key}: {rest}"),
                None => format!("{key}: {message}"),
            };
            ConfigError::Parse {
                path: path.to_path_buf(),
                key,
                message,
            }
        })
    }

    /// The effective configuration as YAML, for `check-config`.
    ///
    /// # Errors
    /// Serialisation errors (none are expected for a loaded config).
    pub fn to_yaml(&self) -> Result<String, String> {
        yaml_serde::to_string(self).map_err(|e| e.to_string())
    }

    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key and how to fix it.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if self.streams.is_empty() {
            return Err(invalid("streams must define at least one stream".into()));
        }
        for (name, stream) in &self.streams {
            if !valid_stream_name(name) {
                return Err(invalid(format!(
                    "streams.{name}: a stream name is 1-64 characters of a-z, 0-9, '-' or '_'"
                )));
            }
            if !valid_identifier(&stream.table) {
                return Err(invalid(format!(
                    "streams.{name}.table: {:?} is not a plain SQL identifier (a-z, 0-9, _)",
                    stream.table
                )));
            }
            if stream.buffer.max_bytes < 1024 {
                return Err(invalid(format!(
                    "streams.{name}.buffer.max_bytes must be >= 1KiB"
                )));
            }
            if stream.buffer.max_age < Duration::from_millis(10) {
                return Err(invalid(format!(
                    "streams.{name}.buffer.max_age must be >= 10ms"
                )));
            }
        }
        if self.wal.segment_bytes < 64 * 1024 {
            return Err(invalid("wal.segment_bytes must be >= 64KiB".into()));
        }
        if self.ingest.max_decompressed_bytes < self.ingest.max_body_bytes {
            return Err(invalid(
                "ingest.max_decompressed_bytes must be >= ingest.max_body_bytes".into(),
            ));
        }
        if jiff::tz::TimeZone::get(&self.timezone).is_err() {
            return Err(invalid(format!(
                "timezone: {:?} is not a known IANA time zone (e.g. America/Sao_Paulo)",
                self.timezone
            )));
        }
        self.warehouse_path().map_err(invalid)?;
        Ok(())
    }

    /// The SQLite database file named by `warehouse.url`, resolved against `data_dir`.
    ///
    /// # Errors
    /// A message when the URL is not `sqlite://PATH`.
    pub fn warehouse_path(&self) -> Result<PathBuf, String> {
        match self.warehouse.url.strip_prefix("sqlite://") {
            Some(rest) if !rest.is_empty() => Ok(resolve(&self.data_dir, Path::new(rest))),
            _ => Err(format!(
                "warehouse.url: {:?} is not supported; use sqlite://PATH (PostgreSQL comes later)",
                self.warehouse.url
            )),
        }
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_identifier(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// `humantime` durations such as `500ms`, `2s`, `10m`.
mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like 500ms or 2s: {e}"))
        })
    }

    pub fn serialize<S: Serializer>(value: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

/// Sizes such as `4MiB`, `512KiB` or a plain number of bytes.
mod size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(de)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(text) => text
                .parse::<bytesize::ByteSize>()
                .map(|s| s.as_u64())
                .map_err(|e| {
                    serde::de::Error::custom(format!("{text:?} is not a size like 4MiB: {e}"))
                }),
        }
    }

    pub fn serialize<S: Serializer>(value: &u64, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&bytesize::ByteSize(*value).display().iec().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listen: 127.0.0.1:8700\ndata_dir: data\nauth:\n  agent_tokens_file: t\n";

    #[test]
    fn minimal_config_gets_the_toll_stream_by_default() {
        let config = Config::parse(MINIMAL, Path::new("c.yaml")).expect("parses");
        let stream = &config.streams["toll-transactions"];
        assert_eq!(stream.table, "toll_transactions");
        assert_eq!(stream.buffer.max_bytes, 8 << 20);
        config.validate(Path::new("c.yaml")).expect("valid");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let text = format!("{MINIMAL}streams:\n  s:\n    table: t\n    bufer: {{}}\n");
        let err = Config::parse(&text, Path::new("c.yaml")).expect_err("rejected");
        let message = err.to_string();
        assert!(message.contains("streams.s"), "{message}");
        assert!(message.contains("bufer"), "{message}");
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        let text = format!(
            "{MINIMAL}streams:\n  s:\n    table: t\n    buffer: {{ max_bytes: 1MiB, max_age: 500ms }}\n"
        );
        let config = Config::parse(&text, Path::new("c.yaml")).expect("parses");
        assert_eq!(config.streams["s"].buffer.max_bytes, 1 << 20);
        assert_eq!(
            config.streams["s"].buffer.max_age,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn bad_size_names_the_key() {
        let text = format!("{MINIMAL}wal: {{ segment_bytes: lots }}\n");
        let err = Config::parse(&text, Path::new("c.yaml")).expect_err("rejected");
        assert!(err.to_string().contains("wal.segment_bytes"), "{err}");
    }
}
