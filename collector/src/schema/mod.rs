//! Stream schemas: how a line becomes a typed row, or a rejection with a reason.
//!
//! A schema is data — an input format, columns with types, a natural key — so streams
//! other than the toll stream are configuration, not code. The config's form is
//! [`SchemaConfig`]; [`SchemaConfig::build`] checks it and makes the [`Schema`] the loader
//! uses. [`SchemaConfig::toll`] is the shipped default.
//!
//! A schema is also what the warehouse table is made from; the definition a table was made
//! with is recorded there (see [`crate::warehouse::migrate`]) and serialised with serde.

mod lines;
mod values;

use serde::{Deserialize, Serialize};

pub(crate) use values::parse_value;
pub use values::{format_timestamp, parse_decimal};

/// The type of one column and the checks it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text (not empty, no NUL).
    Text,
    /// A UUID, stored canonically (lowercase, hyphenated).
    Uuid,
    /// A whole number within bounds.
    Integer {
        /// Smallest value accepted.
        min: i64,
        /// Largest value accepted.
        max: i64,
    },
    /// A decimal with at most `scale` places, stored exactly as an integer scaled by
    /// 10^scale (`12.50` with scale 2 is stored as `1250`).
    Decimal {
        /// Digits after the point.
        scale: u32,
    },
    /// An RFC 3339 timestamp with an offset, stored as a point in time (UTC).
    Timestamp,
    /// `true`/`false` (also `1`/`0`, `t`/`f`, `yes`/`no`, any case).
    Boolean,
}

/// One column of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Name of the field in the input (a JSON key; for CSV only used in messages).
    pub field: String,
    /// Name of the warehouse column (e.g. `amount_cents` for a scaled decimal).
    pub column: String,
    /// Type and checks.
    #[serde(flatten)]
    pub ty: ColumnType,
    /// An empty (CSV) or missing/`null` (JSON) value is stored as NULL instead of
    /// rejecting the line.
    pub optional: bool,
    /// The warehouse keeps an index on this column.
    pub index: bool,
}

/// How lines are split into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Delimited fields in column order; RFC 4180 quoting (`"a,b"`, `""`) is understood.
    Csv {
        /// The field separator.
        delimiter: u8,
    },
    /// One JSON object per line; fields by key, other keys ignored.
    Json,
}

/// A parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text or UUID.
    Text(String),
    /// Integer or scaled decimal.
    Integer(i64),
    /// A point in time.
    Timestamp(jiff::Timestamp),
    /// A boolean.
    Boolean(bool),
    /// An optional column without a value.
    Null,
}

/// Input format, columns in input order, and the natural key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// How a line is split into fields.
    pub format: Format,
    /// The columns.
    pub columns: Vec<Column>,
    /// Warehouse columns whose values together are unique across the stream; empty when
    /// the stream has no natural key (then only the load manifest prevents duplicates).
    pub unique_key: Vec<String>,
}

/// Columns every stream table has after its own, filled by the loader.
pub const LOADER_COLUMNS: [&str; 3] = ["source", "received_at", "load_id"];

impl Schema {
    /// The toll transaction stream of DESIGN.md.
    pub fn toll() -> Self {
        SchemaConfig::toll()
            .build()
            .expect("the toll schema is valid")
    }

    /// Parses one line (without its `\n`; a trailing `\r` is ignored) into values, one per
    /// column.
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
        match self.format {
            Format::Csv { delimiter } => lines::parse_csv(text, delimiter, &self.columns, out),
            Format::Json => lines::parse_json(text, &self.columns, out),
        }
    }

    /// The column named `column`.
    pub fn column(&self, column: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.column == column)
    }
}

/// The line format as the config names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// Delimited fields in column order.
    #[default]
    Csv,
    /// One JSON object per line.
    Json,
}

/// A column type as the config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeName {
    /// Text.
    Text,
    /// UUID.
    Uuid,
    /// Whole number.
    Integer,
    /// Exact decimal.
    Decimal,
    /// Timestamp with time zone.
    Timestamp,
    /// Boolean.
    Boolean,
}

/// One column as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Field name in the input (JSON key) and, unless `column` says otherwise, the
    /// warehouse column's name.
    pub name: String,
    /// The type.
    #[serde(rename = "type")]
    pub ty: TypeName,
    /// The warehouse column, when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Integer only: smallest value accepted (default: i64's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Integer only: largest value accepted (default: i64's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Decimal only: digits after the point (0 to 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// A missing value is stored as NULL instead of rejecting the line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Keep an index on this column.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub index: bool,
}

/// A natural key as written in the config: one column name or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    /// One column.
    One(String),
    /// Several columns, unique together.
    Many(Vec<String>),
}

/// A stream's schema as written in the config (`streams.<name>.schema`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// `csv` (default) or `json`.
    #[serde(default)]
    pub format: FormatName,
    /// CSV only: the field separator, one ASCII character (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// The columns, in input order for CSV.
    pub columns: Vec<ColumnConfig>,
    /// The natural key (column names from `columns`); none means rows are not checked
    /// for duplicate keys (the load manifest still loads every object once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<KeyConfig>,
}

impl SchemaConfig {
    /// The toll transaction stream of DESIGN.md, as config.
    pub fn toll() -> Self {
        let col = |name: &str, ty| ColumnConfig {
            name: name.into(),
            ty,
            column: None,
            min: None,
            max: None,
            scale: None,
            optional: false,
            index: false,
        };
        Self {
            format: FormatName::Csv,
            delimiter: None,
            columns: vec![
                ColumnConfig {
                    index: true,
                    ..col("event_time", TypeName::Timestamp)
                },
                col("transaction_id", TypeName::Uuid),
                col("booth_id", TypeName::Text),
                ColumnConfig {
                    min: Some(0),
                    max: Some(255),
                    ..col("lane", TypeName::Integer)
                },
                col("customer_id", TypeName::Text),
                col("transponder_id", TypeName::Text),
                ColumnConfig {
                    min: Some(1),
                    max: Some(9),
                    ..col("vehicle_class", TypeName::Integer)
                },
                ColumnConfig {
                    column: Some("amount_cents".into()),
                    scale: Some(2),
                    ..col("amount", TypeName::Decimal)
                },
            ],
            unique_key: Some(KeyConfig::One("transaction_id".into())),
        }
    }

    /// Checks the definition and makes the schema.
    ///
    /// # Errors
    /// What is wrong, starting with the key path below `schema` (e.g. `columns[3].scale`).
    pub fn build(&self) -> Result<Schema, String> {
        let format = match (self.format, self.delimiter) {
            (FormatName::Json, Some(_)) => {
                return Err("delimiter: only a csv format has a delimiter".into());
            }
            (FormatName::Json, None) => Format::Json,
            (FormatName::Csv, None) => Format::Csv { delimiter: b',' },
            (FormatName::Csv, Some(d)) => {
                if !d.is_ascii() || d == '"' || d == '\n' || d == '\r' {
                    return Err(format!(
                        "delimiter: {d:?} cannot separate fields; use one ASCII character other than a quote or line break"
                    ));
                }
                Format::Csv { delimiter: d as u8 }
            }
        };
        if self.columns.is_empty() {
            return Err("columns: a stream needs at least one column".into());
        }
        if self.columns.len() > 1000 {
            return Err("columns: at most 1000 columns".into());
        }
        let mut columns: Vec<Column> = Vec::with_capacity(self.columns.len());
        for (i, c) in self.columns.iter().enumerate() {
            let at = |message: String| format!("columns[{i}] ({}): {message}", c.name);
            let column = c.column.clone().unwrap_or_else(|| c.name.clone());
            if c.name.is_empty() || c.name.len() > 256 {
                return Err(at("name must be 1 to 256 characters".into()));
            }
            if !crate::config::valid_identifier(&column) {
                return Err(at(format!(
                    "{column:?} is not a plain SQL identifier (a-z, 0-9, _, not starting with a digit, not an SQL keyword such as user or order){}",
                    if c.column.is_none() {
                        "; name the warehouse column with `column:`"
                    } else {
                        ""
                    }
                )));
            }
            if LOADER_COLUMNS.contains(&column.as_str()) {
                return Err(at(format!(
                    "the column name {column:?} is taken by the loader ({}); name it differently with `column:`",
                    LOADER_COLUMNS.join(", ")
                )));
            }
            if let Some(other) = columns
                .iter()
                .find(|o| o.column == column || o.field == c.name)
            {
                return Err(at(format!(
                    "the name is used twice (also by {}); names and columns must be unique",
                    other.field
                )));
            }
            if (c.min.is_some() || c.max.is_some()) && c.ty != TypeName::Integer {
                return Err(at("min and max apply to integer columns only".into()));
            }
            if c.scale.is_some() && c.ty != TypeName::Decimal {
                return Err(at("scale applies to decimal columns only".into()));
            }
            let ty = match c.ty {
                TypeName::Text => ColumnType::Text,
                TypeName::Uuid => ColumnType::Uuid,
                TypeName::Timestamp => ColumnType::Timestamp,
                TypeName::Boolean => ColumnType::Boolean,
                TypeName::Integer => {
                    let (min, max) = (c.min.unwrap_or(i64::MIN), c.max.unwrap_or(i64::MAX));
                    if min > max {
                        return Err(at(format!("min {min} is above max {max}")));
                    }
                    ColumnType::Integer { min, max }
                }
                TypeName::Decimal => match c.scale {
                    Some(scale @ 0..=18) => ColumnType::Decimal { scale },
                    Some(scale) => {
                        return Err(at(format!(
                            "scale {scale} is too large; at most 18 places are stored exactly (as a 64-bit integer)"
                        )));
                    }
                    None => {
                        return Err(at(
                            "a decimal column needs `scale:` (digits after the point)".into(),
                        ));
                    }
                },
            };
            columns.push(Column {
                field: c.name.clone(),
                column,
                ty,
                optional: c.optional,
                index: c.index,
            });
        }
        let key_names: Vec<&String> = match &self.unique_key {
            None => Vec::new(),
            Some(KeyConfig::One(name)) => vec![name],
            Some(KeyConfig::Many(names)) if names.is_empty() => {
                return Err("unique_key: name at least one column, or leave it out".into());
            }
            Some(KeyConfig::Many(names)) => names.iter().collect(),
        };
        let mut unique_key = Vec::new();
        for name in key_names {
            let Some(column) = columns
                .iter()
                .find(|c| &c.field == name || &c.column == name)
            else {
                return Err(format!("unique_key: {name:?} is not one of the columns"));
            };
            if column.optional {
                return Err(format!(
                    "unique_key: {name:?} is optional; a key column must always have a value"
                ));
            }
            if unique_key.contains(&column.column) {
                return Err(format!("unique_key: {name:?} is named twice"));
            }
            unique_key.push(column.column.clone());
        }
        Ok(Schema {
            format,
            columns,
            unique_key,
        })
    }
}

#[cfg(test)]
mod tests;
