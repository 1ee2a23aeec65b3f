//! Who may send: bearer tokens from the agent tokens file, reloadable on SIGHUP.
//!
//! File format, one entry per line; blank lines and lines starting with `#` are skipped:
//!
//! ```text
//! # a token any agent may use
//! 3q9v2m8x...
//! # a token bound to one agent id: it may only send sources named "booth-017/..."
//! booth-017 7kd93kfa...
//! ```
//!
//! Tokens are compared as SHA-256 digests in constant time (so neither where a guess
//! differs nor how long the real token is shows in the time taken), and never logged.
//! Replace the file atomically (write a temporary file, then `mv` it over) before SIGHUP, so
//! a reload never reads it half-written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tracing::{error, info};

/// One accepted token.
#[derive(Clone)]
struct Entry {
    /// The agent id the token is bound to, if any.
    agent: Option<String>,
    /// SHA-256 of the token.
    digest: [u8; 32],
}

fn digest(token: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// What a presented token is allowed to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Any source.
    AnyAgent,
    /// Only sources `<agent>/...`.
    Agent(String),
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token not in the file.
    Unknown,
    /// A token bound to another agent id than the source names.
    WrongAgent {
        /// The id the token is bound to.
        bound_to: String,
    },
}

/// The tokens file, as last loaded.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token, not even in a debug dump.
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

impl Tokens {
    /// Reads the tokens file.
    ///
    /// # Errors
    /// An unreadable file, a malformed line (named by number, without its content), or a
    /// file with no token in it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading agent tokens file {}: {e}", path.display()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (agent, token) = match (words.next(), words.next(), words.next()) {
                (Some(token), None, None) => (None, token),
                (Some(agent), Some(token), None) if valid_agent_id(agent) => {
                    (Some(agent.to_owned()), token)
                }
                _ => anyhow::bail!(
                    "agent tokens file {} line {}: expected TOKEN or AGENT_ID TOKEN (agent ids \
                     are letters, digits, '.', '_' or '-')",
                    path.display(),
                    i + 1
                ),
            };
            if token.len() < 16 {
                anyhow::bail!(
                    "agent tokens file {} line {}: the token is shorter than 16 characters; \
                     use a random one, e.g. from `openssl rand -hex 24`",
                    path.display(),
                    i + 1
                );
            }
            entries.push(Entry {
                agent,
                digest: digest(token.as_bytes()),
            });
        }
        if entries.is_empty() {
            anyhow::bail!(
                "agent tokens file {} holds no token (one per line)",
                path.display()
            );
        }
        Ok(Self { entries })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What `presented` (the bearer token, if any) may do for a batch of `source`.
    ///
    /// # Errors
    /// [`Refusal`] saying why not.
    pub fn check(&self, presented: Option<&[u8]>, source: &str) -> Result<Grant, Refusal> {
        let presented = digest(presented.ok_or(Refusal::Missing)?);
        // Every entry is compared, so the time taken does not say which one matched.
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            if constant_time_eq::constant_time_eq_32(&entry.digest, &presented) {
                found = Some(entry);
            }
        }
        match found {
            None => Err(Refusal::Unknown),
            Some(Entry { agent: None, .. }) => Ok(Grant::AnyAgent),
            Some(Entry {
                agent: Some(agent), ..
            }) => {
                let claimed = source.split_once('/').map_or(source, |(id, _)| id);
                if source == "-" || claimed == agent {
                    Ok(Grant::Agent(agent.clone()))
                } else {
                    Err(Refusal::WrongAgent {
                        bound_to: agent.clone(),
                    })
                }
            }
        }
    }
}

fn valid_agent_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The tokens in use, swapped whole on reload.
pub struct TokenStore {
    path: PathBuf,
    current: RwLock<Arc<Tokens>>,
}

impl TokenStore {
    /// Loads the file for the first time.
    ///
    /// # Errors
    /// As [`Tokens::load`].
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let tokens = Tokens::load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(tokens)),
        })
    }

    /// The tokens in use now.
    pub fn current(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again; on error the tokens in use stay and the error is logged.
    pub fn reload(&self) -> bool {
        match Tokens::load(&self.path) {
            Ok(tokens) => {
                info!(path = %self.path.display(), tokens = tokens.len(), "Reloaded agent tokens.");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
                metrics::counter!("tollstream_collector_reloads_total", "what" => "tokens", "result" => "ok").increment(1);
                true
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "Agent tokens not reloaded; the previous tokens stay in use."
                );
                metrics::counter!("tollstream_collector_reloads_total", "what" => "tokens", "result" => "error").increment(1);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> anyhow::Result<Tokens> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tokens");
        std::fs::write(&path, text)?;
        Tokens::load(&path)
    }

    #[test]
    fn plain_and_bound_tokens() {
        let t =
            tokens("# c\nanyone-0123456789abc\nbooth-017 booth17-0123456789abc\n").expect("loads");
        assert_eq!(
            t.check(Some(b"anyone-0123456789abc"), "x/1"),
            Ok(Grant::AnyAgent)
        );
        assert_eq!(
            t.check(Some(b"booth17-0123456789abc"), "booth-017/9c-1-2-0"),
            Ok(Grant::Agent("booth-017".into()))
        );
        assert_eq!(
            t.check(Some(b"booth17-0123456789abc"), "booth-018/9c-1-2-0"),
            Err(Refusal::WrongAgent {
                bound_to: "booth-017".into()
            })
        );
        assert_eq!(t.check(Some(b"nope"), "x/1"), Err(Refusal::Unknown));
        assert_eq!(t.check(None, "x/1"), Err(Refusal::Missing));
    }

    #[test]
    fn bad_lines_are_named_by_number_without_their_content() {
        let error = tokens("ok-0123456789abcdef\na b c\n").expect_err("refused");
        let message = error.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("a b c"), "{message}");
        let short = tokens("short\n").expect_err("refused").to_string();
        assert!(short.contains("shorter than 16"), "{short}");
        assert!(!short.contains("short\n"));
    }
}
