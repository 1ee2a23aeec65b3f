//! The limits store: per-customer monthly spending limits, durable in the data directory.
//!
//! Input: changes from the admin API (`PUT`/`DELETE /v1/customers/{id}/limit`) and from the
//! `limits` command (`set`, `delete`, `import FILE.csv`), possibly from another process
//! while the collector runs. Output: [`LimitsStore::get`], answered from memory, which the
//! alert engine calls for every record.
//!
//! Durability: a change is answered only after its SQLite transaction committed with
//! `synchronous=FULL` (WAL journal), so an acknowledged limit survives a crash or power
//! loss. A CSV import is one transaction: all of it or none of it.
//!
//! ```text
//! <data_dir>/state/limits.db   (SQLite, WAL)
//!   limits(customer_id TEXT PRIMARY KEY, monthly_limit INTEGER >= 0, updated_at TEXT)
//!   meta(key, value)           scale = decimal places of monthly_limit
//! ```
//!
//! Money is never a float: a limit is the amount scaled by 10^scale (`150.00` at scale 2 is
//! `15000`), the scale of the column the limits rule sums. Another process's commit is
//! noticed by [`LimitsStore::refresh_if_changed`] (SQLite's `PRAGMA data_version`).

pub mod cli;
mod import;
mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

pub use import::{ImportMode, ImportReport};
pub use values::{format_amount, parse_limit, scale_for, validate_customer_id};

use values::max_scaled;

use crate::alerts::reference::LineErrors;
use crate::clock::Clock;

/// The store's file name under `<data_dir>/state/`.
pub const FILE_NAME: &str = "limits.db";

/// Longest customer id, in characters.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;

/// Largest limit accepted, in whole currency units (a billion; anything above is a typo).
pub const MAX_LIMIT_UNITS: i64 = 1_000_000_000;

/// The scale when no rule uses the limits store (the toll `amount` column's).
pub const DEFAULT_SCALE: u32 = 2;

/// How long a write waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA user_version` of the layout above.
const SCHEMA_VERSION: i64 = 1;

/// Where the store lives for a data directory.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join(FILE_NAME)
}

/// One customer's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The monthly limit, scaled by 10^scale.
    pub amount: i64,
    /// When it was last set to this amount (collector clock).
    pub updated_at: Timestamp,
}

/// What [`LimitsStore::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOutcome {
    /// The limit now stored.
    pub limit: Limit,
    /// The amount before, if the customer had a limit.
    pub previous: Option<i64>,
}

impl SetOutcome {
    /// Whether anything changed (setting the same amount again keeps its `updated_at`).
    pub fn changed(&self) -> bool {
        self.previous != Some(self.limit.amount)
    }
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// The customer id is not acceptable.
    #[error("{0}")]
    InvalidCustomer(String),
    /// The amount is not acceptable.
    #[error("invalid monthly limit: {0}")]
    InvalidAmount(String),
    /// SQLite failed.
    #[error("limits store {}: {action}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The store was made for amounts of another scale.
    #[error(
        "limits store {} holds amounts with {stored} decimal places, but the limits rule's \
         column has {wanted}; move the file aside and import the limits again",
        path.display()
    )]
    ScaleMismatch {
        /// The database file.
        path: PathBuf,
        /// Its scale.
        stored: u32,
        /// The configuration's.
        wanted: u32,
    },
    /// The store was written by a newer collector.
    #[error("limits store {} has layout version {found}; this collector knows up to {SCHEMA_VERSION}", path.display())]
    Version {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
    /// A row the store cannot use (edited by hand?).
    #[error("limits store {}: {message}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The import file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The CSV file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The import file is invalid; nothing was imported.
    #[error("{0}\nnothing was imported")]
    Csv(LineErrors),
}

struct Db {
    conn: Connection,
    /// `PRAGMA data_version` when the map was last loaded: it changes when another
    /// connection commits.
    data_version: i64,
}

/// The limits store: SQLite on disk, a map in memory.
pub struct LimitsStore {
    path: PathBuf,
    scale: u32,
    clock: Arc<dyn Clock>,
    db: Mutex<Db>,
    map: RwLock<HashMap<String, Limit>>,
}

impl std::fmt::Debug for LimitsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsStore")
            .field("path", &self.path)
            .field("scale", &self.scale)
            .field("limits", &self.len())
            .finish()
    }
}

impl LimitsStore {
    /// Opens (creating it and its directory if needed) the store at `path` for amounts with
    /// `scale` decimal places, and loads every limit into memory.
    ///
    /// # Errors
    /// SQLite errors, a store made for another scale ([`LimitsError::ScaleMismatch`]) or a
    /// newer layout, rows that cannot be read.
    pub fn open(path: &Path, scale: u32, clock: Arc<dyn Clock>) -> Result<Self, LimitsError> {
        let sql = |action| {
            let path = path.to_path_buf();
            move |source| LimitsError::Sqlite {
                path,
                action,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LimitsError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(sql("opening"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("setting busy_timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("setting journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("setting synchronous=FULL"))?;
        Self::prepare(&mut conn, path, scale)?;
        let store = Self {
            path: path.to_path_buf(),
            scale,
            clock,
            db: Mutex::new(Db {
                conn,
                data_version: 0,
            }),
            map: RwLock::new(HashMap::new()),
        };
        let mut db = store.lock_db();
        store.reload(&mut db)?;
        drop(db);
        Ok(store)
    }

    /// Creates the tables (once; two processes may race here) and checks version and scale.
    fn prepare(conn: &mut Connection, path: &Path, scale: u32) -> Result<(), LimitsError> {
        let sql = |action| {
            let path = path.to_path_buf();
            move |source| LimitsError::Sqlite {
                path,
                action,
                source,
            }
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("starting the setup transaction"))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading user_version"))?;
        if version > SCHEMA_VERSION {
            return Err(LimitsError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS limits (
                 customer_id TEXT PRIMARY KEY NOT NULL,
                 monthly_limit INTEGER NOT NULL CHECK (monthly_limit >= 0),
                 updated_at TEXT NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY NOT NULL,
                 value TEXT NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(sql("creating tables"))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql("setting user_version"))?;
        let stored: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'scale'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("reading the scale"))?;
        match stored {
            None => {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('scale', ?1)",
                    [scale.to_string()],
                )
                .map_err(sql("recording the scale"))?;
            }
            Some(text) => {
                let stored = text.parse::<u32>().map_err(|_| LimitsError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("meta scale {text:?} is not a number"),
                })?;
                if stored != scale {
                    return Err(LimitsError::ScaleMismatch {
                        path: path.to_path_buf(),
                        stored,
                        wanted: scale,
                    });
                }
            }
        }
        tx.commit().map_err(sql("committing the setup"))
    }

    fn sql(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> LimitsError + '_ {
        move |source| LimitsError::Sqlite {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Now, to the millisecond (as the warehouse keeps times).
    fn now(&self) -> Timestamp {
        let now = self.clock.now();
        Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
    }

    fn lock_db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every row into a fresh map and swaps it in. Caller holds the db lock.
    fn reload(&self, db: &mut Db) -> Result<(), LimitsError> {
        // Read the version first: a commit after it makes the next refresh load again.
        let version: i64 = db
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(self.sql("reading data_version"))?;
        let mut map = HashMap::new();
        {
            let mut stmt = db
                .conn
                .prepare_cached("SELECT customer_id, monthly_limit, updated_at FROM limits")
                .map_err(self.sql("reading limits"))?;
            let mut rows = stmt.query([]).map_err(self.sql("reading limits"))?;
            while let Some(row) = rows.next().map_err(self.sql("reading limits"))? {
                let (id, amount, at): (String, i64, String) = (
                    row.get(0).map_err(self.sql("reading a customer id"))?,
                    row.get(1).map_err(self.sql("reading a monthly limit"))?,
                    row.get(2).map_err(self.sql("reading updated_at"))?,
                );
                let updated_at = at.parse::<Timestamp>().map_err(|_| LimitsError::Corrupt {
                    path: self.path.clone(),
                    message: format!("customer {id:?} has updated_at {at:?}, not an RFC 3339 time"),
                })?;
                map.insert(id, Limit { amount, updated_at });
            }
        }
        db.data_version = version;
        metrics::gauge!("tollstream_collector_limits").set(map.len() as f64);
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decimal places of the amounts.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// The customer's monthly limit (scaled), from memory.
    pub fn get(&self, customer: &str) -> Option<i64> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(customer)
            .map(|l| l.amount)
    }

    /// The customer's limit with when it was set, from memory.
    pub fn limit(&self, customer: &str) -> Option<Limit> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(customer)
            .copied()
    }

    /// Number of customers with a limit.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no customer has a limit.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every limit, sorted by customer id.
    pub fn list(&self) -> Vec<(String, Limit)> {
        let mut all: Vec<(String, Limit)> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Sets the customer's limit (scaled), durably. Setting the amount it already has
    /// changes nothing (not even `updated_at`). Blocking: call it off the async threads.
    ///
    /// # Errors
    /// An invalid customer id or amount; SQLite errors (then nothing changed).
    pub fn set(&self, customer: &str, amount: i64) -> Result<SetOutcome, LimitsError> {
        validate_customer_id(customer).map_err(LimitsError::InvalidCustomer)?;
        if !(0..=max_scaled(self.scale)).contains(&amount) {
            return Err(LimitsError::InvalidAmount(format!(
                "{} is outside 0 to {}",
                format_amount(amount, self.scale),
                format_amount(max_scaled(self.scale), self.scale)
            )));
        }
        let mut db = self.lock_db();
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("starting a transaction"))?;
        let before: Option<(i64, String)> = tx
            .query_row(
                "SELECT monthly_limit, updated_at FROM limits WHERE customer_id = ?1",
                [customer],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql("reading a limit"))?;
        let previous = before.as_ref().map(|(amount, _)| *amount);
        let limit = match before {
            Some((old, at)) if old == amount => Limit {
                amount,
                updated_at: at.parse().unwrap_or_else(|_| self.now()),
            },
            _ => {
                let updated_at = self.now();
                tx.execute(
                    "INSERT INTO limits (customer_id, monthly_limit, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (customer_id) DO UPDATE
                     SET monthly_limit = excluded.monthly_limit, updated_at = excluded.updated_at",
                    params![customer, amount, updated_at.to_string()],
                )
                .map_err(self.sql("writing a limit"))?;
                tx.commit().map_err(self.sql("committing a limit"))?;
                Limit { amount, updated_at }
            }
        };
        // The map changes only after the commit: what the engine sees is durable.
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.insert(customer.to_owned(), limit);
        metrics::gauge!("tollstream_collector_limits").set(map.len() as f64);
        Ok(SetOutcome { limit, previous })
    }

    /// Parses `raw` (exact decimal text) and sets it; see [`LimitsStore::set`].
    ///
    /// # Errors
    /// As [`parse_limit`] and [`LimitsStore::set`].
    pub fn set_text(&self, customer: &str, raw: &str) -> Result<SetOutcome, LimitsError> {
        validate_customer_id(customer).map_err(LimitsError::InvalidCustomer)?;
        let amount = parse_limit(raw, self.scale).map_err(LimitsError::InvalidAmount)?;
        self.set(customer, amount)
    }

    /// Removes the customer's limit, durably; returns the one removed (`None`: there was
    /// none, and nothing changed). Blocking.
    ///
    /// # Errors
    /// An invalid customer id; SQLite errors.
    pub fn delete(&self, customer: &str) -> Result<Option<Limit>, LimitsError> {
        validate_customer_id(customer).map_err(LimitsError::InvalidCustomer)?;
        let mut db = self.lock_db();
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("starting a transaction"))?;
        let removed: Option<(i64, String)> = tx
            .query_row(
                "DELETE FROM limits WHERE customer_id = ?1 RETURNING monthly_limit, updated_at",
                [customer],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql("deleting a limit"))?;
        tx.commit().map_err(self.sql("committing a deletion"))?;
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.remove(customer);
        metrics::gauge!("tollstream_collector_limits").set(map.len() as f64);
        Ok(removed.map(|(amount, at)| Limit {
            amount,
            updated_at: at.parse().unwrap_or(Timestamp::UNIX_EPOCH),
        }))
    }

    /// Reloads the map when another process (the `limits` command) committed since the last
    /// load; returns whether it did. Cheap when nothing changed (one pragma). Blocking.
    ///
    /// # Errors
    /// SQLite errors or unreadable rows; the map in use stays.
    pub fn refresh_if_changed(&self) -> Result<bool, LimitsError> {
        let mut db = self.lock_db();
        let version: i64 = db
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(self.sql("reading data_version"))?;
        if version == db.data_version {
            return Ok(false);
        }
        self.reload(&mut db)?;
        Ok(true)
    }
}

/// Describes this module's metrics (call once after installing the recorder).
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "tollstream_collector_limits",
        "Customers with a monthly spending limit in the limits store."
    );
}

#[cfg(test)]
mod tests;
