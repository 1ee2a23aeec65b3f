//! The alert stage on a real WAL and checkpoint file: stopping and starting again (also
//! without a final checkpoint, as after `kill -9`) neither loses nor counts twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::alerts::Alert;
use crate::alerts::windows::Slot;
use crate::clock::FakeClock;
use crate::config::{AlertsConfig, Config};
use crate::wal::{AppendRequest, WalOptions};

/// The outbox's contract: each id once.
#[derive(Default)]
struct Sink(Mutex<HashMap<String, Alert>>);

impl AlertSink for Sink {
    fn put(&self, alert: &Alert, _: &[String]) -> anyhow::Result<bool> {
        let mut map = self.0.lock().expect("lock");
        Ok(map.insert(alert.alert_id.clone(), alert.clone()).is_none())
    }
}

struct Limits;

impl Thresholds for Limits {
    fn reference(&self, _: &Rule, _: &str, _: Slot) -> Option<i64> {
        None
    }
    fn reference_keys(&self, _: &Rule, _: Slot) -> Vec<(String, i64)> {
        Vec::new()
    }
    fn limit(&self, _: &str) -> Option<i64> {
        Some(10_000) // 100.00
    }
}

fn rules() -> Vec<Rule> {
    let text = "listen: 127.0.0.1:0\ndata_dir: /tmp/x\nauth: { agent_tokens_file: /tmp/t }\nrules:\n  - { name: billing-limit, key: customer_id, period: month, aggregate: sum, column: amount, threshold: limits, when: above }\n";
    let config = Config::parse(text, std::path::Path::new("c.yaml")).expect("config");
    crate::alerts::rules::compile(&config).expect("rules")
}

fn line(n: u32, customer: &str, amount: &str) -> String {
    format!(
        "2026-11-25T14:{:02}:00-03:00,00000000-0000-4000-8000-{n:012x},B1,1,{customer},TX-1,2,{amount}\n",
        n % 60
    )
}

async fn run_once(
    dir: &std::path::Path,
    sink: Arc<Sink>,
    batches: &[String],
    checkpoint_at_stop: bool,
) -> Arc<Mutex<Engine>> {
    let clock = FakeClock::new("2026-11-25T17:00:00Z".parse().expect("ts"));
    let options = WalOptions {
        segment_bytes: 1 << 20,
        consumers: vec![CONSUMER],
    };
    let (wal, writer) = Wal::open(&dir.join("wal"), options, Arc::new(clock.clone())).expect("wal");
    let stopping = CancellationToken::new();
    let shared = Shared {
        calendar: Calendar::named("America/Sao_Paulo").expect("zone"),
        config: AlertsConfig {
            checkpoint_interval: if checkpoint_at_stop {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(10)
            },
            ..AlertsConfig::default()
        },
        thresholds: Arc::new(Limits),
        sink: sink.clone(),
        clock: Arc::new(clock.clone()),
        stopping: stopping.clone(),
    };
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let started = start_stream(
        "toll-transactions",
        Arc::new(Schema::toll()),
        rules(),
        &shared,
        &wal,
        dir,
    )
    .expect("starts");
    for batch in batches {
        // Each run continues the same source, so the WAL takes every batch as new.
        static OFFSET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let len = batch.len() as u64;
        let start = OFFSET.fetch_add(len, std::sync::atomic::Ordering::SeqCst);
        wal.append(AppendRequest {
            source: format!("test-{}", dir.display()),
            range: Some((start, start + len)),
            data: Bytes::from(batch.clone()),
            records: u32::try_from(batch.lines().count()).expect("count"),
            lease: None,
        })
        .await
        .expect("append");
        clock.advance(Duration::from_millis(20));
    }
    drop(wal);
    let engine = started.engine.clone();
    tokio::task::spawn_blocking(move || {
        let _ = writer.join();
        let _ = started.thread.join();
    })
    .await
    .expect("joins");
    engine
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint_without_counting_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(Sink::default());
    let first = [line(1, "C1", "60.00"), line(2, "C1", "30.00")];
    let engine = run_once(dir.path(), sink.clone(), &first, true).await;
    assert_eq!(
        engine
            .lock()
            .expect("lock")
            .month_to_date("C1", "2026-11-25T17:00:00Z".parse().expect("ts"))
            .expect("view")
            .spend,
        "90.00"
    );
    assert!(sink.0.lock().expect("lock").is_empty());
    // Started again over the same WAL and checkpoint: the first two charges are not read
    // again, the third crosses 100.00.
    let second = [line(3, "C1", "15.00")];
    let engine = run_once(dir.path(), sink.clone(), &second, true).await;
    let view = engine
        .lock()
        .expect("lock")
        .month_to_date("C1", "2026-11-25T17:00:00Z".parse().expect("ts"))
        .expect("view");
    assert_eq!(view.spend, "105.00");
    assert_eq!(view.records, 3);
    let alerts = sink.0.lock().expect("lock");
    assert_eq!(alerts.len(), 1);
    let alert = alerts.values().next().expect("one");
    assert_eq!(
        (alert.value.as_str(), alert.threshold.as_str()),
        ("105.00", "100.00")
    );
}

#[tokio::test]
async fn state_after_an_unclean_stop_is_rebuilt_from_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(Sink::default());
    let batches: Vec<String> = (1..=20).map(|n| line(n, "C2", "6.00")).collect();
    run_once(dir.path(), sink.clone(), &batches, false).await;
    // Simulate a crash that lost the last checkpoint: put back an old copy of the file
    // (taken before any record) — the engine must read the WAL again from the start.
    let state = dir.path().join("state/alerts.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    let engine = run_once(dir.path(), sink.clone(), &[], true).await;
    let view = engine
        .lock()
        .expect("lock")
        .month_to_date("C2", "2026-11-25T17:00:00Z".parse().expect("ts"))
        .expect("view");
    assert_eq!(view.spend, "120.00");
    assert_eq!(view.records, 20);
    assert_eq!(
        sink.0.lock().expect("lock").len(),
        1,
        "the repeat was refused by id"
    );
}
