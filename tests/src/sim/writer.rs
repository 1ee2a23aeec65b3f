//! Appending generated lines to log files, the way booth servers write them.
//!
//! Booth `i` goes to file `i % n`, so each booth's lines stay in one file in event-time order.
//! Files are opened in append mode (created if missing) and written in chunks, flushed every
//! few hundred lines or every pacing tick, so a tailer sees them grow. With `split_writes`,
//! every other chunk ends in the middle of a line and the rest follows with the next chunk, so
//! tailers must hold partial lines back. When a `write` call returns, every line it generated
//! is completely on disk (except with [`SimWriter::write_leaving_partial_lines`]).

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;

use super::config::{Mode, SimConfig, SimError};
use super::files::FileSet;
use super::generator::Simulator;
use super::summary::Summary;

/// Longest sleep between pacing checks, so a slow rate still writes smoothly.
const MAX_TICK: Duration = Duration::from_millis(50);

/// How fast lines are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// No sleeping: generate and write as fast as the disk takes it.
    AsFastAsPossible,
    /// Real time at this rate; in [`Mode::Count`], lines are stamped with the wall clock at
    /// write time (live mode); in [`Mode::Historical`], the historical times are kept and
    /// replayed at this rate.
    Rate {
        /// Lines per second over all files, > 0.
        lines_per_sec: f64,
    },
}

/// How [`SimWriter`] writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteOptions {
    /// Speed (default as fast as possible).
    pub pacing: Pacing,
    /// End every other chunk in the middle of a line (default false).
    pub split_writes: bool,
    /// Flush at least every this many lines (default 500; 0 counts as 1); paced writes also
    /// flush at every tick.
    pub flush_every_lines: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            pacing: Pacing::AsFastAsPossible,
            split_writes: false,
            flush_every_lines: 500,
        }
    }
}

impl From<Pacing> for WriteOptions {
    fn from(pacing: Pacing) -> Self {
        WriteOptions {
            pacing,
            ..WriteOptions::default()
        }
    }
}

/// Generates lines and appends them to files, in steps a test controls: write some, restart
/// a daemon, rotate a file, write more.
#[derive(Debug)]
pub struct SimWriter {
    sim: Simulator,
    files: FileSet,
    options: WriteOptions,
    /// Live mode: stamp lines with the wall clock (paced count mode).
    stamp_wall_clock: bool,
    summary: Summary,
    line: Vec<u8>,
    finished: bool,
}

impl SimWriter {
    /// A writer with default options (as fast as possible, no split writes).
    ///
    /// # Errors
    ///
    /// Invalid config or an output file that cannot be opened.
    pub fn new(cfg: &SimConfig, mode: Mode, paths: &[PathBuf]) -> Result<SimWriter, SimError> {
        SimWriter::with_options(cfg, mode, paths, WriteOptions::default())
    }

    /// A writer with explicit options.
    ///
    /// # Errors
    ///
    /// Invalid config or rate, or an output file that cannot be opened.
    pub fn with_options(
        cfg: &SimConfig,
        mode: Mode,
        paths: &[PathBuf],
        options: WriteOptions,
    ) -> Result<SimWriter, SimError> {
        match options.pacing {
            Pacing::Rate { lines_per_sec }
                if !(lines_per_sec.is_finite() && lines_per_sec > 0.0) =>
            {
                let reason = format!("lines_per_sec must be > 0, got {lines_per_sec}");
                return Err(SimError::Invalid {
                    key: "rate",
                    reason,
                });
            }
            _ => {}
        }
        let sim = Simulator::new(cfg, mode)?;
        let stamp_wall_clock = matches!(
            (options.pacing, mode),
            (Pacing::Rate { .. }, Mode::Count { .. })
        );
        Ok(SimWriter {
            sim,
            files: FileSet::open(paths)?,
            options,
            stamp_wall_clock,
            summary: Summary::default(),
            line: Vec::with_capacity(128),
            finished: false,
        })
    }

    /// Writes up to `n` more lines and flushes them completely; returns how many were
    /// written (fewer than `n` only when the run is over).
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] naming the file whose write failed.
    pub fn write(&mut self, n: u64) -> Result<u64, SimError> {
        let written = self.write_lines(n)?;
        self.files.flush_all()?;
        Ok(written)
    }

    /// Writes the rest of the run ([`Mode::Count`]'s N lines or the historical span).
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] naming the file whose write failed.
    pub fn write_all(&mut self) -> Result<u64, SimError> {
        self.write(u64::MAX)
    }

    /// Like [`write`](Self::write), but each file is left ending in the first half of a
    /// line; the second half is written at the start of the next call. For tests of how
    /// tailers and shutdowns treat a partial last line.
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] naming the file whose write failed.
    pub fn write_leaving_partial_lines(&mut self, n: u64) -> Result<u64, SimError> {
        let written = self.write_lines(n)?;
        self.files.flush_with(true)?;
        Ok(written)
    }

    /// Completes any partial lines, then reopens the files (see [`FileSet::reopen`]).
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] naming the file that failed.
    pub fn reopen(&mut self) -> Result<(), SimError> {
        self.files.reopen()
    }

    /// Totals of everything generated so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The totals, consuming the writer (buffered bytes were flushed by the last `write`).
    pub fn into_summary(self) -> Summary {
        self.summary
    }

    /// True once the generator has nothing more to give.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The output paths, file `i` receiving booths `i, i + n, i + 2n, …`.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.paths()
    }

    /// The underlying generator (booth ids, time zone, lines emitted).
    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }

    fn write_lines(&mut self, n: u64) -> Result<u64, SimError> {
        match self.options.pacing {
            Pacing::AsFastAsPossible => {
                let chunk = self.options.flush_every_lines.max(1);
                let mut done = 0;
                while done < n && !self.finished {
                    done += self.generate((n - done).min(chunk), None);
                    self.flush_unless_last(done, n)?;
                }
                Ok(done)
            }
            Pacing::Rate { lines_per_sec } => self.write_paced(n, lines_per_sec),
        }
    }

    /// Real-time pacing: line `k` of this call is due `k / rate` seconds after it starts.
    // This is a load generator running in real time, not a daemon under test: it needs the
    // real monotonic clock for pacing and the real wall clock for live event times.
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    fn write_paced(&mut self, n: u64, lines_per_sec: f64) -> Result<u64, SimError> {
        let started = std::time::Instant::now();
        let mut done = 0;
        while done < n && !self.finished {
            let elapsed = started.elapsed().as_secs_f64();
            let due = ((elapsed * lines_per_sec) as u64).saturating_add(1).min(n);
            if due > done {
                let stamp = self.stamp_wall_clock.then(Timestamp::now);
                let batch = (due - done).min(self.options.flush_every_lines.max(1));
                done += self.generate(batch, stamp);
                self.flush_unless_last(done, n)?;
            } else {
                let next_due = done as f64 / lines_per_sec;
                let wait = Duration::from_secs_f64((next_due - elapsed).max(0.0));
                std::thread::sleep(wait.clamp(Duration::from_millis(1), MAX_TICK));
            }
        }
        Ok(done)
    }

    /// Flushes a chunk mid-call; the last chunk is left to the caller, which completes it or
    /// leaves partial lines.
    fn flush_unless_last(&mut self, done: u64, n: u64) -> Result<(), SimError> {
        if done < n && !self.finished {
            self.files.flush_chunk(self.options.split_writes)?;
        }
        Ok(())
    }

    /// Generates up to `n` lines into the file buffers, stamped with `stamp` in live mode.
    fn generate(&mut self, n: u64, stamp: Option<Timestamp>) -> u64 {
        for i in 0..n {
            self.line.clear();
            let meta = match stamp {
                Some(t) => self.sim.next_into_at(t, &mut self.line),
                None => self.sim.next_into(&mut self.line),
            };
            let Some(meta) = meta else {
                self.finished = true;
                return i;
            };
            self.summary.add_meta(self.sim.booth_ids(), &meta);
            self.files.push(meta.booth, &self.line);
        }
        n
    }
}

/// Generates a whole run into `paths` and returns its totals.
///
/// # Errors
///
/// Invalid config, or a file that cannot be opened or written.
pub fn write_files(
    cfg: &SimConfig,
    paths: &[PathBuf],
    mode: Mode,
    options: impl Into<WriteOptions>,
) -> Result<Summary, SimError> {
    let mut writer = SimWriter::with_options(cfg, mode, paths, options.into())?;
    writer.write_all()?;
    Ok(writer.into_summary())
}
