//! Customer ids and amounts: checking, parsing and formatting, and the scale a
//! configuration implies.

use crate::config::{Config, ThresholdConfig};
use crate::schema::{ColumnType, parse_decimal};

use super::{DEFAULT_SCALE, MAX_CUSTOMER_ID_CHARS, MAX_LIMIT_UNITS};

/// Checks a customer id: 1–128 characters, no control characters, no leading or trailing
/// white space.
///
/// # Errors
/// What is wrong, for a message.
pub fn validate_customer_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the customer id is empty".into());
    }
    let shown = shorten(id);
    if id.chars().count() > MAX_CUSTOMER_ID_CHARS {
        return Err(format!(
            "customer id {shown} is longer than {MAX_CUSTOMER_ID_CHARS} characters"
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("customer id {shown} contains a control character"));
    }
    if id.trim() != id {
        return Err(format!(
            "customer id {shown} starts or ends with white space"
        ));
    }
    Ok(())
}

/// Parses a limit given as exact decimal text ("150", "150.5", "150.00") into the amount
/// scaled by 10^`scale`.
///
/// # Errors
/// Why the text is not a limit (negative, not a number, too many decimal places, over
/// [`MAX_LIMIT_UNITS`]), saying what is expected.
pub fn parse_limit(raw: &str, scale: u32) -> Result<i64, String> {
    let text = raw.trim();
    let example = example_amount(scale);
    if text.is_empty() {
        return Err(format!(
            "the limit is empty; expected an amount like {example}"
        ));
    }
    if text.len() > 32 {
        return Err(format!(
            "{} is not an amount; expected at most {} digits, e.g. {example}",
            shorten(text),
            10 + scale
        ));
    }
    if text.starts_with('-') {
        return Err(format!("{text} is negative; a limit is 0 or more"));
    }
    let whole = text.split_once('.').map_or(text, |(w, _)| w);
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((w, f)) = text.split_once(',')
        && all_digits(w)
        && all_digits(f)
    {
        return Err(format!(
            "{text:?} uses a comma; write the decimal point as '.', e.g. {example}"
        ));
    }
    if let Some((_, fraction)) = text.split_once('.')
        && all_digits(whole)
        && all_digits(fraction)
        && fraction.len() > scale as usize
    {
        return Err(format!(
            "{text} has {} decimal places; at most {scale} are allowed, e.g. {example}",
            fraction.len()
        ));
    }
    let too_big = format!(
        "{text} is larger than the largest accepted limit, {}",
        format_amount(max_scaled(scale), scale)
    );
    if all_digits(whole) && whole.trim_start_matches('0').len() > 10 {
        return Err(too_big);
    }
    let value = parse_decimal(text, scale).ok_or_else(|| {
        format!(
            "{} is not an amount; expected digits with an optional '.' and at most {scale} \
             decimal places, e.g. {example}",
            shorten(text)
        )
    })?;
    if value > max_scaled(scale) {
        return Err(too_big);
    }
    Ok(value)
}

pub(super) fn max_scaled(scale: u32) -> i64 {
    10i64
        .checked_pow(scale)
        .and_then(|f| f.checked_mul(MAX_LIMIT_UNITS))
        .unwrap_or(i64::MAX)
}

fn example_amount(scale: u32) -> String {
    format_amount(150 * 10i64.saturating_pow(scale), scale)
}

/// Formats an amount scaled by 10^`scale` as exact decimal text (`15000`, 2 → `150.00`).
pub fn format_amount(value: i64, scale: u32) -> String {
    if scale == 0 {
        return value.to_string();
    }
    let digits = value.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    let sign = if value < 0 { "-" } else { "" };
    format!("{sign}{whole}.{fraction}")
}

/// `text` quoted, cut after 40 characters.
fn shorten(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{:?}…", text.chars().take(40).collect::<String>())
    } else {
        format!("{text:?}")
    }
}

/// The scale of limits for `config`: the decimal places of the column that the rules whose
/// threshold is the limits store sum (the toll `amount`: 2); [`DEFAULT_SCALE`] without such
/// a rule. The collector and the `limits` command both use it, so they agree.
///
/// # Errors
/// A limits rule on an unknown stream or column, or two limits rules with different scales.
pub fn scale_for(config: &Config) -> Result<u32, String> {
    let mut found: Option<(u32, &str)> = None;
    for rule in config
        .rules
        .iter()
        .filter(|r| r.threshold == ThresholdConfig::Limits)
    {
        let stream = config
            .streams
            .get(&rule.stream)
            .ok_or_else(|| format!("rule {}: unknown stream {:?}", rule.name, rule.stream))?;
        let schema = stream
            .schema
            .build()
            .map_err(|e| format!("streams.{}.schema.{e}", rule.stream))?;
        let scale = match &rule.column {
            None => 0,
            Some(name) => {
                let column = schema
                    .columns
                    .iter()
                    .find(|c| &c.column == name || &c.field == name)
                    .ok_or_else(|| {
                        format!(
                            "rule {}: stream {} has no column {name:?}",
                            rule.name, rule.stream
                        )
                    })?;
                match column.ty {
                    ColumnType::Decimal { scale } => scale,
                    _ => 0,
                }
            }
        };
        match found {
            Some((other, name)) if other != scale => {
                return Err(format!(
                    "rules {name} and {} both use the limits store but sum columns with {other} \
                     and {scale} decimal places; one store holds one kind of amount",
                    rule.name
                ));
            }
            _ => found = Some((scale, &rule.name)),
        }
    }
    Ok(found.map_or(DEFAULT_SCALE, |(scale, _)| scale))
}
