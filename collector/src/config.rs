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

use crate::schema::SchemaConfig;

mod error;
mod firehose;
mod notify;
mod rules;

pub use error::{ConfigError, Origin};
pub use firehose::{AccessKeyConfig, FirehoseConfig, valid_delivery_stream_name};
pub use notify::{NotifyConfig, WebhookConfig};
pub use rules::{
    Aggregate, AlertsConfig, Comparison, FilterConfig, Period, RuleConfig, ThresholdConfig,
};

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
    /// Free-space guard of `data_dir`.
    #[serde(default)]
    pub disk: DiskConfig,
    /// Stream name → definition. The toll stream is the shipped default.
    #[serde(default = "default_streams")]
    pub streams: BTreeMap<String, StreamConfig>,
    /// How long to wait for in-flight work on SIGTERM.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Alert rules, evaluated in event time on the streams' records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Event-time settings of the alert engine.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Where alerts are delivered.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// The Kinesis Firehose–compatible API (`POST /`); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firehose: Option<FirehoseConfig>,
}

/// Authentication of agents.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File with one bearer token per line (`#` starts a comment). Relative to the config file.
    pub agent_tokens_file: PathBuf,
    /// File with the admin API's bearer token(s) (customer limits), one per line; without
    /// it the admin API answers 404. Relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

/// The warehouse the loader writes to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// `sqlite://PATH` (PATH relative to `data_dir`), or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?param=value…]` (also
    /// `postgresql://`). Printed and logged with the password masked.
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: String,
    /// PostgreSQL: a file whose first line is the password (relative to the config file).
    /// Without it and without a password in the URL, `PGPASSWORD` is used when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PostgreSQL with `sslmode=require`: a PEM file of the CA certificates the server's
    /// certificate must chain to (relative to the config file). Without it, the system
    /// trust store. Refused without `sslmode=require`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://warehouse.db".into(),
            password_file: None,
            ca_file: None,
        }
    }
}

fn serialize_masked_url<S: Serializer>(url: &str, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&mask_url(url))
}

/// Where the warehouse is, resolved from `warehouse.url`.
#[derive(Clone)]
pub enum WarehouseTarget {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(Box<PostgresTarget>),
}

/// A PostgreSQL server and how to log in; `Debug` leaves the password out.
#[derive(Clone)]
pub struct PostgresTarget {
    /// Connection settings, password included.
    pub config: tokio_postgres::Config,
    /// The URL with its password masked, for messages.
    pub shown: String,
    /// Verified TLS for `sslmode=require`; `None`: plain (`disable`, `prefer`).
    pub tls: Option<crate::warehouse::pg_tls::PgTls>,
}

impl std::fmt::Debug for WarehouseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl WarehouseTarget {
    /// The file, or the URL with its password masked: safe to print and log.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(pg) => pg.shown.clone(),
        }
    }
}

/// `url` with the password (after `user:` in the authority, or a `password=` parameter)
/// replaced by `***`.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// Limits and timeouts of the ingest API: what one request, one connection and all of them
/// together may cost.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body as sent (compressed), default 16MiB. Larger: 413.
    #[serde(with = "size")]
    pub max_body_bytes: u64,
    /// Largest body after gzip decompression, default 64MiB. Larger (a gzip bomb): 413.
    #[serde(with = "size")]
    pub max_decompressed_bytes: u64,
    /// Most lines in one batch, default 100000. More: 413.
    pub max_records_per_batch: u32,
    /// Longest line, newline included, default 2MiB. Keep it above the agents'
    /// `max_line_bytes` plus 100 bytes (the marker of a cut line). Longer: 413.
    #[serde(with = "size")]
    pub max_line_bytes: u64,
    /// Memory all requests in progress may hold together (bodies as received and
    /// decompressed, until the WAL has them), default 256MiB. Past it: 429.
    #[serde(with = "size")]
    pub max_buffered_bytes: u64,
    /// Open connections at most, default 4096; further connections are closed at once.
    pub max_connections: usize,
    /// Time a request head has from its first byte (from the connection's opening, for the
    /// first request) to be complete, default 10s (slowloris protection).
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// Time a request has to deliver its whole body, default 60s. Slower: 408.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// A keep-alive connection silent this long between requests is closed, default 120s
    /// (longer than the agents' own 90 s pool idle timeout, so they close first).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Serve HTTPS with these PEM files instead of plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_records_per_batch: 100_000,
            max_line_bytes: 2 << 20,
            max_buffered_bytes: 256 << 20,
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            tls: None,
        }
    }
}

/// Certificate and key for HTTPS ingest.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Relative to the config file.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Relative to the config file.
    pub key_file: PathBuf,
}

/// Write-ahead log tuning.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// A segment file is closed and a new one started past this size, default 64MiB.
    #[serde(with = "size")]
    pub segment_bytes: u64,
    /// Most bytes one stream's WAL may hold on disk, default 4GiB. Past it (the archive
    /// stage is behind), ingest answers 503 with Retry-After until segments are archived
    /// and deleted. At least twice `segment_bytes`.
    #[serde(with = "size")]
    pub max_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_bytes: 4 << 30,
        }
    }
}

/// Disk-space guard of the data directory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Ingest answers 503 with Retry-After while the data directory's file system has less
    /// free space than this, default 256MiB: the reserve lets the archive and warehouse
    /// drain the WAL, after which its segments are deleted. 0 turns the guard off (a full
    /// disk then still only refuses the batches it could not write).
    #[serde(with = "size")]
    pub min_free_bytes: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            min_free_bytes: 256 << 20,
        }
    }
}

/// One stream: where its records go and how they are buffered.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Warehouse table.
    pub table: String,
    /// Line format, columns and natural key; the toll transaction schema by default.
    #[serde(default = "SchemaConfig::toll")]
    pub schema: SchemaConfig,
    /// When the buffer cuts an archive object.
    #[serde(default)]
    pub buffer: BufferConfig,
}

/// Firehose-style buffering hints: an object is cut when either is reached.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Cut an object once this many uncompressed bytes are buffered: 1MiB to 128MiB,
    /// default 8MiB.
    #[serde(with = "size")]
    pub max_bytes: u64,
    /// Cut an object once its oldest record has waited this long: 1s to 15min, default 1s.
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 20,
            max_age: Duration::from_secs(1),
        }
    }
}

/// Tables the warehouse keeps for itself.
const RESERVED_TABLES: [&str; 3] = ["loads", "rejected_records", "alerts"];

const MIN_BUFFER_BYTES: u64 = 1 << 20;
const MAX_BUFFER_BYTES: u64 = 128 << 20;
const MIN_BUFFER_AGE: Duration = Duration::from_secs(1);
const MAX_BUFFER_AGE: Duration = Duration::from_secs(15 * 60);

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
            schema: SchemaConfig::toll(),
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
        if let Some(file) = &mut config.auth.admin_token_file {
            *file = resolve(base, file);
        }
        for rule in &mut config.rules {
            if let ThresholdConfig::Reference(file) = &mut rule.threshold {
                *file = resolve(base, file);
            }
        }
        for hook in config
            .notify
            .webhook
            .iter_mut()
            .chain(config.notify.webhooks.values_mut())
        {
            if let Some(file) = &mut hook.secret_file {
                *file = resolve(base, file);
            }
        }
        let log = resolve(&config.data_dir, &config.notify.log);
        config.notify.log = log;
        if let Some(file) = &mut config.warehouse.password_file {
            *file = resolve(base, file);
        }
        if let Some(file) = &mut config.warehouse.ca_file {
            *file = resolve(base, file);
        }
        if let Some(tls) = &mut config.ingest.tls {
            tls.cert_file = resolve(base, &tls.cert_file);
            tls.key_file = resolve(base, &tls.key_file);
        }
        if let Some(firehose) = &mut config.firehose {
            firehose.resolve_paths(base);
        }
        config
            .validate()
            .map_err(|message| error::invalid(&text, path, &[], message))?;
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
    /// A message that starts with the key path and says how to fix it ([`Config::load`]
    /// turns it into a [`ConfigError::Invalid`] with the line).
    pub fn validate(&self) -> Result<(), String> {
        let invalid = |message: String| message;
        if self.streams.is_empty() {
            return Err(invalid("streams must define at least one stream".into()));
        }
        for (name, stream) in &self.streams {
            if !valid_stream_name(name) {
                return Err(invalid(format!(
                    "streams.{name}: a stream name is 1-64 characters of a-z, 0-9, '-' or '_'"
                )));
            }
            if name == crate::archive::ERRORS_DIR {
                return Err(invalid(format!(
                    "streams.{name}: the name {name:?} is reserved (the archive keeps rejected lines under archive/{name}/); choose another stream name"
                )));
            }
            if !valid_identifier(&stream.table) {
                return Err(invalid(format!(
                    "streams.{name}.table: {:?} is not a plain SQL identifier (a-z, 0-9, _, not an SQL keyword)",
                    stream.table
                )));
            }
            if RESERVED_TABLES.contains(&stream.table.as_str())
                || stream.table.starts_with("tollstream_")
            {
                return Err(invalid(format!(
                    "streams.{name}.table: {:?} is the name of one of the collector's own tables ({}, tollstream_*); choose another",
                    stream.table,
                    RESERVED_TABLES.join(", ")
                )));
            }
            if let Some((other, _)) = self
                .streams
                .iter()
                .find(|(other, s)| *other < name && s.table == stream.table)
            {
                return Err(invalid(format!(
                    "streams.{name}.table: {:?} is also the table of stream {other}; each stream needs its own table",
                    stream.table
                )));
            }
            if let Err(message) = stream.schema.build() {
                return Err(invalid(format!("streams.{name}.schema.{message}")));
            }
            if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&stream.buffer.max_bytes) {
                return Err(invalid(format!(
                    "streams.{name}.buffer.max_bytes must be between 1MiB and 128MiB"
                )));
            }
            if !(MIN_BUFFER_AGE..=MAX_BUFFER_AGE).contains(&stream.buffer.max_age) {
                return Err(invalid(format!(
                    "streams.{name}.buffer.max_age must be between 1s and 15m"
                )));
            }
        }
        if self.wal.segment_bytes < 64 * 1024 {
            return Err(invalid("wal.segment_bytes must be >= 64KiB".into()));
        }
        if self.wal.max_bytes < self.wal.segment_bytes.saturating_mul(2) {
            return Err(invalid(
                "wal.max_bytes must be at least twice wal.segment_bytes (a full segment is \
                 deleted only once the next one has started)"
                    .into(),
            ));
        }
        let ingest = &self.ingest;
        if ingest.max_body_bytes > 1 << 30 || ingest.max_decompressed_bytes > 1 << 30 {
            return Err(invalid(
                "ingest.max_body_bytes and ingest.max_decompressed_bytes must be <= 1GiB".into(),
            ));
        }
        if ingest.max_decompressed_bytes < 64 * 1024 {
            return Err(invalid(
                "ingest.max_decompressed_bytes must be >= 64KiB".into(),
            ));
        }
        if ingest.max_buffered_bytes > 64 << 30 {
            return Err(invalid("ingest.max_buffered_bytes must be <= 64GiB".into()));
        }
        if !(1..=1_000_000).contains(&ingest.max_connections) {
            return Err(invalid(
                "ingest.max_connections must be between 1 and 1000000".into(),
            ));
        }
        // One request at its worst: the body, plus the inflated body while its buffer grows
        // (old and new allocation at once).
        if ingest.max_buffered_bytes < ingest.max_body_bytes + 2 * ingest.max_decompressed_bytes {
            return Err(invalid(
                "ingest.max_buffered_bytes must hold at least one request: >= \
                 ingest.max_body_bytes + 2 x ingest.max_decompressed_bytes"
                    .into(),
            ));
        }
        if ingest.max_line_bytes < 128 {
            return Err(invalid("ingest.max_line_bytes must be >= 128B".into()));
        }
        if ingest.max_records_per_batch == 0 {
            return Err(invalid("ingest.max_records_per_batch must be >= 1".into()));
        }
        for (key, value) in [
            ("header_timeout", ingest.header_timeout),
            ("body_timeout", ingest.body_timeout),
            ("idle_timeout", ingest.idle_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(format!("ingest.{key} must be >= 100ms")));
            }
        }
        if let Some(tls) = &ingest.tls {
            for (key, path) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !path.is_file() {
                    return Err(invalid(format!(
                        "ingest.tls.{key}: {} is not a readable file",
                        path.display()
                    )));
                }
            }
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
        self.warehouse_target().map_err(invalid)?;
        if let Some(firehose) = &self.firehose {
            firehose.validate(&self.streams)?;
        }
        crate::alerts::rules::compile(self).map_err(invalid)?;
        Ok(())
    }

    /// The warehouse named by `warehouse.url`: a SQLite file (resolved against `data_dir`)
    /// or a PostgreSQL server with its password (from the URL, `warehouse.password_file`
    /// or `PGPASSWORD`).
    ///
    /// # Errors
    /// A message naming the key when the URL or the password file is unusable; it never
    /// contains the password.
    pub fn warehouse_target(&self) -> Result<WarehouseTarget, String> {
        let url = &self.warehouse.url;
        let shown = mask_url(url);
        if let Some(rest) = url.strip_prefix("sqlite://") {
            if rest.is_empty() {
                return Err(
                    "warehouse.url: sqlite:// needs a file, e.g. sqlite://warehouse.db".into(),
                );
            }
            if self.warehouse.password_file.is_some() {
                return Err(
                    "warehouse.password_file: only a PostgreSQL warehouse has a password".into(),
                );
            }
            if self.warehouse.ca_file.is_some() {
                return Err(
                    "warehouse.ca_file: only a PostgreSQL warehouse is reached over TLS".into(),
                );
            }
            return Ok(WarehouseTarget::Sqlite(resolve(
                &self.data_dir,
                Path::new(rest),
            )));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "warehouse.url: {shown:?} is not supported; use sqlite://PATH or \
                 postgres://USER@HOST:PORT/DATABASE"
            ));
        }
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                let cause = std::error::Error::source(&e)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                // libpq's verify-ca and verify-full are what require means here.
                let hint = if cause.contains("sslmode") {
                    "; use sslmode=require (TLS, the certificate and host name verified), \
                     prefer or disable"
                } else {
                    ""
                };
                format!("warehouse.url: {shown:?} is not a PostgreSQL URL{cause}{hint}")
            })?;
        if config.get_user().is_none() {
            return Err(format!(
                "warehouse.url: {shown:?} names no user; write postgres://USER@HOST/DATABASE"
            ));
        }
        let tls = postgres_tls(&config, &shown, self.warehouse.ca_file.as_deref())?;
        if let Some(file) = &self.warehouse.password_file {
            if config.get_password().is_some() {
                return Err(
                    "warehouse.password_file: the URL has a password too; keep it in one place \
                     (preferably the file)"
                        .into(),
                );
            }
            let text = std::fs::read_to_string(file).map_err(|e| {
                format!(
                    "warehouse.password_file: cannot read {}: {e}",
                    file.display()
                )
            })?;
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(format!(
                    "warehouse.password_file: {} is empty; its first line is the password",
                    file.display()
                ));
            }
            config.password(password);
        } else if config.get_password().is_none()
            && let Some(password) = std::env::var_os("PGPASSWORD")
        {
            config.password(password.as_encoded_bytes());
        }
        Ok(WarehouseTarget::Postgres(Box::new(PostgresTarget {
            config,
            shown,
            tls,
        })))
    }
}

/// The TLS a PostgreSQL URL asks for: verified TLS with `sslmode=require` (against
/// `ca_file`, or the system trust store), none with `disable` or `prefer`.
fn postgres_tls(
    config: &tokio_postgres::Config,
    shown: &str,
    ca_file: Option<&Path>,
) -> Result<Option<crate::warehouse::pg_tls::PgTls>, String> {
    use tokio_postgres::config::{Host, SslMode};
    if config.get_ssl_mode() != SslMode::Require {
        // Refused rather than taken to mean sslmode=require: the URL alone says whether
        // the connection is encrypted, and a CA file next to a plain connection would
        // look like protection that is not there.
        return match ca_file {
            Some(_) => Err(format!(
                "warehouse.ca_file goes with TLS, but warehouse.url {shown:?} does not ask for \
                 it: add sslmode=require to the URL (e.g. postgres://USER@HOST/DB?sslmode=require) \
                 or remove warehouse.ca_file"
            )),
            None => Ok(None),
        };
    }
    if config
        .get_hosts()
        .iter()
        .any(|host| !matches!(host, Host::Tcp(_)))
    {
        return Err(format!(
            "warehouse.url: {shown:?} asks for TLS (sslmode=require) on a Unix socket, where \
             PostgreSQL never uses TLS; use a TCP host name, or sslmode=disable for the socket"
        ));
    }
    crate::warehouse::pg_tls::PgTls::new(ca_file).map(Some)
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

pub(crate) fn valid_identifier(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !SQL_KEYWORDS.contains(&name)
}

/// Words PostgreSQL reserves, or SQLite cannot take as a plain name: a table or column
/// called so would need quoting everywhere, so the config refuses them instead.
const SQL_KEYWORDS: &[&str] = &[
    "add",
    "all",
    "alter",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "autoincrement",
    "between",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "commit",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "delete",
    "desc",
    "distinct",
    "do",
    "drop",
    "else",
    "end",
    "escape",
    "except",
    "exists",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "glob",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "index",
    "indexed",
    "initially",
    "inner",
    "insert",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "match",
    "natural",
    "not",
    "nothing",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "raise",
    "references",
    "regexp",
    "replace",
    "returning",
    "right",
    "select",
    "session_user",
    "set",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "transaction",
    "true",
    "union",
    "unique",
    "update",
    "user",
    "using",
    "values",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "without",
];

/// `humantime` durations such as `500ms`, `2s`, `10m`.
pub(crate) mod duration {
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

/// Optional `humantime` durations.
pub(crate) mod duration_option {
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

    const MINIMAL: &str = "listen: 127.0.0.1:8700\ndata_dir: data\nauth:\n  agent_tokens_file: t\n";

    #[test]
    fn minimal_config_gets_the_toll_stream_by_default() {
        let config = Config::parse(MINIMAL, Path::new("c.yaml")).expect("parses");
        let stream = &config.streams["toll-transactions"];
        assert_eq!(stream.table, "toll_transactions");
        assert_eq!(stream.buffer.max_bytes, 8 << 20);
        config.validate().expect("valid");
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
            "{MINIMAL}streams:\n  s:\n    table: t\n    buffer: {{ max_bytes: 1MiB, max_age: 1500ms }}\n"
        );
        let config = Config::parse(&text, Path::new("c.yaml")).expect("parses");
        assert_eq!(config.streams["s"].buffer.max_bytes, 1 << 20);
        assert_eq!(
            config.streams["s"].buffer.max_age,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn a_postgres_url_is_accepted_and_printed_without_its_password() {
        let text =
            format!("{MINIMAL}warehouse:\n  url: postgres://loader:s3cr%40t@db.example:5433/dw\n");
        let config = Config::parse(&text, Path::new("c.yaml")).expect("parses");
        let WarehouseTarget::Postgres(pg) = config.warehouse_target().expect("valid") else {
            panic!("postgres")
        };
        assert_eq!(pg.config.get_password(), Some(&b"s3cr@t"[..]));
        assert_eq!(pg.config.get_user(), Some("loader"));
        assert_eq!(pg.config.get_ports(), [5433]);
        assert_eq!(pg.shown, "postgres://loader:***@db.example:5433/dw");
        let yaml = config.to_yaml().expect("yaml");
        assert!(!yaml.contains("s3cr"), "{yaml}");
        assert!(
            yaml.contains("postgres://loader:***@db.example:5433/dw"),
            "{yaml}"
        );
        assert!(!format!("{:?}", config.warehouse_target()).contains("s3cr"));
    }

    #[test]
    fn passwords_are_masked_wherever_a_url_carries_them() {
        for (url, shown) in [
            ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
            (
                "postgres://u@h:5432/db?password=p&sslmode=disable",
                "postgres://u@h:5432/db?password=***&sslmode=disable",
            ),
            ("postgres://u:p@h", "postgres://u:***@h"),
            ("postgres://u:p:q@h1,h2/db", "postgres://u:***@h1,h2/db"),
            ("sqlite://warehouse.db", "sqlite://warehouse.db"),
        ] {
            assert_eq!(mask_url(url), shown);
        }
    }

    #[test]
    fn the_password_comes_from_the_file_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pg.pass"), "from-the-file\n").expect("write");
        std::fs::write(dir.path().join("t"), "token\n").expect("write");
        let yaml = format!(
            "{MINIMAL}warehouse:\n  url: postgres://loader@127.0.0.1/dw\n  password_file: pg.pass\n"
        );
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let config = Config::load(&path).expect("valid");
        let WarehouseTarget::Postgres(pg) = config.warehouse_target().expect("target") else {
            panic!("postgres")
        };
        assert_eq!(pg.config.get_password(), Some(&b"from-the-file"[..]));
        // A password in two places, a missing file, TLS settings that cannot work and
        // unknown schemes are refused.
        for (warehouse, expected) in [
            (
                "url: postgres://loader:x@h/dw\n  password_file: pg.pass",
                "in one place",
            ),
            (
                "url: postgres://loader@h/dw\n  password_file: nope",
                "cannot read",
            ),
            (
                "url: postgres://loader@h/dw?sslmode=prefer\n  ca_file: pg.pass",
                "add sslmode=require",
            ),
            (
                "url: postgres://loader@h/dw?sslmode=require\n  ca_file: nope.pem",
                "warehouse.ca_file: cannot read",
            ),
            (
                "url: postgres://loader@h/dw?sslmode=require\n  ca_file: pg.pass",
                "holds no PEM certificate",
            ),
            (
                "url: postgres://loader@/dw?host=/run/postgresql&sslmode=require",
                "Unix socket",
            ),
            (
                "url: sqlite://w.db\n  ca_file: pg.pass",
                "only a PostgreSQL",
            ),
            ("url: postgres://h/dw", "no user"),
            (
                "url: postgres://loader@h/dw?sslmode=verify-full",
                "use sslmode=require",
            ),
            ("url: mysql://u:hunter2@h/dw", "not supported"),
            (
                "url: sqlite://w.db\n  password_file: pg.pass",
                "only a PostgreSQL",
            ),
        ] {
            std::fs::write(&path, format!("{MINIMAL}warehouse:\n  {warehouse}\n")).expect("write");
            let error = Config::load(&path).expect_err(warehouse).to_string();
            assert!(error.contains(expected), "{warehouse}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn bad_size_names_the_key() {
        let text = format!("{MINIMAL}wal: {{ segment_bytes: lots }}\n");
        let err = Config::parse(&text, Path::new("c.yaml")).expect_err("rejected");
        assert!(err.to_string().contains("wal.segment_bytes"), "{err}");
    }
}
