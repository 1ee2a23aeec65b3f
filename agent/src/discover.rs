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

use std::os::unix::fs::FileExt;

use crate::checkpoint::{Checkpoints, Entry, FileIdentity, SharedCheckpoints};
use crate::clock::Clock;
use crate::config::{Config, FlowConfig, StartAt};
use crate::health::Health;
use crate::ship::ShipRequest;
use crate::systemd::{Heartbeat, Heartbeats};
use crate::tail::{
    FileId, Fingerprint, TailEnd, Tailer, bytes_before_match, end_of_last_line, fingerprint,
    same_bytes_before, tail_before,
};

/// Capacity of the event queue from the watcher thread; overflow is dropped (see above).
const EVENT_QUEUE: usize = 4096;

/// Finds files and runs their tailers.
pub struct Discoverer {
    config: Arc<Config>,
    checkpoints: SharedCheckpoints,
    ship: mpsc::Sender<ShipRequest>,
    budgets: crate::tail::Budgets,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    /// Followed files: path, source key and the tailer's open file.
    active: HashMap<FileId, (PathBuf, String, Arc<File>)>,
    /// The file each followed source is read from.
    followed_keys: HashMap<String, FileId>,
    /// Files held back as copies of a followed source (its key).
    copies: HashMap<FileId, String>,
    /// Files the last scan could not open, with the error (logged once each).
    unopenable: std::collections::BTreeMap<PathBuf, String>,
    /// The same, for the scan in progress.
    unopenable_now: std::collections::BTreeMap<PathBuf, String>,
    health: Arc<Health>,
    /// Whether the first scan has looked for files rotated away while the agent was down.
    looked_for_rotated: bool,
    /// Descriptors that may still be opened, as of the scan in progress.
    descriptors_left: u64,
    /// Files skipped by `ignore_older` (logged once).
    ignored: std::collections::HashSet<FileId>,
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
    /// Where the discovery loop and every tailer register their heartbeats.
    heartbeats: Arc<Heartbeats>,
    /// Told the number of files followed once the first scan is done.
    first_scan: Option<tokio::sync::oneshot::Sender<usize>>,
}

/// What a tailer task returns: which file, and how it ended.
type TailOutcome = (FileId, PathBuf, std::io::Result<TailEnd>);

/// A file found by a scan, identified.
struct Found {
    path: PathBuf,
    file: File,
    id: FileId,
    btime: u64,
    modified: std::io::Result<std::time::SystemTime>,
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
        health: Arc<Health>,
    ) -> Self {
        let matchers = config.flows.iter().map(Matcher::new).collect();
        let budgets = crate::tail::Budgets::new(&config);
        Self {
            config,
            checkpoints,
            ship,
            budgets,
            clock,
            shutdown,
            active: HashMap::new(),
            followed_keys: HashMap::new(),
            copies: HashMap::new(),
            ignored: std::collections::HashSet::new(),
            unopenable: std::collections::BTreeMap::new(),
            unopenable_now: std::collections::BTreeMap::new(),
            health,
            descriptors_left: u64::MAX,
            looked_for_rotated: false,
            followed: HashMap::new(),
            matchers,
            wakes: HashMap::new(),
            tasks: JoinSet::new(),
            task_files: HashMap::new(),
            start_at_applies: first_run,
            heartbeats: Arc::default(),
            first_scan: None,
        }
    }

    /// Its tailers share `budgets` (the metrics endpoint reports them) instead of their own.
    pub fn with_budgets(mut self, budgets: crate::tail::Budgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// Registers the discovery loop and the tailers in `heartbeats`, and sends the number of
    /// files followed to `first_scan` once the first scan is done (start-up is complete).
    pub fn supervised(
        mut self,
        heartbeats: Arc<Heartbeats>,
        first_scan: tokio::sync::oneshot::Sender<usize>,
    ) -> Self {
        self.heartbeats = heartbeats;
        self.first_scan = Some(first_scan);
        self
    }

    /// Scans, watches and restarts tailers until shutdown; then waits for every tailer.
    pub async fn run(mut self) {
        let (event_tx, mut events) = mpsc::channel(EVENT_QUEUE);
        let (mut watcher, mut unwatched) = self.watch(event_tx);
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat = self.heartbeats.register("discovery");
        loop {
            // Back at the next rescan at the latest (a scan that hangs, e.g. on a dead NFS
            // mount, is a stall).
            heartbeat.park_until(tokio::time::Instant::now() + self.config.rescan_interval);
            tokio::select! {
                _ = rescan.tick() => {
                    heartbeat.beat();
                    // Directories that did not exist yet may have been created since.
                    if let Some(watcher) = watcher.as_mut() {
                        unwatched.retain(|(dir, mode)| watcher.watch(dir, *mode).is_err());
                    }
                    self.scan();
                    if let Some(first_scan) = self.first_scan.take() {
                        let _ = first_scan.send(self.active.len());
                    }
                }
                Some(event) = events.recv() => {
                    heartbeat.beat();
                    self.on_event(event);
                }
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    heartbeat.beat();
                    if self.finished(done) {
                        self.scan();
                    }
                }
                () = self.shutdown.cancelled() => break,
            }
        }
        // Tailers see the same token: they stop reading and wait for their batch in flight.
        heartbeat.park();
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.finished(done);
        }
    }

    /// Starts watching each glob's fixed base directory; `None` if the platform refuses
    /// (polling still works).
    /// Also returns the directories that cannot be watched yet (retried at each rescan).
    fn watch(
        &self,
        events: mpsc::Sender<notify::Event>,
    ) -> (
        Option<notify::RecommendedWatcher>,
        Vec<(PathBuf, RecursiveMode)>,
    ) {
        let handler = move |result: notify::Result<notify::Event>| {
            if let Ok(event) = result {
                let _ = events.try_send(event); // Full queue: the periodic rescan covers it.
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(error) => {
                warn!(%error, "File events unavailable; relying on polling.");
                return (None, Vec::new());
            }
        };
        let mut unwatched = Vec::new();
        for flow in &self.config.flows {
            for pattern in &flow.paths {
                let (base, recursive) = glob_base(pattern);
                let mode = if recursive {
                    RecursiveMode::Recursive
                } else {
                    RecursiveMode::NonRecursive
                };
                if let Err(error) = watcher.watch(&base, mode) {
                    warn!(dir = %base.display(), %error, "Cannot watch directory yet; its files are found by rescans, and watching is retried at each.");
                    unwatched.push((base, mode));
                }
            }
        }
        (Some(watcher), unwatched)
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

    /// Forgets a followed file; its source's state records when it was last followed, and
    /// whether it was `drained`.
    fn unfollow(&mut self, id: FileId, drained: bool) {
        if let Some((_, key, _)) = self.active.remove(&id) {
            metrics::gauge!("tollstream_agent_files_followed").set(self.active.len() as f64);
            self.followed_keys.remove(&key);
            let now = self.clock.now().to_string();
            let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = checkpoints.get_mut(&key) {
                entry.seen_at = Some(now);
                entry.drained |= drained;
            }
        }
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
                    self.unfollow(id, false);
                }
                return true;
            }
        };
        self.task_files.remove(&task);
        let drained = matches!(end, Ok(TailEnd::RotatedAway | TailEnd::Truncated));
        self.unfollow(id, drained);
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
        // Copies held back may now continue the source that ended.
        let copies_waiting = !self.copies.is_empty();
        match end {
            Ok(TailEnd::Truncated) => true,
            Ok(end) => {
                debug!(path = %path.display(), ?end, "Tailer ended.");
                copies_waiting
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "Reading the file failed; it is retried at the next scan.");
                metrics::counter!("tollstream_agent_read_errors_total").increment(1);
                false
            }
        }
    }

    /// After a restart: finds files the agent was reading when it stopped that were renamed
    /// out of the globs meanwhile (logrotate without the rotated names in the globs), in
    /// their last directory, and reads them to their end — the lines not yet acknowledged,
    /// and any the writer appended before reopening its log.
    fn find_rotated_away(&mut self) {
        let wanted: Vec<(String, Entry)> = {
            let checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            checkpoints
                .entries()
                .filter(|(key, e)| {
                    !e.drained && e.copy_of.is_none() && !self.followed_keys.contains_key(*key)
                })
                .map(|(key, e)| (key.clone(), e.clone()))
                .collect()
        };
        let mut listings: HashMap<PathBuf, Vec<(PathBuf, u64)>> = HashMap::new();
        let config = self.config.clone();
        for (key, entry) in wanted {
            let Some(dir) = entry.path.parent() else {
                continue;
            };
            let listing = listings
                .entry(dir.to_path_buf())
                .or_insert_with(|| inodes_in(dir));
            let Some(path) = listing
                .iter()
                .find(|(_, ino)| *ino == entry.file.ino)
                .map(|(p, _)| p.clone())
            else {
                continue;
            };
            let Ok(Some(found)) = identify(&path) else {
                continue;
            };
            if !found.is(&entry.file) || self.active.contains_key(&found.id) {
                continue;
            }
            let intact = found.size >= entry.offset
                && bytes_before_match(&found.file, entry.offset, entry.tail_len, entry.tail_crc)
                    .unwrap_or(false);
            if !intact {
                continue;
            }
            // The flow it was followed by (its path now may match no glob); a source of a
            // stream no flow sends to any more is not sent to another.
            let flow = if entry.stream.is_empty() {
                self.matchers.iter().position(|m| m.wants(&entry.path))
            } else {
                config.flows.iter().position(|f| f.stream == entry.stream)
            };
            let Some(flow) = flow else {
                continue;
            };
            info!(path = %path.display(), was = %entry.path.display(), source = %key, offset = entry.offset, "Found a file rotated out of the globs while the agent was down; reading it to its end.");
            self.follow_as(&config.flows[flow], found, key, entry.offset, true);
        }
    }

    /// Expands every flow's globs and starts tailers for files not yet followed.
    ///
    /// Files whose identity matches saved state are resumed first; then the rest are
    /// checked against the sources they might be copies of, which by then are known to be
    /// followed or not.
    fn scan(&mut self) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let config = self.config.clone();
        self.unopenable_now.clear();
        self.descriptors_left = descriptors_left();
        let mut found: Vec<(usize, Found)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, flow) in config.flows.iter().enumerate() {
            for pattern in &flow.paths {
                let Ok(paths) = glob::glob(pattern) else {
                    continue;
                };
                for path in paths.filter_map(Result::ok) {
                    if self.matchers[i].excluded(&path) {
                        continue;
                    }
                    if let Some(file) = self.identify_new(&path)
                        && seen.insert(file.id)
                    {
                        found.push((i, file));
                    }
                }
            }
        }
        let mut rest = Vec::new();
        for (i, file) in found {
            match self.saved_state_of(&file) {
                Some(key) => self.resume(&config.flows[i], file, key),
                None => rest.push((i, file)),
            }
        }
        // Before new files are placed (one of them might otherwise take over a source whose
        // file was merely rotated away), and before pruning (the agent may have been down
        // longer than the retention).
        if !self.looked_for_rotated {
            self.looked_for_rotated = true;
            self.find_rotated_away();
        }
        for (i, file) in rest {
            self.place(&config.flows[i], file);
        }
        self.start_at_applies = false;
        self.prune();
        // Files that could not be opened in this scan (e.g. out of file descriptors, no
        // permission) make the agent not ready until a scan opens them.
        std::mem::swap(&mut self.unopenable, &mut self.unopenable_now);
        metrics::gauge!("tollstream_agent_files_unopenable").set(self.unopenable.len() as f64);
        self.health.unopenable(&self.unopenable);
    }

    /// Opens and identifies a file not followed yet; `None` if it is, or is not ready.
    fn identify_new(&mut self, path: &Path) -> Option<Found> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() || self.active.contains_key(&FileId::of(&meta)) {
            return None;
        }
        if self.descriptors_left <= RESERVED_DESCRIPTORS {
            let error = format!(
                "the open-files limit is nearly reached; {RESERVED_DESCRIPTORS} descriptors are kept for the collector connections and checkpoints (raise LimitNOFILE / ulimit -n)"
            );
            if !self.unopenable.contains_key(path) {
                warn!(path = %path.display(), %error, "Not opening file.");
            }
            self.unopenable_now.insert(path.to_path_buf(), error);
            return None;
        }
        match identify(path) {
            Ok(Some(found)) if !self.active.contains_key(&found.id) => {
                self.descriptors_left -= 1;
                Some(found)
            }
            Ok(_) => None, // No complete first line yet, or followed after all.
            Err(error) => {
                let error = error.to_string();
                if !self.unopenable.contains_key(path) {
                    warn!(path = %path.display(), %error, "Cannot open file; retried at every rescan, and /readyz says so meanwhile.");
                }
                metrics::counter!("tollstream_agent_open_errors_total").increment(1);
                self.unopenable_now.insert(path.to_path_buf(), error);
                None
            }
        }
    }

    /// The key of the saved state describing this very file (latest generation), if any.
    fn saved_state_of(&self, found: &Found) -> Option<String> {
        let checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        checkpoints
            .entries()
            .filter(|(_, e)| e.copy_of.is_none() && found.is(&e.file))
            .max_by_key(|(_, e)| e.generation)
            .map(|(key, _)| key.clone())
    }

    /// Follows a file that has saved state: from its offset if the bytes before it are
    /// unchanged, else (truncated or rewritten) from the start as a new generation.
    fn resume(&mut self, flow: &FlowConfig, found: Found, key: String) {
        let entry = {
            let checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            checkpoints.get(&key).cloned()
        };
        let Some(entry) = entry else { return };
        let intact = found.size >= entry.offset
            && bytes_before_match(&found.file, entry.offset, entry.tail_len, entry.tail_crc)
                .unwrap_or(false);
        if intact {
            self.follow(flow, found, key, entry.offset);
            return;
        }
        warn!(path = %found.path.display(), size = found.size, offset = entry.offset, "File was truncated or rewritten since it was last read; reading it again from the start as a new source.");
        metrics::counter!("tollstream_agent_truncations_total").increment(1);
        self.start_new(flow, found, false, 0);
    }

    /// Places a file without saved state of its own: a copy of a followed file (held back),
    /// the continuation of a source whose file is gone (e.g. the rotated copy after
    /// `copytruncate`), or a new source.
    fn place(&mut self, flow: &FlowConfig, found: Found) {
        let mut candidates: Vec<(String, Entry)> = {
            let checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            let held = self.held_copy_of(&checkpoints, &found);
            checkpoints
                .entries()
                .filter(|(key, e)| match &held {
                    Some((_, source)) => *key == source,
                    None => e.copy_of.is_none() && found.starts_like(&e.file),
                })
                .map(|(key, e)| (key.clone(), e.clone()))
                .collect()
        };
        candidates.sort_by_key(|(_, e)| std::cmp::Reverse(e.generation));
        let held_source = {
            let checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            self.held_copy_of(&checkpoints, &found)
                .map(|(_, source)| source)
        };
        // A source not followed whose first line this file holds and has delivered.
        let mut delivered: Option<(String, PathBuf)> = None;
        for (key, entry) in candidates {
            if let Some(&live) = self.followed_keys.get(&key) {
                match self.copy_of_live(&found, live) {
                    Some(true) => return self.hold_copy(found, key),
                    Some(false) => continue,
                    None => return, // Too little written to tell yet.
                }
            }
            // Only a check that reaches past the shared first line (or a copy compared with
            // the original while it lived) proves the same content: a new file that merely
            // starts like a rotated one must not take over its source.
            let proven = held_source.as_ref() == Some(&key)
                || (entry.tail_len > 0 && entry.offset > u64::from(entry.file.head_len.max(1)));
            let continues = proven
                && found.size >= entry.offset
                && bytes_before_match(&found.file, entry.offset, entry.tail_len, entry.tail_crc)
                    .unwrap_or(false);
            if continues {
                info!(path = %found.path.display(), source = %key, offset = entry.offset, was = %entry.path.display(), "File holds the content of a source whose own file is gone (a copy, e.g. by copytruncate); continuing that source.");
                return self.adopt(flow, found, key, entry.offset);
            }
            if delivered.is_none() && self.holds_delivered_head(&found, &entry) {
                delivered = Some((key, entry.path));
            }
        }
        // A held copy no longer longer than what its source sent: it holds nothing new.
        let held = {
            let checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            self.held_copy_of(&checkpoints, &found)
        };
        if let Some((own_key, source)) = held {
            if self.followed_keys.contains_key(&source) {
                return;
            }
            let sent = self
                .checkpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&source)
                .map(|e| e.offset);
            self.copies.remove(&found.id);
            let end = end_of_last_line(&found.file, found.size).unwrap_or(0);
            if sent.is_some_and(|sent| end <= sent) {
                info!(path = %found.path.display(), of = %source, "Copy holds nothing its source did not already send; following it from its end.");
                let tail = tail_before(&found.file, end).unwrap_or((0, 0));
                if let Some(entry) = self
                    .checkpoints
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&own_key)
                {
                    entry.copy_of = None;
                    entry.offset = end;
                    (entry.tail_crc, entry.tail_len) = tail;
                }
                return self.follow(flow, found, own_key, end);
            }
            // Longer than what was sent, but not verifiably its continuation: send it whole
            // as its own source (repeats, which the warehouse's key drops, rather than loss).
            warn!(path = %found.path.display(), of = %source, "A copy no longer matches its source where that source's sending stopped; sending the copy whole as a new source.");
            self.checkpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&own_key);
        } else if let Some((source, was)) = delivered {
            // Not its source's continuation as far as can be proven, but its first line is
            // one that source delivered: the file is a source of its own from after it.
            let head = found.fingerprint.len as u64;
            info!(path = %found.path.display(), of = %source, was = %was.display(), "File starts with the first line a source whose file was truncated already sent (a copy, e.g. by copytruncate); following it from after that line.");
            return self.start_new(flow, found, true, head);
        }
        self.start_new(flow, found, true, 0);
    }

    /// Whether `found` (no state of its own, not proven to continue the source `entry`
    /// describes) starts with a first line that source delivered, and holds nothing else
    /// that source may have delivered: `found` holds no complete line past its first, or
    /// the source delivered nothing past it. Only while the source's own file is still
    /// in its directory, truncated or rewritten in place (`copytruncate`'s signature): a
    /// new file that merely starts alike must not have its first line skipped because
    /// another file with that first line was deleted or rotated away.
    fn holds_delivered_head(&self, found: &Found, entry: &Entry) -> bool {
        let head = u64::from(entry.file.head_len);
        if head == 0 || !found.starts_like(&entry.file) || entry.offset < head {
            return false;
        }
        let nothing_more = entry.offset == head
            && bytes_before_match(&found.file, head, entry.tail_len, entry.tail_crc)
                .unwrap_or(false);
        let only_head = end_of_last_line(&found.file, found.size).is_ok_and(|end| end == head);
        (nothing_more || only_head) && self.truncated_in_place(entry)
    }

    /// Whether the file that held the source `entry` describes is still in its last
    /// directory (same inode and birth time, or device where there is none) but no longer
    /// holds that source's content: truncated, or rewritten, in place.
    fn truncated_in_place(&self, entry: &Entry) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(dir) = entry.path.parent() else {
            return false;
        };
        inodes_in(dir)
            .into_iter()
            .filter(|(_, ino)| *ino == entry.file.ino)
            .any(|(path, _)| {
                let Ok(file) = File::open(&path) else {
                    return false;
                };
                let Ok(meta) = file.metadata() else {
                    return false;
                };
                let btime = birth_time(&meta);
                let same_file = meta.ino() == entry.file.ino
                    && if entry.file.btime != 0 && btime != 0 {
                        entry.file.btime == btime
                    } else {
                        entry.file.dev == 0 || entry.file.dev == meta.dev()
                    };
                if !same_file {
                    return false;
                }
                let starts_alike = fingerprint(&file).ok().flatten().is_some_and(|f| {
                    f.crc == entry.file.head_crc && f.len == entry.file.head_len as usize
                });
                let holds = starts_alike
                    && meta.len() >= entry.offset
                    && bytes_before_match(&file, entry.offset, entry.tail_len, entry.tail_crc)
                        .unwrap_or(false);
                !holds
            })
    }

    /// The file's own key and the source it was found to copy, if it is a held copy.
    fn held_copy_of(&self, checkpoints: &Checkpoints, found: &Found) -> Option<(String, String)> {
        checkpoints
            .entries()
            .find(|(_, e)| e.copy_of.is_some() && found.is(&e.file))
            .and_then(|(key, e)| Some((key.clone(), e.copy_of.clone()?)))
    }

    /// Whether `found` holds the same bytes as the followed file `live` (read through the
    /// tailer's own descriptor, wherever the file has moved); `None` while that cannot be
    /// told: nothing beyond the shared first line to compare yet, or the followed file no
    /// longer starts with its first line (truncated, e.g. by `copytruncate`: its tailer is
    /// about to end, and then `found` may continue its source).
    fn copy_of_live(&self, found: &Found, live: FileId) -> Option<bool> {
        let (_, _, other) = self.active.get(&live)?;
        let meta = other.metadata().ok()?;
        if fingerprint(other).ok().flatten() != Some(found.fingerprint) {
            return None;
        }
        let len = found.size.min(meta.len());
        let head = found.fingerprint.len as u64;
        if found.size <= head {
            return None; // Nothing past the first line to compare yet.
        }
        if meta.len() <= head {
            // The followed file has nothing past its first line, the found one has: not
            // a copy of it (only files sharing a header look alike this far).
            return Some(false);
        }
        same_bytes_before(&found.file, other, len, head).ok()
    }

    /// Records `found` as a copy of the followed source `key`, not to be read while that
    /// source's file holds the same content.
    fn hold_copy(&mut self, found: Found, key: String) {
        if self.copies.insert(found.id, key.clone()).is_none() {
            info!(path = %found.path.display(), of = %key, "File is a copy of a file being followed; holding it back so nothing is sent twice.");
            metrics::counter!("tollstream_agent_copies_detected_total").increment(1);
        }
        let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        if self.held_copy_of(&checkpoints, &found).is_some() {
            return;
        }
        let now = self.clock.now();
        let (own, generation) =
            checkpoints.new_source(&found.key_base(), found.btime, now.as_second());
        let now = now.to_string();
        checkpoints.set(
            &own,
            Entry {
                copy_of: Some(key),
                seen_at: Some(now),
                ..found.entry(0, generation)
            },
        );
    }

    /// Moves source `key` onto `found` and follows it from `offset`.
    fn adopt(&mut self, flow: &FlowConfig, found: Found, key: String, offset: u64) {
        {
            let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((own, _)) = self.held_copy_of(&checkpoints, &found) {
                checkpoints.remove(&own);
            }
            if let Some(entry) = checkpoints.get_mut(&key) {
                entry.file = found.identity();
                entry.path = found.path.clone();
            }
        }
        self.copies.remove(&found.id);
        self.follow(flow, found, key, offset);
    }

    /// Follows a file never seen before as a new source, from `skip` at the earliest.
    fn start_new(&mut self, flow: &FlowConfig, found: Found, first_sight: bool, skip: u64) {
        if first_sight
            && let Some(max_age) = flow.ignore_older
            && let Ok(modified) = found.modified
            && let Ok(modified) = jiff::Timestamp::try_from(modified)
            && self.clock.now().duration_since(modified).unsigned_abs() > max_age
        {
            if self.ignored.insert(found.id) {
                debug!(path = %found.path.display(), "Not modified within ignore_older; not following it.");
            }
            return;
        }
        self.ignored.remove(&found.id);
        let start = if self.start_at_applies && first_sight && flow.start_at == StartAt::End {
            end_of_last_line(&found.file, found.size).map(Some)
        } else {
            offset_after_lines(&found.file, flow.skip_header_lines, found.size)
        };
        let start = match start {
            Ok(Some(start)) => start.max(skip),
            Ok(None) => return, // Header lines not all written yet.
            Err(error) => {
                warn!(path = %found.path.display(), %error, "Cannot read file.");
                return;
            }
        };
        let key = {
            let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            // A file's first source is generation 0; later generations (truncations) are
            // the Unix second, so they never reuse a number even after pruning. Once the
            // agent has forgotten state (a damaged checkpoint, pruning), a file born before
            // then gets a generation above any it had: it may have moved on from
            // generation 0, whose name the collector still holds for other bytes.
            let now = self.clock.now().as_second();
            let (key, generation) = if first_sight {
                checkpoints.new_source(&found.key_base(), found.btime, now)
            } else {
                let floor = u32::try_from(now).unwrap_or(u32::MAX);
                checkpoints.next_generation(&found.key_base(), floor)
            };
            let tail = tail_before(&found.file, start).unwrap_or((0, 0));
            let mut entry = found.entry(start, generation);
            (entry.tail_crc, entry.tail_len) = tail;
            checkpoints.set(&key, entry);
            key
        };
        self.follow(flow, found, key, start);
    }

    /// Starts a tailer for `found` as source `key` at `start`.
    fn follow(&mut self, flow: &FlowConfig, found: Found, key: String, start: u64) {
        self.follow_as(flow, found, key, start, false);
    }

    fn follow_as(
        &mut self,
        flow: &FlowConfig,
        found: Found,
        key: String,
        start: u64,
        draining: bool,
    ) {
        // Events for this path now wake this tailer; one still draining a rotated file that
        // had the same name relies on polling.
        let wake = Arc::new(Notify::new());
        self.wakes.insert(found.path.clone(), wake.clone());
        self.followed.insert(found.path.clone(), found.id);
        let mut start_check = (0, 0);
        {
            let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = checkpoints.get_mut(&key) {
                entry.path = found.path.clone();
                entry.file = found.identity();
                entry.drained = false;
                entry.stream.clone_from(&flow.stream);
                entry.seen_at = Some(self.clock.now().to_string());
                if entry.offset == start {
                    start_check = (entry.tail_crc, entry.tail_len);
                }
            }
        }
        let file = Arc::new(found.file);
        let tailer = Tailer {
            stream: flow.stream.clone(),
            path: found.path.clone(),
            file: file.clone(),
            id: found.id,
            fingerprint: found.fingerprint,
            source: format!("{}/{key}", self.config.agent_id()),
            key: key.clone(),
            start,
            start_check,
            limits: flow.batch.clone(),
            max_in_flight: self.config.collector.max_in_flight_per_file,
            max_line_bytes: flow.max_line_bytes,
            multiline: flow.multiline.clone(),
            gzip_level: self.config.collector.gzip_level,
            poll_interval: self.config.poll_interval,
            rotate_wait: self.config.rotate_wait,
            draining,
            wake,
            ship: self.ship.clone(),
            budget: self.budgets.for_stream(&flow.stream),
            checkpoints: self.checkpoints.clone(),
            clock: self.clock.clone(),
            shutdown: self.shutdown.clone(),
            lag: crate::metrics::LagShare::new(&flow.stream),
            heartbeat: Heartbeat::new(format!("tailer of {}", found.path.display())),
        };
        self.heartbeats.watch(&tailer.heartbeat);
        info!(path = %found.path.display(), source = %tailer.source, offset = start, size = found.size, "Following file.");
        self.active
            .insert(found.id, (found.path.clone(), key.clone(), file));
        self.followed_keys.insert(key, found.id);
        metrics::gauge!("tollstream_agent_files_followed").set(self.active.len() as f64);
        let (id, path) = (found.id, found.path.clone());
        let task = self
            .tasks
            .spawn(async move { (id, path, tailer.run().await) });
        self.task_files.insert(task.id(), (id, found.path));
    }

    /// Forgets the state of sources not followed for `checkpoint_retention`.
    fn prune(&mut self) {
        let Some(before) = self
            .clock
            .now()
            .checked_sub(self.config.checkpoint_retention)
            .ok()
        else {
            return;
        };
        let followed = &self.followed_keys;
        let held: std::collections::HashSet<&String> = self.copies.values().collect();
        let now = self.clock.now().as_second();
        let pruned = self
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prune(before, now, |key| {
                followed.contains_key(key) || held.contains(&key.to_owned())
            });
        if pruned > 0 {
            info!(pruned, retention = ?self.config.checkpoint_retention, "Forgot the state of files not followed within checkpoint_retention.");
        }
    }
}

/// Descriptors kept free for sockets, the checkpoint and event queues: a file is not opened
/// when fewer would be left.
const RESERVED_DESCRIPTORS: u64 = 32;

/// How many more descriptors this process may open: the soft `RLIMIT_NOFILE` less those
/// open now (`u64::MAX` where that cannot be told).
fn descriptors_left() -> u64 {
    let Ok((soft, _)) = rlimit::Resource::NOFILE.get() else {
        return u64::MAX;
    };
    let Ok(open) = std::fs::read_dir("/proc/self/fd") else {
        return u64::MAX;
    };
    soft.saturating_sub(open.count() as u64)
}

/// Regular files in `dir` with their inode numbers.
fn inodes_in(dir: &Path) -> Vec<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| (e.path(), meta.ino()))
        })
        .collect()
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
        btime: birth_time(&meta),
        modified: meta.modified(),
        fingerprint,
        size: meta.len(),
        file,
    }))
}

/// Birth time in nanoseconds since the epoch; 0 where the file system keeps none.
fn birth_time(meta: &std::fs::Metadata) -> u64 {
    meta.created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Found {
    /// Whether this is the file `identity` describes: same inode and birth time (or, where
    /// there is no birth time, same device and inode) and the same first line.
    fn is(&self, identity: &FileIdentity) -> bool {
        let same_file = self.id.ino == identity.ino
            && if identity.btime != 0 && self.btime != 0 {
                identity.btime == self.btime
            } else {
                identity.dev == 0 || identity.dev == self.id.dev
            };
        same_file && self.starts_like(identity)
    }

    /// Whether the file starts with the first line `identity` was taken from.
    fn starts_like(&self, identity: &FileIdentity) -> bool {
        self.fingerprint.crc == identity.head_crc
            && (identity.head_len == 0 || identity.head_len as usize == self.fingerprint.len)
    }

    fn identity(&self) -> FileIdentity {
        FileIdentity {
            dev: self.id.dev,
            ino: self.id.ino,
            btime: self.btime,
            head_crc: self.fingerprint.crc,
            head_len: u32::try_from(self.fingerprint.len).unwrap_or(u32::MAX),
        }
    }

    /// Keys of this file's sources: `<inode>-<birth time>-<first-line CRC>-<generation>`,
    /// all hex but the generation (see [`Checkpoints::new_source`] and `next_generation`).
    fn key_base(&self) -> String {
        format!(
            "{:x}-{:x}-{:08x}",
            self.id.ino, self.btime, self.fingerprint.crc
        )
    }

    fn entry(&self, offset: u64, generation: u32) -> Entry {
        Entry {
            path: self.path.clone(),
            offset,
            size: self.size,
            generation,
            acked_at: None,
            file: self.identity(),
            tail_crc: 0,
            tail_len: 0,
            copy_of: None,
            seen_at: None,
            drained: false,
            stream: String::new(),
        }
    }
}

/// Offset just after the first `lines` lines; `None` while fewer are written.
fn offset_after_lines(file: &File, lines: usize, size: u64) -> std::io::Result<Option<u64>> {
    let mut left = lines;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        if offset >= size {
            return Ok(None);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..len], offset)?;
        match memchr::memchr_iter(b'\n', &buf[..len]).nth(left - 1) {
            Some(nl) => return Ok(Some(offset + nl as u64 + 1)),
            None => {
                left -= memchr::memchr_iter(b'\n', &buf[..len]).count();
                offset += len as u64;
            }
        }
    }
    Ok(Some(offset))
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

/// The directory part of a glob before its first wildcard, and whether events must be
/// watched below it too (`**`, or a wildcard in a directory component).
fn glob_base(pattern: &str) -> (PathBuf, bool) {
    let mut base = PathBuf::new();
    let components: Vec<_> = Path::new(pattern).components().collect();
    let mut recursive = false;
    for (i, component) in components.iter().enumerate() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[', '{']) {
            recursive = i + 1 < components.len();
            break;
        }
        base.push(component);
    }
    if base.as_os_str() == pattern {
        base.pop(); // A plain file path: watch its directory.
    }
    (base, recursive || pattern.contains("**"))
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
        assert_eq!(
            glob_base("/var/log/toll/*/booth.log"),
            (PathBuf::from("/var/log/toll"), true),
            "a wildcard directory needs events from below it"
        );
    }
}
