//! Reference files: parsing, line-numbered validation, lookups, reload and watching.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Weekday;
use tokio_util::sync::CancellationToken;

use super::*;

const HALF_HOUR: Duration = Duration::from_secs(30 * 60);

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("thresholds.csv");
    std::fs::write(&path, text).expect("write");
    path
}

fn errors_of(text: &str, scale: u32) -> (PathBuf, Vec<(u64, String)>, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), text);
    match ReferenceTable::load(&path, HALF_HOUR, scale) {
        Err(ReferenceError::Invalid(e)) => (path, e.errors, e.total),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn loads_the_shipped_example() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/collector/booth-thresholds.csv");
    let table = ReferenceTable::load(&path, HALF_HOUR, 0).expect("the example is valid");
    assert_eq!(table.key_column(), "booth_id");
    assert_eq!(table.value_column(), "min_vehicles");
    assert_eq!(
        table.threshold("PLZ-017", Weekday::Wednesday, 14 * 60),
        Some(100)
    );
    assert!(table.rows() > 0);
}

#[test]
fn looks_up_by_key_weekday_and_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "\u{feff}booth_id,weekday,slot_start,min_vehicles\n\
         # comment\n\
         PLZ-017,wed,14:00,100\n\
         \n\
         PLZ-001, Wednesday ,14:00, 7\n\
         \"PLZ-017\",SUN,9:30,0\n\
         PLZ-017,Mon,00:00,3\n",
    );
    let table = ReferenceTable::load(&path, HALF_HOUR, 0).expect("valid");
    assert_eq!(table.rows(), 4);
    assert_eq!(table.keys(), ["PLZ-001".to_string(), "PLZ-017".to_string()]);
    assert_eq!(
        table.threshold("PLZ-017", Weekday::Wednesday, 14 * 60),
        Some(100)
    );
    // Any minute inside the slot finds it.
    assert_eq!(
        table.threshold("PLZ-017", Weekday::Wednesday, 14 * 60 + 29),
        Some(100)
    );
    assert_eq!(
        table.threshold("PLZ-017", Weekday::Wednesday, 14 * 60 + 30),
        None
    );
    assert_eq!(table.threshold("PLZ-017", Weekday::Thursday, 14 * 60), None);
    assert_eq!(
        table.threshold("PLZ-099", Weekday::Wednesday, 14 * 60),
        None
    );
    assert_eq!(
        table.threshold("PLZ-017", Weekday::Sunday, 9 * 60 + 30),
        Some(0)
    );
    assert_eq!(table.threshold("PLZ-017", Weekday::Monday, 0), Some(3));
    assert_eq!(
        table.slot(Weekday::Wednesday, 14 * 60),
        [("PLZ-001".to_string(), 7), ("PLZ-017".to_string(), 100)]
    );
    assert!(table.slot(Weekday::Tuesday, 0).is_empty());
}

#[test]
fn decimal_values_are_exact_at_the_scale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "booth_id,weekday,slot_start,min_amount\nA,tue,08:00,12.5\nB,tue,08:00,3\n",
    );
    let table = ReferenceTable::load(&path, HALF_HOUR, 2).expect("valid");
    assert_eq!(table.threshold("A", Weekday::Tuesday, 8 * 60), Some(1250));
    assert_eq!(table.threshold("B", Weekday::Tuesday, 8 * 60), Some(300));
}

#[test]
fn a_header_alone_means_no_thresholds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "booth_id,weekday,slot_start,min_vehicles\n");
    let table = ReferenceTable::load(&path, HALF_HOUR, 0).expect("valid");
    assert_eq!(table.rows(), 0);
    assert!(table.keys().is_empty());
}

#[test]
fn every_bad_line_is_reported_with_its_number() {
    let text = "booth_id,weekday,slot_start,min_vehicles\n\
                PLZ-017,wed,14:00,100\n\
                PLZ-017,wod,14:00,100\n\
                PLZ-017,wed,14:10,100\n\
                PLZ-017,wed,25:00,100\n\
                PLZ-017,wed,14:30,-1\n\
                PLZ-017,wed,15:00,ten\n\
                PLZ-017,wed,15:30,1.5\n\
                PLZ-017,wed,16:00\n\
                \n\
                PLZ-017,Wednesday,14:00,90\n\
                ,wed,16:30,1\n";
    let (_, errors, total) = errors_of(text, 0);
    let lines: Vec<u64> = errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 11, 12], "{errors:#?}");
    assert_eq!(total, 9);
    let message = |line: u64| &errors.iter().find(|(l, _)| *l == line).expect("line").1;
    assert!(
        message(3).contains("\"wod\" is not a weekday; expected mon"),
        "{}",
        message(3)
    );
    assert!(
        message(4).contains("14:10 is not the start of a 30-minute slot")
            && message(4).contains("14:00 or 14:30"),
        "{}",
        message(4)
    );
    assert!(message(5).contains("expected HH:MM"), "{}", message(5));
    assert!(
        message(6).contains("min_vehicles -1 is negative"),
        "{}",
        message(6)
    );
    assert!(message(7).contains("not a whole number"), "{}", message(7));
    assert!(message(8).contains("not a whole number"), "{}", message(8));
    assert!(
        message(9)
            .contains("expected 4 fields (booth_id,weekday,slot_start,min_vehicles), found 3"),
        "{}",
        message(9)
    );
    assert!(
        message(11).contains("duplicate of line 2"),
        "{}",
        message(11)
    );
    assert!(message(12).contains("booth_id is empty"), "{}", message(12));
}

#[test]
fn the_message_names_file_and_line_and_caps_the_list() {
    let mut text = String::from("booth_id,weekday,slot_start,min_vehicles\n");
    for _ in 0..30 {
        text.push_str("PLZ-017,xyz,14:00,1\n");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), &text);
    let error = ReferenceTable::load(&path, HALF_HOUR, 0).expect_err("invalid");
    let shown = error.to_string();
    let first = format!("{}:2: weekday", path.display());
    assert!(shown.starts_with(&first), "{shown}");
    assert_eq!(shown.lines().count(), MAX_REPORTED_ERRORS + 1, "{shown}");
    assert!(shown.ends_with("… and 10 more errors"), "{shown}");
}

#[test]
fn a_missing_or_wrong_header_is_refused() {
    let (_, errors, _) = errors_of("PLZ-017,wed,14:00,100\n", 0);
    assert_eq!(errors[0].0, 1);
    assert!(errors[0].1.contains("found a data row"), "{}", errors[0].1);
    let (_, errors, _) = errors_of("# thresholds\nbooth,day,slot,min\n", 0);
    assert_eq!(errors[0].0, 2);
    assert!(
        errors[0].1.contains("expected the header"),
        "{}",
        errors[0].1
    );
    let (_, errors, _) = errors_of("", 0);
    assert!(errors[0].1.contains("the file is empty"), "{}", errors[0].1);
}

#[test]
fn windows_must_be_whole_minutes_dividing_a_day() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "booth_id,weekday,slot_start,min_vehicles\n");
    for bad in [0, 7 * 60, 90, 25 * 3600] {
        let error = ReferenceTable::load(&path, Duration::from_secs(bad), 0).expect_err("refused");
        assert!(
            matches!(error, ReferenceError::Window { .. }),
            "{bad}: {error}"
        );
    }
    let table = ReferenceTable::load(&path, Duration::from_secs(3600), 0).expect("1h is fine");
    assert_eq!(table.rows(), 0);
}

#[test]
fn a_bad_reload_keeps_the_table_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "booth_id,weekday,slot_start,min_vehicles\nA,mon,08:00,5\n",
    );
    let reference = Reference::open("traffic", &path, HALF_HOUR, 0).expect("open");
    assert!(!reference.reload().expect("same file"));
    std::fs::write(
        &path,
        "booth_id,weekday,slot_start,min_vehicles\nA,mon,08:00,five\n",
    )
    .expect("write");
    let error = reference.reload().expect_err("invalid");
    assert!(error.to_string().contains(":2: min_vehicles"), "{error}");
    assert_eq!(
        reference.current().threshold("A", Weekday::Monday, 480),
        Some(5)
    );
    std::fs::write(
        &path,
        "booth_id,weekday,slot_start,min_vehicles\nA,mon,08:00,6\n",
    )
    .expect("write");
    assert!(reference.reload().expect("valid"));
    assert_eq!(
        reference.current().threshold("A", Weekday::Monday, 480),
        Some(6)
    );
}

#[tokio::test]
async fn the_watcher_picks_up_a_replaced_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "booth_id,weekday,slot_start,min_vehicles\nA,mon,08:00,5\n",
    );
    let reference = Arc::new(Reference::open("traffic", &path, HALF_HOUR, 0).expect("open"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        reference
            .clone()
            .watch(Duration::from_millis(20), stop.clone()),
    );
    // Replaced as operators should: a new file renamed over the old one.
    let tmp = dir.path().join("thresholds.csv.tmp");
    std::fs::write(
        &tmp,
        "booth_id,weekday,slot_start,min_vehicles\nA,mon,08:00,7\nB,mon,08:00,1\n",
    )
    .expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reference.current().threshold("A", Weekday::Monday, 480) != Some(7) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher did not reload in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reference.current().keys().len(), 2);
    stop.cancel();
    task.await.expect("watcher ends");
}
