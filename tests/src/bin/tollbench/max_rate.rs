//! `end-to-end`, second part: the highest sustained rate whose freshness p99 stays under
//! 5 s. Each step is a fresh `end-to-end` run (new agent, collector and warehouse, so one
//! step's backlog or table size does not weigh on the next) at one rate for a fixed time.
//! The rate doubles from `start` until a step fails, then the
//! interval between the last passing and the first failing rate is bisected a few times.
//! On PostgreSQL all steps use one server, whose `public` schema is dropped and made anew
//! before each step (each step's collector starts its archive at sequence 0, and the load
//! manifest would take its objects for ones already loaded).
//!
//! A step passes when the writer kept to the rate (within 3 %), freshness p99 < 5 s, and the
//! pipeline keeps up: freshness grows by less than 0.1 s per second of writing (fitted over
//! the step's lines), so the rate is sustained and not just survived for a short step. A
//! step stops writing as soon as more than 1 % of its lines are certain to be later than
//! 5 s (so a hopeless rate costs seconds, not a drain of minutes); every line written must
//! still arrive, exactly once.
//!
//! The steps run without alert rules; alert latency is measured by the fixed-rate
//! `end-to-end` run (its table's last column).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use serde_json::{Value, json};
use tollstream_tests::postgres::TestPostgres;

use crate::end_to_end::{self, end_to_end};

/// The freshness bound of the search, seconds.
const P99_LIMIT: f64 = 5.0;
/// Share of a step's lines allowed to be later than the bound (p99).
const LATE_SHARE: f64 = 0.01;
/// A step's writer must reach this share of the target rate.
const RATE_TOLERANCE: f64 = 0.97;
/// A step keeps up when freshness grows by less than this many seconds per second of
/// writing (the pipeline falls behind the rate by less than 10 %). Without this a short
/// step passes a rate the pipeline cannot sustain: its backlog has no time to reach 5 s.
const GROWTH_LIMIT: f64 = 0.1;

/// How the search runs.
pub struct Search {
    /// The first rate tried, lines/s.
    pub start: f64,
    /// Writing time per step.
    pub step: Duration,
    /// Bisection steps after the first failure.
    pub bisections: u32,
    /// The highest rate tried.
    pub ceiling: f64,
    /// Rates are rounded to multiples of this.
    pub granularity: f64,
    /// How often the reader polls the warehouse.
    pub poll: Duration,
}

/// Searches on SQLite, or on PostgreSQL when `postgres` is given.
///
/// # Errors
/// A step that loses or duplicates lines, daemons that do not start.
pub fn max_rate(
    dir: &Path,
    search: &Search,
    postgres: Option<&TestPostgres>,
) -> anyhow::Result<Value> {
    let backend = if postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let mut steps = Vec::new();
    let mut run = |rate: f64| -> anyhow::Result<bool> {
        if let Some(postgres) = postgres {
            postgres
                .client()?
                .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
                .context("emptying the PostgreSQL database between steps")?;
        }
        let step_started = Instant::now();
        let options = end_to_end::Options {
            rate,
            seconds: search.step.as_secs_f64(),
            poll: search.poll,
            tag: format!("-step-{}", steps.len() + 1),
            stop_when_late: Some((LATE_SHARE, P99_LIMIT)),
            alerts: false,
        };
        let result = end_to_end(dir, &options, postgres)?;
        let p99 = result["freshness_seconds"]["p99"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let kept_rate =
            result["written_lines_per_sec"].as_f64().unwrap_or(0.0) >= RATE_TOLERANCE * rate;
        let stopped = result["stopped_early_after_seconds"].is_number();
        let growth = result["freshness_growth"].as_f64().unwrap_or(f64::NAN);
        let verdict = if stopped {
            "fail: over 1 % of lines later than 5 s (stopped early)"
        } else if !kept_rate {
            "fail: the writer could not keep the rate"
        } else if p99.is_nan() || p99 >= P99_LIMIT {
            "fail: p99 ≥ 5 s"
        } else if growth.is_nan() || growth >= GROWTH_LIMIT {
            "fail: falling behind (freshness growing)"
        } else {
            "pass"
        };
        let pass = verdict == "pass";
        println!(
            "  {backend} {rate:>8.0} lines/s: p50 {:.2} s, p99 {:.2} s, growth {growth:+.3} s/s \
             — {verdict} ({:.0} s)",
            result["freshness_seconds"]["p50"]
                .as_f64()
                .unwrap_or(f64::NAN),
            p99,
            step_started.elapsed().as_secs_f64()
        );
        steps.push(json!({ "rate": rate, "pass": pass, "verdict": verdict, "result": result }));
        Ok(pass)
    };
    let round = |r: f64| (r / search.granularity).round().max(1.0) * search.granularity;
    let (mut best, mut worst): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = round(search.start);
    // Grow until a step fails (or shrink until one passes).
    loop {
        if run(rate)? {
            best = Some(rate);
            if worst.is_some() || rate * 2.0 > search.ceiling {
                break;
            }
            rate = round(rate * 2.0);
        } else {
            worst = Some(rate);
            if best.is_some() || rate <= search.granularity {
                break;
            }
            rate = round(rate / 2.0);
        }
    }
    for _ in 0..search.bisections {
        let (Some(lo), Some(hi)) = (best, worst) else {
            break;
        };
        let mid = round((lo + hi) / 2.0);
        if mid <= lo || mid >= hi {
            break;
        }
        if run(mid)? {
            best = Some(mid);
        } else {
            worst = Some(mid);
        }
    }
    let best_step = steps
        .iter()
        .filter(|s| s["pass"] == true)
        .max_by(|a, b| {
            a["rate"]
                .as_f64()
                .partial_cmp(&b["rate"].as_f64())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .cloned();
    let name = match backend {
        "postgres" => "file → agent → collector → PostgreSQL",
        _ => "file → agent → collector → SQLite",
    };
    Ok(json!({
        "scenario": format!("max-rate-{backend}"), "name": name,
        "max_sustained_lines_per_sec": best, "lowest_failing_lines_per_sec": worst,
        "best": best_step.map(|s| s["result"].clone()), "steps": steps,
        "step_seconds": search.step.as_secs_f64(), "p99_limit_seconds": P99_LIMIT,
    }))
}

/// Prints the search results among `results`.
pub fn print_table(results: &[Value]) {
    let runs: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("max_sustained_lines_per_sec").is_some())
        .collect();
    if runs.is_empty() {
        return;
    }
    println!(
        "\n{:<40} {:>14} {:>9} {:>9} {:>12}",
        "highest rate with freshness p99 < 5 s", "lines/s", "p50", "p99", "next failed"
    );
    for r in &runs {
        let best = r["max_sustained_lines_per_sec"].as_f64();
        let q = |k: &str| r["best"]["freshness_seconds"][k].as_f64();
        let secs = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}s"));
        println!(
            "{:<40} {:>14} {:>9} {:>9} {:>12}",
            r["name"].as_str().unwrap_or("?"),
            best.map_or("none passed".to_owned(), |b| format!("{b:.0}")),
            secs(q("p50")),
            secs(q("p99")),
            r["lowest_failing_lines_per_sec"]
                .as_f64()
                .map_or("-".to_owned(), |w| format!("{w:.0}")),
        );
    }
    println!(
        "(each step a fresh agent + collector + warehouse, {} s of writing; the writer, reader \
         and any PostgreSQL server share the same cores; \"next failed\" is the lowest rate \
         that failed)",
        runs[0]["step_seconds"].as_f64().unwrap_or(f64::NAN)
    );
}
