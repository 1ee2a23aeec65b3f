//! One field's text → a typed [`Value`], or a reason.

use jiff::Timestamp;

use super::{Column, ColumnType, Value};

/// `raw` shown in a reason: quoted, and cut after 64 bytes.
pub(super) fn shown(raw: &str) -> String {
    if raw.len() > 64 {
        format!("{:?}…", &raw[..raw.floor_char_boundary(64)])
    } else {
        format!("{raw:?}")
    }
}

/// The value of `column` when the input has none (an empty CSV field, a missing or `null`
/// JSON value).
pub(super) fn missing(column: &Column, what: &str) -> Result<Value, String> {
    if column.optional {
        Ok(Value::Null)
    } else {
        Err(format!("{}: {what}", column.field))
    }
}

/// Parses `raw` as `column`'s type; an empty field of an optional column is NULL.
pub(super) fn parse_field(raw: &str, column: &Column) -> Result<Value, String> {
    if raw.is_empty() {
        return missing(column, "is empty");
    }
    parse_value(raw, &column.ty).map_err(|why| format!("{}: {why}", column.field))
}

pub(crate) fn parse_value(raw: &str, ty: &ColumnType) -> Result<Value, String> {
    match ty {
        // PostgreSQL text cannot hold NUL; both backends refuse it alike.
        ColumnType::Text if raw.contains('\0') => {
            Err(format!("{} contains a NUL character", shown(raw)))
        }
        ColumnType::Text => Ok(Value::Text(raw.to_owned())),
        ColumnType::Uuid => uuid::Uuid::try_parse(raw)
            .map(|u| Value::Text(u.hyphenated().to_string()))
            .map_err(|_| format!("{} is not a UUID", shown(raw))),
        ColumnType::Integer { min, max } => match raw.parse::<i64>() {
            Ok(v) if (*min..=*max).contains(&v) => Ok(Value::Integer(v)),
            Ok(v) => Err(format!("{v} is outside {min}..={max}")),
            Err(_) => Err(format!("{} is not an integer", shown(raw))),
        },
        ColumnType::Decimal { scale } => {
            parse_decimal(raw, *scale)
                .map(Value::Integer)
                .ok_or_else(|| {
                    format!(
                        "{} is not a decimal number with at most {scale} places",
                        shown(raw)
                    )
                })
        }
        ColumnType::Timestamp => {
            let ts = raw.parse::<Timestamp>().map_err(|_| {
                format!("{} is not an RFC 3339 timestamp with an offset", shown(raw))
            })?;
            // Both warehouses hold years 1 to 9999 in UTC (PostgreSQL refuses year 0).
            const YEAR_1: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
            const YEAR_10000: i64 = 253_402_300_800; // 10000-01-01T00:00:00Z
            if !(YEAR_1..YEAR_10000).contains(&ts.as_second()) {
                return Err(format!(
                    "{} is outside years 1 to 9999 (UTC), which the warehouse can hold",
                    shown(raw)
                ));
            }
            Ok(Value::Timestamp(ts))
        }
        ColumnType::Boolean => parse_bool(raw)
            .map(Value::Boolean)
            .ok_or_else(|| format!("{} is not a boolean (true or false)", shown(raw))),
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["true", "t", "yes", "1"];
    const FALSE: [&str; 4] = ["false", "f", "no", "0"];
    if TRUE.iter().any(|t| raw.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|f| raw.eq_ignore_ascii_case(f)) {
        Some(false)
    } else {
        None
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
