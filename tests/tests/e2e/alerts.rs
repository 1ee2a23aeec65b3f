//! Alert rules, end to end: simulated historical days replayed through the real agent and
//! collector, on a test clock, into a webhook receiver that fails the first attempts. Every
//! alert the independent model ([`Oracle`]) expects fires exactly once, with the right
//! value and threshold, and no other alert fires — also when the collector is killed
//! mid-stream.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tollstream_tests::harness::{CollectorSetup, http_send, wait_for};
use tollstream_tests::oracle::{Expected, Oracle, cents, from_document};
use tollstream_tests::sim::{Mode, RecordKind, SimConfig, Simulator, Transaction};
use tollstream_tests::webhook::Receiver;

use crate::fixture::{Pipeline, append};

const ADMIN_TOKEN: &str = "admin-token-for-the-alert-tests";
const WEBHOOK_SECRET: &str = "shared-webhook-secret";
const LATENESS: SignedDuration = SignedDuration::from_mins(2);
const WAIT: Duration = Duration::from_secs(120);

/// A replay: the pipeline on a test clock, the receiver, the model.
struct Replay {
    pipeline: Pipeline,
    receiver: Receiver,
    clock_file: PathBuf,
    oracle: Oracle,
    tz: TimeZone,
    log: PathBuf,
}

fn ts(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

/// The day's transactions, in event-time order.
fn traffic(cfg: &SimConfig, from: Timestamp, until: Timestamp) -> Vec<Transaction> {
    Simulator::new(cfg, Mode::Historical { from, until })
        .expect("simulator")
        .filter_map(|record| match record.kind {
            RecordKind::Valid(tx) => Some(tx),
            RecordKind::Malformed(_) => None,
        })
        .collect()
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "mon",
        Weekday::Tuesday => "tue",
        Weekday::Wednesday => "wed",
        Weekday::Thursday => "thu",
        Weekday::Friday => "fri",
        Weekday::Saturday => "sat",
        Weekday::Sunday => "sun",
    }
}

impl Replay {
    /// Writes the reference CSV (`rows`: booth, weekday, `HH:MM`, minimum) and starts both
    /// daemons with the clock at `clock`.
    fn start(
        zone: &str,
        clock: Timestamp,
        rows: &[(String, Weekday, String, i64)],
        fail_first: u32,
    ) -> anyhow::Result<Self> {
        let receiver = Receiver::start(fail_first)?;
        let tz = TimeZone::get(zone)?;
        let mut oracle = Oracle::new(tz.clone());
        let mut csv = String::from("booth_id,weekday,slot_start,min_vehicles\n");
        for (booth, day, slot, min) in rows {
            oracle.set_reference(booth, *day, slot, *min);
            csv.push_str(&format!("{booth},{},{slot},{min}\n", weekday_name(*day)));
        }
        let url = receiver.url();
        let zone = zone.to_owned();
        let mut clock_file = PathBuf::new();
        let pipeline = Pipeline::start_full(
            |dir: &Path, setup: &mut CollectorSetup| {
                std::fs::write(dir.join("booth-thresholds.csv"), &csv)?;
                std::fs::write(dir.join("admin-token"), format!("{ADMIN_TOKEN}\n"))?;
                setup.admin_token_file = Some("admin-token".into());
                std::fs::write(dir.join("webhook.secret"), format!("{WEBHOOK_SECRET}\n"))?;
                clock_file = dir.join("clock");
                std::fs::write(&clock_file, clock.to_string())?;
                setup.env.push((
                    "TOLLSTREAM_TEST_CLOCK_FILE".into(),
                    clock_file.display().to_string(),
                ));
                setup.extra = format!(
                    "timezone: {zone}\n\
                     alerts: {{ allowed_lateness: 2m, idle_timeout: 1m, checkpoint_interval: 200ms }}\n\
                     rules:\n\
                     \x20 - {{ name: billing-limit, key: customer_id, period: month, aggregate: sum, column: amount, threshold: limits, when: above }}\n\
                     \x20 - {{ name: booth-traffic-drop, key: booth_id, window: 30m, aggregate: count, threshold: {{ reference: booth-thresholds.csv }}, when: below }}\n\
                     notify:\n\
                     \x20 webhook: {{ url: {url:?}, secret_file: webhook.secret, timeout: 2s, initial_backoff: 50ms, max_backoff: 400ms }}\n"
                );
                Ok(())
            },
            Ok,
            |agent| {
                agent.batch_max_age = "100ms";
                // One batch in flight keeps the WAL in file order, so the model's order is
                // the collector's (with several, a fast replay's batches span hours of
                // event time and may overtake each other by more than the lateness).
                agent.max_in_flight_per_file = Some(1);
            },
            |_| Ok(()),
        )?;
        // The admin token file is read relative to the config; written above.
        let log = pipeline.data_dir.join("alerts.jsonl");
        Ok(Self {
            pipeline,
            receiver,
            clock_file,
            oracle,
            tz,
            log,
        })
    }

    fn set_clock(&self, now: Timestamp) -> anyhow::Result<()> {
        let tmp = self.clock_file.with_extension("tmp");
        std::fs::write(&tmp, now.to_string())?;
        std::fs::rename(&tmp, &self.clock_file)?;
        Ok(())
    }

    /// Sets limits through the admin API, and in the model.
    fn set_limits(&mut self, limits: &BTreeMap<String, i64>) -> anyhow::Result<()> {
        let addr = ([127, 0, 0, 1], self.pipeline.collector_port).into();
        for (customer, limit) in limits {
            let body = format!("{{\"monthly_limit\":\"{}\"}}", cents(*limit));
            let answer = http_send(
                addr,
                "PUT",
                &format!("/v1/customers/{customer}/limit"),
                ADMIN_TOKEN,
                &body,
            );
            anyhow::ensure!(
                matches!(answer, Some((200, _))),
                "PUT limit of {customer}: {answer:?}"
            );
            self.oracle.set_limit(customer, *limit);
        }
        Ok(())
    }

    /// Appends transactions to the watched file (and feeds them to the model).
    fn write(&mut self, txs: &[Transaction]) -> anyhow::Result<()> {
        let lines: Vec<String> = txs
            .iter()
            .map(|tx| format!("{}\n", tx.to_line(&self.tz)))
            .collect();
        for tx in txs {
            self.oracle.feed(tx);
        }
        append(&self.pipeline.dir.path().join("logs/booths.log"), &lines)
    }

    /// Waits until the collector's alert engine has checkpointed a watermark at or past
    /// `newest - lateness`, i.e. has read every line up to the one at `newest`.
    fn wait_engine_past(&self, newest: Timestamp) -> anyhow::Result<()> {
        let target = (newest - LATENESS).as_millisecond() as f64 / 1000.0;
        wait_for("the alert engine to read every line written", WAIT, || {
            self.pipeline
                .collector_metric("tollstream_collector_alert_watermark_timestamp_seconds", "")
                .is_some_and(|w| w >= target)
        })
    }

    /// Waits until the receiver accepted `n` distinct alerts and nothing is pending.
    fn wait_delivered(&self, n: usize) -> anyhow::Result<()> {
        wait_for(&format!("{n} alerts accepted by the webhook"), WAIT, || {
            let ids: BTreeSet<String> = self
                .receiver
                .accepted()
                .into_iter()
                .map(|d| d.idempotency_key)
                .collect();
            ids.len() >= n
                && self
                    .pipeline
                    .collector_metric("tollstream_collector_alert_delivery_pending", "")
                    .is_some_and(|p| p == 0.0)
        })
    }

    /// Every accepted delivery, checked (key = id, signature valid, document parses),
    /// compared with the model; the log and the `alerts` table hold each alert once.
    fn assert_alerts_match(&self) -> anyhow::Result<()> {
        let expected = &self.oracle.expected;
        let accepted = self.receiver.accepted();
        let mut by_id: BTreeMap<String, Expected> = BTreeMap::new();
        for delivery in &accepted {
            let id = delivery.document["alert_id"].as_str().unwrap_or_default();
            assert_eq!(
                delivery.idempotency_key, id,
                "Idempotency-Key is the alert id"
            );
            let signature = delivery.signature.as_deref().unwrap_or_default();
            assert!(
                verify_signature(signature, &delivery.body),
                "delivery of {id} carries a valid signature: {signature:?}"
            );
            let alert = from_document(&delivery.document)?;
            if let Some(previous) = by_id.insert(id.to_owned(), alert.clone()) {
                assert_eq!(
                    previous, alert,
                    "a repeated delivery of {id} is the same alert"
                );
            }
        }
        let got: BTreeSet<Expected> = by_id.values().cloned().collect();
        let missing: Vec<_> = expected.difference(&got).collect();
        let extra: Vec<_> = got.difference(expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "alerts differ from the model\nmissing ({}): {missing:#?}\nunexpected ({}): {extra:#?}",
            missing.len(),
            extra.len()
        );
        assert_eq!(by_id.len(), expected.len(), "one id per alert");
        // The alert log: each alert once.
        let log = std::fs::read_to_string(&self.log)?;
        let mut logged = BTreeMap::new();
        for line in log.lines() {
            let doc: serde_json::Value = serde_json::from_str(line)?;
            let id = doc["alert_id"].as_str().unwrap_or_default().to_owned();
            *logged.entry(id).or_insert(0) += 1;
        }
        assert_eq!(logged.len(), expected.len(), "the log holds every alert");
        assert!(
            logged.values().all(|n| *n == 1),
            "the log holds each alert once"
        );
        // The warehouse's alerts table: each alert once (alert_id is its key).
        let warehouse = self.pipeline.warehouse()?;
        let rows = warehouse.count("SELECT COUNT(*) FROM alerts")?;
        assert_eq!(
            rows,
            expected.len() as i64,
            "the alerts table holds every alert"
        );
        Ok(())
    }
}

/// `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the shared secret.
fn verify_signature(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let mut message = Vec::from(format!("{t}.").as_bytes());
    message.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &message);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex == v1
}

/// The month-end replay: Monday 2026-11-30 08:00 to Tuesday 02:00 in São Paulo.
struct MonthEnd {
    txs: Vec<Transaction>,
    split: usize,
    rows: Vec<(String, Weekday, String, i64)>,
    first_limits: BTreeMap<String, i64>,
    raised_limits: BTreeMap<String, i64>,
    from: Timestamp,
    until: Timestamp,
}

fn month_end_day() -> MonthEnd {
    let from = ts("2026-11-30T08:00:00-03:00");
    let until = ts("2026-12-01T02:00:00-03:00");
    let cfg = SimConfig {
        seed: 7,
        booths: 4,
        customers: 300,
        silent_booth: Some((
            "PLZ-003".into(),
            ts("2026-11-30T12:00:00-03:00"),
            ts("2026-11-30T13:00:00-03:00"),
        )),
        ..SimConfig::default()
    };
    let txs = traffic(&cfg, from, until);
    let split = txs
        .iter()
        .position(|tx| tx.event_time >= ts("2026-11-30T17:00:00-03:00"))
        .expect("traffic after 17:00");
    // Thresholds: a pre-pass counts each booth's windows; every 5th window of a booth asks
    // for one more vehicle than it had (fires with that count), the others for what it had
    // (does not fire); the silent booth asks for 1 everywhere (fires for its two silent
    // windows, and for any other window without traffic).
    let tz = TimeZone::get("America/Sao_Paulo").expect("zone");
    let mut counter = Oracle::new(tz.clone());
    for tx in &txs {
        counter.feed(tx);
    }
    let mut rows = Vec::new();
    let mut window = from;
    let mut i = 0;
    while window < until {
        let local = window.to_zoned_datetime(tz.clone());
        let slot = format!("{:02}:{:02}", local.hour(), local.minute());
        for b in 1..=4 {
            let booth = format!("PLZ-{b:03}");
            let count = i64::try_from(counter.count(window, &booth)).expect("count");
            let min = if b == 3 {
                1
            } else if i % 5 == b {
                count + 1
            } else {
                count
            };
            rows.push((booth, local.weekday(), slot.clone(), min));
        }
        window += SignedDuration::from_mins(30);
        i += 1;
    }
    // Limits: 24 customers with the most November spend get a limit at 60 % of what they
    // spend by 17:00 (they cross it mid-afternoon, mid-window); half of them get it raised
    // after 17:00 to 90 % of their whole November, which they cross again in the evening.
    // 6 others get 5.00, which they cross in November and again in December.
    let mut november: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (i, tx) in txs.iter().enumerate() {
        if tx.event_time < ts("2026-12-01T00:00:00-03:00") {
            let entry = november.entry(tx.customer_id.clone()).or_default();
            entry.1 += tx.amount_cents;
            if i < split {
                entry.0 += tx.amount_cents;
            }
        }
    }
    let mut ranked: Vec<_> = november.iter().collect();
    ranked.sort_by_key(|(c, (_, total))| (std::cmp::Reverse(*total), (*c).clone()));
    let mut first_limits = BTreeMap::new();
    let mut raised_limits = BTreeMap::new();
    for (n, (customer, (by_five, total))) in ranked.iter().take(24).enumerate() {
        first_limits.insert((*customer).clone(), by_five * 6 / 10);
        if n % 2 == 0 {
            raised_limits.insert((*customer).clone(), total * 9 / 10);
        }
    }
    // Customers who also pass in the first two hours of December.
    let december: BTreeSet<String> = txs
        .iter()
        .filter(|tx| tx.event_time >= ts("2026-12-01T00:00:00-03:00"))
        .map(|tx| tx.customer_id.clone())
        .collect();
    for customer in december
        .iter()
        .filter(|c| !first_limits.contains_key(*c))
        .take(6)
        .collect::<Vec<_>>()
    {
        first_limits.insert(customer.clone(), 500);
    }
    MonthEnd {
        txs,
        split,
        rows,
        first_limits,
        raised_limits,
        from,
        until,
    }
}

/// Runs the month-end replay; with `kills`, SIGKILLs the collector at those fractions of
/// the lines written (restarting it at once) and once more while alerts are delivered.
fn replay_month_end(kill: bool) -> anyhow::Result<()> {
    let day = month_end_day();
    let mut replay = Replay::start("America/Sao_Paulo", day.from, &day.rows, 2)?;
    replay.set_limits(&day.first_limits)?;
    let (first, second) = day.txs.split_at(day.split);
    let kill_and_restart = |replay: &mut Replay| -> anyhow::Result<()> {
        replay.pipeline.collector.kill()?;
        replay.pipeline.collector.start()?;
        replay.pipeline.wait_collector_ready()
    };
    if kill {
        let (a, b) = first.split_at(first.len() / 2);
        replay.write(a)?;
        replay.wait_engine_past(a[a.len() / 2].event_time)?;
        kill_and_restart(&mut replay)?;
        replay.write(b)?;
    } else {
        replay.write(first)?;
    }
    replay.wait_engine_past(first[first.len() - 1].event_time)?;
    replay.set_limits(&day.raised_limits)?;
    if kill {
        let (a, b) = second.split_at(second.len() / 3);
        replay.write(a)?;
        replay.wait_engine_past(a[a.len() - 1].event_time)?;
        // This time the collector dies right after storing its second new alert, before
        // the checkpoint that covers the record: the restart reads that record again,
        // computes the same alert, and the outbox refuses it.
        replay.pipeline.collector.kill()?;
        replay
            .pipeline
            .collector
            .start_with_env(&[("TOLLSTREAM_CRASH_AT", "alert-stored:2")])?;
        replay.pipeline.wait_collector_ready()?;
        replay.write(b)?;
        wait_for("the collector to die at the crash point", WAIT, || {
            !replay.pipeline.collector.is_running()
        })?;
        replay.pipeline.collector.try_exit();
        replay.pipeline.collector.start()?;
        replay.pipeline.wait_collector_ready()?;
        wait_for("the replayed alert refused by id", WAIT, || {
            replay
                .pipeline
                .collector_metric("tollstream_collector_alerts_duplicate_total", "")
                .is_some_and(|n| n >= 1.0)
        })?;
    } else {
        replay.write(second)?;
    }
    replay.wait_engine_past(second[second.len() - 1].event_time)?;
    // Late lines, an hour of event time behind the newest: their windows and November are
    // closed. Counted as late; no alert changes.
    let late: Vec<Transaction> = (0..3)
        .map(|i| {
            let mut tx = second[second.len() - 1].clone();
            tx.event_time = ts("2026-11-30T23:10:00-03:00") + SignedDuration::from_secs(i);
            tx.transaction_id = uuid::Uuid::from_u128(0xdead_0000 + u128::from(i as u8));
            tx.booth_id = "PLZ-001".into();
            tx
        })
        .collect();
    let late_lines: Vec<String> = late
        .iter()
        .map(|tx| format!("{}\n", tx.to_line(&replay.tz)))
        .collect();
    append(
        &replay.pipeline.dir.path().join("logs/booths.log"),
        &late_lines,
    )?;
    wait_for("3 late lines counted per rule", WAIT, || {
        let traffic = replay.pipeline.collector_metric(
            "tollstream_collector_alert_late_records_total",
            "rule=\"booth-traffic-drop\"",
        );
        let billing = replay.pipeline.collector_metric(
            "tollstream_collector_alert_late_records_total",
            "rule=\"billing-limit\"",
        );
        traffic == Some(3.0) && billing == Some(3.0)
    })?;
    // The replay's end: the clock moves past it, the idle stream's watermark follows, and
    // the last windows close.
    replay.set_clock(day.until + LATENESS)?;
    replay.oracle.close_until(day.until);
    let expected = replay.oracle.expected.clone();
    // The scenario has every case the issue lists.
    let count = |f: &dyn Fn(&Expected) -> bool| expected.iter().filter(|e| f(e)).count();
    assert!(count(&|e| e.rule == "billing-limit" && e.period == "2026-11") >= 24);
    assert!(
        count(&|e| e.rule == "billing-limit"
            && day
                .raised_limits
                .get(&e.key)
                .is_some_and(|l| cents(*l) == e.threshold))
            >= 6,
        "raised limits crossed again: {expected:#?}"
    );
    assert!(count(&|e| e.rule == "billing-limit" && e.period == "2026-12") >= 3);
    assert!(
        count(&|e| e.rule == "booth-traffic-drop" && e.key == "PLZ-003" && e.value == "0") >= 2,
        "the silent booth's two windows"
    );
    assert!(count(&|e| e.rule == "booth-traffic-drop" && e.key != "PLZ-003") >= 10);
    if kill {
        // Once more while the window alerts are being delivered.
        wait_for("the first window alerts delivered", WAIT, || {
            replay.receiver.accepted().len() >= expected.len() / 2
        })?;
        kill_and_restart(&mut replay)?;
    }
    replay.wait_delivered(expected.len())?;
    replay.assert_alerts_match()?;
    // The admin API shows a customer's month to date.
    let customer = day.first_limits.keys().next().expect("a customer");
    let (status, body) = http_send(
        ([127, 0, 0, 1], replay.pipeline.collector_port).into(),
        "GET",
        &format!("/v1/customers/{customer}"),
        ADMIN_TOKEN,
        "",
    )
    .expect("answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("month_to_date_spend"), "{body}");
    // Every limited customer's December total, as the engine holds it, is the model's: no
    // charge was counted twice or lost, across the kills too.
    for customer in day.first_limits.keys() {
        let (status, body) = http_send(
            ([127, 0, 0, 1], replay.pipeline.collector_port).into(),
            "GET",
            &format!("/v1/customers/{customer}"),
            ADMIN_TOKEN,
            "",
        )
        .expect("answer");
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(doc["month"], "2026-12", "{body}");
        assert_eq!(
            doc["month_to_date_spend"].as_str(),
            Some(cents(replay.oracle.total(customer, "2026-12")).as_str()),
            "{customer}: {body}"
        );
    }
    replay.pipeline.stop()?;
    if kill {
        assert_eq!(replay.pipeline.collector.starts(), 5);
    }
    Ok(())
}

#[test]
fn a_replayed_month_end_fires_every_expected_alert_once_and_nothing_else() -> anyhow::Result<()> {
    replay_month_end(false)
}

#[test]
fn the_same_alerts_fire_once_when_the_collector_is_killed_mid_stream() -> anyhow::Result<()> {
    replay_month_end(true)
}

#[test]
fn slots_that_a_dst_change_skips_never_fire() -> anyhow::Result<()> {
    // New York, Sunday 2026-03-08: 02:00 EST becomes 03:00 EDT.
    let from = ts("2026-03-08T00:00:00-05:00");
    let until = ts("2026-03-08T06:00:00-04:00");
    let cfg = SimConfig {
        seed: 11,
        booths: 3,
        customers: 200,
        time_zone: "America/New_York".into(),
        base_rate_per_booth_per_hour: 600.0,
        ..SimConfig::default()
    };
    let txs = traffic(&cfg, from, until);
    // Every other window of each booth asks for one vehicle more than it had (fires); the
    // slots the change skips ask for more than any booth could send: evaluating them at
    // all would fire.
    let tz = TimeZone::get("America/New_York")?;
    let mut counter = Oracle::new(tz.clone());
    for tx in &txs {
        counter.feed(tx);
    }
    let mut rows = Vec::new();
    let mut window = from;
    let mut i = 0;
    while window < until {
        let local = window.to_zoned_datetime(tz.clone());
        for b in 1..=3 {
            let booth = format!("PLZ-{b:03}");
            let count = i64::try_from(counter.count(window, &booth))?;
            rows.push((
                booth,
                Weekday::Sunday,
                format!("{:02}:{:02}", local.hour(), local.minute()),
                count + i64::from((i + b) % 2 == 0),
            ));
        }
        window += SignedDuration::from_mins(30);
        i += 1;
    }
    for b in 1..=3 {
        for slot in ["02:00", "02:30"] {
            rows.push((format!("PLZ-{b:03}"), Weekday::Sunday, slot.into(), 100_000));
        }
    }
    let mut replay = Replay::start("America/New_York", from, &rows, 0)?;
    replay.write(&txs)?;
    replay.wait_engine_past(txs[txs.len() - 1].event_time)?;
    replay.set_clock(until + LATENESS)?;
    replay.oracle.close_until(until);
    let expected = replay.oracle.expected.clone();
    assert!(
        expected.iter().all(|e| e.threshold != "100000"),
        "the model never evaluates the skipped slots"
    );
    assert!(
        !expected.is_empty(),
        "some night windows are below threshold"
    );
    replay.wait_delivered(expected.len())?;
    replay.assert_alerts_match()?;
    let slots: BTreeSet<String> = replay
        .receiver
        .accepted()
        .iter()
        .filter_map(|d| d.document["slot"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !slots.contains("sun 02:00") && !slots.contains("sun 02:30"),
        "{slots:?}"
    );
    replay.pipeline.stop()
}
