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
use crate::tail::{FileId, Fingerprint, TailEnd, Tailer, end_of_last_line, fingerprint};

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
    /// Each flow's compiled globs, in `config.flows` order.
    matchers: Vec<Matcher>,
    /// The file each followed path names, as of when its tailer started.
    followed: HashMap<PathBuf, FileId>,
    wakes: HashMap<PathBuf, Arc<Notify>>,
    tasks: JoinSet<TailOutcome>,
    /// Which file each tailer task follows, to clean up after a panic.
    task_files: HashMap<tokio::task::Id, (FileId, PathBuf)>,
    /// `start_at: end` applies only to the first scan of the agent's first run (no
    /// checkpoints yet); files found later, or after a restart, are read from the start.
    start_at_applies: bool,
}

/// What a tailer task returns: which file, and how it ended.
type TailOutcome = (FileId, PathBuf, std::io::Result<TailEnd>);

/// A file found by a scan, identified.
struct Found {
    path: PathBuf,
    file: File,
    id: FileId,
    fingerprint: Fingerprint,
    size: u64,
}

impl Discoverer {
    /// A discoverer for the configured flows; `first_run` when no checkpoint existed.
    pub fn new(
        config: Arc<Config>,
        checkpoints: SharedCheckpoints,
        ship: mpsc::Sender<ShipRequest>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
        first_run: bool,
    ) -> Self {
        let matchers = config.flows.iter().map(Matcher::new).collect();
        Self {
            config,
            checkpoints,
            ship,
            clock,
            shutdown,
            active: HashMap::new(),
            followed: HashMap::new(),
            matchers,
            wakes: HashMap::new(),
            tasks: JoinSet::new(),
            task_files: HashMap::new(),
            start_at_applies: first_run,
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
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    if self.finished(done) {
                        self.scan();
                    }
                }
                () = self.shutdown.cancelled() => break,
            }
        }
        // Tailers see the same token: they stop reading and wait for their batch in flight.
        while let Some(done) = self.tasks.join_next_with_id().await {
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
        let mut rescan = false;
        for path in &event.paths {
            if let Some(wake) = self.wakes.get(path) {
                wake.notify_one();
            }
            // A watched path that is not followed as the file it now names: a new file, or
            // one replaced by a rotation. Scanning at once (rather than at the next rescan)
            // matters when a file is created and rotated away within a rescan interval.
            if matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_))
                && self.wanted(path)
            {
                let now = std::fs::metadata(path).ok().map(|m| FileId::of(&m));
                rescan |= now.is_some() && self.followed.get(path).copied() != now;
            }
        }
        if rescan {
            self.scan();
        }
    }

    /// Whether some flow's globs match `path` and none of its excludes do.
    fn wanted(&self, path: &Path) -> bool {
        self.matchers.iter().any(|m| m.wants(path))
    }

    /// Removes a finished tailer; true if a rescan should follow right away.
    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, TailOutcome), tokio::task::JoinError>,
    ) -> bool {
        let (task, (id, path, end)) = match done {
            Ok(done) => done,
            Err(error) => {
                warn!(%error, "A tailer task failed; its file is picked up again by the next scan.");
                if let Some((id, _)) = self.task_files.remove(&error.id()) {
                    self.active.remove(&id);
                }
                return true;
            }
        };
        self.task_files.remove(&task);
        self.active.remove(&id);
        if self.followed.get(&path) == Some(&id) {
            self.followed.remove(&path);
        }
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
        let config = self.config.clone();
        for (flow, i) in config.flows.iter().zip(0..) {
            for pattern in &flow.paths {
                let Ok(paths) = glob::glob(pattern) else {
                    continue;
                };
                for path in paths.filter_map(Result::ok) {
                    if !self.matchers[i].excluded(&path) {
                        self.consider(flow, path);
                    }
                }
            }
        }
        self.start_at_applies = false;
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
        // Events for this path now wake this tailer; one still draining a rotated file that
        // had the same name relies on polling.
        let wake = Arc::new(Notify::new());
        self.wakes.insert(found.path.clone(), wake.clone());
        self.followed.insert(found.path.clone(), found.id);
        let tailer = Tailer {
            stream: flow.stream.clone(),
            path: found.path.clone(),
            file: Arc::new(found.file),
            id: found.id,
            fingerprint: found.fingerprint,
            source: format!("{}/{key}", self.config.agent_id()),
            key,
            start,
            limits: flow.batch.clone(),
            gzip_level: self.config.collector.gzip_level,
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
        let (id, path) = (found.id, found.path.clone());
        let task = self
            .tasks
            .spawn(async move { (id, path, tailer.run().await) });
        self.task_files.insert(task.id(), (id, found.path));
    }

    /// Finds the file's checkpoint (latest generation) and where to start reading.
    fn resolve_start(&self, flow: &FlowConfig, found: &Found) -> std::io::Result<(String, u64)> {
        let base = format!("{:x}-{:08x}", found.id.ino, found.fingerprint.crc);
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
            None if self.start_at_applies && flow.start_at == StartAt::End => {
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

/// A flow's globs, compiled once (config validation already checked they compile).
struct Matcher {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

impl Matcher {
    fn new(flow: &FlowConfig) -> Self {
        let compile = |ps: &[String]| {
            ps.iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect()
        };
        Self {
            include: compile(&flow.paths),
            exclude: compile(&flow.exclude),
        }
    }

    /// Whether an exclude pattern matches the file name or the whole path.
    fn excluded(&self, path: &Path) -> bool {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.exclude
            .iter()
            .any(|p| p.matches(&name) || p.matches_path(path))
    }

    fn wants(&self, path: &Path) -> bool {
        self.include.iter().any(|p| p.matches_path(path)) && !self.excluded(path)
    }
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
