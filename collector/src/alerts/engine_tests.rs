//! The engine on hand-made records: what fires, once, with which numbers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::config::Config;

/// Thresholds held in maps the test changes.
#[derive(Default)]
struct Table {
    reference: Mutex<HashMap<(String, String), i64>>,
    limits: Mutex<HashMap<String, i64>>,
}

impl Thresholds for Table {
    fn reference(&self, _: &Rule, key: &str, slot: Slot) -> Option<i64> {
        let map = self.reference.lock().expect("lock");
        map.get(&(key.to_owned(), slot.to_string())).copied()
    }
    fn reference_keys(&self, _: &Rule, slot: Slot) -> Vec<(String, i64)> {
        let map = self.reference.lock().expect("lock");
        let slot = slot.to_string();
        map.iter()
            .filter(|((_, s), _)| *s == slot)
            .map(|((k, _), v)| (k.clone(), *v))
            .collect()
    }
    fn limit(&self, key: &str) -> Option<i64> {
        self.limits.lock().expect("lock").get(key).copied()
    }
}

const RULES: &str = "
rules:
  - { name: billing-limit, key: customer_id, period: month, aggregate: sum, column: amount, threshold: limits, when: above }
  - { name: booth-traffic-drop, key: booth_id, window: 30m, aggregate: count, threshold: { reference: b.csv }, when: below }
";

fn engine(zone: &str, table: Arc<Table>) -> Engine {
    engine_with(zone, table, SignedDuration::from_hours(24 * 400))
}

fn engine_with(zone: &str, table: Arc<Table>, max_future: SignedDuration) -> Engine {
    let text = format!(
        "listen: 127.0.0.1:0\ndata_dir: /tmp/x\ntimezone: {zone}\nauth: {{ agent_tokens_file: /tmp/t }}\n{RULES}"
    );
    let config = Config::parse(&text, std::path::Path::new("c.yaml")).expect("config");
    let rules = super::super::rules::compile(&config).expect("rules");
    Engine::new(
        "toll-transactions",
        Arc::new(Schema::toll()),
        Calendar::named(zone).expect("zone"),
        Timing {
            lateness: SignedDuration::from_mins(2),
            idle_timeout: SignedDuration::from_mins(1),
            max_future,
        },
        table,
        rules,
        ts("2026-01-01T00:00:00Z"),
    )
}

fn ts(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn line(time: &str, booth: &str, customer: &str, amount: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("00000000-0000-4000-8000-{n:012x}");
    format!("{time},{id},{booth},1,{customer},TX-1,2,{amount}\n")
}

/// Feeds lines one WAL record each; returns what fired.
fn feed(engine: &mut Engine, lines: &[String]) -> Vec<Alert> {
    let mut out = Vec::new();
    for l in lines {
        engine.process(l.as_bytes(), ts("2026-01-01T00:00:00Z"), &mut out);
    }
    out
}

#[test]
fn a_customer_crossing_the_limit_mid_window_fires_once_at_the_crossing_charge() {
    let table = Arc::new(Table::default());
    table
        .limits
        .lock()
        .expect("lock")
        .insert("C1".into(), 15000);
    let mut e = engine("America/Sao_Paulo", table);
    let fired = feed(
        &mut e,
        &[
            line("2026-11-25T14:01:00-03:00", "B1", "C1", "50.00"),
            line("2026-11-25T14:02:00-03:00", "B1", "C1", "60.00"),
            line("2026-11-25T14:03:00-03:00", "B1", "C2", "900.00"),
            line("2026-11-25T14:04:00-03:00", "B2", "C1", "45.50"),
            line("2026-11-25T14:05:00-03:00", "B1", "C1", "10.00"),
        ],
    );
    assert_eq!(fired.len(), 1, "{fired:?}");
    let alert = &fired[0];
    assert_eq!(alert.rule, "billing-limit");
    assert_eq!(alert.key, "C1");
    assert_eq!(alert.value, "155.50");
    assert_eq!(alert.threshold, "150.00");
    assert_eq!(alert.month.as_deref(), Some("2026-11"));
    assert_eq!(alert.event_time, Some(ts("2026-11-25T14:04:00-03:00")));
    assert_eq!(alert.records, 3);
    let view = e
        .month_to_date("C1", ts("2026-11-25T18:00:00Z"))
        .expect("view");
    assert_eq!(view.spend, "165.50");
    assert_eq!(view.notified, vec!["150.00".to_string()]);
}

#[test]
fn a_raised_limit_fires_again_when_crossed_and_the_month_rolls_over() {
    let table = Arc::new(Table::default());
    table
        .limits
        .lock()
        .expect("lock")
        .insert("C1".into(), 10000);
    let mut e = engine("America/Sao_Paulo", table.clone());
    let first = feed(
        &mut e,
        &[line("2026-11-10T10:00:00-03:00", "B1", "C1", "120.00")],
    );
    assert_eq!(first.len(), 1);
    table
        .limits
        .lock()
        .expect("lock")
        .insert("C1".into(), 20000);
    let none = feed(
        &mut e,
        &[line("2026-11-11T10:00:00-03:00", "B1", "C1", "50.00")],
    );
    assert!(none.is_empty(), "{none:?}");
    let second = feed(
        &mut e,
        &[line("2026-11-12T10:00:00-03:00", "B1", "C1", "40.00")],
    );
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].value, "210.00");
    assert_eq!(second[0].threshold, "200.00");
    assert_ne!(first[0].alert_id, second[0].alert_id);
    // 02:30 UTC on Dec 1st is still November in São Paulo.
    let still_november = feed(&mut e, &[line("2026-12-01T02:30:00Z", "B1", "C1", "1.00")]);
    assert!(still_november.is_empty());
    let december = feed(
        &mut e,
        &[
            line("2026-12-01T09:00:00-03:00", "B1", "C1", "150.00"),
            line("2026-12-02T09:00:00-03:00", "B1", "C1", "60.00"),
        ],
    );
    assert_eq!(december.len(), 1, "{december:?}");
    assert_eq!(december[0].month.as_deref(), Some("2026-12"));
    assert_eq!(december[0].value, "210.00");
    // November closed once the watermark passed its end: a charge for it now is late.
    let late = feed(
        &mut e,
        &[line("2026-11-30T12:00:00-03:00", "B1", "C9", "1.00")],
    );
    assert!(late.is_empty());
    assert_eq!(e.late[0], 1);
}

#[test]
fn a_booth_below_its_threshold_and_a_silent_booth_fire_when_windows_close() {
    let table = Arc::new(Table::default());
    {
        let mut reference = table.reference.lock().expect("lock");
        // 2026-11-25 is a Wednesday.
        reference.insert(("PLZ-017".into(), "wed 14:00".into()), 3);
        reference.insert(("PLZ-017".into(), "wed 14:30".into()), 1);
        reference.insert(("PLZ-099".into(), "wed 14:00".into()), 1);
        reference.insert(("PLZ-099".into(), "wed 14:30".into()), 1);
    }
    let mut e = engine("America/Sao_Paulo", table);
    let mut lines = vec![
        line("2026-11-25T14:01:00-03:00", "PLZ-017", "C1", "1.00"),
        line("2026-11-25T14:10:00-03:00", "PLZ-017", "C1", "1.00"),
    ];
    // Only PLZ-017 sends, and only in the first window; nothing for PLZ-099 at all. A
    // record at 15:05 moves the watermark (15:03) past both windows' ends.
    lines.push(line("2026-11-25T15:05:00-03:00", "PLZ-017", "C1", "1.00"));
    let fired = feed(&mut e, &lines);
    let summary: Vec<_> = fired
        .iter()
        .map(|a| {
            (
                a.key.as_str(),
                a.slot.as_deref().unwrap_or(""),
                a.value.as_str(),
                a.threshold.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("PLZ-017", "wed 14:00", "2", "3"),
            ("PLZ-099", "wed 14:00", "0", "1"),
            ("PLZ-017", "wed 14:30", "0", "1"),
            ("PLZ-099", "wed 14:30", "0", "1"),
        ]
    );
    assert_eq!(fired[0].window_start, Some(ts("2026-11-25T14:00:00-03:00")));
    assert_eq!(fired[0].window_end, Some(ts("2026-11-25T14:30:00-03:00")));
    // The same window computed again has the same id; another window another.
    assert_ne!(fired[0].alert_id, fired[2].alert_id);
    assert_eq!(
        fired[0].alert_id,
        alert_id(&[
            "booth-traffic-drop",
            "PLZ-017",
            &ts("2026-11-25T14:00:00-03:00").as_second().to_string()
        ])
    );
}

#[test]
fn late_records_within_lateness_count_and_beyond_it_are_counted_as_late() {
    let table = Arc::new(Table::default());
    table
        .reference
        .lock()
        .expect("lock")
        .insert(("PLZ-017".into(), "wed 14:00".into()), 3);
    let mut e = engine("America/Sao_Paulo", table);
    let fired = feed(
        &mut e,
        &[
            line("2026-11-25T14:01:00-03:00", "PLZ-017", "C1", "1.00"),
            line("2026-11-25T14:31:00-03:00", "PLZ-017", "C1", "1.00"),
            // 90 s behind the newest event: within the 2-minute lateness.
            line("2026-11-25T14:29:30-03:00", "PLZ-017", "C1", "1.00"),
            line("2026-11-25T14:29:40-03:00", "PLZ-017", "C1", "1.00"),
        ],
    );
    assert!(fired.is_empty(), "{fired:?}");
    let fired = feed(
        &mut e,
        &[
            line("2026-11-25T14:33:00-03:00", "PLZ-017", "C1", "1.00"),
            // The 14:00 window closed when the watermark passed 14:30.
            line("2026-11-25T14:29:50-03:00", "PLZ-017", "C1", "1.00"),
        ],
    );
    assert!(
        fired.is_empty(),
        "3 records counted, threshold 3: {fired:?}"
    );
    assert_eq!(e.late[1], 1);
}

#[test]
fn an_idle_stream_follows_the_wall_clock_and_closes_windows_of_silent_booths() {
    let table = Arc::new(Table::default());
    table
        .reference
        .lock()
        .expect("lock")
        .insert(("PLZ-017".into(), "wed 14:00".into()), 3);
    let mut e = engine("America/Sao_Paulo", table);
    let mut out = Vec::new();
    e.process(
        line("2026-11-25T13:59:00-03:00", "PLZ-001", "C1", "1.00").as_bytes(),
        ts("2026-11-25T13:59:01-03:00"),
        &mut out,
    );
    e.tick(ts("2026-11-25T14:31:00-03:00"), &mut out);
    assert!(out.is_empty(), "the watermark is at 14:29: {out:?}");
    e.tick(ts("2026-11-25T14:32:00-03:00"), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].key, "PLZ-017");
    assert_eq!(out[0].value, "0");
}

#[test]
fn a_slot_that_does_not_exist_on_a_dst_day_does_not_fire() {
    let table = Arc::new(Table::default());
    {
        let mut reference = table.reference.lock().expect("lock");
        // 2026-03-08 is a Sunday; New York skips 02:00-03:00.
        for slot in ["sun 01:30", "sun 02:00", "sun 02:30", "sun 03:00"] {
            reference.insert(("B1".into(), slot.into()), 1);
        }
    }
    let mut e = engine("America/New_York", table);
    let fired = feed(
        &mut e,
        &[
            line("2026-03-08T01:40:00-05:00", "B1", "C1", "1.00"),
            line("2026-03-08T03:10:00-04:00", "B1", "C1", "1.00"),
            line("2026-03-08T04:00:00-04:00", "B1", "C1", "1.00"),
        ],
    );
    assert!(fired.is_empty(), "{fired:?}");
    let fired = feed(
        &mut e,
        &[line("2026-03-08T05:00:00-04:00", "B2", "C1", "1.00")],
    );
    // 03:30 and 04:30 have no threshold; only real slots were evaluated.
    assert!(fired.is_empty(), "{fired:?}");
}

#[test]
fn a_record_dated_far_ahead_of_the_clock_moves_no_window_and_counts_nowhere() {
    let table = Arc::new(Table::default());
    table
        .reference
        .lock()
        .expect("lock")
        .insert(("PLZ-017".into(), "wed 14:00".into()), 1);
    let mut e = engine_with("America/Sao_Paulo", table, SignedDuration::from_hours(24));
    let now = ts("2026-11-25T14:05:00-03:00");
    let mut out = Vec::new();
    e.process(
        line("2026-11-25T14:01:00-03:00", "PLZ-017", "C1", "1.00").as_bytes(),
        now,
        &mut out,
    );
    // A booth whose clock says 2036: ignored, counted as future.
    e.process(
        line("2036-01-01T00:00:00-03:00", "PLZ-017", "C1", "1.00").as_bytes(),
        now,
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.future, vec![1, 1]);
    assert_eq!(e.watermark, Some(ts("2026-11-25T13:59:00-03:00")));
}

#[test]
fn records_a_filter_leaves_out_still_move_the_watermark() {
    let text = "listen: 127.0.0.1:0\ndata_dir: /tmp/x\nauth: { agent_tokens_file: /tmp/t }\nrules:\n  - { name: lane-3, key: booth_id, window: 30m, aggregate: count, threshold: { reference: b.csv }, when: below, filter: [{ column: lane, equals: '3' }] }\n";
    let config = Config::parse(text, std::path::Path::new("c.yaml")).expect("config");
    let rules = super::super::rules::compile(&config).expect("rules");
    let table = Arc::new(Table::default());
    table
        .reference
        .lock()
        .expect("lock")
        .insert(("PLZ-017".into(), "wed 14:00".into()), 1);
    let mut e = Engine::new(
        "toll-transactions",
        Arc::new(Schema::toll()),
        Calendar::named("America/Sao_Paulo").expect("zone"),
        Timing {
            lateness: SignedDuration::from_mins(2),
            idle_timeout: SignedDuration::from_mins(1),
            max_future: SignedDuration::from_hours(24 * 400),
        },
        table,
        rules,
        ts("2026-01-01T00:00:00Z"),
    );
    // Lane 1 only (`line` writes lane 1): lane 3's sensor is dead.
    let fired = feed(
        &mut e,
        &[
            line("2026-11-25T14:01:00-03:00", "PLZ-017", "C1", "1.00"),
            line("2026-11-25T14:40:00-03:00", "PLZ-017", "C1", "1.00"),
        ],
    );
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].value, "0");
}
