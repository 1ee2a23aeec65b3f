//! `tollstream-collector`: parse the command line, load the config, run.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tollstream_collector::clock::SystemClock;
use tollstream_collector::config::Config;
use tollstream_collector::logging::{self, LogFormat};
use tollstream_collector::systemd;
use tollstream_collector::{Listeners, run};

/// Exit code for a configuration error (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// The man-page sections of `--help` (`-h` stays short): files, environment, signals, exit
/// status, where the packages put things.
const AFTER_LONG_HELP: &str = "\
Files (as the Debian package installs them):
  /etc/tollstream/collector.yaml    configuration (--config); check it with `check-config`
  /etc/tollstream/agent-tokens      tokens agents may use (auth.agent_tokens_file)
  /var/lib/tollstream-collector/    data_dir: wal/, archive/, state/, warehouse.db

Environment:
  TOLLSTREAM_LOG                    log filter, e.g. info (default), debug
  PGPASSWORD                        PostgreSQL password when neither the URL nor
                                    warehouse.password_file gives one

Signals: SIGHUP reads the agent tokens and TLS files again (systemctl reload). SIGTERM or
SIGINT stops accepting, finishes requests in progress, drains the WAL, buffer and loader for
up to shutdown_grace and exits 0.

Exit status: 0 after a clean stop or a successful command, 64 for an invalid configuration
or option, 1 for any other failure (see `reload --help` for reload's).

Under systemd: systemctl enable --now tollstream-collector; logs: journalctl -u
tollstream-collector.
Reference: /usr/share/doc/tollstream-collector/README.md";

/// Receives toll log batches from tollstream agents, makes them durable, archives them and
/// loads each exactly once into the warehouse.
#[derive(Parser)]
#[command(version, about, long_about = None, after_long_help = AFTER_LONG_HELP)]
struct Cli {
    /// Path of the YAML configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/tollstream/collector.yaml"
    )]
    config: PathBuf,
    /// Log format on stderr: `text` (without timestamps and colours, with syslog priorities,
    /// when stderr is the systemd journal) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TOLLSTREAM_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector (the default).
    Run,
    /// Validate the configuration, print the effective config (passwords masked), and exit:
    /// 0 when valid, 64 with the file, line, column and key of the first error.
    CheckConfig,
    /// Print, per stream, the WAL, buffer, archive and warehouse positions and the freshness.
    Status {
        /// Print JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load archive objects into the warehouse again (idempotent: objects already in its
    /// load manifest are skipped), e.g. to rebuild a fresh database. Safe while the
    /// collector runs.
    #[command(long_about = RELOAD_ABOUT)]
    Reload(ReloadArgs),
    /// Manage customers' monthly spending limits (data_dir/state/limits.db): import, set,
    /// get, delete, list. Works while the collector runs (it applies changes within a
    /// second) and while it is stopped.
    #[command(long_about = LIMITS_ABOUT)]
    Limits {
        #[command(subcommand)]
        command: tollstream_collector::alerts::limits::cli::LimitsCommand,
    },
}

const LIMITS_ABOUT: &str = "\
Manage customers' monthly spending limits, stored in data_dir/state/limits.db (the store \
behind the admin API's /v1/customers/{id}/limit). Works while the collector runs (it applies \
changes within a second) and while it is stopped; run it as the collector's user.

Amounts are exact decimal text (150, 150.5, 150.00) with at most the amount column's decimal \
places; never negative.

Exit status: 0 on success; 1 when a CSV file has bad lines (every one is listed, up to 20, \
and nothing is imported), when `get` finds no limit, or when the store fails; 64 for a bad \
option, customer id, amount or configuration.";

const RELOAD_ABOUT: &str = "\
Load archive objects into the warehouse again, exactly as the collector loads them: one \
transaction per object with its row in the load manifest, in sequence order. Objects the \
target's manifest already holds are skipped, so running it twice changes nothing; inside the \
table the natural key still drops a line loaded before. Safe while the collector runs \
against the same warehouse: one load of an object commits, the other finds it loaded.

An object is selected when its FIRST record was received (collector receive time, UTC; the \
hour its directory <stream>/YYYY/MM/DD/HH is named by) at or after --since and before \
--until. Its later records may have been received after --until. Without either bound, the \
whole archive.

Exit status: 0 when every selected object is loaded (or already was); 1 when an archive \
object could not be read (it is named, and the others are loaded), or when the warehouse or \
the archive fails (nothing is retried; what was committed stays, run it again to go on); 64 \
for a bad option or configuration.";

/// Options of `reload`.
#[derive(clap::Args)]
struct ReloadArgs {
    /// Only objects whose first record was received at or after this: an RFC 3339 time with
    /// an offset (2026-11-25T14:00:00Z), a date (2026-11-25, midnight UTC) or a duration
    /// before now (2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only objects whose first record was received before this (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only this stream (repeatable); default: every configured stream.
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// Load into this warehouse instead of warehouse.url (same forms: sqlite://PATH, a
    /// relative PATH being relative to the current directory, or postgres://USER@HOST/DB).
    /// A PostgreSQL password comes from the URL, --warehouse-password-file or PGPASSWORD.
    #[arg(long, value_name = "URL")]
    warehouse: Option<String>,
    /// With --warehouse: a file whose first line is the PostgreSQL password.
    #[arg(long, value_name = "FILE", requires = "warehouse")]
    warehouse_password_file: Option<PathBuf>,
    /// With --warehouse and sslmode=require in its URL: a PEM file of the CAs the server's
    /// certificate must chain to (default: the system trust store).
    #[arg(long, value_name = "FILE", requires = "warehouse")]
    warehouse_ca_file: Option<PathBuf>,
    /// List the objects that would be loaded; write nothing (not even a new database).
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tollstream-collector: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            if let Err(error) = check_files(&config) {
                eprintln!("tollstream-collector: invalid configuration: {error:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
            match yaml_like(&config) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tollstream-collector: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json } => match if json {
            tollstream_collector::status::report_json(&config, &SystemClock)
        } else {
            tollstream_collector::status::report(&config, &SystemClock)
        } {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tollstream-collector: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Reload(args) => reload(&config, args),
        Command::Limits { command } => {
            let mut out = std::io::stdout().lock();
            match tollstream_collector::alerts::limits::cli::run(&config, &command, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tollstream-collector: limits: {}", error.message);
                    ExitCode::from(error.exit)
                }
            }
        }
        Command::Run => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "Collector failed.");
                eprintln!("tollstream-collector: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn reload(config: &Config, args: ReloadArgs) -> ExitCode {
    use tollstream_collector::clock::Clock as _;
    use tollstream_collector::reload;
    let request = reload::Request {
        since: args.since,
        until: args.until,
        streams: args.streams,
        warehouse: args.warehouse,
        password_file: args.warehouse_password_file,
        ca_file: args.warehouse_ca_file,
        dry_run: args.dry_run,
    };
    let plan = match reload::Plan::new(config, &request, SystemClock.now()) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("tollstream-collector: reload: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut out = std::io::stdout().lock();
    match reload::run(config, &plan, &mut out) {
        Ok(summary) if summary.unreadable() == 0 => ExitCode::SUCCESS,
        Ok(summary) => {
            eprintln!(
                "tollstream-collector: reload: {} archive objects could not be read (named \
                 above); the others are loaded",
                summary.unreadable()
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tollstream-collector: reload: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `run` reads at start besides the config: the agent tokens, the TLS files and the
/// Firehose key files, so `check-config` (systemd's `ExecStartPre`) refuses what would stop
/// the daemon.
fn check_files(config: &Config) -> anyhow::Result<()> {
    let agents = tollstream_collector::ingest::TokenStore::open(&config.auth.agent_tokens_file)?;
    if let Some(tls) = &config.ingest.tls {
        tollstream_collector::ingest::server::TlsFiles::load(&tls.cert_file, &tls.key_file)?;
    }
    tollstream_collector::alerts::stage::admin_tokens(config, &agents)?;
    let rules = tollstream_collector::alerts::rules::compile(config).map_err(anyhow::Error::msg)?;
    tollstream_collector::alerts::stage::load_references(config, &rules)?;
    for (name, hook) in config.notify.all_webhooks() {
        if let Some(file) = &hook.secret_file {
            let secret = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!(
                    "notify.webhooks.{name}.secret_file: reading {}: {e}",
                    file.display()
                )
            })?;
            anyhow::ensure!(
                !secret.trim().is_empty(),
                "notify.webhooks.{name}.secret_file: {} is empty",
                file.display()
            );
        }
    }
    if let Some(firehose) = &config.firehose {
        tollstream_collector::ingest::firehose::keys::load(firehose)?;
    }
    Ok(())
}

fn yaml_like(config: &Config) -> anyhow::Result<String> {
    config
        .to_yaml()
        .map_err(|e| anyhow::anyhow!("printing the effective configuration: {e}"))
}

fn serve(config: Config) -> anyhow::Result<()> {
    // Every connection is a descriptor: take the hard limit (systemd's LimitNOFILE).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < config.ingest.max_connections as u64 + 256 => tracing::warn!(
            limit,
            max_connections = config.ingest.max_connections,
            "The open-files limit is below ingest.max_connections plus what the WAL, archive \
             and warehouse need; raise LimitNOFILE / ulimit -n."
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "Could not raise the open-files limit."),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let ingest = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding listen address {}", config.listen))?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics_listen address {addr}"))?,
            ),
            None => None,
        };
        let handle = tollstream_collector::metrics::install()?;
        let shutdown = CancellationToken::new();
        let reload = Arc::new(Notify::new());
        tokio::spawn(wait_for_signals(shutdown.clone(), reload.clone()));
        let clock: Arc<dyn tollstream_collector::clock::Clock> =
            match std::env::var_os("TOLLSTREAM_TEST_CLOCK_FILE") {
                Some(path) => {
                    let clock = tollstream_collector::clock::FileClock::open(path.as_ref())
                        .map_err(anyhow::Error::msg)?;
                    tracing::warn!(file = ?path, "Using a test clock (TOLLSTREAM_TEST_CLOCK_FILE): wall-clock time is read from a file.");
                    Arc::new(clock)
                }
                None => Arc::new(SystemClock),
            };
        run(
            config,
            Listeners { ingest, metrics },
            handle,
            clock,
            reload,
            shutdown,
        )
        .await
    })
}

/// Cancels `token` on SIGTERM or SIGINT; notifies `reload` on SIGHUP.
async fn wait_for_signals(token: CancellationToken, reload: Arc<Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("Could not install signal handlers; stop with SIGKILL.");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down."),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down."),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received; reloading agent tokens and TLS files.");
                reload.notify_one();
                continue;
            }
        }
        systemd::stopping("Stopping: closing ingest.");
        token.cancel();
        return;
    }
}
