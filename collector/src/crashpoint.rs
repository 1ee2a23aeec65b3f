//! Crash points: a test-only hook that makes the collector kill itself with SIGKILL at a
//! named place, so a fault-injection test can prove that a crash exactly there loses and
//! duplicates nothing.
//!
//! Armed only by the environment variable `TOLLSTREAM_CRASH_AT=<point>:<n>`: the `n`-th time
//! (counting from 1, in this process) the code passes [`hit`]`(<point>)`, the process sends
//! itself SIGKILL — no destructors, no flushing, exactly what `kill -9` or a power cut of the
//! process (not of the machine) does. The variable is read once; unarmed, [`hit`] costs one
//! initialised-`OnceLock` check and logs nothing. Armed, the collector logs one INFO line at
//! start naming the point, and one line on stderr just before it dies. An unknown point or
//! a malformed value stops the collector at start (a typo must not silently test nothing).
//!
//! Never set it in production. The points, in the order a line passes them:
//!
//! | point | where |
//! |---|---|
//! | `wal-written` | a WAL group is written to the segment, not yet fsynced, not acknowledged |
//! | `wal-synced` | the group is fsynced, the answers to its requests not yet sent |
//! | `wal-snapshot-stored` | before deleting consumed segments: `sources.json` is stored, the segment files not yet removed |
//! | `archive-renamed` | an archive object is renamed into place, the position file not yet written |
//! | `archive-position-written` | the position file is written, the object not yet handed to the loader |
//! | `load-uncommitted` | a load's rows, manifest row (and errors object) are written, `COMMIT` not yet run |
//! | `load-committed` | the load is committed, the loader not yet told |
//! | `recovery-wal-scanned` | at start: the WAL is scanned (torn tail cut), the writer not yet started |
//! | `recovery-catch-up` | at start: the loader is about to load an archive object the manifest lacks |
//! | `alert-stored` | a fired alert is in the outbox, the checkpoint covering its record not yet written |
//!
//! A second hook, `TOLLSTREAM_STALL_AT=<point>:<n>`, makes the code hang for good at the
//! `n`-th pass instead, to prove that the systemd watchdog stops being fed (see
//! [`crate::systemd`]). Its only point is `wal-writer` (a WAL writer thread has taken a group
//! of requests and not written it).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const ENV: &str = "TOLLSTREAM_CRASH_AT";

/// Every crash point there is (see the module header).
pub const POINTS: &[&str] = &[
    "wal-written",
    "wal-synced",
    "wal-snapshot-stored",
    "archive-renamed",
    "archive-position-written",
    "load-uncommitted",
    "load-committed",
    "recovery-wal-scanned",
    "recovery-catch-up",
    "alert-stored",
];

/// The point armed in this process and how often it was passed.
#[derive(Debug)]
struct Armed {
    point: &'static str,
    at: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Result<Option<Armed>, String>> = OnceLock::new();

/// The environment variable that arms a stall point.
pub const STALL_ENV: &str = "TOLLSTREAM_STALL_AT";

/// Every stall point there is.
pub const STALL_POINTS: &[&str] = &["wal-writer"];

static STALL: OnceLock<Result<Option<Armed>, String>> = OnceLock::new();

/// Reads `<point>:<n>`.
#[cfg(test)]
fn parse(value: &str) -> Result<Armed, String> {
    parse_for(value, ENV, POINTS)
}

/// Reads `<point>:<n>` for the variable `env` whose points are `points`.
fn parse_for(value: &str, env: &str, points: &[&'static str]) -> Result<Armed, String> {
    let (name, count) = value
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| format!("{env}={value:?}: expected <point>:<n>, e.g. wal-synced:3"))?;
    let point = points
        .iter()
        .copied()
        .find(|p| *p == name)
        .ok_or_else(|| format!("{env}={value:?}: unknown point; the points are {points:?}"))?;
    let at = count
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{env}={value:?}: <n> must be a whole number >= 1"))?;
    Ok(Armed {
        point,
        at,
        hits: AtomicU64::new(0),
    })
}

fn from_env() -> Result<Option<Armed>, String> {
    armed_by(ENV, POINTS)
}

fn armed_by(env: &str, points: &[&'static str]) -> Result<Option<Armed>, String> {
    match std::env::var(env) {
        Ok(value) => parse_for(&value, env, points).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{env} is not valid UTF-8")),
    }
}

/// Reads `TOLLSTREAM_CRASH_AT` (once) and logs the armed point, if any. Call at start.
///
/// # Errors
/// A value that is not `<known point>:<n >= 1>`.
pub fn arm_from_env() -> anyhow::Result<()> {
    match STALL.get_or_init(|| armed_by(STALL_ENV, STALL_POINTS)) {
        Ok(None) => {}
        Ok(Some(armed)) => tracing::info!(
            point = armed.point,
            at_hit = armed.at,
            "Stall point armed ({STALL_ENV}, a testing hook): this process will hang there."
        ),
        Err(message) => anyhow::bail!("{message}"),
    }
    match ARMED.get_or_init(from_env) {
        Ok(None) => Ok(()),
        Ok(Some(armed)) => {
            tracing::info!(
                point = armed.point,
                at_hit = armed.at,
                "Crash point armed ({ENV}, a testing hook): this process will SIGKILL itself there."
            );
            Ok(())
        }
        Err(message) => anyhow::bail!("{message}"),
    }
}

/// Marks that the code passed crash point `point`; kills the process with SIGKILL if that
/// point is armed and this is the hit it was armed for.
#[inline]
pub fn hit(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "unknown crash point {point}");
    if let Ok(Some(armed)) = ARMED.get_or_init(from_env) {
        armed.hit(point);
    }
}

/// Marks that the code passed stall point `point`; hangs the calling thread for good if
/// that point is armed and this is the hit it was armed for.
#[inline]
pub fn stall(point: &'static str) {
    debug_assert!(STALL_POINTS.contains(&point), "unknown stall point {point}");
    if let Ok(Some(armed)) = STALL.get_or_init(|| armed_by(STALL_ENV, STALL_POINTS))
        && point == armed.point
        && armed.hits.fetch_add(1, Ordering::Relaxed) + 1 == armed.at
    {
        eprintln!(
            "tollstream-collector: stall point {point} reached for the {} time ({STALL_ENV}); hanging this thread",
            armed.at
        );
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

impl Armed {
    #[cold]
    fn hit(&self, point: &'static str) {
        if point != self.point || self.hits.fetch_add(1, Ordering::Relaxed) + 1 != self.at {
            return;
        }
        // Written straight to stderr (unbuffered) so the line is in the log before the
        // process is gone, whatever the log level.
        eprintln!(
            "tollstream-collector: crash point {point} reached for the {} time ({ENV}); killing this process with SIGKILL",
            self.at
        );
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; should it somehow not have been delivered, still die.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_a_known_point_and_a_positive_hit_count() {
        let armed = parse("wal-synced:3").expect("valid");
        assert_eq!((armed.point, armed.at), ("wal-synced", 3));
        for bad in [
            "wal-synced",
            "wal-synced:0",
            "wal-synced:x",
            "no-such-point:1",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn other_points_and_earlier_hits_pass_through() {
        let armed = parse("load-committed:3").expect("valid");
        armed.hit("wal-synced");
        armed.hit("load-committed");
        armed.hit("load-committed");
        assert_eq!(armed.hits.load(Ordering::Relaxed), 2);
    }
}
