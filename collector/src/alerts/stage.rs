//! The alert stage as the collector runs it: rules compiled, reference data and the
//! limits store opened, the outbox and its deliverers prepared, one engine per stream with
//! rules, and the admin API over it all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::consumer::AlertSink;
use super::engine::{Engine, Thresholds};
use super::limits::{self, LimitsStore};
use super::reference::{self, Reference};
use super::rules::{self, Rule, Span, Threshold};
use super::start::{Engines, Shared, start_stream};
use super::windows::{Calendar, Slot};
use super::{Alert, CONSUMER};
use crate::clock::Clock;
use crate::config::Config;
use crate::ingest::TokenStore;
use crate::notify::{Notifier, Outbox, SecretReloader, SharedWarehouse};
use crate::schema::Schema;
use crate::wal::Wal;

/// How often the limits store looks for changes made by the `limits` command.
const LIMITS_REFRESH: Duration = Duration::from_secs(1);

/// Reference data per rule, and the limits store: the engine's [`Thresholds`].
pub struct Sources {
    references: HashMap<String, Arc<Reference>>,
    limits: Arc<LimitsStore>,
}

impl Thresholds for Sources {
    fn reference(&self, rule: &Rule, key: &str, slot: Slot) -> Option<i64> {
        self.references
            .get(&rule.name)?
            .current()
            .threshold(key, slot.weekday, slot.minute_of_day)
    }

    fn reference_keys(&self, rule: &Rule, slot: Slot) -> Vec<(String, i64)> {
        self.references.get(&rule.name).map_or_else(Vec::new, |r| {
            r.current().slot(slot.weekday, slot.minute_of_day).to_vec()
        })
    }

    fn limit(&self, key: &str) -> Option<i64> {
        self.limits.get(key)
    }
}

/// The outbox as the engines' sink.
struct OutboxSink(Arc<Outbox>);

impl AlertSink for OutboxSink {
    fn put(&self, alert: &Alert, webhooks: &[String]) -> anyhow::Result<bool> {
        Ok(self.0.insert(alert, webhooks)?)
    }
}

/// Everything the alert stage holds.
pub struct Stage {
    rules: Vec<Rule>,
    shared: Shared,
    references: Vec<Arc<Reference>>,
    /// The limits store (also behind the admin API).
    pub limits: Arc<LimitsStore>,
    notifier: Option<Notifier>,
    secrets: SecretReloader,
    /// The outbox.
    pub outbox: Arc<Outbox>,
    engines: Vec<Arc<Mutex<Engine>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Loads every reference file of `config`'s rules (what `check-config` and start-up do).
///
/// # Errors
/// The first file that does not load, with its line-numbered errors.
pub fn load_references(
    config: &Config,
    compiled: &[Rule],
) -> anyhow::Result<Vec<(String, Arc<Reference>)>> {
    let mut out = Vec::new();
    for (i, rule) in compiled.iter().enumerate() {
        let Threshold::Reference(path) = &rule.threshold else {
            continue;
        };
        let Span::Window(len) = rule.span else {
            continue;
        };
        let window = Duration::try_from(len).unwrap_or(Duration::from_secs(1800));
        let reference = Reference::open(&rule.name, path, window, rule.scale)
            .map_err(|e| anyhow::anyhow!("rules[{i}] ({}).threshold.reference: {e}", rule.name))?;
        let table = reference.current();
        let expected = &config.streams[&rule.stream]
            .schema
            .build()
            .map_err(anyhow::Error::msg)?
            .columns[rule.key];
        if table.key_column() != expected.field && table.key_column() != expected.column {
            anyhow::bail!(
                "rules[{i}] ({}).threshold.reference: {} has {:?} as its first column, but the \
                 rule's key is {:?}",
                rule.name,
                path.display(),
                table.key_column(),
                expected.field
            );
        }
        out.push((rule.name.clone(), Arc::new(reference)));
    }
    Ok(out)
}

impl Stage {
    /// Compiles the rules, loads reference data, opens the limits store and the outbox and
    /// checks the notification targets. `warehouse` is where the `alerts` table is written.
    ///
    /// # Errors
    /// An unusable rule, reference file, store, outbox, webhook or secret file.
    pub fn prepare(
        config: &Config,
        clock: Arc<dyn Clock>,
        warehouse: SharedWarehouse,
        stopping: CancellationToken,
    ) -> anyhow::Result<Self> {
        let rules = rules::compile(config).map_err(anyhow::Error::msg)?;
        let calendar = Calendar::named(&config.timezone).map_err(anyhow::Error::msg)?;
        let state = config.data_dir.join("state");
        let scale = limits::scale_for(config).map_err(anyhow::Error::msg)?;
        let limits = Arc::new(
            LimitsStore::open(&limits::path_in(&config.data_dir), scale, clock.clone())
                .context("opening the limits store")?,
        );
        let references = load_references(config, &rules)?;
        let webhooks: Vec<String> = config.notify.all_webhooks().into_keys().collect();
        let outbox = Arc::new(
            Outbox::open(&state.join("outbox.db"), &webhooks)
                .context("opening the alert outbox")?,
        );
        let notifier = Notifier::new(outbox.clone(), &config.notify, warehouse, clock.clone())?;
        let secrets = notifier.secrets();
        let sources = Sources {
            references: references.iter().cloned().collect(),
            limits: limits.clone(),
        };
        Ok(Self {
            rules,
            shared: Shared {
                calendar,
                config: config.alerts.clone(),
                thresholds: Arc::new(sources),
                sink: Arc::new(OutboxSink(outbox.clone())),
                clock,
                stopping,
            },
            references: references.into_iter().map(|(_, r)| r).collect(),
            limits,
            notifier: Some(notifier),
            secrets,
            outbox,
            engines: Vec::new(),
            threads: Vec::new(),
        })
    }

    /// Whether `stream` has rules (its WAL then needs the `alerts` consumer).
    pub fn reads(&self, stream: &str) -> bool {
        self.rules.iter().any(|r| r.stream == stream)
    }

    /// The WAL consumers `stream` needs besides the archive.
    pub fn consumers(&self, stream: &str) -> Vec<&'static str> {
        if self.reads(stream) {
            vec![CONSUMER]
        } else {
            Vec::new()
        }
    }

    /// Starts the engine of `stream` on its WAL (when it has rules).
    ///
    /// # Errors
    /// As [`start_stream`].
    pub fn start_stream(
        &mut self,
        stream: &str,
        schema: Arc<Schema>,
        wal: &Wal,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let rules: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| r.stream == stream)
            .cloned()
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let started = start_stream(stream, schema, rules, &self.shared, wal, data_dir)?;
        self.engines.push(started.engine);
        self.threads.push(started.thread);
        Ok(())
    }

    /// The engines' month-to-date view for the admin API.
    pub fn view(&self) -> Arc<Engines> {
        Arc::new(Engines {
            engines: self.engines.clone(),
            clock: self.shared.clock.clone(),
        })
    }

    /// Spawns the deliverers (until `notify_stop`), the reference watchers and the limits
    /// refresh (until `side`).
    pub fn spawn(
        &mut self,
        tracker: &TaskTracker,
        side: &CancellationToken,
        notify_stop: &CancellationToken,
    ) {
        if let Some(notifier) = self.notifier.take() {
            tracker.spawn(notifier.run(notify_stop.clone()));
        }
        for reference in &self.references {
            tokio::spawn(
                reference
                    .clone()
                    .watch(reference::WATCH_INTERVAL, side.clone()),
            );
        }
        let limits = self.limits.clone();
        let stop = side.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LIMITS_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let store = limits.clone();
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || store.refresh_if_changed()).await
                {
                    warn!(error = %e, "Cannot read the limits store for changes; retrying.");
                }
            }
        });
    }

    /// What SIGHUP re-reads: reference files and webhook secrets (blocking).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            references: self.references.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// The engines' threads, to join at shutdown (they end after the WAL writers).
    pub fn take_threads(&mut self) -> Vec<std::thread::JoinHandle<()>> {
        std::mem::take(&mut self.threads)
    }
}

/// Re-reads reference data and webhook secrets.
#[derive(Clone)]
pub struct Reloader {
    references: Vec<Arc<Reference>>,
    secrets: SecretReloader,
}

impl Reloader {
    /// Blocking: call off the async threads. A bad file keeps what is in use (ERROR).
    pub fn reload(&self) {
        for reference in &self.references {
            let _ = reference.reload();
        }
        self.secrets.reload();
    }
}

/// The admin tokens, when configured, checked against the agents' (a token must not open
/// both doors).
///
/// # Errors
/// The file cannot be read, holds no token, or shares a token with the agents' file.
pub fn admin_tokens(
    config: &Config,
    agents: &TokenStore,
) -> anyhow::Result<Option<Arc<TokenStore>>> {
    match &config.auth.admin_token_file {
        None => Ok(None),
        Some(path) => Ok(Some(Arc::new(crate::api::open_admin_tokens(
            path,
            &agents.current(),
        )?))),
    }
}
