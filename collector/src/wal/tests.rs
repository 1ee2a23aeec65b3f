//! WAL behaviour: duplicates, trimming, recovery after a torn write, segment deletion.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::clock::SystemClock;

fn options(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        consumers: vec!["archive"],
    }
}

fn open(dir: &Path, segment_bytes: u64) -> (Wal, std::thread::JoinHandle<()>) {
    Wal::open(dir, options(segment_bytes), Arc::new(SystemClock)).expect("opens")
}

fn batch(source: &str, start: u64, lines: &[&str]) -> AppendRequest {
    let data: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let end = start + data.len() as u64;
    AppendRequest {
        lease: None,
        source: source.into(),
        range: Some((start, end)),
        data: Bytes::from(data),
        records: lines.len() as u32,
    }
}

fn read_all(wal: &Wal, from: u64) -> Vec<WalRecord> {
    let durable = *wal.durable().borrow();
    let mut reader = wal.reader(from);
    std::iter::from_fn(|| reader.next(durable).expect("reads")).collect()
}

fn close(wal: Wal, thread: std::thread::JoinHandle<()>) {
    drop(wal);
    thread.join().expect("writer thread ends");
}

#[tokio::test]
async fn resent_batch_is_acknowledged_but_not_written_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    let first = wal
        .append(batch("a/1", 0, &["one", "two"]))
        .await
        .expect("written");
    assert!(matches!(
        first,
        Appended::Written {
            seq: 1,
            records: 2,
            ..
        }
    ));
    let again = wal
        .append(batch("a/1", 0, &["one", "two"]))
        .await
        .expect("acked");
    assert_eq!(
        again,
        Appended::Duplicate {
            skipped_records: 2,
            high_water: 8
        }
    );
    // A batch overlapping the accepted part is trimmed to the new lines.
    let overlap = wal
        .append(batch("a/1", 4, &["two", "three"]))
        .await
        .expect("written");
    assert_eq!(
        overlap,
        Appended::Written {
            seq: 2,
            records: 1,
            skipped_records: 1,
            high_water: Some(14)
        }
    );
    let records = read_all(&wal, 1);
    assert_eq!(records.len(), 2);
    assert_eq!(&records[1].data[..], b"three\n");
    assert_eq!(records[1].range, Some((8, 14)));
    close(wal, thread);
}

#[tokio::test]
async fn overlap_off_a_line_boundary_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    wal.append(batch("a/1", 0, &["one", "two"]))
        .await
        .expect("written");
    let err = wal
        .append(batch("a/1", 2, &["xxxxxx", "yy"]))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, WalError::Misaligned { high_water: 8, .. }),
        "{err}"
    );
    close(wal, thread);
}

#[tokio::test]
async fn batches_arriving_out_of_order_are_each_written_once_and_survive_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    // Three batches of one file in flight; the second and third arrive first.
    wal.append(batch("a/1", 4, &["bbb"])).await.expect("b");
    wal.append(batch("a/1", 12, &["ddd"])).await.expect("d");
    let first = wal.append(batch("a/1", 0, &["aaa"])).await.expect("a");
    assert!(
        matches!(first, Appended::Written { records: 1, .. }),
        "{first:?}"
    );
    close(wal, thread);
    // After a restart, a resend spanning all of them writes only the gap, [8, 12).
    let (wal, thread) = open(dir.path(), 1 << 20);
    let resend = wal
        .append(batch("a/1", 0, &["aaa", "bbb", "ccc", "ddd", "eee"]))
        .await
        .expect("resend");
    assert_eq!(
        resend,
        Appended::Written {
            seq: 5,
            records: 2,
            skipped_records: 3,
            high_water: Some(20)
        }
    );
    let records = read_all(&wal, 1);
    let written: Vec<_> = records.iter().map(|r| (r.range, &r.data[..])).collect();
    assert_eq!(
        written,
        vec![
            (Some((4, 8)), &b"bbb\n"[..]),
            (Some((12, 16)), b"ddd\n"),
            (Some((0, 4)), b"aaa\n"),
            (Some((8, 12)), b"ccc\n"),
            (Some((16, 20)), b"eee\n"),
        ]
    );
    close(wal, thread);
}

#[tokio::test]
async fn a_multiline_record_sent_in_parts_then_whole_is_completed_not_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    // First sent as "a" alone (its continuation was not written yet when time ran out)...
    wal.append(batch("m/1", 0, &["a"])).await.expect("a");
    // ...then, after a restart, read again whole: "a" + its continuation "b" + "c".
    let whole = AppendRequest {
        lease: None,
        source: "m/1".into(),
        range: Some((0, 6)),
        data: Bytes::from_static(b"a\x1eb\nc\n"),
        records: 2,
    };
    let appended = wal.append(whole).await.expect("gap written");
    assert!(matches!(appended, Appended::Written { .. }), "{appended:?}");
    let records = read_all(&wal, 2);
    assert_eq!(&records[0].data[..], b"b\nc\n");
    assert_eq!(records[0].range, Some((2, 6)));
    close(wal, thread);
}

#[tokio::test]
async fn recovery_cuts_a_torn_record_and_keeps_high_water_marks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    wal.append(batch("a/1", 0, &["one"]))
        .await
        .expect("written");
    wal.append(batch("a/1", 4, &["two"]))
        .await
        .expect("written");
    close(wal, thread);
    // Simulate a crash in the middle of writing a third record.
    let segment = segment::segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&segment).expect("read");
    let whole = bytes.len();
    let mut torn = bytes::BytesMut::new();
    WalRecord {
        seq: 3,
        received_at_us: 0,
        source: "a/1".into(),
        range: Some((8, 14)),
        records: 1,
        data: Bytes::from_static(b"three\n"),
    }
    .encode_into(&mut torn);
    bytes.extend_from_slice(&torn[..torn.len() - 4]);
    std::fs::write(&segment, &bytes).expect("write");

    let (wal, thread) = open(dir.path(), 1 << 20);
    assert_eq!(
        std::fs::metadata(&segment).expect("stat").len() as usize,
        whole,
        "torn tail cut"
    );
    assert_eq!(wal.durable().borrow().seq, 2);
    // The torn batch was never acknowledged, so its resend must be written, with seq 3.
    let resent = wal
        .append(batch("a/1", 8, &["three"]))
        .await
        .expect("written");
    assert!(
        matches!(resent, Appended::Written { seq: 3, .. }),
        "{resent:?}"
    );
    let dup = wal.append(batch("a/1", 0, &["one"])).await.expect("acked");
    assert!(matches!(dup, Appended::Duplicate { .. }));
    close(wal, thread);
}

#[tokio::test]
async fn consumed_segments_are_deleted_and_marks_survive_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 64 * 1024);
    let line = "x".repeat(1000);
    let mut offset = 0;
    for _ in 0..200 {
        wal.append(batch("a/1", offset, &[&line]))
            .await
            .expect("written");
        offset += 1001;
    }
    let segments = segment::list(dir.path()).expect("list").len();
    assert!(segments > 2, "{segments} segments");
    wal.consumers().advance("archive", 150);
    // The next roll-over deletes what the consumer passed.
    for _ in 0..70 {
        wal.append(batch("a/1", offset, &[&line]))
            .await
            .expect("written");
        offset += 1001;
    }
    let remaining = segment::list(dir.path()).expect("list");
    assert!(remaining.len() < segments, "old segments deleted");
    assert!(
        remaining[1].first_seq > 1 && remaining[0].first_seq <= 151,
        "{remaining:?}"
    );
    close(wal, thread);
    let (wal, thread) = open(dir.path(), 64 * 1024);
    let dup = wal.append(batch("a/1", 0, &[&line])).await.expect("acked");
    assert!(
        matches!(dup, Appended::Duplicate { .. }),
        "mark of a deleted segment survives: {dup:?}"
    );
    assert_eq!(wal.durable().borrow().seq, 270);
    close(wal, thread);
}

#[tokio::test]
async fn reader_never_sees_bytes_past_the_durable_position() {
    // A group whose write failed is cut back and its sequence numbers reused; a reader that
    // had buffered those bytes must not return them for the records that replace them.
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    wal.append(batch("a/1", 0, &["one"]))
        .await
        .expect("written");
    let durable = *wal.durable().borrow();
    let segment = segment::segment_path(dir.path(), 1);
    let mut stale = bytes::BytesMut::new();
    let record = |data: &'static [u8]| WalRecord {
        seq: 2,
        received_at_us: 0,
        source: "a/1".into(),
        range: Some((4, 4 + data.len() as u64)),
        records: 1,
        data: Bytes::from_static(data),
    };
    record(b"never-acked\n").encode_into(&mut stale);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    std::io::Write::write_all(&mut file, &stale).expect("write");
    let mut reader = wal.reader(1);
    assert_eq!(
        &reader.next(durable).expect("reads").expect("record 1").data[..],
        b"one\n"
    );
    assert!(
        reader.next(durable).expect("reads").is_none(),
        "seq 2 is not durable yet"
    );
    file.set_len(durable.len).expect("cut back");
    wal.append(batch("a/1", 4, &["two"]))
        .await
        .expect("written");
    let durable = *wal.durable().borrow();
    let second = reader.next(durable).expect("reads").expect("record 2");
    assert_eq!(
        &second.data[..],
        b"two\n",
        "the acknowledged record, not the stale bytes"
    );
    close(wal, thread);
}

#[tokio::test]
async fn damage_before_valid_records_stops_recovery_instead_of_cutting_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    for i in 0..3u64 {
        wal.append(batch("a/1", i * 4, &["abc"]))
            .await
            .expect("written");
    }
    close(wal, thread);
    let segment = segment::segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[20] ^= 0xff; // Inside the first record, with two good records after it.
    std::fs::write(&segment, &bytes).expect("write");
    let err = Wal::open(dir.path(), options(1 << 20), Arc::new(SystemClock))
        .err()
        .expect("refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    assert_eq!(
        std::fs::read(&segment).expect("read"),
        bytes,
        "nothing was cut"
    );
}

#[tokio::test]
async fn a_zero_filled_tail_and_an_unused_stray_segment_are_cleaned_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, thread) = open(dir.path(), 1 << 20);
    wal.append(batch("a/1", 0, &["abc"]))
        .await
        .expect("written");
    close(wal, thread);
    let segment = segment::segment_path(dir.path(), 1);
    let good = std::fs::metadata(&segment).expect("stat").len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    std::io::Write::write_all(&mut file, &[0u8; 4096]).expect("zeros");
    std::fs::File::create(segment::segment_path(dir.path(), 9)).expect("stray");
    let (wal, thread) = open(dir.path(), 1 << 20);
    assert_eq!(std::fs::metadata(&segment).expect("stat").len(), good);
    assert_eq!(
        segment::list(dir.path()).expect("list").len(),
        1,
        "stray segment removed"
    );
    let next = wal
        .append(batch("a/1", 4, &["def"]))
        .await
        .expect("written");
    assert!(matches!(next, Appended::Written { seq: 2, .. }), "{next:?}");
    close(wal, thread);
}
