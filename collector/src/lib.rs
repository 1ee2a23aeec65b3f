//! tollstream collector: receives batches of log lines, makes them durable in a
//! write-ahead log, cuts them into archive objects and loads each object exactly once into
//! the warehouse; evaluates alert rules on the same records and delivers each alert once.
//!
//! ```text
//! ingest ─► wal ─┬─► buffer ─► archive ─► warehouse
//!                └─► alerts ─► notify (outbox ─► webhooks, alert log, alerts table)
//!                      ▲
//!        api (limits) ─┘  reference data
//! ```
//!
//! Every stage reads from the one before it and owns its position; see each module's
//! header for its input, output and durability promise.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod archive;
pub mod buffer;
pub mod clock;
pub mod config;
pub mod crashpoint;
pub mod disk;
mod fsutil;
pub mod health;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod reload;
pub mod schema;
pub mod status;
pub mod systemd;
pub mod wal;
pub mod warehouse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::archive::Archive;
use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::config::Config;
use crate::disk::DiskGuard;
use crate::ingest::server::{ServerOptions, TlsFiles};
use crate::ingest::{BatchLimits, BodyLimits, Budget, IngestState, TokenStore};
use crate::systemd::{Heartbeats, WatchdogPlan};
use crate::wal::{Wal, WalOptions};
use crate::warehouse::Loader;
use crate::warehouse::progress::{self, LoadProgress, Mask, refresh_every};

/// Sockets the collector serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// Ingest API, `/healthz`, `/readyz`.
    pub ingest: TcpListener,
    /// `/metrics`, when configured.
    pub metrics: Option<TcpListener>,
}

/// Runs the collector until `shutdown` is cancelled, then drains: stops accepting, lets the
/// WAL, buffer and loader finish what they hold (up to `shutdown_grace`), and returns.
/// Brings every stream table to its config's definition before anything starts, so an
/// incompatible change stops the collector with a clear message. A PostgreSQL server that
/// cannot be reached within a few seconds is left to the loaders, which check the same
/// when it is back (and log the refusal as an error until the config is fixed).
async fn check_stream_tables(
    config: &Config,
    target: &config::WarehouseTarget,
    warehouse: &Arc<Mutex<Box<dyn warehouse::Warehouse>>>,
) -> anyhow::Result<()> {
    let mut streams = Vec::new();
    for (name, stream) in &config.streams {
        let schema = stream
            .schema
            .build()
            .map_err(|e| anyhow::anyhow!("streams.{name}.schema.{e}"))?;
        streams.push((name.clone(), stream.table.clone(), schema));
    }
    let postgres = matches!(target, config::WarehouseTarget::Postgres(_));
    let warehouse = warehouse.clone();
    let check = tokio::task::spawn_blocking(move || {
        let mut warehouse = warehouse.lock().unwrap_or_else(|p| p.into_inner());
        for (name, table, schema) in &streams {
            warehouse.prepare(name, table, schema)?;
        }
        Ok::<_, warehouse::WarehouseError>(())
    });
    let outcome = if postgres {
        match tokio::time::timeout(std::time::Duration::from_secs(5), check).await {
            Ok(outcome) => outcome?,
            Err(_) => return Ok(()), // Still connecting; the loaders carry on.
        }
    } else {
        check.await?
    };
    match outcome {
        Err(error @ warehouse::WarehouseError::Incompatible(_)) => Err(error.into()),
        Err(error) if !postgres => Err(error.into()),
        Err(error) => {
            tracing::warn!(error = %error, "Cannot prepare the warehouse now; the loaders will retry.");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Each notification of `reload` (SIGHUP) reads the agent tokens and TLS files again.
///
/// Tells systemd `READY=1` once the WAL is recovered, written archive objects adopted, the
/// stream tables checked and the listeners serve, and feeds its watchdog while every WAL
/// writer and the ingest accept loop make progress (see [`systemd`]).
///
/// # Errors
/// Start-up failures (unreadable state, corrupt WAL, a SQLite warehouse that cannot be
/// opened; a PostgreSQL server that is down is retried by the loaders instead).
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    clock: Arc<dyn Clock>,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crashpoint::arm_from_env()?;
    let data_dir = &config.data_dir;
    for sub in ["wal", "archive", "state"] {
        let dir = data_dir.join(sub);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tokens = Arc::new(TokenStore::open(&config.auth.agent_tokens_file)?);
    let tls = match &config.ingest.tls {
        Some(tls) => Some(Arc::new(TlsFiles::load(&tls.cert_file, &tls.key_file)?)),
        None => None,
    };
    let disk = DiskGuard::new(data_dir, config.disk.min_free_bytes);
    let heartbeats = Arc::new(Heartbeats::default());
    systemd::status("Checking the warehouse tables.");
    let target = config.warehouse_target().map_err(anyhow::Error::msg)?;
    // Tables are created by each stream's loader, which retries until the warehouse is
    // reachable: a PostgreSQL server that is down does not stop the collector from starting
    // and accepting data (objects wait in the archive).
    let warehouse = warehouse::open(&target)
        .with_context(|| format!("opening warehouse {}", target.describe()))?;
    let warehouse = Arc::new(Mutex::new(warehouse));
    check_stream_tables(&config, &target, &warehouse).await?;
    let alert_warehouse: notify::SharedWarehouse = match &target {
        // PostgreSQL: the alerts table gets a connection of its own.
        config::WarehouseTarget::Postgres(_) => {
            Arc::new(Mutex::new(warehouse::open(&target).with_context(|| {
                format!("opening warehouse {}", target.describe())
            })?))
        }
        config::WarehouseTarget::Sqlite(_) => warehouse.clone(),
    };
    systemd::status("Opening the alert stage.");
    let mut alerts =
        alerts::stage::Stage::prepare(&config, clock.clone(), alert_warehouse, shutdown.clone())?;
    let admin_tokens = alerts::stage::admin_tokens(&config, &tokens)?;
    let archive_root = data_dir.join("archive");
    let archive = Archive::new(&archive_root);
    let tracker = TaskTracker::new();
    let mask = Mask::for_target(&target);
    let mut loads = Vec::new();
    let mut wals = HashMap::new();
    let mut writer_threads = Vec::new();
    for (name, stream) in &config.streams {
        let wal_dir = data_dir.join("wal").join(name);
        systemd::status(&format!("Recovering the WAL of stream {name}."));
        let mut consumers = vec![buffer::CONSUMER];
        consumers.extend(alerts.consumers(name));
        let options = WalOptions {
            segment_bytes: config.wal.segment_bytes,
            consumers,
        };
        let (wal, thread) = Wal::open(&wal_dir, options, clock.clone())
            .with_context(|| format!("opening WAL of stream {name}"))?;
        writer_threads.push(thread);
        let position_file = data_dir.join("state").join(format!("{name}.archive.pos"));
        let durable = wal.durable();
        let mut position = buffer::load_position(&position_file)?.max(wal.first_seq() - 1);
        let wal_end = durable.borrow().seq;
        if position > wal_end {
            anyhow::bail!(
                "{} says records up to {position} were archived, but the WAL of stream {name} ends at                  {wal_end}: the WAL lost acknowledged records (was {} removed?). Restore it, or move                  the stream's archive, state and WAL aside to start it afresh.",
                position_file.display(),
                wal_dir.display()
            );
        }
        let mut reader = wal.reader(position + 1);
        position = buffer::adopt_written_objects(
            name,
            &archive,
            &mut reader,
            *durable.borrow(),
            position,
            &position_file,
        )?;
        wal.consumers().advance(buffer::CONSUMER, position);
        let (objects_tx, objects_rx) = mpsc::channel(16);
        let (archived_tx, archived_rx) = tokio::sync::watch::channel(position);
        let buffer = Buffer {
            stream: name.clone(),
            config: stream.buffer.clone(),
            archive: archive.clone(),
            reader,
            durable,
            consumers: wal.consumers(),
            position_file,
            objects: objects_tx,
            archived: archived_tx,
        };
        let schema = stream
            .schema
            .build()
            .map_err(|e| anyhow::anyhow!("streams.{name}.schema.{e}"))?;
        let schema = Arc::new(schema);
        alerts.start_stream(name, schema.clone(), &wal, data_dir)?;
        let progress = LoadProgress::new(name, clock.clone(), mask.clone());
        loads.push(progress.clone());
        let loader = Loader {
            archived: archived_rx,
            stopping: shutdown.clone(),
            progress,
            stream: name.clone(),
            table: stream.table.clone(),
            schema,
            archive_root: archive_root.clone(),
            archive: archive.clone(),
            // PostgreSQL: a connection per stream, so streams load side by side (within a
            // stream, objects load one at a time, in order). SQLite has one writer anyway.
            warehouse: match &target {
                config::WarehouseTarget::Postgres(_) => {
                    Arc::new(Mutex::new(warehouse::open(&target).with_context(|| {
                        format!("opening warehouse {}", target.describe())
                    })?))
                }
                config::WarehouseTarget::Sqlite(_) => warehouse.clone(),
            },
            objects: objects_rx,
        };
        let stream_name = name.clone();
        tracker.spawn(async move {
            if let Err(error) = buffer.run().await {
                tracing::error!(stream = %stream_name, error = format!("{error:#}"), "Buffer stopped with an error; records stay in the WAL.");
            }
        });
        let stream_name = name.clone();
        tracker.spawn(async move {
            if let Err(error) = loader.run().await {
                tracing::error!(stream = %stream_name, error = format!("{error:#}"), "Loader stopped with an error; objects stay in the archive.");
            }
        });
        heartbeats.watch(&wal.heartbeat());
        wals.insert(name.clone(), wal);
    }
    // The loaders hold what they use (on PostgreSQL, their own connections).
    drop(warehouse);
    let readiness = Arc::new(health::Readiness {
        streams: wals
            .iter()
            .map(|(n, w)| (n.clone(), w.disk_usage()))
            .collect(),
        wal_max_bytes: config.wal.max_bytes,
        disk: disk.clone(),
        warehouse: loads.clone(),
    });
    let ingest = &config.ingest;
    let state = IngestState {
        streams: wals,
        tokens: tokens.clone(),
        body: BodyLimits {
            max_body_bytes: ingest.max_body_bytes,
            max_decompressed_bytes: ingest.max_decompressed_bytes,
            body_timeout: ingest.body_timeout,
        },
        batch: BatchLimits {
            max_records: ingest.max_records_per_batch,
            max_line_bytes: ingest.max_line_bytes,
        },
        budget: Budget::new(ingest.max_buffered_bytes),
        wal_max_bytes: config.wal.max_bytes,
        disk: disk.clone(),
    };
    let state = Arc::new(state);
    let admin = Arc::new(api::AdminState {
        tokens: admin_tokens.clone(),
        limits: alerts.limits.clone(),
        view: alerts.view(),
        clock: clock.clone(),
        timezone: jiff::tz::TimeZone::get(&config.timezone)
            .with_context(|| format!("timezone {:?}", config.timezone))?,
    });
    let mut app = ingest::router(state.clone())
        .merge(api::router(admin))
        .merge(health::router(readiness.clone()));
    let firehose_keys = match &config.firehose {
        Some(firehose) => {
            let keys = Arc::new(ingest::firehose::KeyStore::open(firehose)?);
            let firehose = ingest::firehose::FirehoseState::new(
                firehose,
                &config.streams,
                state,
                keys.clone(),
                clock.clone(),
            );
            app = app.merge(ingest::firehose::router(Arc::new(firehose)));
            Some(keys)
        }
        None => {
            // The routers hold what they need: no WAL handle may outlive the server, or
            // the writers (and with them the drain) never stop.
            drop(state);
            None
        }
    };
    let ingest_addr = listeners.ingest.local_addr()?;
    // Background tasks that end with the server rather than drain with the pipeline.
    let side = CancellationToken::new();
    tokio::spawn(disk.clone().watch(side.clone()));
    let notify_stop = CancellationToken::new();
    alerts.spawn(&tracker, &side, &notify_stop);
    let alert_threads = alerts.take_threads();
    tokio::spawn(refresh_every(
        loads,
        progress::REFRESH_INTERVAL,
        side.clone(),
    ));
    let options = ServerOptions {
        max_connections: ingest.max_connections,
        header_timeout: ingest.header_timeout,
        idle_timeout: ingest.idle_timeout,
        drain_timeout: ingest.body_timeout,
    };
    if let Some(listener) = listeners.metrics {
        let addr = listener.local_addr()?;
        let app = metrics::router(metrics).merge(health::router(readiness));
        // The same connection limits and timeouts as ingest: a scrape left hanging cannot
        // hold up a shutdown.
        let metrics_options = ServerOptions {
            max_connections: 64,
            ..options
        };
        tracker.spawn(ingest::server::serve(
            listener,
            app,
            metrics_options,
            None,
            None,
            shutdown.clone(),
        ));
        info!(%addr, "Serving /metrics.");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let accept = heartbeats.register(format!("ingest accept loop on {ingest_addr}"));
    tokio::spawn(systemd::watchdog(
        heartbeats,
        WatchdogPlan::from_env(),
        side.clone(),
    ));
    info!(addr = %ingest_addr, scheme, data_dir = %data_dir.display(), warehouse = %target.describe(), "Collector ready.");
    let ready = format!(
        "Ready: ingest on {scheme}://{ingest_addr}, {} streams, warehouse {}.",
        config.streams.len(),
        target.describe()
    );
    systemd::ready(&ready);
    let serving = ingest::server::serve(
        listeners.ingest,
        app,
        options,
        tls.clone(),
        Some(accept),
        shutdown.clone(),
    );
    tokio::spawn(reload_on_signal(
        reload,
        Reloadable {
            tokens,
            admin_tokens,
            firehose_keys,
            tls,
            alerts: alerts.reloader(),
        },
        ready,
        side.clone(),
    ));
    serving.await;
    systemd::stopping("Stopping: ingest closed; draining the WAL, buffers and loaders.");
    side.cancel();
    // The server (and with it every WAL handle) is gone: the writers drain and stop, which
    // ends the buffers, which end the loaders.
    info!("Ingest stopped; draining WAL, buffers and loaders.");
    // The alert engines end after their WAL writers, having checkpointed; the deliverers
    // then stop (what they have not delivered waits in the outbox).
    let engines_done = async {
        for thread in alert_threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    };
    let alerts_in_time = tokio::time::timeout(config.shutdown_grace, engines_done)
        .await
        .is_ok();
    if !alerts_in_time {
        warn!(
            "An alert engine did not stop within the grace period; it resumes from its last checkpoint."
        );
    }
    notify_stop.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?config.shutdown_grace, "Shutdown exceeded the grace period; what was not loaded stays in the WAL and archive for the next start.");
    }
    let joined = async {
        for thread in writer_threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    };
    if tokio::time::timeout(config.shutdown_grace, joined)
        .await
        .is_err()
    {
        // Everything acknowledged is fsynced already; what a writer still holds was not.
        warn!("A WAL writer did not stop within the grace period; exiting without it.");
    }
    info!("Collector stopped.");
    Ok(())
}

/// What SIGHUP reads again.
#[derive(Clone)]
struct Reloadable {
    tokens: Arc<TokenStore>,
    admin_tokens: Option<Arc<TokenStore>>,
    firehose_keys: Option<Arc<ingest::firehose::KeyStore>>,
    tls: Option<Arc<TlsFiles>>,
    alerts: alerts::stage::Reloader,
}

/// Reads the agent and admin tokens, Firehose keys, TLS files, reference data and webhook
/// secrets again at each notification, until `stop`, between `RELOADING=1` and `READY=1`
/// (with the `ready` status line again).
async fn reload_on_signal(
    reload: Arc<Notify>,
    files: Reloadable,
    ready: String,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = reload.notified() => {}
        }
        systemd::reloading(
            "Reloading tokens, Firehose keys, TLS files, reference data and webhook secrets.",
        );
        let files = files.clone();
        let _ = tokio::task::spawn_blocking(move || {
            files.tokens.reload();
            if let Some(admin) = &files.admin_tokens {
                admin.reload();
            }
            if let Some(keys) = &files.firehose_keys {
                keys.reload();
            }
            if let Some(tls) = &files.tls {
                tls.reload();
            }
            files.alerts.reload();
        })
        .await;
        systemd::ready(&ready);
    }
}
