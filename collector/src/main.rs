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
use tollstream_collector::{Listeners, run};

/// Exit code for a configuration error (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// Receives toll log batches from tollstream agents, makes them durable, archives them and
/// loads each exactly once into the warehouse.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Path of the YAML configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/tollstream/collector.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector (the default).
    Run,
    /// Validate the configuration, print the effective config, and exit.
    CheckConfig,
    /// Print, per stream, the WAL, buffer, archive and warehouse positions and the freshness.
    Status {
        /// Print JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tollstream-collector: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match yaml_like(&config) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tollstream-collector: {error:#}");
                ExitCode::FAILURE
            }
        },
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
        run(
            config,
            Listeners { ingest, metrics },
            handle,
            Arc::new(SystemClock),
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
        token.cancel();
        return;
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
