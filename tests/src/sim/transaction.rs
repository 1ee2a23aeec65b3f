//! One toll transaction, typed, and how it becomes a line of the toll stream.
//!
//! The generator keeps each event compact (numbers, no strings) and writes it straight into
//! the output buffer; [`Transaction`] is the typed, string-carrying form handed to tests. Both
//! go through [`push_line`], so they cannot disagree on the format.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use uuid::Uuid;

use super::localtime::LocalClock;
use super::malformed::MalformedKind;
use super::population::{customer_id, push_customer_id, push_transponder_id, transponder_id};
use super::tariff::{format_cents, push_uint};

/// A valid toll transaction with typed fields; amounts in integer cents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// When the vehicle passed (millisecond precision).
    pub event_time: Timestamp,
    /// Unique id, UUID v4 shaped, deterministic for the seed.
    pub transaction_id: Uuid,
    /// Booth id, e.g. `PLZ-017`.
    pub booth_id: String,
    /// Lane at the booth, `1..=lanes_per_booth`.
    pub lane: u8,
    /// Customer id, e.g. `C0001234`.
    pub customer_id: String,
    /// Transponder id, e.g. `TX-0088231`.
    pub transponder_id: String,
    /// Vehicle class `1..=9`.
    pub vehicle_class: u8,
    /// Amount charged, in cents of BRL.
    pub amount_cents: i64,
}

impl Transaction {
    /// The line for this transaction with the offset of `tz`, without the trailing `\n`.
    pub fn to_line(&self, tz: &TimeZone) -> String {
        let mut out = Vec::with_capacity(128);
        let mut clock = LocalClock::new(tz.clone());
        push_line(
            &mut out,
            &mut clock,
            self.event_time.as_millisecond(),
            &self.transaction_id,
            &self.booth_id,
            self.lane,
            Id::Text(&self.customer_id),
            Id::Text(&self.transponder_id),
            self.vehicle_class,
            self.amount_cents,
        );
        out.pop();
        // Every piece pushed is ASCII or comes from a `String`, so this cannot fail; the
        // lossy fallback only keeps the function total.
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

/// What a generated line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// A well-formed transaction.
    Valid(Transaction),
    /// A deliberately broken line; the collector must reject it.
    Malformed(MalformedKind),
}

/// A generated line together with what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The full line, including the trailing `\n`.
    pub bytes: Vec<u8>,
    /// Zero-based booth index (`PLZ-001` is 0); the writer routes booth `i` to file `i % n`.
    /// Malformed lines keep the booth of the transaction they were made from.
    pub booth: usize,
    /// Valid transaction or malformed line.
    pub kind: RecordKind,
}

impl Record {
    /// The transaction, if the line is valid.
    pub fn transaction(&self) -> Option<&Transaction> {
        match &self.kind {
            RecordKind::Valid(tx) => Some(tx),
            RecordKind::Malformed(_) => None,
        }
    }
}

/// What [`Simulator::next_into`](super::Simulator::next_into) appended, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineMeta {
    /// Zero-based booth index of the line.
    pub booth: usize,
    /// Valid (with its amount) or malformed (with its kind).
    pub kind: LineKind,
}

/// The kind of a line in [`LineMeta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A valid transaction charging `amount_cents`.
    Valid {
        /// Amount in cents.
        amount_cents: i64,
    },
    /// A malformed line.
    Malformed(MalformedKind),
}

/// A generated passage, in the compact form the generator works with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub(crate) time_ms: i64,
    pub(crate) id: Uuid,
    pub(crate) booth: usize,
    pub(crate) lane: u8,
    pub(crate) customer: u32,
    pub(crate) transponder: u32,
    pub(crate) class: u8,
    pub(crate) amount_cents: i64,
}

impl Event {
    /// Appends the line, `\n` included.
    pub(crate) fn render(&self, booth_id: &str, clock: &mut LocalClock, out: &mut Vec<u8>) {
        push_line(
            out,
            clock,
            self.time_ms,
            &self.id,
            booth_id,
            self.lane,
            Id::Customer(self.customer),
            Id::Transponder(self.transponder),
            self.class,
            self.amount_cents,
        );
    }

    /// The typed form, for [`Record`]s.
    pub(crate) fn to_transaction(self, booth_id: &str) -> Transaction {
        Transaction {
            // The generator never emits times outside jiff's range (see `Simulator`).
            event_time: Timestamp::from_millisecond(self.time_ms).unwrap_or(Timestamp::MAX),
            transaction_id: self.id,
            booth_id: booth_id.to_owned(),
            lane: self.lane,
            customer_id: customer_id(self.customer),
            transponder_id: transponder_id(self.transponder),
            vehicle_class: self.class,
            amount_cents: self.amount_cents,
        }
    }
}

/// A customer or transponder id, as a number (generator) or as text (typed transaction).
enum Id<'a> {
    Customer(u32),
    Transponder(u32),
    Text(&'a str),
}

/// Appends one line in the toll stream format, `\n` included.
#[allow(clippy::too_many_arguments)] // one argument per column reads better than a struct here
fn push_line(
    out: &mut Vec<u8>,
    clock: &mut LocalClock,
    time_ms: i64,
    id: &Uuid,
    booth_id: &str,
    lane: u8,
    customer: Id<'_>,
    transponder: Id<'_>,
    class: u8,
    amount_cents: i64,
) {
    clock.write_rfc3339(time_ms, out);
    out.push(b',');
    let mut uuid_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(id.hyphenated().encode_lower(&mut uuid_text).as_bytes());
    out.push(b',');
    out.extend_from_slice(booth_id.as_bytes());
    out.push(b',');
    push_uint(out, u64::from(lane));
    for field in [customer, transponder] {
        out.push(b',');
        match field {
            Id::Customer(n) => push_customer_id(out, n),
            Id::Transponder(n) => push_transponder_id(out, n),
            Id::Text(s) => out.extend_from_slice(s.as_bytes()),
        }
    }
    out.push(b',');
    push_uint(out, u64::from(class));
    out.push(b',');
    format_cents(amount_cents, out);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_design_example() {
        let tz = TimeZone::get("America/Sao_Paulo").unwrap();
        let tx = Transaction {
            event_time: "2026-11-25T14:03:27.512-03:00".parse().unwrap(),
            transaction_id: "0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10".parse().unwrap(),
            booth_id: "PLZ-017".into(),
            lane: 3,
            customer_id: "C0001234".into(),
            transponder_id: "TX-0088231".into(),
            vehicle_class: 2,
            amount_cents: 1250,
        };
        let line = tx.to_line(&tz);
        assert_eq!(
            line,
            "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,PLZ-017,3,\
             C0001234,TX-0088231,2,12.50"
        );

        let event = Event {
            time_ms: tx.event_time.as_millisecond(),
            id: tx.transaction_id,
            booth: 16,
            lane: 3,
            customer: 1234,
            transponder: 88_231,
            class: 2,
            amount_cents: 1250,
        };
        let mut out = Vec::new();
        event.render("PLZ-017", &mut LocalClock::new(tz), &mut out);
        assert_eq!(out, format!("{line}\n").into_bytes());
        assert_eq!(event.to_transaction("PLZ-017"), tx);
    }
}
