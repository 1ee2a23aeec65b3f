//! `references`: `cat` and `gzip -1` of the pre-written file — the machine's physical limits.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::file_bytes;

/// Times a command reading the file (wall clock; the file is in the page cache by now).
pub fn reference(
    name: &str,
    program: &str,
    args: &[&str],
    file: &Path,
    lines: u64,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .arg(file)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{program} failed: {status}");
    }
    Ok(
        json!({ "scenario": "reference", "name": name, "seconds": seconds, "lines_per_sec": lines as f64 / seconds, "mb_per_sec": file_bytes(file) as f64 / 1e6 / seconds }),
    )
}
