//! Framing: a batch is whole `\n`-terminated lines that agree with its byte range and stay
//! within the per-batch limits.

use bytes::Bytes;

use super::RANGE_HEADER;
use super::error::{ApiError, Reason};

/// The longest original line a cut line may stand for (64 GiB): an agent cuts lines it
/// cannot ship whole, but no real log line is longer, and a bogus span must not mark a
/// whole source delivered.
const MAX_CUT_LINE_SPAN: u64 = 64 << 30;

/// Per-batch limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most lines.
    pub max_records: u32,
    /// Longest line, newline included.
    pub max_line_bytes: u64,
}

/// Checks that the records are whole lines, agree with the range and are within `limits`;
/// returns the data (a final newline added to an unranged body) and its line count.
///
/// # Errors
/// 400 for framing that does not agree, 413 for too many or too long lines.
pub fn check(
    data: Bytes,
    range: Option<(u64, u64)>,
    limits: &BatchLimits,
) -> Result<(Bytes, u32), ApiError> {
    let bad = |m: String| ApiError::new(Reason::BadRequest, m);
    let data = match range {
        Some((start, end)) => {
            // One line the agent cut to its max_line_bytes stands for more bytes than it
            // holds; alone in its batch, it can only ever be a duplicate as a whole.
            let one_cut_line = end - start > data.len() as u64
                && end - start <= MAX_CUT_LINE_SPAN
                && memchr::memchr(b'\n', &data).is_some_and(|nl| nl + 1 == data.len());
            if end - start != data.len() as u64 && !one_cut_line {
                return Err(bad(format!(
                    "{RANGE_HEADER} {start}-{end} spans {} bytes but the body has {}",
                    end - start,
                    data.len()
                )));
            }
            if !data.is_empty() && !data.ends_with(b"\n") {
                return Err(bad(
                    "a ranged batch must end with a newline: send whole lines only".into(),
                ));
            }
            data
        }
        None if data.is_empty() || data.ends_with(b"\n") => data,
        // Without a range nothing depends on byte counts, so a missing final newline
        // (common with `curl --data-binary @file`) is added rather than refused.
        None => Bytes::from([&data[..], b"\n"].concat()),
    };
    let mut records: u32 = 0;
    let mut line_start = 0usize;
    for nl in memchr::memchr_iter(b'\n', &data) {
        let len = (nl + 1 - line_start) as u64;
        if len > limits.max_line_bytes {
            return Err(ApiError::new(
                Reason::TooLarge,
                format!(
                    "line {} of the batch is {len} bytes, over this collector's \
                     ingest.max_line_bytes of {}; lower the agent's max_line_bytes or raise it",
                    records + 1,
                    limits.max_line_bytes
                ),
            ));
        }
        records += 1;
        if records > limits.max_records {
            return Err(ApiError::new(
                Reason::TooLarge,
                format!(
                    "the batch has more than {} lines (ingest.max_records_per_batch); send \
                     smaller batches",
                    limits.max_records
                ),
            ));
        }
        line_start = nl + 1;
    }
    Ok((data, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_records: 3,
        max_line_bytes: 8,
    };

    #[test]
    fn lines_are_counted_and_limits_hold() {
        let (data, n) = check(Bytes::from_static(b"a\nbb\n"), Some((0, 5)), &LIMITS).expect("ok");
        assert_eq!((&data[..], n), (&b"a\nbb\n"[..], 2));
        let (data, n) = check(Bytes::from_static(b"a\nb"), None, &LIMITS).expect("ok");
        assert_eq!((&data[..], n), (&b"a\nb\n"[..], 2));
        let long = check(Bytes::from_static(b"a\n123456789\n"), None, &LIMITS).expect_err("long");
        assert_eq!(long.reason(), Reason::TooLarge);
        assert!(long.message().contains("line 2"), "{}", long.message());
        let many = check(Bytes::from_static(b"a\nb\nc\nd\n"), None, &LIMITS).expect_err("many");
        assert_eq!(many.reason(), Reason::TooLarge);
        let torn = check(Bytes::from_static(b"a\nb"), Some((0, 3)), &LIMITS).expect_err("torn");
        assert_eq!(torn.reason(), Reason::BadRequest);
        let wrong = check(Bytes::from_static(b"a\nb\n"), Some((0, 9)), &LIMITS).expect_err("range");
        assert!(
            wrong.message().contains("spans 9 bytes"),
            "{}",
            wrong.message()
        );
    }
}
