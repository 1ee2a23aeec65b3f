//! Agent configuration: YAML in, a validated [`Config`] out.
//!
//! Unknown keys are rejected so a misspelt key fails at start. Relative paths (state
//! directory, token file, watched globs) resolve against the config file's directory.
//! `TOLLSTREAM_AGENT_ID` and `TOLLSTREAM_COLLECTOR_URL` override the two settings that
//! differ from host to host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod error;

pub use error::{ConfigError, Origin};

/// Environment variables that override a key of the file: (key path, variable).
pub const ENV_OVERRIDES: [(&str, &str); 2] = [
    ("agent_id", "TOLLSTREAM_AGENT_ID"),
    ("collector.url", "TOLLSTREAM_COLLECTOR_URL"),
];

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's name in every batch's source; default: the host name.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Where checkpoints live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The collector to ship to.
    pub collector: CollectorConfig,
    /// Address for `/metrics`, `/healthz`, `/readyz`; none disables them.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// How often a file at its end is checked for growth when no file event arrives.
    #[serde(default = "default_poll_interval", with = "duration")]
    pub poll_interval: Duration,
    /// How often the globs are expanded again (catches what file events miss).
    #[serde(default = "default_rescan_interval", with = "duration")]
    pub rescan_interval: Duration,
    /// How often acknowledged offsets are written to disk.
    #[serde(default = "default_checkpoint_interval", with = "duration")]
    pub checkpoint_interval: Duration,
    /// After a file is renamed away or deleted, how long it must stay quiet before it is
    /// let go (a writer may still append to it until it reopens its log).
    #[serde(default = "default_rotate_wait", with = "duration")]
    pub rotate_wait: Duration,
    /// How long SIGTERM waits for batches in flight to be acknowledged.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// How long the state of a file no longer followed (rotated out of the globs,
    /// deleted) is kept; should its content turn up again later, it is recognised.
    #[serde(default = "default_checkpoint_retention", with = "duration")]
    pub checkpoint_retention: Duration,
    /// Most bytes of lines read and not yet acknowledged, over all files (at most 4 GiB).
    /// A file that finds this spent sends what it has and waits; its log file is the buffer.
    #[serde(default = "default_max_buffered_bytes", with = "size")]
    pub max_buffered_bytes: u64,
    /// What to watch and where it goes.
    pub flows: Vec<FlowConfig>,
    /// Keys set by environment variables rather than the file: (key path, variable).
    #[serde(skip)]
    pub overridden: Vec<(&'static str, &'static str)>,
}

/// Where batches go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Base URL, e.g. `http://collector.example:8700`.
    pub url: String,
    /// File holding the bearer token (first non-empty line).
    pub token_file: PathBuf,
    /// Timeout of one request, including the collector's fsync.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Batches in flight at once over all files.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Batches of one file in flight at once (they may arrive in any order; the collector
    /// puts each range in its place, and the checkpoint only covers acknowledged prefixes).
    #[serde(default = "default_max_in_flight_per_file")]
    pub max_in_flight_per_file: usize,
    /// gzip level 0-9 for request bodies; 0 sends them uncompressed.
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    /// For an `https://` URL: PEM file of the only certificate authorities (or self-signed
    /// certificate) trusted for the collector; none trusts the system's CAs. Relative to
    /// the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// One set of files feeding one stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Collector stream name.
    pub stream: String,
    /// Glob patterns of files to follow (`*`, `?`, `[..]`, `**`).
    pub paths: Vec<String>,
    /// Glob patterns matched against the file name to skip, e.g. `*.gz`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start in files that exist at start-up and were never seen before.
    #[serde(default)]
    pub start_at: StartAt,
    /// Files never seen before and not modified for this long are not followed (until
    /// they are modified again); none follows every file.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ignore_older: Option<Duration>,
    /// A longer line is sent cut to this many bytes, with a marker saying how long it was.
    #[serde(default = "default_max_line_bytes", with = "size")]
    pub max_line_bytes: u64,
    /// Lines at the start of every new file that are not data (a CSV header): never sent.
    #[serde(default)]
    pub skip_header_lines: usize,
    /// Joins continuation lines to the line that starts their record; none: every line is
    /// a record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<Multiline>,
    /// When a batch is cut.
    #[serde(default)]
    pub batch: BatchConfig,
}

/// Multiline records: a line matching `start` begins one; other lines continue it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Multiline {
    /// Regular expression matching the first line of every record, e.g.
    /// `^\d{4}-\d{2}-\d{2}T`.
    #[serde(with = "regex_text")]
    pub start: regex::bytes::Regex,
    /// A record with no next start line is sent after this long without a new line.
    #[serde(default = "default_flush_after", with = "duration")]
    pub flush_after: Duration,
}

fn default_flush_after() -> Duration {
    Duration::from_secs(1)
}

/// A regular expression, checked when the config is read.
mod regex_text {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<regex::bytes::Regex, D::Error> {
        let text = String::deserialize(de)?;
        regex::bytes::Regex::new(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a valid regular expression: {e}"))
        })
    }

    pub fn serialize<S: Serializer>(
        value: &regex::bytes::Regex,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        ser.serialize_str(value.as_str())
    }
}

/// Where reading starts in a file with no checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From byte 0.
    #[default]
    Beginning,
    /// After the last complete line present at start-up. Files that appear later are
    /// always read from the beginning, so nothing written after start-up is skipped.
    End,
}

/// A batch is sent once any limit is reached.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most lines in one batch.
    pub max_records: usize,
    /// Most bytes of lines in one batch (a single longer line is still sent whole).
    #[serde(with = "size")]
    pub max_bytes: u64,
    /// Longest a line waits in the agent before its batch is sent.
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 5000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tollstream-agent")
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_rescan_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_rotate_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_checkpoint_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_buffered_bytes() -> u64 {
    32 << 20
}
fn default_max_line_bytes() -> u64 {
    1 << 20
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_in_flight() -> usize {
    8
}
fn default_max_in_flight_per_file() -> usize {
    4
}
fn default_gzip_level() -> u32 {
    2
}

impl Config {
    /// Reads, parses, applies environment overrides, resolves paths and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key path and what was expected.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        // Set and not empty (`Environment=TOLLSTREAM_AGENT_ID=` in a drop-in unsets it).
        for (key, var) in ENV_OVERRIDES {
            let Some(value) = std::env::var(var).ok().filter(|v| !v.is_empty()) else {
                continue;
            };
            match key {
                "agent_id" => config.agent_id = Some(value),
                _ => config.collector.url = value,
            }
            config.overridden.push((key, var));
        }
        // Absolute, so paths match what file events and logs report.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        let base = base.as_path();
        config.state_dir = resolve(base, &config.state_dir);
        config.collector.token_file = resolve(base, &config.collector.token_file);
        if let Some(ca) = &mut config.collector.ca_file {
            *ca = resolve(base, ca);
        }
        for flow in &mut config.flows {
            for pattern in &mut flow.paths {
                *pattern = resolve(base, Path::new(pattern.as_str()))
                    .to_string_lossy()
                    .into_owned();
            }
        }
        if config.agent_id.is_none() {
            config.agent_id = Some(gethostname::gethostname().to_string_lossy().into_owned());
        }
        config
            .validate()
            .map_err(|message| error::invalid(&text, path, &config.overridden, message))?;
        Ok(config)
    }

    /// Parses YAML text; `path` is only used in messages.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with the key path, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| error::parse_error(&e, text, path))
    }

    /// The effective configuration as YAML, for `check-config`, with a comment naming each
    /// key an environment variable set. It holds no secret (the token stays in its file).
    ///
    /// # Errors
    /// Serialisation errors (none are expected for a loaded config).
    pub fn to_yaml(&self) -> Result<String, String> {
        let yaml = yaml_serde::to_string(self).map_err(|e| e.to_string())?;
        let notes: String = self
            .overridden
            .iter()
            .map(|(key, var)| format!("# {key}: from the environment variable {var}\n"))
            .collect();
        Ok(notes + &yaml)
    }

    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// A message that starts with the key path and says how to fix it ([`Config::load`]
    /// turns it into a [`ConfigError::Invalid`] with the line).
    pub fn validate(&self) -> Result<(), String> {
        let invalid = |message: String| message;
        let id = self.agent_id.as_deref().unwrap_or("");
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(invalid(format!(
                "agent_id: {id:?} must be 1-128 visible ASCII characters without '/'"
            )));
        }
        if !(self.collector.url.starts_with("http://")
            || self.collector.url.starts_with("https://"))
        {
            return Err(invalid(format!(
                "collector.url: {:?} must start with http:// or https://",
                self.collector.url
            )));
        }
        if let Some(ca) = &self.collector.ca_file {
            if !self.collector.url.starts_with("https://") {
                return Err(invalid(
                    "collector.ca_file is only used with an https:// collector.url".into(),
                ));
            }
            if !ca.is_file() {
                return Err(invalid(format!(
                    "collector.ca_file: {} is not a readable file",
                    ca.display()
                )));
            }
        }
        if self.collector.max_in_flight == 0 {
            return Err(invalid("collector.max_in_flight must be > 0".into()));
        }
        if self.collector.max_in_flight_per_file == 0 {
            return Err(invalid(
                "collector.max_in_flight_per_file must be > 0".into(),
            ));
        }
        if !(64 << 10..=4 << 30).contains(&self.max_buffered_bytes) {
            return Err(invalid(format!(
                "max_buffered_bytes: {} must be between 64KiB and 4GiB",
                self.max_buffered_bytes
            )));
        }
        if self.collector.gzip_level > 9 {
            return Err(invalid("collector.gzip_level must be 0-9".into()));
        }
        if self.flows.is_empty() {
            return Err(invalid("flows must list at least one flow".into()));
        }
        for (i, flow) in self.flows.iter().enumerate() {
            if flow.stream.is_empty() {
                return Err(invalid(format!("flows[{i}].stream must not be empty")));
            }
            if flow.paths.is_empty() {
                return Err(invalid(format!(
                    "flows[{i}].paths must list at least one glob"
                )));
            }
            for (list, patterns) in [("paths", &flow.paths), ("exclude", &flow.exclude)] {
                for (j, pattern) in patterns.iter().enumerate() {
                    glob::Pattern::new(pattern).map_err(|e| {
                        invalid(format!(
                            "flows[{i}].{list}[{j}]: {pattern:?} is not a valid glob: {e}"
                        ))
                    })?;
                }
            }
            if !valid_stream_name(&flow.stream) {
                return Err(invalid(format!(
                    "flows[{i}].stream: {:?} is not a stream name (1-64 characters of a-z, \
                     0-9, '-' or '_', as the collector requires)",
                    flow.stream
                )));
            }
            if !(64..=(64 << 20)).contains(&flow.max_line_bytes) {
                return Err(invalid(format!(
                    "flows[{i}].max_line_bytes must be between 64B and 64MiB"
                )));
            }
            if flow.batch.max_records == 0 {
                return Err(invalid(format!("flows[{i}].batch.max_records must be > 0")));
            }
            if flow.batch.max_bytes == 0 {
                return Err(invalid(format!("flows[{i}].batch.max_bytes must be > 0")));
            }
        }
        for (name, value) in [
            ("poll_interval", self.poll_interval),
            ("rescan_interval", self.rescan_interval),
            ("checkpoint_interval", self.checkpoint_interval),
        ] {
            if value < Duration::from_millis(10) {
                return Err(invalid(format!("{name} must be >= 10ms")));
            }
        }
        Ok(())
    }

    /// The agent id (set by [`Config::load`]).
    pub fn agent_id(&self) -> &str {
        self.agent_id.as_deref().unwrap_or("agent")
    }
}

/// The collector's rule for stream names (they become directory and metric label values).
fn valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
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

/// An optional `humantime` duration.
mod opt_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(de).map(Some)
    }

    pub fn serialize<S: Serializer>(value: &Option<Duration>, ser: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::duration::serialize(value, ser),
            None => ser.serialize_none(),
        }
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

    const MINIMAL: &str = "collector:\n  url: http://127.0.0.1:8700\n  token_file: token\nflows:\n  - stream: toll-transactions\n    paths: [\"/var/log/toll/*.log\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let mut config = Config::parse(MINIMAL, Path::new("a.yaml")).expect("parses");
        config.agent_id = Some("booth-1".into());
        config.validate().expect("valid");
        let flow = &config.flows[0];
        assert_eq!(flow.start_at, StartAt::Beginning);
        assert_eq!(flow.batch.max_records, 5000);
        assert_eq!(flow.batch.max_bytes, 1 << 20);
        assert_eq!(config.poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn misspelt_key_is_rejected_with_its_path() {
        let text = MINIMAL.replace(
            "    paths:",
            "    start_at: end\n    batch: { max_recods: 5 }\n    paths:",
        );
        let err = Config::parse(&text, Path::new("a.yaml")).expect_err("rejected");
        let message = err.to_string();
        assert!(
            message.contains("flows[0].batch") && message.contains("max_recods"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_multiline_pattern_is_named_with_its_key() {
        let text = MINIMAL.to_owned() + "    multiline: { start: \"^(unclosed\" }\n";
        let err = Config::parse(&text, Path::new("a.yaml")).expect_err("rejected");
        let message = err.to_string();
        assert!(
            message.contains("multiline") && message.contains("not a valid regular expression"),
            "{message}"
        );
    }

    #[test]
    fn bad_glob_is_named() {
        let mut config =
            Config::parse(&MINIMAL.replace("*.log", "[.log"), Path::new("a.yaml")).expect("parses");
        config.agent_id = Some("a".into());
        let err = config.validate().expect_err("invalid");
        assert!(err.to_string().contains("not a valid glob"), "{err}");
    }
}
