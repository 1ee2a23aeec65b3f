//! `PutRecord` and `PutRecordBatch`: records decoded, turned into lines, checked, and
//! appended to the stream's WAL in one request.

use base64::Engine;
use bytes::Bytes;

use super::api::{self, AwsError, Kind, ResponseEntry};
use super::keys::AccessKey;
use super::{FirehoseState, not_found};
use crate::config::valid_delivery_stream_name;
use crate::ingest::body::Held;
use crate::ingest::{admit, wal_error};
use crate::wal::{AppendRequest, Appended};

/// The WAL source name of records sent with `key`: no byte range goes with it, so the WAL
/// writes what comes (at-least-once) instead of checking it against a high-water mark.
pub fn source_name(key: &AccessKey) -> String {
    format!("firehose:{}", key.id)
}

/// Writes `records` to the WAL of the stream `name` maps to; one entry per record, in
/// order. `single` (PutRecord) turns a failed record into a failed request.
///
/// # Errors
/// The whole request is refused, nothing kept: an unknown or malformed name, too many
/// records, a record over 1,000 KiB, more than 4 MiB, data that is not base64,
/// backpressure or a WAL failure.
pub async fn put(
    state: &FirehoseState,
    key: &AccessKey,
    name: &str,
    records: Vec<api::RecordIn>,
    single: bool,
    mut held: Held,
    request_id: &str,
) -> Result<Vec<ResponseEntry>, AwsError> {
    check_name(name)?;
    if records.is_empty() || records.len() > api::MAX_BATCH_RECORDS {
        return Err(AwsError::new(
            Kind::Validation,
            format!(
                "1 validation error detected: Value at 'records' failed to satisfy constraint: \
                 Member must have length between 1 and {} (it has {})",
                api::MAX_BATCH_RECORDS,
                records.len()
            ),
        ));
    }
    let Some(stream) = state.delivery_streams.get(name) else {
        return Err(not_found(name));
    };
    let Some(wal) = state.ingest.streams.get(stream) else {
        return Err(not_found(name));
    };
    admit(&state.ingest, stream, wal).map_err(|e| AwsError::from_ingest(&e))?;
    // Room for the decoded data before decoding it: base64 is 4 characters per 3 bytes,
    // plus a newline per record at most.
    let estimate: usize = records.iter().map(|r| r.data.len() / 4 * 3 + 3 + 1).sum();
    held.take(estimate).map_err(|e| AwsError::from_ingest(&e))?;
    let decoded = decode(records, estimate, state.ingest.batch.max_line_bytes)?;
    if single && let Some(Err(message)) = decoded.outcomes.first() {
        return Err(AwsError::new(Kind::InvalidArgument, message.clone()));
    }
    let accepted = decoded.outcomes.iter().filter(|o| o.is_ok()).count() as u64;
    let failed = decoded.outcomes.len() as u64 - accepted;
    let seq = if decoded.lines > 0 {
        let bytes = decoded.data.len() as u64;
        state.ingest.disk.spend(bytes);
        let request = AppendRequest {
            source: source_name(key),
            range: None,
            data: Bytes::from(decoded.data),
            records: decoded.lines,
            // The memory stays counted until the writer is done with it.
            lease: Some(Box::new(held)),
        };
        let appended = wal
            .append(request)
            .await
            .map_err(|e| AwsError::from_ingest(&wal_error(e, &state.ingest.disk)))?;
        metrics::counter!("tollstream_collector_ingest_records_total", "stream" => stream.clone())
            .increment(u64::from(decoded.lines));
        metrics::counter!("tollstream_collector_ingest_bytes_total", "stream" => stream.clone())
            .increment(bytes);
        match appended {
            Appended::Written { seq, .. } => Some(seq),
            Appended::Duplicate { .. } => None,
        }
    } else {
        None
    };
    metrics::counter!("tollstream_collector_firehose_records_total", "stream" => stream.clone(), "result" => "accepted").increment(accepted);
    metrics::counter!("tollstream_collector_firehose_records_total", "stream" => stream.clone(), "result" => "failed").increment(failed);
    // Record ids lead back to the WAL record (and so to the archive object named by its
    // sequence range); records that held no line name the request instead.
    let batch = seq.map_or_else(|| request_id.to_owned(), |seq| format!("{seq:020}"));
    Ok(decoded
        .outcomes
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| match outcome {
            Ok(()) => ResponseEntry {
                record_id: Some(format!("{stream}.{batch}.{i:03}")),
                error_code: None,
                error_message: None,
            },
            Err(message) => ResponseEntry {
                record_id: None,
                error_code: Some(Kind::InvalidArgument.aws_type()),
                error_message: Some(message),
            },
        })
        .collect())
}

fn check_name(name: &str) -> Result<(), AwsError> {
    if valid_delivery_stream_name(name) {
        return Ok(());
    }
    Err(AwsError::new(
        Kind::Validation,
        format!(
            "1 validation error detected: Value '{name}' at 'deliveryStreamName' failed to \
             satisfy constraint: Member must have length between 1 and 64 and satisfy regular \
             expression pattern: [a-zA-Z0-9_.-]+"
        ),
    ))
}

/// The records as WAL data.
struct Decoded {
    /// `\n`-terminated lines of every accepted record, in order.
    data: Vec<u8>,
    /// Lines in `data`.
    lines: u32,
    /// Per record: accepted, or why not.
    outcomes: Vec<Result<(), String>>,
}

/// Decodes every record into one buffer of lines. A record's last `\n` is optional; one
/// with a line over `max_line_bytes` (newline included) is left out and reported.
///
/// # Errors
/// Data that is not base64 ([`Kind::Serialization`]), records over 1,000 KiB
/// ([`Kind::Validation`], all of them named, as AWS does), more than 4 MiB in all
/// ([`Kind::InvalidArgument`]).
fn decode(
    records: Vec<api::RecordIn>,
    capacity: usize,
    max_line_bytes: u64,
) -> Result<Decoded, AwsError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut data = Vec::with_capacity(capacity);
    let mut outcomes = Vec::with_capacity(records.len());
    let mut oversized = Vec::new();
    let mut total = 0usize;
    let mut lines = 0u32;
    for (i, record) in records.iter().enumerate() {
        let start = data.len();
        engine.decode_vec(&record.data, &mut data).map_err(|e| {
            AwsError::new(
                Kind::Serialization,
                format!("Data of record {i} is not valid base64: {e}"),
            )
        })?;
        let len = data.len() - start;
        total += len;
        if len > api::MAX_RECORD_BYTES {
            oversized.push(format!(
                "Value at 'records.{}.member.data' failed to satisfy constraint: Member must \
                 have length less than or equal to {} (it has {len})",
                i + 1,
                api::MAX_RECORD_BYTES
            ));
            data.truncate(start);
            continue;
        }
        if len > 0 && data.last() != Some(&b'\n') {
            data.push(b'\n');
        }
        let record_data = &data[start..];
        let mut count = 0u32;
        let mut line_start = 0usize;
        let mut too_long = None;
        for nl in memchr::memchr_iter(b'\n', record_data) {
            let line = (nl + 1 - line_start) as u64;
            if line > max_line_bytes {
                too_long = Some(line);
                break;
            }
            line_start = nl + 1;
            count += 1;
        }
        match too_long {
            Some(line) => {
                data.truncate(start);
                outcomes.push(Err(format!(
                    "record {i} has a line of {line} bytes, over this collector's \
                     ingest.max_line_bytes of {max_line_bytes}; nothing of the record was kept"
                )));
            }
            None => {
                lines += count;
                outcomes.push(Ok(()));
            }
        }
    }
    if !oversized.is_empty() {
        return Err(AwsError::new(
            Kind::Validation,
            format!(
                "{} validation error{} detected: {}",
                oversized.len(),
                if oversized.len() == 1 { "" } else { "s" },
                oversized.join("; ")
            ),
        ));
    }
    if total > api::MAX_REQUEST_DATA_BYTES {
        return Err(AwsError::new(
            Kind::InvalidArgument,
            format!("Records size exceeds 4 MiB limit: the request's records hold {total} bytes"),
        ));
    }
    Ok(Decoded {
        data,
        lines,
        outcomes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(data: &[&[u8]]) -> Vec<api::RecordIn> {
        let engine = base64::engine::general_purpose::STANDARD;
        data.iter()
            .map(|d| api::RecordIn {
                data: engine.encode(d),
            })
            .collect()
    }

    #[test]
    fn records_become_lines_with_an_optional_final_newline() {
        let decoded = decode(
            records(&[b"a", b"b\n", b"c\nd", b"e\nf\n", b"", b"\n"]),
            64,
            128,
        )
        .expect("decodes");
        assert_eq!(decoded.data, b"a\nb\nc\nd\ne\nf\n\n");
        assert_eq!(decoded.lines, 7);
        assert!(decoded.outcomes.iter().all(Result::is_ok));
    }

    #[test]
    fn a_record_with_a_line_over_the_limit_fails_alone() {
        let long = vec![b'x'; 200];
        let decoded = decode(records(&[b"a", &long, b"b"]), 512, 128).expect("decodes");
        assert_eq!(decoded.data, b"a\nb\n");
        assert_eq!(decoded.lines, 2);
        assert!(decoded.outcomes[0].is_ok() && decoded.outcomes[2].is_ok());
        let message = decoded.outcomes[1].clone().expect_err("fails");
        assert!(message.contains("ingest.max_line_bytes"), "{message}");
    }

    #[test]
    fn oversized_records_and_bad_base64_refuse_the_request() {
        let big = vec![b'x'; api::MAX_RECORD_BYTES + 1];
        let error = decode(records(&[b"a", &big]), 0, u64::MAX)
            .err()
            .expect("refused");
        assert_eq!(error.kind, Kind::Validation);
        assert!(
            error.message.contains("records.2.member.data"),
            "{}",
            error.message
        );
        let error = decode(
            vec![api::RecordIn {
                data: "not base64!".into(),
            }],
            0,
            128,
        )
        .err()
        .expect("refused");
        assert_eq!(error.kind, Kind::Serialization);
        let quarter = vec![b'x'; 1_000_000];
        let five: Vec<&[u8]> = vec![&quarter; 5];
        let error = decode(records(&five), 0, u64::MAX).err().expect("refused");
        assert_eq!(error.kind, Kind::InvalidArgument);
    }
}
