//! The one source of wall-clock time, injectable so tests can replay days in seconds.
//!
//! Monotonic time (timeouts, buffer ages) uses `tokio::time` instead, which tests pause.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::Timestamp;

/// Wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system's real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // The one place allowed to read the real clock.
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told; clones share the same time.
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<AtomicI64>);

impl FakeClock {
    /// A fake clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(start.as_microsecond())))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(
            i64::try_from(by.as_micros()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        // Only values from a valid Timestamp plus bounded advances are ever stored.
        Timestamp::from_microsecond(self.0.load(Ordering::SeqCst)).unwrap_or(Timestamp::MAX)
    }
}

/// A clock that shows the RFC 3339 time written in a file, read at every call: how the
/// end-to-end tests replay historical days through the real binary (they move the time by
/// rewriting the file). Enabled only by the `TOLLSTREAM_TEST_CLOCK_FILE` environment
/// variable; a file that cannot be read or parsed shows the last good time.
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
    last: AtomicI64,
}

impl FileClock {
    /// A clock reading `path`, which must hold a time now.
    ///
    /// # Errors
    /// The file cannot be read or does not hold an RFC 3339 time.
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        let start = Self::read(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            last: AtomicI64::new(start.as_microsecond()),
        })
    }

    fn read(path: &std::path::Path) -> Result<Timestamp, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("test clock {}: {e}", path.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("test clock {}: {text:?}: {e}", path.display()))
    }
}

impl Clock for FileClock {
    fn now(&self) -> Timestamp {
        if let Ok(now) = Self::read(&self.path) {
            self.last.store(now.as_microsecond(), Ordering::SeqCst);
            return now;
        }
        Timestamp::from_microsecond(self.last.load(Ordering::SeqCst)).unwrap_or(Timestamp::MAX)
    }
}
