//! Discovery: finds the files each flow's globs match and starts a tailer for each.
//!
//! Input: the flows' globs, file-system events from `notify` (inotify on Linux), and a
//! periodic rescan that catches whatever events miss (NFS, overlay file systems, a full
//! event queue). Output: one running [`Tailer`] per file, keyed by device and inode.
//!
//! Events are only hints: a file event wakes the tailer of that path at once, a creation
//! or rename triggers a rescan, and a dropped event costs at most one poll or rescan
//! interval of latency, never data.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{Entry, SharedCheckpoints};
use crate::clock::Clock;
use crate::config::{Config, FlowConfig, StartAt};
use crate::ship::ShipRequest;
use crate::tail::{FileId, TailEnd, Tailer, end_of_last_line, fingerprint};

/// Capacity of the event queue from the watcher thread; overflow is dropped (see above).
const EVENT_QUEUE: usize = 4096;

/// Finds files and runs their tailers.
pub struct Discoverer {
    config: Arc<Config>,
    checkpoints: SharedCheckpoints,
    ship: mpsc::Sender<ShipRequest>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    active: HashMap<FileId, PathBuf>,
    wakes: HashMap<PathBuf, Arc<Notify>>,
    tasks: JoinSet<(FileId, PathBuf, std::io::Result<TailEnd>)>,
    first_scan: bool,
}

/// A file found by a scan, identified.
struct Found {
    path: PathBuf,
    file: File,
    id: FileId,
    fingerprint: u32,
    size: u64,
}

impl Discoverer {
    /// A discoverer for the configured flows.
    pub fn new(
        config: Arc<Config>,
        checkpoints: SharedCheckpoints,
        ship: mpsc::Sender<ShipRequest>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            config,
            checkpoints,
            ship,
            clock,
            shutdown,
            active: HashMap::new(),
            wakes: HashMap::new(),
            tasks: JoinSet::new(),
            first_scan: true,
        }
    }

    /// Scans, watches and restarts tailers until shutdown; then waits for every tailer.
    pub async fn run(mut self) {
        let (event_tx, mut events) = mpsc::channel(EVENT_QUEUE);
        let _watcher = self.watch(event_tx);
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = rescan.tick() => self.scan(),
                Some(event) = events.recv() => self.on_event(event),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if self.finished(done) {
                        self.scan();
                    }
                }
                () = self.shutdown.cancelled() => break,
            }
        }
        // Tailers see the same token: they stop reading and wait for their batch in flight.
        while let Some(done) = self.tasks.join_next().await {
            self.finished(done);
        }
    }

    /// Starts watching each glob's fixed base directory; `None` if the platform refuses
    /// (polling still works).
    fn watch(&self, events: mpsc::Sender<notify::Event>) -> Option<notify::RecommendedWatcher> {
        let handler = move |result: notify::Result<notify::Event>| {
            if let Ok(event) = result {
                let _ = events.try_send(event); // Full queue: the periodic rescan covers it.
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(error) => {
                warn!(%error, "File events unavailable; relying on polling.");
                return None;
            }
        };
        for flow in &self.config.flows {
            for pattern in &flow.paths {
                let (base, recursive) = glob_base(pattern);
                let mode = if recursive {
                    RecursiveMode::Recursive
                } else {
                    RecursiveMode::NonRecursive
                };
                if let Err(error) = watcher.watch(&base, mode) {
                    warn!(dir = %base.display(), %error, "Cannot watch directory; its files are found by rescans.");
                }
            }
        }
        Some(watcher)
    }

    fn on_event(&mut self, event: notify::Event) {
        for path in &event.paths {
            if let Some(wake) = self.wakes.get(path) {
                wake.notify_one();
            }
        }
        if matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
        ) {
            self.scan();
        }
    }

    /// Removes a finished tailer; true if a rescan should follow right away.
    fn finished(
        &mut self,
        done: Result<(FileId, PathBuf, std::io::Result<TailEnd>), tokio::task::JoinError>,
    ) -> bool {
        let Ok((id, path, end)) = done else {
            warn!("A tailer task panicked; its file is picked up again by the next scan.");
            return true;
        };
        self.active.remove(&id);
        if self
            .wakes
            .get(&path)
            .is_some_and(|wake| Arc::strong_count(wake) == 1)
        {
            self.wakes.remove(&path);
        }
        match end {
            Ok(TailEnd::Truncated) => true,
            Ok(end) => {
                debug!(path = %path.display(), ?end, "Tailer ended.");
                false
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "Reading the file failed; it is retried at the next scan.");
                metrics::counter!("tollstream_agent_read_errors_total").increment(1);
                false
            }
        }
    }

    /// Expands every flow's globs and starts tailers for files not yet followed.
    fn scan(&mut self) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let flows = self.config.flows.clone();
        for flow in &flows {
            for pattern in &flow.paths {
                let Ok(paths) = glob::glob(pattern) else {
                    continue;
                };
                for path in paths.filter_map(Result::ok) {
                    if !excluded(flow, &path) {
                        self.consider(flow, path);
                    }
                }
            }
        }
        self.first_scan = false;
    }

    fn consider(&mut self, flow: &FlowConfig, path: PathBuf) {
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        if !meta.is_file() || self.active.contains_key(&FileId::of(&meta)) {
            return;
        }
        let found = match identify(&path) {
            Ok(Some(found)) => found,
            Ok(None) => return, // No complete first line yet.
            Err(error) => {
                warn!(path = %path.display(), %error, "Cannot open file.");
                return;
            }
        };
        if self.active.contains_key(&found.id) {
            return;
        }
        let (key, start) = match self.resolve_start(flow, &found) {
            Ok(resolved) => resolved,
            Err(error) => {
                warn!(path = %path.display(), %error, "Cannot read file.");
                return;
            }
        };
        let wake = self
            .wakes
            .entry(found.path.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        let tailer = Tailer {
            stream: flow.stream.clone(),
            path: found.path.clone(),
            file: Arc::new(found.file),
            id: found.id,
            source: format!("{}/{key}", self.config.agent_id()),
            key,
            start,
            limits: flow.batch.clone(),
            poll_interval: self.config.poll_interval,
            rotate_wait: self.config.rotate_wait,
            wake,
            ship: self.ship.clone(),
            checkpoints: self.checkpoints.clone(),
            clock: self.clock.clone(),
            shutdown: self.shutdown.clone(),
        };
        info!(path = %found.path.display(), source = %tailer.source, offset = start, size = found.size, "Following file.");
        self.active.insert(found.id, found.path.clone());
        let (id, path) = (found.id, found.path);
        self.tasks
            .spawn(async move { (id, path, tailer.run().await) });
    }

    /// Finds the file's checkpoint (latest generation) and where to start reading.
    fn resolve_start(&self, flow: &FlowConfig, found: &Found) -> std::io::Result<(String, u64)> {
        let base = format!("{:x}-{:08x}", found.id.ino, found.fingerprint);
        let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut generation = 0;
        while checkpoints
            .get(&format!("{base}-{}", generation + 1))
            .is_some()
        {
            generation += 1;
        }
        let key = format!("{base}-{generation}");
        let (key, generation, start) = match checkpoints.get(&key) {
            Some(entry) if entry.offset <= found.size => (key, generation, entry.offset),
            Some(entry) => {
                warn!(path = %found.path.display(), size = found.size, offset = entry.offset, "File is smaller than its checkpoint: truncated. Reading it from the start.");
                (format!("{base}-{}", generation + 1), generation + 1, 0)
            }
            None if self.first_scan && flow.start_at == StartAt::End => {
                (key, generation, end_of_last_line(&found.file, found.size)?)
            }
            None => (key, generation, 0),
        };
        if checkpoints.get(&key).is_none() {
            let entry = Entry {
                path: found.path.clone(),
                offset: start,
                size: found.size,
                generation,
                acked_at: None,
            };
            checkpoints.set(&key, entry);
        }
        Ok((key, start))
    }
}

/// Opens and identifies a file; `None` while it has no complete first line.
fn identify(path: &Path) -> std::io::Result<Option<Found>> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    let Some(fingerprint) = fingerprint(&file)? else {
        return Ok(None);
    };
    Ok(Some(Found {
        path: path.to_path_buf(),
        id: FileId::of(&meta),
        fingerprint,
        size: meta.len(),
        file,
    }))
}

fn excluded(flow: &FlowConfig, path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    flow.exclude
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .any(|p| p.matches(&name) || p.matches_path(path))
}

/// The directory part of a glob before its first wildcard, and whether it recurses.
fn glob_base(pattern: &str) -> (PathBuf, bool) {
    let mut base = PathBuf::new();
    for component in Path::new(pattern).components() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[', '{']) {
            break;
        }
        base.push(component);
    }
    if base.as_os_str() == pattern {
        base.pop(); // A plain file path: watch its directory.
    }
    (base, pattern.contains("**"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_base_stops_at_the_first_wildcard() {
        assert_eq!(
            glob_base("/var/log/toll/*.log"),
            (PathBuf::from("/var/log/toll"), false)
        );
        assert_eq!(
            glob_base("/var/log/**/toll-*.log"),
            (PathBuf::from("/var/log"), true)
        );
        assert_eq!(
            glob_base("/var/log/toll/a.log"),
            (PathBuf::from("/var/log/toll"), false)
        );
    }
}
