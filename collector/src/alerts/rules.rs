//! Compiles `rules:` against the streams' schemas into [`Rule`]s the engine runs: column
//! names become positions, constants become exact scaled integers, and everything that
//! cannot work is refused with the rule's place in the config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use jiff::SignedDuration;

use crate::config::{Aggregate, Comparison, Config, FilterConfig, Period, ThresholdConfig};
use crate::schema::{ColumnType, Schema, Value, parse_decimal, parse_value};

/// A rule ready to run.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name (unique).
    pub name: String,
    /// Stream it reads.
    pub stream: String,
    /// Position of the key column in a parsed record.
    pub key: usize,
    /// Position of the event-time column.
    pub time: usize,
    /// Position of the aggregated column (`None` for `count`).
    pub value: Option<usize>,
    /// Digits after the point of values, aggregates and thresholds (0 for `count`).
    pub scale: u32,
    /// What is computed.
    pub aggregate: Aggregate,
    /// Tumbling windows or a running total per month.
    pub span: Span,
    /// Where the threshold comes from.
    pub threshold: Threshold,
    /// Above or below.
    pub when: Comparison,
    /// Webhook names its alerts go to.
    pub webhooks: Vec<String>,
    /// Conditions a record must meet.
    pub filter: Vec<Condition>,
    /// Changes whenever the rule would compute something else; state saved under another
    /// fingerprint is dropped at start.
    pub fingerprint: String,
}

/// Windows or months.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// Tumbling windows of this length, evaluated when they close.
    Window(SignedDuration),
    /// A running total per calendar month, evaluated at each record.
    Month,
}

/// A rule's threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Threshold {
    /// One scaled value for every key.
    Constant(i64),
    /// Per key, weekday and slot, from this file.
    Reference(PathBuf),
    /// Per key, from the limits store.
    Limits,
}

/// One filter condition on a parsed record.
#[derive(Debug, Clone)]
pub struct Condition {
    column: usize,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    NotEquals(Value),
    OneOf(Vec<Value>),
    Above(Value),
    Below(Value),
}

impl Condition {
    /// Whether `record` passes.
    pub fn holds(&self, record: &[Value]) -> bool {
        let Some(value) = record.get(self.column) else {
            return false;
        };
        match &self.test {
            Test::Equals(v) => value == v,
            Test::NotEquals(v) => value != v,
            Test::OneOf(vs) => vs.contains(value),
            Test::Above(v) => order(value, v) == Some(std::cmp::Ordering::Greater),
            Test::Below(v) => order(value, v) == Some(std::cmp::Ordering::Less),
        }
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Integer(a), Value::Integer(b)) => Some(a.cmp(b)),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Every stream's schema by name.
pub type Schemas = BTreeMap<String, Schema>;

/// Compiles every rule of `config`.
///
/// # Errors
/// The first unusable rule, as `rules[i] (name): what is wrong and what to do`.
pub fn compile(config: &Config) -> Result<Vec<Rule>, String> {
    let mut schemas = Schemas::new();
    for (name, stream) in &config.streams {
        let schema = stream
            .schema
            .build()
            .map_err(|e| format!("streams.{name}.schema.{e}"))?;
        schemas.insert(name.clone(), schema);
    }
    let timing = &config.alerts;
    if timing.allowed_lateness > std::time::Duration::from_secs(7 * 24 * 3600) {
        return Err(
            "alerts.allowed_lateness: at most 7d (windows close this long after their end)".into(),
        );
    }
    if timing.idle_timeout < std::time::Duration::from_secs(1) {
        return Err("alerts.idle_timeout: at least 1s".into());
    }
    if timing.checkpoint_interval < std::time::Duration::from_millis(10)
        || timing.checkpoint_interval > std::time::Duration::from_secs(600)
    {
        return Err("alerts.checkpoint_interval: between 10ms and 10m".into());
    }
    if timing.max_future < std::time::Duration::from_secs(60) {
        return Err("alerts.max_future: at least 1m (booth clocks are never exact)".into());
    }
    let webhooks: BTreeSet<String> = config.notify.all_webhooks().into_keys().collect();
    let mut names = BTreeSet::new();
    let mut rules = Vec::new();
    let mut limit_scales = BTreeSet::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let at = format!("rules[{i}] ({})", rule.name);
        if !names.insert(rule.name.clone()) {
            return Err(format!(
                "{at}: another rule has the same name; names must be unique"
            ));
        }
        let compiled = compile_one(rule, &schemas, &webhooks).map_err(|e| format!("{at}: {e}"))?;
        if compiled.threshold == Threshold::Limits {
            limit_scales.insert(compiled.scale);
        }
        rules.push(compiled);
    }
    if limit_scales.len() > 1 {
        return Err(
            "rules: every rule whose threshold is the limits store must aggregate values with \
             the same number of decimal places (the store keeps one scale)"
                .into(),
        );
    }
    Ok(rules)
}

fn compile_one(
    rule: &crate::config::RuleConfig,
    schemas: &Schemas,
    webhooks: &BTreeSet<String>,
) -> Result<Rule, String> {
    if rule.name.is_empty()
        || rule.name.len() > 64
        || !rule
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("a rule name is 1-64 characters of a-z, A-Z, 0-9, '-' or '_'".into());
    }
    let schema = schemas.get(&rule.stream).ok_or_else(|| {
        format!(
            "stream {:?} is not defined under streams: (defined: {})",
            rule.stream,
            schemas.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let position = |column: &str, what: &str| {
        schema
            .columns
            .iter()
            .position(|c| c.field == column || c.column == column)
            .ok_or_else(|| {
                format!(
                    "{what}: stream {} has no column {column:?} (columns: {})",
                    rule.stream,
                    schema
                        .columns
                        .iter()
                        .map(|c| c.column.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    };
    let key = position(&rule.key, "key")?;
    if schema.columns[key].optional {
        return Err(format!(
            "key: column {} is optional; a group-by key must always have a value",
            rule.key
        ));
    }
    let time = match &rule.time {
        Some(column) => {
            let at = position(column, "time")?;
            if schema.columns[at].ty != ColumnType::Timestamp {
                return Err(format!("time: column {column} is not a timestamp"));
            }
            at
        }
        None => schema
            .columns
            .iter()
            .position(|c| c.ty == ColumnType::Timestamp && !c.optional)
            .ok_or_else(|| {
                format!(
                    "stream {} has no required timestamp column to take event time from",
                    rule.stream
                )
            })?,
    };
    if schema.columns[time].optional {
        return Err("time: the event-time column must not be optional".into());
    }
    let (value, scale) = match (rule.aggregate, &rule.column) {
        (Aggregate::Count, None) => (None, 0),
        (Aggregate::Count, Some(_)) => {
            return Err("column: count counts records; it takes no column".into());
        }
        (_, None) => {
            return Err(format!(
                "column: {:?} needs the column it aggregates",
                rule.aggregate
            ));
        }
        (_, Some(column)) => {
            let at = position(column, "column")?;
            let scale = match schema.columns[at].ty {
                ColumnType::Integer { .. } => 0,
                ColumnType::Decimal { scale } => scale,
                _ => {
                    return Err(format!(
                        "column: {column} is not an integer or decimal column"
                    ));
                }
            };
            (Some(at), scale)
        }
    };
    let span = match (rule.window, rule.period) {
        (Some(_), Some(_)) => {
            return Err(
                "give either window: (tumbling windows) or period: (running total), not both"
                    .into(),
            );
        }
        (None, None) => {
            return Err(
                "give window: (e.g. 30m, evaluated when each window closes) or period: month \
                 (a running total per calendar month, evaluated at each record)"
                    .into(),
            );
        }
        (Some(len), None) => {
            let secs = len.as_secs();
            if len.subsec_nanos() != 0 || secs < 60 || 86_400 % secs != 0 {
                return Err(format!(
                    "window: {} must be whole seconds, at least 1m, and divide a day (e.g. 5m, 30m, 1h)",
                    humantime::format_duration(len)
                ));
            }
            Span::Window(SignedDuration::from_secs(
                i64::try_from(secs).unwrap_or(86_400),
            ))
        }
        (None, Some(Period::Month)) => {
            if rule.when != Comparison::Above {
                return Err(
                    "when: a running total is compared as it grows, so period: month takes \
                     when: above (use window: for below)"
                        .into(),
                );
            }
            Span::Month
        }
    };
    let threshold = match &rule.threshold {
        ThresholdConfig::Constant(text) => Threshold::Constant(
            parse_decimal(text.trim(), scale).ok_or_else(|| {
                format!(
                    "threshold.constant: {text:?} is not a number with at most {scale} decimal places"
                )
            })?,
        ),
        ThresholdConfig::Reference(path) => {
            if span == Span::Month {
                return Err(
                    "threshold.reference: reference data is per weekday and slot, which needs window:"
                        .into(),
                );
            }
            Threshold::Reference(path.clone())
        }
        ThresholdConfig::Limits => Threshold::Limits,
    };
    let webhooks = match &rule.notify {
        None => webhooks.iter().cloned().collect(),
        Some(names) => {
            for name in names {
                if !webhooks.contains(name) {
                    return Err(format!(
                        "notify: no webhook {name:?} under notify.webhooks (or notify.webhook, named \"webhook\")"
                    ));
                }
            }
            names.clone()
        }
    };
    let filter = rule
        .filter
        .iter()
        .enumerate()
        .map(|(i, f)| condition(f, schema).map_err(|e| format!("filter[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // What the state means: the threshold and the comparison are read when a window closes
    // or a record arrives, so changing them keeps windows and monthly totals.
    let fingerprint = format!(
        "{}|{}|{}|{:?}|{:?}|{}|{:?}",
        rule.stream,
        rule.key,
        schema.columns[time].column,
        rule.aggregate,
        rule.column,
        match span {
            Span::Window(len) => format!("window {}", len.as_secs()),
            Span::Month => "month".into(),
        },
        rule.filter
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>(),
    );
    Ok(Rule {
        name: rule.name.clone(),
        stream: rule.stream.clone(),
        key,
        time,
        value,
        scale,
        aggregate: rule.aggregate,
        span,
        threshold,
        when: rule.when,
        webhooks,
        filter,
        fingerprint,
    })
}

fn condition(filter: &FilterConfig, schema: &Schema) -> Result<Condition, String> {
    let column = schema
        .columns
        .iter()
        .position(|c| c.field == filter.column || c.column == filter.column)
        .ok_or_else(|| format!("no column {:?}", filter.column))?;
    let ty = &schema.columns[column].ty;
    let value = |raw: &str| parse_value(raw, ty).map_err(|e| format!("{}: {e}", filter.column));
    let tests: Vec<Test> = [
        filter.equals.as_deref().map(|v| value(v).map(Test::Equals)),
        filter
            .not_equals
            .as_deref()
            .map(|v| value(v).map(Test::NotEquals)),
        filter.one_of.as_ref().map(|vs| {
            vs.iter()
                .map(|v| value(v))
                .collect::<Result<Vec<_>, _>>()
                .map(Test::OneOf)
        }),
        filter.above.as_deref().map(|v| value(v).map(Test::Above)),
        filter.below.as_deref().map(|v| value(v).map(Test::Below)),
    ]
    .into_iter()
    .flatten()
    .collect::<Result<_, _>>()?;
    let mut tests = tests.into_iter();
    match (tests.next(), tests.next()) {
        (Some(test), None) => {
            if matches!(test, Test::Above(_) | Test::Below(_)) && matches!(ty, ColumnType::Boolean)
            {
                return Err("above/below do not apply to a boolean column".into());
            }
            Ok(Condition { column, test })
        }
        _ => Err(
            "give exactly one of equals, not_equals, in, above, below (use several filter \
             entries for several conditions)"
                .into(),
        ),
    }
}

/// `value` (scaled by 10^`scale`) as exact decimal text: `15120` with scale 2 → `151.20`.
pub fn format_scaled(value: i128, scale: u32) -> String {
    if scale == 0 {
        return value.to_string();
    }
    let factor = 10i128.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let factor = factor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        abs / factor,
        abs % factor,
        width = scale as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &str) -> Result<Config, String> {
        let text = format!(
            "listen: 127.0.0.1:0\ndata_dir: /tmp/x\nauth: {{ agent_tokens_file: /tmp/t }}\n\
             notify: {{ webhooks: {{ ops: {{ url: 'http://127.0.0.1:1/' }} }} }}\nrules:\n{rules}"
        );
        Config::parse(&text, std::path::Path::new("c.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_rules_compile() {
        let c = config(
            "  - { name: billing-limit, key: customer_id, period: month, aggregate: sum, column: amount, threshold: limits, when: above }\n\
             \x20 - { name: booth-traffic-drop, key: booth_id, window: 30m, aggregate: count, threshold: { reference: b.csv }, when: below, notify: [ops] }\n",
        )
        .expect("parses");
        let rules = compile(&c).expect("compiles");
        assert_eq!(rules[0].span, Span::Month);
        assert_eq!(rules[0].scale, 2);
        assert_eq!(rules[0].webhooks, vec!["ops".to_string()]);
        assert_eq!(rules[1].span, Span::Window(SignedDuration::from_mins(30)));
        assert_eq!(rules[1].scale, 0);
    }

    #[test]
    fn unusable_rules_are_refused_with_their_place() {
        let cases = [
            (
                "{ name: a, key: nope, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below }",
                "rules[0] (a): key: stream toll-transactions has no column \"nope\"",
            ),
            (
                "{ name: a, key: booth_id, window: 7m, aggregate: count, threshold: { constant: '1' }, when: below }",
                "divide a day",
            ),
            (
                "{ name: a, key: booth_id, aggregate: count, threshold: { constant: '1' }, when: below }",
                "give window:",
            ),
            (
                "{ name: a, key: booth_id, window: 30m, aggregate: sum, threshold: { constant: '1' }, when: below }",
                "needs the column",
            ),
            (
                "{ name: a, key: booth_id, window: 30m, aggregate: sum, column: amount, threshold: { constant: '1.234' }, when: below }",
                "at most 2 decimal places",
            ),
            (
                "{ name: a, key: booth_id, window: 30m, aggregate: sum, column: booth_id, threshold: { constant: '1' }, when: below }",
                "not an integer or decimal",
            ),
            (
                "{ name: a, key: booth_id, period: month, aggregate: count, threshold: { reference: x.csv }, when: above }",
                "needs window:",
            ),
            (
                "{ name: a, key: booth_id, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below, notify: [sms] }",
                "no webhook \"sms\"",
            ),
            (
                "{ name: a, key: booth_id, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below, filter: [{ column: lane, equals: x }] }",
                "filter[0]: lane",
            ),
            (
                "{ name: a, key: booth_id, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below, filter: [{ column: lane, equals: '1', above: '2' }] }",
                "exactly one of",
            ),
        ];
        for (rule, expected) in cases {
            let c = config(&format!("  - {rule}\n")).expect("parses");
            let error = compile(&c).expect_err(rule);
            assert!(error.contains(expected), "{rule}: {error}");
        }
        let c = config(
            "  - { name: a, key: booth_id, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below }\n\
             \x20 - { name: a, key: booth_id, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below }\n",
        )
        .expect("parses");
        assert!(compile(&c).expect_err("dup").contains("same name"));
    }

    #[test]
    fn filters_compare_as_the_column_type() {
        let c = config(
            "  - { name: a, key: booth_id, window: 30m, aggregate: count, threshold: { constant: '1' }, when: below, filter: [{ column: amount, above: '10' }, { column: vehicle_class, in: ['1', '2'] }] }\n",
        )
        .expect("parses");
        let rule = &compile(&c).expect("compiles")[0];
        let schema = Schema::toll();
        let mut record = Vec::new();
        let line = b"2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,PLZ-017,3,C0001234,TX-0088231,2,12.50";
        schema.parse(line, &mut record).expect("parses");
        assert!(rule.filter.iter().all(|c| c.holds(&record)));
        let line = b"2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,PLZ-017,3,C0001234,TX-0088231,3,12.50";
        schema.parse(line, &mut record).expect("parses");
        assert!(!rule.filter.iter().all(|c| c.holds(&record)));
    }

    #[test]
    fn scaled_values_format_exactly() {
        assert_eq!(format_scaled(15120, 2), "151.20");
        assert_eq!(format_scaled(-5, 2), "-0.05");
        assert_eq!(format_scaled(37, 0), "37");
    }
}
