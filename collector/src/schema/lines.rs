//! A line → its fields, by the stream's format: CSV (RFC 4180 quoting) or a JSON object.

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::values::{missing, parse_field, shown};
use super::{Column, Value};

/// Splits a CSV line into one value per column. A line without quotes (the common case)
/// is split in place; a quoted one goes through the `csv` crate.
pub(super) fn parse_csv(
    text: &str,
    delimiter: u8,
    columns: &[Column],
    out: &mut Vec<Value>,
) -> Result<(), String> {
    let wrong_count = |found: usize| {
        format!(
            "expected {} {}-separated fields, found {found}",
            columns.len(),
            delimiter_name(delimiter)
        )
    };
    if memchr::memchr(b'"', text.as_bytes()).is_none() {
        let fields = memchr::memchr_iter(delimiter, text.as_bytes()).count() + 1;
        if fields != columns.len() {
            return Err(wrong_count(fields));
        }
        for (raw, column) in text.split(delimiter as char).zip(columns) {
            out.push(parse_field(raw, column)?);
        }
        return Ok(());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Err(wrong_count(0)),
        Err(error) => return Err(format!("line is not valid CSV: {error}")),
    }
    if record.len() != columns.len() {
        return Err(wrong_count(record.len()));
    }
    // A quote left open swallows the rest of the line; csv reads that as one field, so
    // the count above catches most of it. Anything after the record is a second line.
    if reader
        .read_record(&mut csv::StringRecord::new())
        .unwrap_or(true)
    {
        return Err("line holds more than one CSV record (a line break inside quotes?)".into());
    }
    for (raw, column) in record.iter().zip(columns) {
        out.push(parse_field(raw, column)?);
    }
    Ok(())
}

fn delimiter_name(delimiter: u8) -> String {
    match delimiter {
        b',' => "comma".into(),
        b'\t' => "tab".into(),
        b';' => "semicolon".into(),
        b'|' => "pipe".into(),
        other => format!("{:?}", other as char),
    }
}

/// Reads a JSON object line into one value per column, by key. Numbers keep their exact
/// text (a decimal never passes through floating point); strings are parsed like CSV
/// fields; `true`/`false` fill boolean columns.
pub(super) fn parse_json(
    text: &str,
    columns: &[Column],
    out: &mut Vec<Value>,
) -> Result<(), String> {
    let object: HashMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            "line is not a JSON object".to_string()
        } else {
            format!("line is not valid JSON: {e}")
        }
    })?;
    for column in columns {
        let value = match object.get(&column.field).map(|raw| raw.get()) {
            None => missing(column, "is missing")?,
            Some("null") => missing(column, "is null")?,
            Some(raw) if raw.starts_with('"') => {
                let text: String = serde_json::from_str(raw).map_err(|e| {
                    format!("{}: {} is not a JSON string: {e}", column.field, shown(raw))
                })?;
                parse_field(&text, column)?
            }
            Some(raw) if raw.starts_with(['{', '[']) => {
                return Err(format!(
                    "{}: {} is not a single value",
                    column.field,
                    shown(raw)
                ));
            }
            Some(raw) => parse_field(raw, column)?,
        };
        out.push(value);
    }
    Ok(())
}
