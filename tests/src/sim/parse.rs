//! The simulator's strict reading of a toll line, for checks and recounts in tests.
//!
//! This is deliberately independent of the collector's parser: the e2e tests compare what the
//! collector accepted and rejected with what this says, so the two keep each other honest.

use jiff::Timestamp;
use uuid::Uuid;

use super::tariff::parse_cents;
use super::transaction::Transaction;

/// Why a line is not a valid toll transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The bytes are not UTF-8.
    #[error("line is not valid UTF-8")]
    NotUtf8,
    /// Not exactly eight comma-separated fields.
    #[error("expected 8 fields, found {found}")]
    FieldCount {
        /// How many fields the line has.
        found: usize,
    },
    /// `event_time` is not RFC 3339 with an offset.
    #[error("event_time {0:?} is not an RFC 3339 timestamp")]
    EventTime(String),
    /// `transaction_id` is not a UUID.
    #[error("transaction_id {0:?} is not a UUID")]
    TransactionId(String),
    /// A text field (`booth_id`, `customer_id`, `transponder_id`) is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// `lane` is not an integer in `1..=255`.
    #[error("lane {0:?} is not an integer in 1..=255")]
    Lane(String),
    /// `vehicle_class` is not an integer in `1..=9`.
    #[error("vehicle_class {0:?} is not an integer in 1..=9")]
    VehicleClass(String),
    /// `amount` is not a decimal with at most two places.
    #[error("amount {0:?} is not a decimal with at most 2 places")]
    Amount(String),
}

/// Parses one line (with or without its trailing `\n`) strictly.
///
/// # Errors
///
/// The first [`LineError`] found, checking encoding, field count, then fields left to right.
pub fn parse_line(line: &[u8]) -> Result<Transaction, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    let fields: Vec<&str> = text.split(',').collect();
    let [time, id, booth, lane, customer, transponder, class, amount] = fields[..] else {
        return Err(LineError::FieldCount {
            found: fields.len(),
        });
    };
    // jiff's Timestamp parser also accepts RFC 9557 suffixes like `[America/Sao_Paulo]`;
    // the toll format has none, so a bracket is rejected here first.
    let event_time: Timestamp = time
        .parse()
        .ok()
        .filter(|_| !time.contains('['))
        .ok_or_else(|| LineError::EventTime(time.to_owned()))?;
    let transaction_id: Uuid = id
        .parse()
        .map_err(|_| LineError::TransactionId(id.to_owned()))?;
    for (name, value) in [("booth_id", booth), ("customer_id", customer)] {
        if value.is_empty() {
            return Err(LineError::Empty(name));
        }
    }
    if transponder.is_empty() {
        return Err(LineError::Empty("transponder_id"));
    }
    let lane = small_int(lane, 1, 255).ok_or_else(|| LineError::Lane(lane.to_owned()))?;
    let vehicle_class =
        small_int(class, 1, 9).ok_or_else(|| LineError::VehicleClass(class.to_owned()))?;
    let amount_cents = parse_cents(amount).ok_or_else(|| LineError::Amount(amount.to_owned()))?;
    Ok(Transaction {
        event_time,
        transaction_id,
        booth_id: booth.to_owned(),
        lane,
        customer_id: customer.to_owned(),
        transponder_id: transponder.to_owned(),
        vehicle_class,
        amount_cents,
    })
}

/// Plain decimal digits within `lo..=hi`.
fn small_int(s: &str, lo: u8, hi: u8) -> Option<u8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| (lo..=hi).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,\
                        PLZ-017,3,C0001234,TX-0088231,2,12.50";

    #[test]
    fn parses_the_design_example() {
        let tx = parse_line(format!("{LINE}\n").as_bytes()).unwrap();
        assert_eq!(tx.event_time.as_millisecond(), 1_795_626_207_512);
        assert_eq!(tx.booth_id, "PLZ-017");
        assert_eq!((tx.lane, tx.vehicle_class, tx.amount_cents), (3, 2, 1250));
        assert_eq!(parse_line(LINE.as_bytes()).unwrap(), tx);
    }

    #[test]
    fn rejects_each_broken_field() {
        let with = |i: usize, v: &str| {
            let mut f: Vec<&str> = LINE.split(',').collect();
            f[i] = v;
            parse_line(f.join(",").as_bytes())
        };
        assert!(matches!(
            with(0, "25/11/2026 14:03:27"),
            Err(LineError::EventTime(_))
        ));
        assert!(matches!(
            with(0, "2026-11-25T14:03:27-03:00[America/Sao_Paulo]"),
            Err(LineError::EventTime(_))
        ));
        assert!(matches!(with(1, "nope"), Err(LineError::TransactionId(_))));
        assert_eq!(with(2, ""), Err(LineError::Empty("booth_id")));
        assert!(matches!(with(3, "0"), Err(LineError::Lane(_))));
        assert!(matches!(with(6, "10"), Err(LineError::VehicleClass(_))));
        assert!(matches!(with(7, "R$12.50"), Err(LineError::Amount(_))));
        assert_eq!(parse_line(b"a,b"), Err(LineError::FieldCount { found: 2 }));
        assert_eq!(parse_line(b"\xFF,b"), Err(LineError::NotUtf8));
    }
}
