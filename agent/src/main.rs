//! `tollstream-agent`: parse the command line, load the config, run.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tollstream_agent::clock::SystemClock;
use tollstream_agent::config::Config;
use tollstream_agent::logging::{self, LogFormat};
use tollstream_agent::systemd;

/// Exit code for a configuration error (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// The man-page sections of `--help` (`-h` stays short): files, environment, signals, exit
/// status, where the packages put things.
const AFTER_LONG_HELP: &str = "\
Files (as the Debian package installs them):
  /etc/tollstream/agent.yaml      configuration (--config); check it with `check-config`
  /etc/tollstream/agent.token     bearer token sent to the collector (collector.token_file)
  /var/lib/tollstream-agent/      checkpoints (state_dir)

Environment:
  TOLLSTREAM_AGENT_ID             overrides agent_id
  TOLLSTREAM_COLLECTOR_URL        overrides collector.url
  TOLLSTREAM_LOG                  log filter, e.g. info (default), debug

Signals: SIGTERM or SIGINT stops reading, waits up to shutdown_grace for the batches in
flight, writes the checkpoints and exits 0.

Exit status: 0 after a clean stop or a successful command, 64 for an invalid configuration,
1 for any other failure.

Under systemd: systemctl enable --now tollstream-agent; logs: journalctl -u tollstream-agent.
Reference: /usr/share/doc/tollstream-agent/README.md";

/// Follows toll log files and ships every line exactly once to a tollstream collector.
#[derive(Parser)]
#[command(version, about, long_about = None, after_long_help = AFTER_LONG_HELP)]
struct Cli {
    /// Path of the YAML configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/tollstream/agent.yaml"
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
    /// Run the agent (the default).
    Run,
    /// Validate the configuration, print the effective config (with the keys set by
    /// TOLLSTREAM_AGENT_ID and TOLLSTREAM_COLLECTOR_URL marked), and exit: 0 when valid, 64
    /// with the file, line, column and key of the first error.
    CheckConfig,
    /// Print, per followed file, the acknowledged offset, size, lag and last ack time.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tollstream-agent: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match config.to_yaml() {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tollstream-agent: printing the effective configuration: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Status => match tollstream_agent::status::report(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tollstream-agent: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "Agent failed.");
                eprintln!("tollstream-agent: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // File reads, gzip and checkpoint writes run on blocking threads. Tokio's default
        // (up to 512) let a first scan of 1,000 files start hundreds of threads, each with
        // its own stack and malloc arena, memory the process kept: 185-290 MB of RSS
        // (`tollbench many-files`); with 4 it is 28 MB, reads as fast, and shipping one
        // file runs at the same rate.
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Handlers first, so a SIGTERM during start-up is a clean stop, not a kill.
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(signals(), shutdown.clone()));
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics_listen address {addr}"))?,
            ),
            None => None,
        };
        let handle = tollstream_agent::metrics::install()?;
        tollstream_agent::run(
            config,
            metrics_listener,
            handle,
            Arc::new(SystemClock),
            shutdown,
        )
        .await
    })
}

type Signals = (
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
);

/// Installs the SIGTERM, SIGINT and SIGHUP handlers.
fn signals() -> Option<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    Some((
        signal(SignalKind::terminate()).ok()?,
        signal(SignalKind::interrupt()).ok()?,
        signal(SignalKind::hangup()).ok()?,
    ))
}

/// Cancels `token` on SIGTERM or SIGINT (telling systemd `STOPPING=1`); SIGHUP, which would
/// otherwise kill the agent, is logged and ignored.
async fn wait_for_signal(signals: Option<Signals>, token: CancellationToken) {
    let Some((mut term, mut int, mut hup)) = signals else {
        tracing::warn!("Could not install signal handlers; stop with SIGKILL.");
        return;
    };
    let name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => tracing::info!(
                "SIGHUP received; the agent reads its configuration only at start: restart it \
                 to apply changes."
            ),
        }
    };
    tracing::info!("{name} received; shutting down.");
    systemd::stopping(&format!("Stopping ({name})."));
    token.cancel();
}
