//! How many keys the alert engine holds per GB: feeds N distinct customers (one charge each,
//! so N monthly totals) and N/100 booths' windows into an engine with the two shipped rules
//! and prints the growth of the process's resident memory.
//!
//! `cargo run --release -p tollstream-collector --example alert_memory -- 1000000`

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use tollstream_collector::alerts::engine::{Engine, Thresholds, Timing};
use tollstream_collector::alerts::rules::{Rule, compile};
use tollstream_collector::alerts::windows::{Calendar, Slot};
use tollstream_collector::config::Config;
use tollstream_collector::schema::Schema;

struct NoThresholds;

impl Thresholds for NoThresholds {
    fn reference(&self, _: &Rule, _: &str, _: Slot) -> Option<i64> {
        None
    }
    fn reference_keys(&self, _: &Rule, _: Slot) -> Vec<(String, i64)> {
        Vec::new()
    }
    fn limit(&self, _: &str) -> Option<i64> {
        Some(1_000_000)
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() -> anyhow::Result<()> {
    let keys: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let text = "listen: 127.0.0.1:0\ndata_dir: /tmp/x\nauth: { agent_tokens_file: /tmp/t }\nrules:\n\
        \x20 - { name: billing-limit, key: customer_id, period: month, aggregate: sum, column: amount, threshold: limits, when: above }\n\
        \x20 - { name: booth-traffic-drop, key: booth_id, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below }\n";
    let config = Config::parse(text, std::path::Path::new("example.yaml"))?;
    let rules = compile(&config).map_err(anyhow::Error::msg)?;
    let start: Timestamp = "2026-11-25T12:00:00-03:00".parse()?;
    let mut engine = Engine::new(
        "toll-transactions",
        Arc::new(Schema::toll()),
        Calendar::named("America/Sao_Paulo").map_err(anyhow::Error::msg)?,
        Timing {
            lateness: SignedDuration::from_mins(2),
            idle_timeout: SignedDuration::from_mins(1),
            max_future: SignedDuration::from_hours(24),
        },
        Arc::new(NoThresholds),
        rules,
        start,
    );
    let before = resident_bytes();
    let mut out = Vec::new();
    let mut batch = String::new();
    let mut took = std::time::Duration::ZERO;
    for n in 0..keys {
        // All within one minute of event time: every window stays open.
        let t = start + SignedDuration::from_millis(i64::try_from(n % 60_000)?);
        batch.push_str(&format!(
            "{},00000000-0000-4000-8000-{n:012x},PLZ-{:05},1,C{n:09},TX-1,2,12.50\n",
            t.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z"),
            n % (keys / 100).max(1),
        ));
        if n % 1000 == 999 {
            #[allow(clippy::disallowed_types)] // A benchmark measures real time.
            let begun = std::time::Instant::now();
            engine.process(batch.as_bytes(), start, &mut out);
            took += begun.elapsed();
            batch.clear();
        }
        if n % 1_000_000 == 999_999 {
            // What a checkpoint does every second: forget which totals changed.
            for state in &mut engine.rules {
                for entry in std::mem::take(&mut state.dirty) {
                    if let Some(total) = state.months.get_mut(&entry) {
                        total.dirty = false;
                    }
                }
            }
        }
    }
    engine.process(batch.as_bytes(), start, &mut out);
    for state in &mut engine.rules {
        for entry in std::mem::take(&mut state.dirty) {
            if let Some(total) = state.months.get_mut(&entry) {
                total.dirty = false;
            }
        }
    }
    let after = resident_bytes();
    let grown = after.saturating_sub(before);
    let monthly: usize = engine.rules.iter().map(|s| s.months.len()).sum();
    let windowed: usize = engine
        .rules
        .iter()
        .map(|s| s.windows.values().map(|w| w.len()).sum::<usize>())
        .sum();
    println!(
        "{keys} records: {monthly} monthly totals + {windowed} window entries; resident memory grew {:.1} MiB \
         ({:.0} bytes per monthly key incl. its window entry share); {:.2} M keys per GiB; \
         {:.2} µs per record (parse + both rules)",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / monthly.max(1) as f64,
        (1u64 << 30) as f64 / (grown as f64 / monthly.max(1) as f64) / 1e6,
        took.as_secs_f64() * 1e6 / keys as f64,
    );
    Ok(())
}
