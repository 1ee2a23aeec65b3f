//! systemd integration: readiness and status notifications, and a watchdog fed only while
//! the agent's main loops make progress.
//!
//! Input: `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the service manager (`Type=notify`,
//! `WatchdogSec=`); without them every notification is a no-op. Output: `READY=1`,
//! `STATUS=…`, `RELOADING=1`, `STOPPING=1` and `WATCHDOG=1` datagrams.
//!
//! Each critical loop owns a [`Heartbeat`] and says, each time round, by when it will be
//! back: [`Heartbeat::beat`] (now, it is working), [`Heartbeat::park_until`] (it sleeps
//! until a timer) or [`Heartbeat::park`] (it waits for someone else: an ack, a request, a
//! connection — whose own loop is watched instead). The watchdog feeds systemd only while
//! no heartbeat is overdue by more than the watchdog interval; the first overdue one is
//! logged as an ERROR naming the loop, and feeding stops for good, so systemd kills and
//! restarts the daemon instead of letting it stall silently. A runtime that is wedged as a
//! whole stops feeding by itself: the watchdog task runs on it too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// Without a systemd watchdog, how long a loop may be overdue before it is logged.
const UNSUPERVISED_MAX_DELAY: Duration = Duration::from_secs(60);

/// Sends `states` to the service manager, if there is one.
///
/// Never blocks (unlike `sd_notify::notify`): a notification is a datagram, and a blocking
/// send to a receiver that does not read — a full queue — would hang a runtime thread,
/// and with it the shutdown. systemd reads at once; a message it has no room for is
/// dropped, and the next watchdog tick sends another.
fn send(states: &[NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let sent = (|| {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &path),
        }
    })();
    if let Err(error) = sent {
        debug!(%error, "Could not notify systemd.");
    }
}

/// `READY=1` with a status line: start-up (or a reload) is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A status line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with a status line; follow it with [`ready`].
pub fn reloading(status: &str) {
    send(&[NotifyState::Reloading, NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Marks "waiting for someone else": never overdue.
const PARKED: u64 = u64::MAX;

/// The pulse of one loop: the time by which it promised to be back.
#[derive(Debug)]
pub struct Heartbeat {
    name: String,
    base: Instant,
    /// Milliseconds after `base` by which the loop will beat again, or [`PARKED`].
    due_ms: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            base: Instant::now(),
            due_ms: AtomicU64::new(0),
        })
    }

    /// The loop's name, as logged when it stalls.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(PARKED - 1)
    }

    /// The loop is working now.
    pub fn beat(&self) {
        self.due_ms
            .store(self.ms(Instant::now()), Ordering::Relaxed);
    }

    /// The loop sleeps until `deadline` (a timer), then goes on.
    pub fn park_until(&self, deadline: Instant) {
        self.due_ms.store(self.ms(deadline), Ordering::Relaxed);
    }

    /// The loop waits for input whose producer is watched on its own (or for nothing).
    pub fn park(&self) {
        self.due_ms.store(PARKED, Ordering::Relaxed);
    }

    /// How long past its promise the loop is at `now`; zero when on time or parked.
    pub fn overdue(&self, now: Instant) -> Duration {
        match self.due_ms.load(Ordering::Relaxed) {
            PARKED => Duration::ZERO,
            due => Duration::from_millis(self.ms(now).saturating_sub(due)),
        }
    }
}

/// Every live heartbeat; a loop that ends drops its own and leaves the set.
#[derive(Debug, Default)]
pub struct Heartbeats {
    beats: Mutex<Vec<Weak<Heartbeat>>>,
}

impl Heartbeats {
    /// Adds a loop's heartbeat to the watched set.
    pub fn watch(&self, heartbeat: &Arc<Heartbeat>) {
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(heartbeat));
    }

    /// A new heartbeat, watched.
    pub fn register(&self, name: impl Into<String>) -> Arc<Heartbeat> {
        let heartbeat = Heartbeat::new(name);
        self.watch(&heartbeat);
        heartbeat
    }

    /// The loop most overdue by more than `max_delay` at `now`, with how much.
    pub fn stalled(&self, now: Instant, max_delay: Duration) -> Option<(String, Duration)> {
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.retain(|b| b.strong_count() > 0);
        beats
            .iter()
            .filter_map(Weak::upgrade)
            .map(|b| (b.overdue(now), b))
            .filter(|(late, _)| *late > max_delay)
            .max_by_key(|(late, _)| *late)
            .map(|(late, b)| (b.name.clone(), late))
    }

    /// How many loops are watched.
    pub fn len(&self) -> usize {
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.iter().filter(|b| b.strong_count() > 0).count()
    }

    /// Whether no loop is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the watchdog runs: fed every `interval`, and a loop overdue by more than
/// `max_delay` stops the feeding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogPlan {
    /// Between two checks (and two `WATCHDOG=1`).
    pub interval: Duration,
    /// How late a loop may be.
    pub max_delay: Duration,
    /// Whether systemd expects `WATCHDOG=1`; otherwise a stall is only logged.
    pub feed: bool,
}

impl WatchdogPlan {
    /// From `WATCHDOG_USEC` (and `WATCHDOG_PID`): fed at half the timeout, and a loop may
    /// be late by at most the timeout. Without a watchdog, stalls are still logged.
    pub fn from_env() -> Self {
        match sd_notify::watchdog_enabled().filter(|t| !t.is_zero()) {
            Some(timeout) => Self {
                interval: timeout / 2,
                max_delay: timeout,
                feed: true,
            },
            None => Self {
                interval: UNSUPERVISED_MAX_DELAY / 4,
                max_delay: UNSUPERVISED_MAX_DELAY,
                feed: false,
            },
        }
    }
}

/// Checks the heartbeats every `plan.interval` and feeds the watchdog while none is
/// overdue; at the first stall, logs it once and returns (feeding stops for good).
pub async fn watchdog(heartbeats: Arc<Heartbeats>, plan: WatchdogPlan, stop: CancellationToken) {
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match heartbeats.stalled(Instant::now(), plan.max_delay) {
            None if plan.feed => send(&[NotifyState::Watchdog]),
            None => {}
            Some((component, late)) => {
                let action = if plan.feed {
                    "no longer feeding the systemd watchdog: systemd will restart the agent"
                } else {
                    "restart the agent"
                };
                error!(component, overdue = ?late, "A main loop of the agent stopped making progress; {action}.");
                status(&format!("Stalled: {component} overdue by {late:?}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_keeps_beating_is_never_stalled() {
        let beats = Heartbeats::default();
        let tailer = beats.register("tailer /var/log/toll/a.log");
        for _ in 0..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            tailer.beat();
        }
        assert_eq!(beats.stalled(Instant::now(), LIMIT), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_silent_past_the_limit_is_named() {
        let beats = Heartbeats::default();
        let _discovery = beats.register("discovery");
        let tailer = beats.register("tailer a.log");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(beats.stalled(Instant::now(), LIMIT), None);
        tailer.beat();
        tokio::time::advance(Duration::from_secs(15)).await;
        let (name, late) = beats.stalled(Instant::now(), LIMIT).expect("stalled");
        assert_eq!(name, "discovery");
        assert_eq!(late, Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn parked_loops_are_not_stalled_and_timers_count_from_their_deadline() {
        let beats = Heartbeats::default();
        let waiting = beats.register("waits for acks");
        let sleeping = beats.register("sleeps 2 minutes");
        waiting.park();
        sleeping.park_until(Instant::now() + Duration::from_secs(120));
        tokio::time::advance(Duration::from_secs(140)).await;
        assert_eq!(beats.stalled(Instant::now(), LIMIT), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        let (name, _) = beats.stalled(Instant::now(), LIMIT).expect("stalled");
        assert_eq!(name, "sleeps 2 minutes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_ended_leaves_the_set() {
        let beats = Heartbeats::default();
        let tailer = beats.register("tailer rotated.log");
        assert_eq!(beats.len(), 1);
        drop(tailer);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(beats.stalled(Instant::now(), LIMIT), None);
        assert!(beats.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_returns_at_the_first_stall() {
        let beats = Arc::new(Heartbeats::default());
        let _stuck = beats.register("stuck");
        let plan = WatchdogPlan {
            interval: Duration::from_secs(15),
            max_delay: LIMIT,
            feed: false,
        };
        let task = tokio::spawn(watchdog(beats, plan, CancellationToken::new()));
        tokio::time::advance(Duration::from_secs(46)).await;
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("returned")
            .expect("no panic");
    }
}
