//! Log output on stderr: journald-friendly text under systemd, plain text elsewhere, JSON on
//! request.
//!
//! Under systemd (`JOURNAL_STREAM` names the stderr we write to) lines carry no timestamp
//! and no colours — journald stamps each line itself — and start with a `<N>` syslog
//! priority prefix, which journald turns into the entry's priority (`journalctl -p warning`)
//! and strips. `TOLLSTREAM_LOG` sets the level filter (`info` by default).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text; journald-friendly when stderr goes to the journal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message` and the event's fields).
    Json,
}

/// Installs the global subscriber. Call once, first thing.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("TOLLSTREAM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text if stderr_is_journal() => {
            let inner = tracing_subscriber::fmt::format()
                .without_time()
                .with_target(false)
                .with_ansi(false);
            builder
                .with_ansi(false)
                .event_format(SyslogPriority(inner))
                .init();
        }
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM=dev:inode`), not
/// merely inherited by a child whose stderr was redirected.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    // The descriptor's own inode: /proc resolves the link to the socket itself.
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()),
        Err(_) => false,
    }
}

/// Prefixes each line with its syslog priority, `<3>` for errors to `<7>` for debug.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
