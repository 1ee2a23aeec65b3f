//! Health: what `/readyz` reports — flows the collector refuses, and whether it can be
//! reached at all.
//!
//! Input: the shipper's outcomes. Output: a JSON verdict; not ready while any source is
//! paused by a refusal (wrong token, unknown stream, …) or the collector has been
//! unreachable for longer than [`UNREACHABLE_AFTER`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

/// How long failed sends may go on before the agent says it is not ready.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);

/// Shared delivery health.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Sources the collector refuses, with its answer.
    refused: BTreeMap<String, String>,
    /// Since when every send failed to reach the collector (none: the last one reached it).
    failing_since: Option<Instant>,
    last_error: Option<String>,
    /// Matched files that cannot be opened: a few of their paths, the distinct errors,
    /// and how many.
    unopenable_paths: Vec<String>,
    unopenable_errors: Vec<String>,
    unopenable_count: usize,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch of `source` was acknowledged.
    pub fn delivered(&self, source: &str) {
        let mut state = self.state();
        state.refused.remove(source);
        state.failing_since = None;
        state.last_error = None;
    }

    /// The collector answered, but asked to retry later (429, 503, …): it is reachable.
    pub fn reached(&self) {
        self.state().failing_since = None;
    }

    /// The collector refused a batch of `source` for a reason retrying soon cannot fix.
    pub fn refused(&self, source: &str, why: String) {
        let mut state = self.state();
        state.refused.insert(source.to_owned(), why);
        state.failing_since = None;
    }

    /// A send did not reach the collector.
    pub fn unreachable(&self, error: String) {
        let mut state = self.state();
        state.failing_since.get_or_insert_with(Instant::now);
        state.last_error = Some(error);
    }

    /// The matched files the latest scan could not open.
    pub fn unopenable(&self, files: &BTreeMap<std::path::PathBuf, String>) {
        let mut state = self.state();
        state.unopenable_count = files.len();
        state.unopenable_paths = files
            .keys()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        let mut errors: Vec<String> = files.values().cloned().collect();
        errors.sort();
        errors.dedup();
        errors.truncate(3);
        state.unopenable_errors = errors;
    }

    /// The `/readyz` answer: ready, and a JSON body saying what is wrong if not.
    pub fn verdict(&self) -> (bool, Value) {
        let state = self.state();
        let mut problems = Vec::new();
        for (source, why) in &state.refused {
            problems.push(format!(
                "the collector refuses batches of {source}: {why}; the flow is paused and retried every 30s"
            ));
        }
        if let Some(since) = state.failing_since
            && since.elapsed() >= UNREACHABLE_AFTER
        {
            problems.push(format!(
                "the collector has been unreachable for {}s: {}",
                since.elapsed().as_secs(),
                state.last_error.as_deref().unwrap_or("unknown error")
            ));
        }
        if state.unopenable_count > 0 {
            problems.push(format!(
                "{} matched files cannot be opened and are not being read yet: {} (e.g. {}); retried at every rescan",
                state.unopenable_count,
                state.unopenable_errors.join("; "),
                state.unopenable_paths.join(", ")
            ));
        }
        let ready = problems.is_empty();
        let status = if ready { "ready" } else { "not ready" };
        (ready, json!({ "status": status, "problems": problems }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refusals_and_long_outages_make_the_agent_not_ready() {
        let health = Health::default();
        assert!(health.verdict().0);
        health.refused("a/1", "401 Unauthorized".into());
        let (ready, body) = health.verdict();
        assert!(!ready);
        assert!(body.to_string().contains("401 Unauthorized"), "{body}");
        health.delivered("a/1");
        assert!(health.verdict().0);
        health.unreachable("connection refused".into());
        assert!(health.verdict().0, "a short outage is not yet a problem");
        tokio::time::advance(UNREACHABLE_AFTER).await;
        let (ready, body) = health.verdict();
        assert!(
            !ready && body.to_string().contains("connection refused"),
            "{body}"
        );
        health.reached();
        assert!(health.verdict().0);
        let files = BTreeMap::from([(
            std::path::PathBuf::from("/var/log/toll/a.log"),
            "Too many open files (os error 24)".to_string(),
        )]);
        health.unopenable(&files);
        let (ready, body) = health.verdict();
        assert!(
            !ready && body.to_string().contains("Too many open files"),
            "{body}"
        );
        health.unopenable(&BTreeMap::new());
        assert!(health.verdict().0);
    }
}
