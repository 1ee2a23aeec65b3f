//! Disk guard: how much room the data directory's file system has left.
//!
//! Ingest refuses new batches (503 with `Retry-After`) while free space is below
//! `disk.min_free_bytes`; the reserve is for the stages behind the WAL (archive objects,
//! warehouse pages), whose progress is what frees WAL segments. The figure is refreshed
//! every second and right after a write failed, so a refusal never rests on a stale view
//! for long, and `/readyz` and the `tollstream_collector_disk_free_bytes` gauge show it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often free space is measured.
const REFRESH: Duration = Duration::from_secs(1);

/// The data directory's free space, as last measured.
#[derive(Debug)]
pub struct DiskGuard {
    path: PathBuf,
    min_free: u64,
    /// `u64::MAX` until measured, and when the measurement fails (no guard rather than a
    /// collector that refuses everything because `statvfs` failed).
    free: AtomicU64,
    /// Bytes accepted into the WAL since `free` was measured: between two measurements
    /// ingest could otherwise write far past the reserve (a second at full speed is
    /// hundreds of megabytes).
    spent: AtomicU64,
}

impl DiskGuard {
    /// A guard over `path`'s file system, measured once now.
    pub fn new(path: &Path, min_free: u64) -> Arc<Self> {
        let guard = Arc::new(Self {
            path: path.to_path_buf(),
            min_free,
            free: AtomicU64::new(u64::MAX),
            spent: AtomicU64::new(0),
        });
        guard.refresh();
        guard
    }

    /// Measures free space now (bytes available to unprivileged writers).
    pub fn refresh(&self) -> u64 {
        let free = match rustix::fs::statvfs(&self.path) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(error) => {
                warn!(path = %self.path.display(), %error, "Cannot measure free disk space; the disk guard is off until it can.");
                u64::MAX
            }
        };
        let before = self.free.swap(free, Ordering::Relaxed);
        self.spent.store(0, Ordering::Relaxed);
        if free != u64::MAX {
            metrics::gauge!("tollstream_collector_disk_free_bytes").set(free as f64);
        }
        let low = |f: u64| f < self.min_free;
        if low(free) && !low(before) {
            warn!(path = %self.path.display(), free_bytes = free, min_free_bytes = self.min_free, "Disk nearly full: ingest refuses new batches until space returns.");
        } else if !low(free) && low(before) {
            info!(path = %self.path.display(), free_bytes = free, "Disk space is back: ingest accepts batches again.");
        }
        free
    }

    /// Free bytes as last measured (`None` when unknown).
    pub fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|&f| f != u64::MAX)
    }

    /// The configured reserve.
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Whether free space, less what was written since it was measured, is below the
    /// reserve.
    pub fn is_low(&self) -> bool {
        let free = self.free.load(Ordering::Relaxed);
        free != u64::MAX && free.saturating_sub(self.spent.load(Ordering::Relaxed)) < self.min_free
    }

    /// Notes `bytes` written to the data directory since the last measurement.
    pub fn spend(&self, bytes: u64) {
        self.spent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Refreshes every second until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let guard = self.clone();
            // statvfs can block on a stuck network file system: not on a runtime thread.
            if tokio::task::spawn_blocking(move || guard.refresh())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_temp_dir_and_compares_with_the_reserve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roomy = DiskGuard::new(dir.path(), 0);
        assert!(roomy.free().is_some_and(|f| f > 0));
        assert!(!roomy.is_low());
        let greedy = DiskGuard::new(dir.path(), u64::MAX - 1);
        assert!(greedy.is_low());
        // Writes since the measurement count against the reserve until the next one.
        let free = roomy.free().expect("measured");
        let tight = DiskGuard::new(dir.path(), free / 2);
        assert!(!tight.is_low());
        tight.spend(free);
        assert!(tight.is_low());
    }
}
