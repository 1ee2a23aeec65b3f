//! tollstream agent: follows log files and ships every line exactly once to a collector.
//!
//! ```text
//! discover ─► tail ─► batch ─► ship
//!               ▲                │
//!           checkpoint ◄─────────┘ (after the collector's ack)
//! ```
//!
//! The log files are the buffer: nothing is held that is not still on disk, and a
//! checkpoint only ever records what the collector acknowledged.

#![forbid(unsafe_code)]

pub mod batch;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod discover;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod multiline;
pub mod ship;
pub mod status;
pub mod systemd;
pub mod tail;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checkpoint::Checkpointer;
use crate::clock::Clock;
use crate::config::Config;
use crate::discover::Discoverer;
use crate::health::Health;
use crate::ship::{Shipper, ShipperConfig};
use crate::systemd::{Heartbeats, WatchdogPlan};
use crate::tail::Budgets;

/// Reads the bearer token: the first non-empty line of the token file.
///
/// # Errors
/// An unreadable or empty file.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading collector.token_file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("collector.token_file {} is empty", path.display()))
}

/// Runs the agent until `shutdown` is cancelled, then stops reading, waits up to
/// `shutdown_grace` for batches in flight, writes the checkpoint and returns.
///
/// Tells systemd `READY=1` once the checkpoints are loaded and the first scan has started
/// a tailer for every file found, and feeds its watchdog while the discovery loop and every
/// tailer make progress (see [`systemd`]).
///
/// # Errors
/// Start-up failures: unreadable token, state directory or checkpoints.
pub async fn run(
    config: Config,
    metrics_listener: Option<TcpListener>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let token = read_token(&config.collector.token_file)?;
    systemd::status("Loading checkpoints.");
    let checkpoints = checkpoint::load(&config.state_dir, clock.as_ref())?;
    // After a damaged checkpoint (or once state was pruned), `start_at: end` would skip
    // what was never sent.
    let first_run = checkpoints.entries().next().is_none() && checkpoints.forgotten_at().is_none();
    let checkpoints = Arc::new(Mutex::new(checkpoints));
    let give_up = CancellationToken::new();
    let collector = &config.collector;
    let health = Arc::new(Health::default());
    let shipper_config = ShipperConfig {
        url: &collector.url,
        token: &token,
        timeout: collector.request_timeout,
        max_in_flight: collector.max_in_flight,
        gzip_level: collector.gzip_level,
        ca_file: collector.ca_file.as_deref(),
    };
    let shipper = Shipper::new(&shipper_config, health.clone(), give_up.clone())?
        .stopping_on(shutdown.clone());
    let (ship_tx, ship_rx) = mpsc::channel(collector.max_in_flight * 2);
    let config = Arc::new(config);

    let stop_checkpointer = CancellationToken::new();
    let checkpointer = Checkpointer {
        checkpoints: checkpoints.clone(),
        dir: config.state_dir.clone(),
        interval: config.checkpoint_interval,
    };
    let checkpointer = tokio::spawn(checkpointer.run(stop_checkpointer.clone()));
    let shipper = tokio::spawn(shipper.run(ship_rx));
    // Every followed file holds a descriptor: take what the system allows.
    let open_files_limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            warn!(%error, "Could not raise the open-files limit.");
            0
        }
    };
    let budgets = Budgets::new(&config);
    if let Some(listener) = metrics_listener {
        let health_view = health.clone();
        let budgets = budgets.clone();
        let addr = listener.local_addr()?;
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) =
                axum::serve(listener, metrics::router(metrics, health_view, budgets))
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
            {
                warn!(%error, "Metrics server failed.");
            }
        });
        info!(%addr, "Serving /metrics, /healthz, /readyz.");
    }
    let discoverer = Discoverer::new(
        config.clone(),
        checkpoints,
        ship_tx,
        clock,
        shutdown.clone(),
        first_run,
        health,
    )
    .with_budgets(budgets);
    let heartbeats = Arc::new(Heartbeats::default());
    let (first_scan_tx, first_scan) = tokio::sync::oneshot::channel();
    let discoverer = discoverer.supervised(heartbeats.clone(), first_scan_tx);
    info!(agent_id = config.agent_id(), collector = %config.collector.url, flows = config.flows.len(), open_files_limit, "Agent started.");
    let discovery = tokio::spawn(discoverer.run());
    let stop_watchdog = CancellationToken::new();
    tokio::spawn(systemd::watchdog(
        heartbeats,
        WatchdogPlan::from_env(),
        stop_watchdog.clone(),
    ));
    tokio::select! {
        files = first_scan => {
            let files = files.unwrap_or(0);
            info!(files, "First scan done; agent ready.");
            systemd::ready(&format!(
                "Following {files} files of {} flows; shipping to {} as {}.",
                config.flows.len(),
                config.collector.url,
                config.agent_id()
            ));
        }
        () = shutdown.cancelled() => {}
    }

    shutdown.cancelled().await;
    // systemd stops watching once it is told STOPPING=1.
    stop_watchdog.cancel();
    systemd::stopping("Stopping: waiting for batches in flight, then writing the checkpoint.");
    info!(grace = ?config.shutdown_grace, "Stopping: no more reading; waiting for batches in flight.");
    // Past the grace period the shipper stops retrying; unacknowledged batches stay in
    // their files and are sent again (and deduplicated) after the next start.
    let grace = config.shutdown_grace;
    let timer = give_up.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        timer.cancel();
    });
    discovery.await.context("discovery task")?;
    shipper.await.context("shipper task")?;
    stop_checkpointer.cancel();
    checkpointer.await.context("checkpointer task")?;
    info!("Agent stopped; checkpoint written.");
    Ok(())
}
