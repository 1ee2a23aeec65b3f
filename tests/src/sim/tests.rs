//! Properties of the generated stream: determinism, exact counts, format, order and shape.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn records(cfg: &SimConfig, mode: Mode) -> Vec<Record> {
    Simulator::new(cfg, mode).unwrap().collect()
}

fn bytes_of(cfg: &SimConfig, mode: Mode) -> Vec<u8> {
    let mut sim = Simulator::new(cfg, mode).unwrap();
    let mut out = Vec::new();
    while sim.next_into(&mut out).is_some() {}
    out
}

fn one_day() -> Mode {
    Mode::Historical {
        from: ts("2026-11-25T00:00:00-03:00"),
        until: ts("2026-11-26T00:00:00-03:00"),
    }
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let cfg = SimConfig {
        malformed: 20,
        ..SimConfig::default()
    };
    let mode = Mode::Count { lines: 5_000 };
    let a = bytes_of(&cfg, mode);
    assert_eq!(a, bytes_of(&cfg, mode));
    let iterated: Vec<u8> = records(&cfg, mode)
        .into_iter()
        .flat_map(|r| r.bytes)
        .collect();
    assert_eq!(
        a, iterated,
        "the iterator and next_into must yield the same lines"
    );
    assert_ne!(a, bytes_of(&SimConfig { seed: 43, ..cfg }, mode));
}

#[test]
fn count_mode_yields_exactly_n_lines_with_exactly_m_malformed() {
    for (lines, malformed) in [(1, 0), (1, 1), (1_000, 0), (1_000, 37), (4, 4)] {
        let cfg = SimConfig {
            malformed,
            ..SimConfig::default()
        };
        let recs = records(&cfg, Mode::Count { lines });
        assert_eq!(recs.len() as u64, lines);
        let bad = recs.iter().filter(|r| r.transaction().is_none()).count();
        assert_eq!(bad, malformed, "{lines} lines");
        let text = bytes_of(&cfg, Mode::Count { lines });
        assert_eq!(text.iter().filter(|b| **b == b'\n').count() as u64, lines);
    }
}

#[test]
fn malformed_lines_fail_the_format_in_their_own_way_and_cycle() {
    let cfg = SimConfig {
        malformed: 100,
        ..SimConfig::default()
    };
    let recs = records(&cfg, Mode::Count { lines: 10_000 });
    let mut kinds = Vec::new();
    for r in &recs {
        match (&r.kind, parse_line(&r.bytes)) {
            (RecordKind::Valid(tx), Ok(parsed)) => assert_eq!(&parsed, tx),
            (RecordKind::Valid(_), Err(e)) => panic!("valid line rejected: {e}"),
            (RecordKind::Malformed(kind), Ok(_)) => panic!("{kind:?} line parsed"),
            (RecordKind::Malformed(kind), Err(err)) => {
                kinds.push(*kind);
                let expected = match kind {
                    MalformedKind::WrongFieldCount => matches!(err, LineError::FieldCount { .. }),
                    MalformedKind::BadTimestamp => matches!(err, LineError::EventTime(_)),
                    MalformedKind::NonNumericAmount => matches!(err, LineError::Amount(_)),
                    MalformedKind::InvalidUtf8 => err == LineError::NotUtf8,
                };
                assert!(expected, "{kind:?} gave {err}");
                assert!(r.bytes.ends_with(b"\n"));
                assert_eq!(r.bytes.iter().filter(|b| **b == b'\n').count(), 1);
            }
        }
    }
    let expected: Vec<MalformedKind> = (0..100).map(MalformedKind::nth).collect();
    assert_eq!(kinds, expected);
    // Evenly spread: one malformed line in every block of 100.
    for block in recs.chunks(100) {
        assert_eq!(
            block.iter().filter(|r| r.transaction().is_none()).count(),
            1
        );
    }
}

#[test]
fn valid_lines_are_well_formed_with_unique_v4_ids_over_200k_lines() {
    let cfg = SimConfig::default();
    let mut sim = Simulator::new(&cfg, Mode::Count { lines: 200_000 }).unwrap();
    let tz = sim.time_zone().clone();
    let mut ids = HashSet::with_capacity(200_000);
    let mut line = Vec::new();
    let mut last_time = Timestamp::MIN;
    while let Some(meta) = sim.next_into(&mut line) {
        let text = std::str::from_utf8(&line).unwrap();
        let fields: Vec<&str> = text.trim_end_matches('\n').split(',').collect();
        assert_eq!(fields.len(), 8, "{text}");
        let time: Timestamp = fields[0].parse().unwrap();
        assert!(time >= last_time, "out of order: {text}");
        last_time = time;
        // Millisecond precision, and the zone's offset at that instant.
        assert_eq!(
            fields[0].len(),
            "2026-11-25T14:03:27.512-03:00".len(),
            "{text}"
        );
        let offset = tz.to_offset(time).seconds();
        let suffix = &fields[0][23..];
        let sign = if suffix.starts_with('-') { -1 } else { 1 };
        let minutes =
            suffix[1..3].parse::<i32>().unwrap() * 60 + suffix[4..].parse::<i32>().unwrap();
        assert_eq!(sign * minutes * 60, offset, "{text}");
        let id: uuid::Uuid = fields[1].parse().unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert!(ids.insert(id), "duplicate id {id}");
        assert_eq!(
            meta.kind,
            LineKind::Valid {
                amount_cents: parse_amount(fields[7])
            }
        );
        line.clear();
    }
    assert_eq!(ids.len(), 200_000);
}

fn parse_amount(s: &str) -> i64 {
    let (units, cents) = s.split_once('.').unwrap();
    assert_eq!(cents.len(), 2, "{s}");
    units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
}

#[test]
fn fields_are_consistent_with_the_population_and_tariffs() {
    let cfg = SimConfig {
        booths: 5,
        lanes_per_booth: 3,
        customers: 500,
        ..SimConfig::default()
    };
    let mut booths = HashSet::new();
    let mut classes = BTreeMap::new();
    for r in records(&cfg, Mode::Count { lines: 20_000 }) {
        let tx = r.transaction().unwrap();
        assert_eq!(
            tx.to_line(&TimeZone::get("America/Sao_Paulo").unwrap()) + "\n",
            r.bytes_str()
        );
        assert_eq!(booth_id(r.booth), tx.booth_id);
        booths.insert(tx.booth_id.clone());
        assert!((1..=3).contains(&tx.lane));
        let customer: u32 = tx.customer_id[1..].parse().unwrap();
        assert!((1..=500).contains(&customer));
        let transponder: u32 = tx.transponder_id[3..].parse().unwrap();
        assert!(transponders_of(customer).contains(&transponder), "{tx:?}");
        assert_eq!(tx.vehicle_class, vehicle_class_of(transponder));
        assert_eq!(Some(tx.amount_cents), tariff_cents(1250, tx.vehicle_class));
        *classes.entry(tx.vehicle_class).or_insert(0u32) += 1;
    }
    assert_eq!(booths.len(), 5);
    let cars = classes[&1];
    assert!(cars > 20_000 / 2 && cars < 20_000 * 9 / 10, "{classes:?}");
    assert!(classes.len() >= 6, "{classes:?}");
}

trait BytesStr {
    fn bytes_str(&self) -> String;
}

impl BytesStr for Record {
    fn bytes_str(&self) -> String {
        String::from_utf8(self.bytes.clone()).unwrap()
    }
}

/// Valid transactions per local hour of the day.
fn per_local_hour(recs: &[Record], tz: &TimeZone) -> [u32; 24] {
    let mut hours = [0; 24];
    for tx in recs.iter().filter_map(Record::transaction) {
        hours[tx.event_time.to_zoned_datetime(tz.clone()).hour() as usize] += 1;
    }
    hours
}

#[test]
fn a_historical_day_follows_the_curve() {
    let cfg = SimConfig::default();
    let tz = TimeZone::get(&cfg.time_zone).unwrap();
    let recs = records(&cfg, one_day());
    let Mode::Historical { from, until } = one_day() else {
        unreachable!()
    };
    assert!(
        recs.iter()
            .filter_map(Record::transaction)
            .all(|t| t.event_time >= from)
    );
    assert!(
        recs.iter()
            .filter_map(Record::transaction)
            .all(|t| t.event_time < until)
    );
    // 12 booths × 300/h × 24 h on a weekday, ± a few standard deviations.
    let n = recs.len() as f64;
    assert!((n - 86_400.0).abs() < 2_000.0, "{n}");
    let hours = per_local_hour(&recs, &tz);
    assert!(hours[8] > 5 * hours[3], "{hours:?}");
    assert!(hours[18] > hours[13], "{hours:?}");

    // Saturday 2026-11-28 at the same hours is quieter.
    let sat = Mode::Historical {
        from: ts("2026-11-28T00:00:00-03:00"),
        until: ts("2026-11-29T00:00:00-03:00"),
    };
    let sat_hours = per_local_hour(&records(&cfg, sat), &tz);
    assert!(sat_hours[8] < hours[8], "{sat_hours:?} vs {hours:?}");
}

#[test]
fn historical_mode_adds_exactly_the_malformed_lines_in_time_order() {
    let cfg = SimConfig {
        malformed: 10,
        base_rate_per_booth_per_hour: 5.0,
        ..SimConfig::default()
    };
    let plain = records(
        &SimConfig {
            malformed: 0,
            ..cfg.clone()
        },
        one_day(),
    );
    let recs = records(&cfg, one_day());
    assert_eq!(
        recs.iter().filter(|r| r.transaction().is_none()).count(),
        10
    );
    // The malformed lines come on top, leaving the ordinary traffic exactly as it was.
    let valid: Vec<&Record> = recs.iter().filter(|r| r.transaction().is_some()).collect();
    assert_eq!(valid, plain.iter().collect::<Vec<_>>());
}

#[test]
fn a_silent_booth_sends_nothing_in_its_span_only() {
    let (from, until) = (
        ts("2026-11-25T10:00:00-03:00"),
        ts("2026-11-25T12:30:00-03:00"),
    );
    let cfg = SimConfig {
        silent_booth: Some(("PLZ-003".into(), from, until)),
        malformed: 50,
        ..SimConfig::default()
    };
    let recs = records(&cfg, one_day());
    let at_booth = |lo: Timestamp, hi: Timestamp| {
        recs.iter()
            .filter_map(Record::transaction)
            .filter(|t| t.booth_id == "PLZ-003" && t.event_time >= lo && t.event_time < hi)
            .count()
    };
    assert_eq!(at_booth(from, until), 0);
    assert!(recs.iter().filter(|r| r.booth == 2).all(|r| match &r.kind {
        RecordKind::Valid(t) => t.event_time < from || t.event_time >= until,
        RecordKind::Malformed(_) => true,
    }));
    assert!(at_booth(ts("2026-11-25T08:00:00-03:00"), from) > 100);
    assert!(at_booth(until, ts("2026-11-25T14:00:00-03:00")) > 100);
    // The other booths keep their traffic: about 11 × 300 × 1.2 per hour at 10:00.
    let others = recs
        .iter()
        .filter_map(Record::transaction)
        .filter(|t| t.event_time >= from && t.event_time < ts("2026-11-25T11:00:00-03:00"))
        .count();
    assert!((3_600..4_350).contains(&others), "{others}");
}

#[test]
fn the_overspender_passes_extra_times_every_day() {
    let cfg = SimConfig {
        overspender: Some(("C0000042".into(), 96)),
        ..SimConfig::default()
    };
    let recs = records(&cfg, one_day());
    let times: Vec<Timestamp> = recs
        .iter()
        .filter_map(Record::transaction)
        .filter(|t| t.customer_id == "C0000042")
        .map(|t| t.event_time)
        .collect();
    // 96 scheduled passes (every 15 minutes) on top of the ordinary traffic, unchanged.
    let without = records(
        &SimConfig {
            overspender: None,
            ..cfg
        },
        one_day(),
    );
    let ordinary = without
        .iter()
        .filter_map(Record::transaction)
        .filter(|t| t.customer_id == "C0000042")
        .count();
    assert_eq!(times.len(), ordinary + 96);
    assert_eq!(recs.len(), without.len() + 96);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn live_mode_stamps_the_given_time_and_keeps_the_count() {
    let cfg = SimConfig {
        malformed: 2,
        ..SimConfig::default()
    };
    let mut sim = Simulator::new(&cfg, Mode::Count { lines: 10 }).unwrap();
    let now = ts("2027-01-02T03:04:05.678Z");
    let mut out = Vec::new();
    let mut n = 0;
    while let Some(meta) = sim.next_into_at(now, &mut out) {
        n += 1;
        if let LineKind::Valid { .. } = meta.kind {
            assert!(out.starts_with(b"2027-01-02T00:04:05.678-03:00,"));
        }
        out.clear();
    }
    assert_eq!(n, 10);
    let mut hist = Simulator::new(&cfg, one_day()).unwrap();
    assert_eq!(hist.next_into_at(now, &mut out), None);
}

#[test]
fn unknown_time_zones_and_bad_values_are_rejected() {
    let cfg = SimConfig {
        time_zone: "Mars/Olympus_Mons".into(),
        ..SimConfig::default()
    };
    let err = Simulator::new(&cfg, Mode::Count { lines: 1 }).unwrap_err();
    assert!(matches!(err, SimError::TimeZone { .. }), "{err}");
    let cfg = SimConfig {
        base_rate_per_booth_per_hour: 0.0,
        ..SimConfig::default()
    };
    assert!(Simulator::new(&cfg, Mode::Count { lines: 1 }).is_err());
    let backwards = Mode::Historical {
        from: ts("2026-11-26T00:00Z"),
        until: ts("2026-11-25T00:00Z"),
    };
    assert!(Simulator::new(&SimConfig::default(), backwards).is_err());
}
