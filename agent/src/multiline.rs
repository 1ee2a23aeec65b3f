//! Multiline: joins a record's continuation lines (a stack trace, a wrapped message) to the
//! line that starts it, before batching.
//!
//! Input: whole lines as read, and `multiline.start`, a regular expression that matches
//! the first line of every record. Output: records, each one line on the wire: the line
//! breaks inside a record become the byte 0x1E (ASCII "record separator"), one byte for
//! one, so a record still covers exactly its bytes in the file and byte ranges keep working
//! for duplicate detection. The collector stores the record with those bytes; `tr '\036'
//! '\n'` restores the breaks.
//!
//! The last record of a file cannot be known complete until the next one starts: it is
//! held (read, not yet sent) until a start line arrives, `flush_after` passes without a
//! new line, it reaches `max_bytes`, or the file ends (rotation, truncation).

use regex::bytes::Regex;
use tokio::time::Instant;

/// The byte that stands for a line break inside a record.
pub const INNER_BREAK: u8 = 0x1e;

/// Joins continuation lines; one per tailer.
#[derive(Debug)]
pub struct Joiner {
    start: Regex,
    max_bytes: usize,
    /// The record being gathered, its breaks already replaced, ending in `\n`.
    open: Vec<u8>,
    /// When its last line was read.
    last_line: Option<Instant>,
}

/// Records completed by [`Joiner::push`] or a flush: bytes (each record ends in `\n`) and
/// how many.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Complete {
    /// The records.
    pub data: Vec<u8>,
    /// How many.
    pub records: usize,
}

impl Joiner {
    /// A joiner for records whose first line matches `start`, holding at most `max_bytes`.
    pub fn new(start: Regex, max_bytes: usize) -> Self {
        Self {
            start,
            max_bytes,
            open: Vec::new(),
            last_line: None,
        }
    }

    /// Bytes read but held in the open record.
    pub fn held(&self) -> u64 {
        self.open.len() as u64
    }

    /// When the open record is due to be sent without a next start line.
    pub fn deadline(&self, flush_after: std::time::Duration) -> Option<Instant> {
        self.last_line.map(|t| t + flush_after)
    }

    /// Takes whole lines read after the open record; returns the records they completed.
    pub fn push(&mut self, lines: &[u8], now: Instant) -> Complete {
        let mut done = Complete::default();
        let mut from = 0;
        for nl in memchr::memchr_iter(b'\n', lines) {
            let line = &lines[from..=nl];
            from = nl + 1;
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            if self.open.is_empty() {
                self.open.extend_from_slice(line);
            } else if self.start.is_match(body) || self.open.len() + line.len() > self.max_bytes {
                self.close_into(&mut done);
                self.open.extend_from_slice(line);
            } else {
                // A continuation: the open record's final break becomes an inner one.
                if let Some(last) = self.open.last_mut() {
                    *last = INNER_BREAK;
                }
                self.open.extend_from_slice(line);
            }
        }
        if from > 0 {
            self.last_line = Some(now);
        }
        done
    }

    /// Sends the open record as it is (quiet for `flush_after`, or the file ended).
    pub fn flush(&mut self) -> Complete {
        let mut done = Complete::default();
        if !self.open.is_empty() {
            self.close_into(&mut done);
        }
        done
    }

    fn close_into(&mut self, done: &mut Complete) {
        done.data.append(&mut self.open);
        done.records += 1;
        self.last_line = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joiner() -> Joiner {
        Joiner::new(Regex::new(r"^\d{4}-").expect("regex"), 1 << 20)
    }

    #[tokio::test(start_paused = true)]
    async fn continuation_lines_join_the_line_that_starts_their_record() {
        let mut j = joiner();
        let now = Instant::now();
        let done = j.push(b"2026-01 a\n  at x\n  at y\n2026-02 b\n", now);
        assert_eq!(
            done,
            Complete {
                data: b"2026-01 a\x1e  at x\x1e  at y\n".to_vec(),
                records: 1
            }
        );
        assert_eq!(j.held(), 10, "the last record waits for the next start");
        let done = j.push(b"  at z\n2026-03 c\n", now);
        assert_eq!(done.data, b"2026-02 b\x1e  at z\n");
        assert_eq!(j.flush().data, b"2026-03 c\n");
        assert_eq!(j.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_keeps_its_length_so_byte_ranges_still_hold() {
        let mut j = joiner();
        let input = b"2026-01 a\r\n  more\r\n2026-02 b\n";
        let mut out = j.push(input, Instant::now()).data;
        out.extend(j.flush().data);
        assert_eq!(out.len(), input.len());
        assert_eq!(out, b"2026-01 a\r\x1e  more\r\n2026-02 b\n");
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_record_is_due_flush_after_its_last_line() {
        let mut j = joiner();
        let now = Instant::now();
        assert_eq!(j.deadline(std::time::Duration::from_secs(1)), None);
        j.push(b"2026-01 a\n", now);
        assert_eq!(
            j.deadline(std::time::Duration::from_secs(1)),
            Some(now + std::time::Duration::from_secs(1))
        );
    }
}
