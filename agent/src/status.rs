//! `tollstream-agent status`: per file, how far the collector has acknowledged it.
//!
//! Reads the checkpoint file and the files themselves; changes nothing, and works whether
//! or not the agent is running (while it runs, the checkpoint is at most
//! `checkpoint_interval` old).

use std::fmt::Write;
use std::os::unix::fs::MetadataExt;

use crate::checkpoint;
use crate::config::Config;

/// The status table as text.
///
/// # Errors
/// An unreadable or damaged checkpoint file.
pub fn report(config: &Config) -> anyhow::Result<String> {
    let checkpoints = checkpoint::read_only(&config.state_dir)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agent {} → {}; state in {}",
        config.agent_id(),
        config.collector.url,
        config.state_dir.display()
    );
    if let Some(at) = checkpoints.forgotten_at() {
        let at =
            jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string());
        let _ = writeln!(
            out,
            "state of some sources forgotten at {at} (damaged checkpoint or checkpoint_retention): a file born before then that turns up without state is a new source with a generation above that second"
        );
    }
    let _ = writeln!(
        out,
        "{:<50} {:<40} {:>14} {:>14} {:>12}  LAST ACK",
        "PATH", "IDENTITY", "OFFSET", "SIZE", "LAG"
    );
    let mut total_lag = 0u64;
    for (key, entry) in checkpoints.entries() {
        // The path may now name another file, or this file may since have been truncated
        // (a later generation then holds the live offset).
        let superseded = checkpoints.entries().any(|(_, other)| {
            other.file.ino == entry.file.ino
                && other.file.btime == entry.file.btime
                && other.generation > entry.generation
        });
        let current = std::fs::metadata(&entry.path).ok().filter(|m| {
            !superseded
                && m.ino() == entry.file.ino
                && first_line_crc(&entry.path) == Some(entry.file.head_crc)
        });
        let (size, lag) = match (&entry.copy_of, current) {
            (Some(source), _) => ("(copy)".to_string(), format!("of {source}")),
            (None, Some(meta)) => {
                let lag = meta.len().saturating_sub(entry.offset);
                total_lag += lag;
                (meta.len().to_string(), lag.to_string())
            }
            (None, None) => ("(rotated/gone)".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            out,
            "{:<50} {:<40} {:>14} {:>14} {:>12}  {}",
            entry.path.display(),
            key,
            entry.offset,
            size,
            lag,
            entry.acked_at.as_deref().unwrap_or("never")
        );
    }
    let _ = writeln!(
        out,
        "{} files, {total_lag} bytes not yet acknowledged",
        checkpoints.entries().count()
    );
    Ok(out)
}

fn first_line_crc(path: &std::path::Path) -> Option<u32> {
    let file = std::fs::File::open(path).ok()?;
    crate::tail::fingerprint(&file)
        .ok()
        .flatten()
        .map(|fp| fp.crc)
}
