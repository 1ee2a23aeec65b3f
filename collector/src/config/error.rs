//! Configuration errors that say where: the file, the line and column, the key path, what
//! was expected, and for a misspelt key the closest known one.
//!
//! Parse errors carry the parser's position. Errors found by validation, after parsing,
//! get theirs from [`locate`], which walks the YAML text again to the key path the message
//! names (or to its nearest enclosing key present in the file, when the key itself was left
//! at its default). A value set by an environment variable is blamed on the variable.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML was malformed, a key had the wrong type, was unknown or missing.
    #[error("{}{at}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The key path, e.g. `flows[0].batch.max_bytes`.
        key: String,
        /// Where in the file.
        at: Origin,
        /// What is wrong and what was expected, starting with the key path.
        message: String,
    },
    /// The values parsed but do not make sense together.
    #[error("{}{at}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key path the message is about.
        key: String,
        /// Where in the file (or which environment variable) the value came from.
        at: Origin,
        /// Which key is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// The key path the error is about (empty for an unreadable file).
    pub fn key(&self) -> &str {
        match self {
            Self::Read { .. } => "",
            Self::Parse { key, .. } | Self::Invalid { key, .. } => key,
        }
    }

    /// The line (1-based) the error points at, if it points into the file.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse { at, .. } | Self::Invalid { at, .. } => match at {
                Origin::Line { line, .. } => Some(*line),
                _ => None,
            },
            Self::Read { .. } => None,
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A place in the file, 1-based.
    Line {
        /// Line.
        line: usize,
        /// Column.
        column: usize,
    },
    /// An environment variable overriding the file.
    Env(&'static str),
    /// Nowhere in the file: a default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line { line, column } => write!(f, " line {line} column {column}"),
            Self::Env(var) => write!(f, " (value from the environment variable {var})"),
            Self::Default => Ok(()),
        }
    }
}

/// Turns a deserialisation error into a [`ConfigError::Parse`] naming the key and line.
pub(super) fn parse_error(
    error: &serde_path_to_error::Error<yaml_serde::Error>,
    text: &str,
    path: &Path,
) -> ConfigError {
    let mut key = error.path().to_string();
    let inner = error.inner();
    let parser_at = inner.location().map(|l| Origin::Line {
        line: l.line(),
        column: l.column(),
    });
    let raw = inner.to_string();
    // The parser appends its position and often prefixes the enclosing key.
    let raw = raw
        .rsplit_once(" at line ")
        .map_or(raw.as_str(), |(m, _)| m);
    let mut message = strip_key_prefix(raw, &key).to_owned();
    let syntax = yaml_serde::from_str::<yaml_serde::Value>(text).is_err();
    // The parser points at an unknown key itself; our walk would point at its value.
    let mut trust_parser = syntax;
    if syntax {
        let within = if key == "." {
            String::new()
        } else {
            format!(" (within `{key}`)")
        };
        message = format!("YAML syntax error{within}: {raw}");
    } else if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            message = unknown_key_message(field, expected);
            trust_parser = true;
        }
    } else if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once('`')
    {
        message = format!(
            "unknown value `{value}`{} ({})",
            did_you_mean(value, expected),
            expected.trim_start_matches(", ")
        );
    } else if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        key = join(&key, field);
        message = "missing: this key is required".into();
    }
    // Our own walk is exact even where the parser only knows the enclosing mapping (a
    // size, an untagged value); a syntax error has only the parser's position.
    let at = match (trust_parser, locate(text, &key)) {
        (false, Some((at, true))) => at,
        (_, found) => parser_at
            .or(found.map(|(at, _)| at))
            .unwrap_or(Origin::Default),
    };
    let message = if syntax || key == "." {
        message
    } else {
        format!("{key}: {message}")
    };
    ConfigError::Parse {
        path: path.to_path_buf(),
        key,
        at,
        message,
    }
}

/// A [`ConfigError::Invalid`] for `message`, which starts with the key path it is about;
/// `overridden` lists keys set by environment variables.
pub(super) fn invalid(
    text: &str,
    path: &Path,
    overridden: &[(&'static str, &'static str)],
    message: String,
) -> ConfigError {
    let key = leading_key(&message).to_owned();
    let at = match overridden.iter().find(|(k, _)| *k == key) {
        Some((_, var)) => Origin::Env(var),
        None => locate(text, &key).map_or(Origin::Default, |(at, _)| at),
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        at,
        message,
    }
}

fn join(parent: &str, child: &str) -> String {
    if parent == "." || parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// `message` without a leading `key: ` or `parent-of-key: `.
fn strip_key_prefix<'a>(message: &'a str, key: &str) -> &'a str {
    let mut prefix = key;
    loop {
        if let Some(rest) = message
            .strip_prefix(prefix)
            .and_then(|m| m.strip_prefix(": "))
        {
            return rest;
        }
        match prefix.rfind(['.', '[']) {
            Some(i) => prefix = &prefix[..i],
            None => return message,
        }
    }
}

/// The key path a validation message starts with: up to the first character that cannot
/// be in one.
fn leading_key(message: &str) -> &str {
    let end = message
        .find(|c: char| !(c.is_ascii_alphanumeric() || "_-.[]".contains(c)))
        .unwrap_or(message.len());
    message[..end].trim_end_matches('.')
}

fn unknown_key_message(field: &str, expected: &str) -> String {
    let expected = expected.trim_start_matches(", ");
    format!(
        "unknown key `{field}`{} ({expected})",
        did_you_mean(field, expected)
    )
}

/// ` — did you mean `x`?` for the known name closest to `given` among the back-quoted names
/// in `expected` (serde's "expected one of `a`, `b`"), when one is close enough.
fn did_you_mean(given: &str, expected: &str) -> String {
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (strsim::damerau_levenshtein(given, known), known))
        .min_by_key(|(distance, _)| *distance);
    match best {
        // Close enough to be a typo: a third of the name, at least two edits.
        Some((distance, known)) if distance <= (given.len() / 3).max(2) => {
            format!(" — did you mean `{known}`?")
        }
        _ => String::new(),
    }
}

/// One step of a key path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `flows[0].batch.max_bytes` → `flows`, `0`, `batch`, `max_bytes`.
fn steps(key: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = part.split_once('[').map_or((part, ""), |(n, i)| (n, i));
        if !name.is_empty() {
            steps.push(Step::Key(name));
        }
        for index in indexes.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(i));
            }
        }
    }
    steps
}

/// The marker error that carries the parser's position out of [`Seek`].
const FOUND: &str = "tollstream: key found";

/// Where `key` is in `text`: the position of its value and `true`, or of its nearest
/// enclosing key present in the file and `false`; `None` when not even the first step is
/// there (or the text is not YAML).
pub(super) fn locate(text: &str, key: &str) -> Option<(Origin, bool)> {
    let steps = steps(key);
    (1..=steps.len()).rev().find_map(|n| {
        let de = yaml_serde::Deserializer::from_str(text);
        let error = Seek(&steps[..n]).deserialize(de).err()?;
        if !error.to_string().contains(FOUND) {
            return None;
        }
        let location = error.location()?;
        let at = Origin::Line {
            line: location.line(),
            column: location.column(),
        };
        Some((at, n == steps.len()))
    })
}

/// Walks to the value at a key path and fails there with [`FOUND`].
struct Seek<'p>(&'p [Step<'p>]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            // `deserialize_any` gives the error the value's position.
            de.deserialize_any(Found)
        } else {
            de.deserialize_any(self)
        }
    }
}

/// Fails with [`FOUND`] whatever the value is.
struct Found;

impl<'de> serde::de::Visitor<'de> for Found {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(A::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(A::Error::custom(FOUND))
    }
}

impl<'de> serde::de::Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or sequence")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<yaml_serde::Value>()? {
            let hit = matches!((&self.0[0], key.as_str()), (Step::Key(k), Some(s)) if *k == s);
            if hit {
                return map.next_value_seed(Seek(&self.0[1..]));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq.size_hint() != Some(0) {
            if self.0[0] == Step::Index(i) {
                return seq.next_element_seed(Seek(&self.0[1..])).map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "collector:\n  url: http://x\nflows:\n  - stream: a\n  - stream: b\n    batch: { max_bytes: 5 }\n";

    #[test]
    fn key_paths_are_found_with_their_line() {
        let at = |line, column| Some((Origin::Line { line, column }, true));
        assert_eq!(locate(TEXT, "collector.url"), at(2, 8));
        assert_eq!(locate(TEXT, "flows[1].stream"), at(5, 13));
        assert_eq!(locate(TEXT, "flows[1].batch.max_bytes"), at(6, 25));
        // Absent: the nearest enclosing key present.
        let (at, exact) = locate(TEXT, "flows[1].batch.max_age").expect("parent");
        assert!(!exact);
        assert!(matches!(at, Origin::Line { line: 6, .. }), "{at:?}");
        assert_eq!(locate(TEXT, "state_dir"), None);
    }

    #[test]
    fn misspelt_names_get_a_suggestion() {
        let expected = "expected one of `max_records`, `max_bytes`, `max_age`";
        assert_eq!(
            did_you_mean("max_recods", expected),
            " — did you mean `max_records`?"
        );
        assert_eq!(did_you_mean("colour", expected), "");
        assert_eq!(
            leading_key("flows[0].stream must not be empty"),
            "flows[0].stream"
        );
        assert_eq!(leading_key("collector.url: \"x\" must"), "collector.url");
    }
}
