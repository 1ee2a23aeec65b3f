//! The alert stage in `status`: how far each engine's checkpoint got and what the outbox
//! still has to deliver. Read-only; works whether the collector runs or not.

use std::fmt::Write as _;

use jiff::Timestamp;
use serde::Serialize;

use crate::config::Config;
use crate::notify::OutboxStatus;

/// The alert stage's state.
#[derive(Debug, Clone, Serialize)]
pub struct AlertsReport {
    /// Rules configured.
    pub rules: usize,
    /// Per stream with rules: the last checkpoint.
    pub engines: Vec<EngineReport>,
    /// The outbox, when it exists.
    pub outbox: Option<OutboxStatus>,
}

/// One engine's last checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    /// Stream.
    pub stream: String,
    /// Last WAL record the checkpoint covers.
    pub position: u64,
    /// Watermark (RFC 3339 UTC), if any.
    pub watermark: Option<String>,
    /// When the checkpoint was written (collector clock).
    pub saved_at: String,
}

/// Reads the checkpoint file and the outbox; `None` without rules and without an outbox.
///
/// # Errors
/// A file that exists but cannot be read.
pub fn collect(config: &Config, now: Timestamp) -> anyhow::Result<Option<AlertsReport>> {
    let state = config.data_dir.join("state");
    let outbox = crate::notify::read_status(&state.join("outbox.db"), now)?;
    if config.rules.is_empty() && outbox.is_none() {
        return Ok(None);
    }
    let mut engines = Vec::new();
    let path = state.join("alerts.db");
    if path.exists() {
        let db = crate::status::open_read_only(&path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut statement = db
            .prepare("SELECT stream, position, watermark, saved_at FROM streams ORDER BY stream")?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (stream, position, watermark, saved_at) = row?;
            engines.push(EngineReport {
                stream,
                position: u64::try_from(position).unwrap_or(0),
                watermark: watermark
                    .and_then(|us| Timestamp::from_microsecond(us).ok())
                    .map(crate::schema::format_timestamp),
                saved_at,
            });
        }
    }
    Ok(Some(AlertsReport {
        rules: config.rules.len(),
        engines,
        outbox,
    }))
}

/// The text form.
pub fn render(out: &mut String, report: &AlertsReport) {
    let _ = writeln!(out, "alerts: {} rules", report.rules);
    for engine in &report.engines {
        let _ = writeln!(
            out,
            "  engine {}: checkpoint covers WAL record {}, watermark {}, saved {}",
            engine.stream,
            engine.position,
            engine.watermark.as_deref().unwrap_or("none yet"),
            engine.saved_at
        );
    }
    match &report.outbox {
        None => {
            let _ = writeln!(out, "  outbox: none yet");
        }
        Some(outbox) => {
            let _ = writeln!(out, "  outbox: {} alerts kept", outbox.alerts);
            for (target, status) in &outbox.targets {
                let _ = write!(out, "    {target}: {} pending", status.pending);
                if let Some(age) = status.oldest_pending_age_seconds {
                    let _ = write!(
                        out,
                        ", oldest {age:.0} s old after {} attempts",
                        status.oldest_pending_attempts
                    );
                }
                if let Some(error) = &status.last_error {
                    let _ = write!(out, ", last error: {error}");
                }
                let _ = writeln!(out);
            }
        }
    }
}
