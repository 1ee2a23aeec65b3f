//! Stream schemas: how a line becomes a typed row, or a rejection with a reason.
//!
//! A schema is data — columns with types and a unique key — so streams other than the
//! toll stream are configuration, not code. [`Schema::toll`] is the shipped default.

use jiff::Timestamp;

/// The type of one column and the checks it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// Non-empty UTF-8 text.
    Text,
    /// A UUID, stored as canonical lowercase text.
    Uuid,
    /// A whole number within bounds.
    Integer {
        /// Smallest value accepted.
        min: i64,
        /// Largest value accepted.
        max: i64,
    },
    /// A decimal with at most `scale` places, stored as an integer scaled by 10^scale.
    Decimal {
        /// Digits after the point.
        scale: u32,
    },
    /// An RFC 3339 timestamp with an offset, stored as UTC with milliseconds.
    Timestamp,
}

/// One column of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name of the field in the input (used in rejection reasons).
    pub field: &'static str,
    /// Name of the warehouse column (e.g. `amount_cents` for a scaled decimal).
    pub column: &'static str,
    /// Type and checks.
    pub ty: ColumnType,
}

/// A parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text or UUID.
    Text(String),
    /// Integer or scaled decimal.
    Integer(i64),
    /// A point in time.
    Timestamp(Timestamp),
}

/// Columns, in input order, and the natural key.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The columns.
    pub columns: Vec<Column>,
    /// The column whose value is unique across the stream.
    pub unique_key: &'static str,
}

impl Schema {
    /// The toll transaction stream of DESIGN.md.
    pub fn toll() -> Self {
        use ColumnType::*;
        let col = |field, column, ty| Column { field, column, ty };
        Self {
            columns: vec![
                col("event_time", "event_time", Timestamp),
                col("transaction_id", "transaction_id", Uuid),
                col("booth_id", "booth_id", Text),
                col("lane", "lane", Integer { min: 0, max: 255 }),
                col("customer_id", "customer_id", Text),
                col("transponder_id", "transponder_id", Text),
                col("vehicle_class", "vehicle_class", Integer { min: 1, max: 9 }),
                col("amount", "amount_cents", Decimal { scale: 2 }),
            ],
            unique_key: "transaction_id",
        }
    }

    /// Parses one line (without its `\n`; a trailing `\r` is ignored) into values.
    ///
    /// # Errors
    /// A reason a person can act on, naming the field and the offending text.
    pub fn parse(&self, line: &[u8], out: &mut Vec<Value>) -> Result<(), String> {
        out.clear();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|e| {
            format!(
                "line is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            )
        })?;
        let fields = text.split(',').count();
        if fields != self.columns.len() {
            return Err(format!(
                "expected {} comma-separated fields, found {fields}",
                self.columns.len()
            ));
        }
        for (raw, column) in text.split(',').zip(&self.columns) {
            out.push(
                parse_value(raw, &column.ty).map_err(|why| format!("{}: {why}", column.field))?,
            );
        }
        Ok(())
    }
}

fn parse_value(raw: &str, ty: &ColumnType) -> Result<Value, String> {
    let shown = || {
        if raw.len() > 64 {
            format!("{:?}…", &raw[..raw.floor_char_boundary(64)])
        } else {
            format!("{raw:?}")
        }
    };
    match ty {
        ColumnType::Text if raw.is_empty() => Err("is empty".into()),
        // PostgreSQL text cannot hold NUL; both backends refuse it alike.
        ColumnType::Text if raw.contains('\0') => {
            Err(format!("{} contains a NUL character", shown()))
        }
        ColumnType::Text => Ok(Value::Text(raw.to_owned())),
        ColumnType::Uuid => uuid::Uuid::try_parse(raw)
            .map(|u| Value::Text(u.hyphenated().to_string()))
            .map_err(|_| format!("{} is not a UUID", shown())),
        ColumnType::Integer { min, max } => match raw.parse::<i64>() {
            Ok(v) if (*min..=*max).contains(&v) => Ok(Value::Integer(v)),
            Ok(v) => Err(format!("{v} is outside {min}..={max}")),
            Err(_) => Err(format!("{} is not an integer", shown())),
        },
        ColumnType::Decimal { scale } => {
            parse_decimal(raw, *scale)
                .map(Value::Integer)
                .ok_or_else(|| {
                    format!(
                        "{} is not a decimal number with at most {scale} places",
                        shown()
                    )
                })
        }
        ColumnType::Timestamp => raw
            .parse::<Timestamp>()
            .map(Value::Timestamp)
            .map_err(|_| format!("{} is not an RFC 3339 timestamp with an offset", shown())),
    }
}

/// `"12.5"` with scale 2 → `1250`; never goes through floating point.
pub fn parse_decimal(raw: &str, scale: u32) -> Option<i64> {
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !all_digits(whole)
        || !all_digits(fraction)
        || fraction.len() > scale as usize
    {
        return None;
    }
    if digits.ends_with('.') {
        return None;
    }
    let factor = 10i64.checked_pow(scale)?;
    let mut value = whole.parse::<i64>().ok()?.checked_mul(factor)?;
    if !fraction.is_empty() {
        let padded = fraction.parse::<i64>().ok()? * 10i64.pow(scale - fraction.len() as u32);
        value = value.checked_add(padded)?;
    }
    Some(if negative { -value } else { value })
}

/// Formats a timestamp as the warehouse stores it: UTC, milliseconds, `Z`.
pub fn format_timestamp(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,PLZ-017,3,C0001234,TX-0088231,2,12.50";

    #[test]
    fn toll_line_parses_into_typed_values() {
        let mut row = Vec::new();
        Schema::toll().parse(GOOD, &mut row).expect("valid");
        let Value::Timestamp(ts) = row[0] else {
            panic!("timestamp")
        };
        assert_eq!(format_timestamp(ts), "2026-11-25T17:03:27.512Z");
        assert_eq!(row[3], Value::Integer(3));
        assert_eq!(row[7], Value::Integer(1250));
    }

    #[test]
    fn each_kind_of_bad_line_gets_a_reason_naming_the_field() {
        let schema = Schema::toll();
        let mut row = Vec::new();
        let reason = |line: &[u8]| schema.parse(line, &mut Vec::new()).expect_err("rejected");
        assert!(reason(b"a,b,c").contains("expected 8"));
        assert!(
            reason(&GOOD.replace_prefix("2026-11-25T", "2026-13-25T")).starts_with("event_time")
        );
        let bad_amount = [&GOOD[..GOOD.len() - 5], b"12,5x"].concat();
        assert!(
            reason(&bad_amount).contains("expected 8") || reason(&bad_amount).starts_with("amount")
        );
        let bad_amount = [&GOOD[..GOOD.len() - 5], b"1x.50"].concat();
        assert!(
            reason(&bad_amount).starts_with("amount"),
            "{}",
            reason(&bad_amount)
        );
        let with_nul = String::from_utf8_lossy(GOOD).replace("PLZ-017", "PLZ\0-17");
        assert!(reason(with_nul.as_bytes()).starts_with("booth_id: \"PLZ\\0-17\" contains a NUL"));
        let mut invalid = GOOD.to_vec();
        invalid[60] = 0xff;
        assert!(reason(&invalid).contains("UTF-8"));
        schema.parse(GOOD, &mut row).expect("still fine");
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("12.50", 2), Some(1250));
        assert_eq!(parse_decimal("12.5", 2), Some(1250));
        assert_eq!(parse_decimal("7", 2), Some(700));
        assert_eq!(parse_decimal("-0.05", 2), Some(-5));
        for bad in ["", ".5", "1.", "1.234", "1e3", "abc", "1.-5"] {
            assert_eq!(parse_decimal(bad, 2), None, "{bad}");
        }
    }

    trait ReplacePrefix {
        fn replace_prefix(&self, from: &str, to: &str) -> Vec<u8>;
    }
    impl ReplacePrefix for &[u8] {
        fn replace_prefix(&self, from: &str, to: &str) -> Vec<u8> {
            let text = std::str::from_utf8(self).expect("utf8");
            text.replacen(from, to, 1).into_bytes()
        }
    }
}
