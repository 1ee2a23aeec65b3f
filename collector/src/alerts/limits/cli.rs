//! `tollstream-collector limits …`: the limits store from the command line, while the
//! collector runs (it picks the change up within a second) or while it is stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    ImportMode, LimitsError, LimitsStore, format_amount, parse_limit, path_in, scale_for,
    validate_customer_id,
};
use crate::clock::SystemClock;
use crate::config::Config;

/// Exit status for a bad option or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// The `limits` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LimitsCommand {
    /// Import limits from a CSV file with the header `customer_id,monthly_limit`, all or
    /// nothing: any bad line (each is listed) imports nothing and exits 1.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Also delete the limits of customers the file does not list, so the store holds
        /// exactly the file (refused for a file without rows).
        #[arg(long)]
        replace: bool,
    },
    /// Set a customer's monthly limit, e.g. `limits set C0001234 150.00`.
    Set {
        /// The customer id (1-128 characters).
        customer_id: String,
        /// The limit, exact decimal text with at most the amount column's decimal places.
        #[arg(allow_hyphen_values = true)]
        amount: String,
    },
    /// Print a customer's limit and when it was set; exit 1 when they have none.
    Get {
        /// The customer id.
        customer_id: String,
    },
    /// Delete a customer's limit (a customer without one is not an error).
    Delete {
        /// The customer id.
        customer_id: String,
    },
    /// Print every limit as CSV (`customer_id,monthly_limit,updated_at`), which `import`
    /// reads back.
    List,
}

/// How a `limits` command failed: the message and the exit status.
#[derive(Debug)]
pub struct CommandError {
    /// Exit status: [`EXIT_USAGE`] for usage and configuration errors, 1 otherwise.
    pub exit: u8,
    /// What went wrong (may span lines: one per bad CSV line).
    pub message: String,
}

impl CommandError {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: EXIT_USAGE,
            message: message.into(),
        }
    }

    fn failure(message: impl Into<String>) -> Self {
        Self {
            exit: 1,
            message: message.into(),
        }
    }
}

impl From<LimitsError> for CommandError {
    fn from(e: LimitsError) -> Self {
        match e {
            LimitsError::InvalidCustomer(_) | LimitsError::InvalidAmount(_) => {
                Self::usage(e.to_string())
            }
            other => Self::failure(other.to_string()),
        }
    }
}

/// Runs one `limits` command against `config`'s data directory, writing its answer to
/// `out`.
///
/// # Errors
/// [`CommandError`] with the exit status to use.
pub fn run(
    config: &Config,
    command: &LimitsCommand,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let scale = scale_for(config).map_err(CommandError::usage)?;
    // Arguments first: a typo needs no database.
    match command {
        LimitsCommand::Set {
            customer_id,
            amount,
        } => {
            validate_customer_id(customer_id).map_err(CommandError::usage)?;
            parse_limit(amount, scale)
                .map_err(|why| CommandError::usage(format!("invalid monthly limit: {why}")))?;
        }
        LimitsCommand::Get { customer_id } | LimitsCommand::Delete { customer_id } => {
            validate_customer_id(customer_id).map_err(CommandError::usage)?;
        }
        LimitsCommand::Import { .. } | LimitsCommand::List => {}
    }
    check_owner(&config.data_dir)?;
    let store = LimitsStore::open(&path_in(&config.data_dir), scale, Arc::new(SystemClock))?;
    let written = |e: std::io::Error| CommandError::failure(format!("writing the answer: {e}"));
    match command {
        LimitsCommand::Import { file, replace } => {
            let mode = if *replace {
                ImportMode::Replace
            } else {
                ImportMode::Merge
            };
            let report = store.import_csv(file, mode)?;
            writeln!(out, "imported {}: {report}", file.display()).map_err(written)?;
        }
        LimitsCommand::Set {
            customer_id,
            amount,
        } => {
            let outcome = store.set_text(customer_id, amount)?;
            let now = format_amount(outcome.limit.amount, scale);
            let before = match outcome.previous {
                None => "new".to_string(),
                Some(_) if !outcome.changed() => {
                    format!("unchanged since {}", outcome.limit.updated_at)
                }
                Some(p) => format!("was {}", format_amount(p, scale)),
            };
            writeln!(out, "{customer_id}: monthly limit {now} ({before})").map_err(written)?;
        }
        LimitsCommand::Get { customer_id } => match store.limit(customer_id) {
            Some(limit) => writeln!(
                out,
                "{customer_id}: monthly limit {} (set {})",
                format_amount(limit.amount, scale),
                limit.updated_at
            )
            .map_err(written)?,
            None => {
                return Err(CommandError::failure(format!(
                    "customer {customer_id:?} has no monthly limit"
                )));
            }
        },
        LimitsCommand::Delete { customer_id } => match store.delete(customer_id)? {
            Some(limit) => writeln!(
                out,
                "{customer_id}: monthly limit {} deleted",
                format_amount(limit.amount, scale)
            )
            .map_err(written)?,
            None => writeln!(out, "{customer_id}: had no monthly limit").map_err(written)?,
        },
        LimitsCommand::List => {
            let mut csv = csv::Writer::from_writer(out);
            let failed = |e: csv::Error| CommandError::failure(format!("writing the list: {e}"));
            csv.write_record(["customer_id", "monthly_limit", "updated_at"])
                .map_err(failed)?;
            for (id, limit) in store.list() {
                csv.write_record([
                    id,
                    format_amount(limit.amount, scale),
                    limit.updated_at.to_string(),
                ])
                .map_err(failed)?;
            }
            csv.flush().map_err(written)?;
        }
    }
    Ok(())
}

/// Refuses to run as root on a data directory root does not own: the SQLite files root
/// would create (`limits.db-wal`, `-shm`) would lock the collector out of its own store.
fn check_owner(data_dir: &Path) -> Result<(), CommandError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return Ok(());
    };
    if rustix::process::geteuid().is_root() && meta.uid() != 0 {
        return Err(CommandError::usage(format!(
            "{} belongs to uid {}, not root: run the command as that user (e.g. `sudo -u \
             tollstream-collector tollstream-collector limits …`), so the files it creates stay \
             usable by the collector",
            data_dir.display(),
            meta.uid()
        )));
    }
    Ok(())
}
