//! The limits store: parsing, durability across reopen, import all-or-nothing, and changes
//! made by another process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::FakeClock;
use crate::config::Config;

fn clock() -> FakeClock {
    FakeClock::new("2026-11-25T17:00:00Z".parse().expect("time"))
}

fn open(dir: &Path, clock: &FakeClock) -> LimitsStore {
    LimitsStore::open(&path_in(dir), 2, Arc::new(clock.clone())).expect("open")
}

fn csv(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("limits.csv");
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn limits_parse_exactly_or_say_why_not() {
    assert_eq!(parse_limit("150.00", 2), Ok(15000));
    assert_eq!(parse_limit("150", 2), Ok(15000));
    assert_eq!(parse_limit("150.5", 2), Ok(15050));
    assert_eq!(parse_limit(" 0 ", 2), Ok(0));
    assert_eq!(parse_limit("1000000000", 2), Ok(100_000_000_000));
    let refused = |raw: &str, part: &str| {
        let why = parse_limit(raw, 2).expect_err(raw);
        assert!(why.contains(part), "{raw}: {why}");
    };
    refused("-1", "negative");
    refused("1.234", "3 decimal places; at most 2");
    refused("150,00", "write the decimal point as '.'");
    refused("abc", "is not an amount");
    refused("1e3", "is not an amount");
    refused(".5", "is not an amount");
    refused("5.", "is not an amount");
    refused("+5", "is not an amount");
    refused("", "empty");
    refused(
        "1000000000.01",
        "larger than the largest accepted limit, 1000000000.00",
    );
    refused("99999999999999999999999", "larger than");
    refused(&"9".repeat(40), "is not an amount");
}

#[test]
fn amounts_format_at_their_scale() {
    assert_eq!(format_amount(15000, 2), "150.00");
    assert_eq!(format_amount(5, 2), "0.05");
    assert_eq!(format_amount(0, 2), "0.00");
    assert_eq!(format_amount(-1250, 2), "-12.50");
    assert_eq!(format_amount(37, 0), "37");
}

#[test]
fn customer_ids_are_checked() {
    assert!(validate_customer_id("C0001234").is_ok());
    assert!(validate_customer_id("cliente São Paulo #1").is_ok());
    assert!(validate_customer_id(&"é".repeat(128)).is_ok());
    assert!(validate_customer_id("").is_err());
    assert!(
        validate_customer_id(&"x".repeat(129))
            .unwrap_err()
            .contains("longer than 128")
    );
    assert!(
        validate_customer_id("a\tb")
            .unwrap_err()
            .contains("control character")
    );
    assert!(
        validate_customer_id(" C1")
            .unwrap_err()
            .contains("white space")
    );
}

#[test]
fn set_get_delete_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let store = open(dir.path(), &clock);
    assert_eq!(store.get("C1"), None);
    let first = store.set_text("C1", "150.00").expect("set");
    assert_eq!(first.previous, None);
    assert!(first.changed());
    assert_eq!(store.get("C1"), Some(15000));
    clock.advance(Duration::from_secs(60));
    // The same amount again changes nothing, not even the time.
    let again = store.set("C1", 15000).expect("set");
    assert!(!again.changed());
    assert_eq!(again.limit.updated_at, first.limit.updated_at);
    let raised = store.set("C1", 20000).expect("raise");
    assert_eq!(raised.previous, Some(15000));
    assert_eq!(raised.limit.updated_at.to_string(), "2026-11-25T17:01:00Z");
    store.set("C2", 0).expect("zero is a limit");
    assert_eq!(
        store.delete("C2").expect("delete").map(|l| l.amount),
        Some(0)
    );
    assert_eq!(store.delete("C2").expect("delete again"), None);
    assert!(matches!(
        store.set("C3", -1),
        Err(LimitsError::InvalidAmount(_))
    ));
    assert!(matches!(
        store.set("", 1),
        Err(LimitsError::InvalidCustomer(_))
    ));
    drop(store);

    let store = open(dir.path(), &clock);
    assert_eq!(store.len(), 1);
    assert_eq!(store.limit("C1"), Some(raised.limit));
    assert_eq!(store.get("C2"), None);
}

#[test]
fn a_store_made_for_another_scale_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    drop(open(dir.path(), &clock));
    let error = LimitsStore::open(&path_in(dir.path()), 3, Arc::new(clock)).expect_err("refused");
    assert!(
        matches!(
            error,
            LimitsError::ScaleMismatch {
                stored: 2,
                wanted: 3,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn changes_by_another_process_are_picked_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let daemon = open(dir.path(), &clock);
    daemon.set("C1", 100).expect("set");
    assert!(
        !daemon.refresh_if_changed().expect("refresh"),
        "its own write is not a change"
    );
    // The `limits` command: another connection to the same file.
    let cli = open(dir.path(), &clock);
    assert_eq!(cli.get("C1"), Some(100));
    cli.set("C2", 200).expect("set");
    cli.delete("C1").expect("delete");
    assert!(daemon.refresh_if_changed().expect("refresh"));
    assert_eq!(daemon.get("C1"), None);
    assert_eq!(daemon.get("C2"), Some(200));
    assert!(!daemon.refresh_if_changed().expect("refresh"));
    let file = csv(dir.path(), "customer_id,monthly_limit\nC3,3\n");
    cli.import_csv(&file, ImportMode::Merge).expect("import");
    assert!(daemon.refresh_if_changed().expect("refresh"));
    assert_eq!(daemon.get("C3"), Some(300));
}

#[test]
fn import_merges_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let store = open(dir.path(), &clock);
    store.set("KEEP", 100).expect("set");
    store.set("SAME", 500).expect("set");
    store.set("RAISE", 100).expect("set");
    let file = csv(
        dir.path(),
        "\u{feff}customer_id,monthly_limit\nSAME,5\n\"RAISE\", 2.5 \n\nNEW,150.00\n#1,7\n",
    );
    let report = store.import_csv(&file, ImportMode::Merge).expect("import");
    assert_eq!(
        report,
        ImportReport {
            rows: 4,
            added: 2,
            changed: 1,
            unchanged: 1,
            removed: 0
        }
    );
    assert_eq!(store.get("RAISE"), Some(250));
    assert_eq!(store.get("NEW"), Some(15000));
    assert_eq!(
        store.get("#1"),
        Some(700),
        "no comment lines: ids may start with #"
    );
    assert_eq!(store.get("KEEP"), Some(100));
    let replace = csv(
        dir.path(),
        "customer_id,monthly_limit,updated_at\nNEW,150.00,2026-01-01T00:00:00Z\n",
    );
    let report = store
        .import_csv(&replace, ImportMode::Replace)
        .expect("import");
    assert_eq!(report.removed, 4);
    assert_eq!(
        store
            .list()
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["NEW"]
    );
    drop(store);
    assert_eq!(open(dir.path(), &clock).len(), 1);
}

#[test]
fn a_bad_import_changes_nothing_and_names_every_bad_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let store = open(dir.path(), &clock);
    store.set("C1", 100).expect("set");
    let file = csv(
        dir.path(),
        "customer_id,monthly_limit\n\
         C1,999\n\
         C2,-5\n\
         C3,\n\
         C4,1.234\n\
         C5\n\
         C1,7\n\
         ,5\n\
         C6,abc\n\
         C7,10\n",
    );
    let error = store
        .import_csv(&file, ImportMode::Merge)
        .expect_err("refused");
    let LimitsError::Csv(errors) = &error else {
        panic!("{error}")
    };
    let lines: Vec<u64> = errors.errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9], "{error}");
    let shown = error.to_string();
    let name = file.display().to_string();
    assert!(
        shown.contains(&format!("{name}:3: monthly_limit -5 is negative")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "{name}:4: monthly_limit of customer \"C3\" is empty"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{name}:6: expected 2 fields")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{name}:7: customer \"C1\" is already on line 2")),
        "{shown}"
    );
    assert!(shown.ends_with("nothing was imported"), "{shown}");
    assert_eq!(store.get("C1"), Some(100));
    assert_eq!(store.get("C7"), None);
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(store.list().len(), 1);
}

#[test]
fn import_checks_the_header_and_caps_the_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = clock();
    let store = open(dir.path(), &clock);
    let file = csv(dir.path(), "C1,100\n");
    let shown = store
        .import_csv(&file, ImportMode::Merge)
        .expect_err("no header")
        .to_string();
    assert!(
        shown.contains(":1: expected the header customer_id,monthly_limit; found c1,100"),
        "{shown}"
    );
    let mut text = String::from("customer_id,monthly_limit\n");
    for i in 0..50 {
        text.push_str(&format!("C{i},x\n"));
    }
    let file = csv(dir.path(), &text);
    let LimitsError::Csv(errors) = store.import_csv(&file, ImportMode::Merge).expect_err("bad")
    else {
        panic!("not a CSV error")
    };
    assert_eq!((errors.errors.len(), errors.total), (20, 50));
    let header_only = csv(dir.path(), "customer_id,monthly_limit\n");
    assert_eq!(
        store
            .import_csv(&header_only, ImportMode::Merge)
            .expect("empty is fine")
            .rows,
        0
    );
    let shown = store
        .import_csv(&header_only, ImportMode::Replace)
        .expect_err("refused")
        .to_string();
    assert!(shown.contains("would delete every limit"), "{shown}");
}

#[test]
fn the_scale_comes_from_the_limits_rule() {
    let yaml = |rules: &str| {
        format!(
            "listen: 127.0.0.1:0\ndata_dir: /tmp/x\nauth: {{ agent_tokens_file: /tmp/t }}\n{rules}"
        )
    };
    let parse = |text: &str| Config::parse(text, Path::new("c.yaml")).expect("config");
    assert_eq!(scale_for(&parse(&yaml(""))), Ok(DEFAULT_SCALE));
    let with_rule = parse(&yaml(
        "rules:\n  - { name: billing-limit, key: customer_id, period: month, aggregate: sum, \
         column: amount_cents, threshold: limits, when: above }\n",
    ));
    assert_eq!(scale_for(&with_rule), Ok(2));
}

#[test]
fn the_command_line_answers_and_exits_as_documented() {
    use cli::{LimitsCommand, run};
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "listen: 127.0.0.1:0\ndata_dir: {}\nauth: {{ agent_tokens_file: /tmp/t }}\n",
        dir.path().join("data").display()
    );
    let config = Config::parse(&text, Path::new("c.yaml")).expect("config");
    let mut out = Vec::new();
    let mut go = |command: LimitsCommand| {
        out.clear();
        run(&config, &command, &mut out)
            .map(|()| String::from_utf8(out.clone()).expect("UTF-8"))
            .map_err(|e| (e.exit, e.message))
    };
    let set = |id: &str, amount: &str| LimitsCommand::Set {
        customer_id: id.into(),
        amount: amount.into(),
    };
    assert_eq!(
        go(set("C1", "150")).expect("set"),
        "C1: monthly limit 150.00 (new)\n"
    );
    assert_eq!(
        go(set("C1", "99.9")).expect("set"),
        "C1: monthly limit 99.90 (was 150.00)\n"
    );
    let (exit, message) = go(set("C1", "-5")).expect_err("negative");
    assert_eq!(
        (exit, message.contains("negative")),
        (64, true),
        "{message}"
    );
    let (exit, _) = go(LimitsCommand::Get {
        customer_id: "C2".into(),
    })
    .expect_err("none");
    assert_eq!(exit, 1);
    let good = csv(dir.path(), "customer_id,monthly_limit\n\"C,2\",5\n");
    go(LimitsCommand::Import {
        file: good,
        replace: false,
    })
    .expect("import");
    let list = go(LimitsCommand::List).expect("list");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "customer_id,monthly_limit,updated_at");
    // Sorted by id: ',' sorts before '1'.
    assert!(lines[1].starts_with("\"C,2\",5.00,"), "{list}");
    assert!(lines[2].starts_with("C1,99.90,20"), "{list}");
    // What `list` prints imports back, unchanged.
    let round_trip = dir.path().join("list.csv");
    std::fs::write(&round_trip, &list).expect("write");
    let report = go(LimitsCommand::Import {
        file: round_trip,
        replace: true,
    })
    .expect("import");
    assert!(
        report.contains("2 rows: 0 added, 0 changed, 2 unchanged, 0 removed"),
        "{report}"
    );
    let bad = csv(dir.path(), "customer_id,monthly_limit\nC3,x\n");
    let (exit, message) = go(LimitsCommand::Import {
        file: bad,
        replace: false,
    })
    .expect_err("bad");
    assert_eq!(exit, 1);
    assert!(message.contains("limits.csv:2: monthly_limit"), "{message}");
    assert_eq!(
        go(LimitsCommand::Delete {
            customer_id: "C9".into()
        })
        .expect("delete"),
        "C9: had no monthly limit\n"
    );
}
