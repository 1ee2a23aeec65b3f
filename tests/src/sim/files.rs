//! A set of log files opened for appending, each with its own write buffer.
//!
//! Lines are buffered per file and written with one `write_all` per file per flush, so the
//! files grow in whole chunks, as they do under a real application's buffered logger. A flush
//! can stop halfway through each file's last line (split writes); the rest is written by the
//! next flush, which is exactly what a tailer must survive.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::config::SimError;

/// One output file and the bytes not yet written to it.
#[derive(Debug)]
struct OutFile {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

/// A set of log files opened for appending, with one buffer each; the low-level half of
/// [`SimWriter`](super::SimWriter).
#[derive(Debug)]
pub struct FileSet {
    files: Vec<OutFile>,
    split_this_chunk: bool,
}

impl FileSet {
    /// Opens (creating if missing) every path for appending.
    ///
    /// # Errors
    ///
    /// [`SimError::Invalid`] for an empty list, [`SimError::Io`] naming the file that failed.
    pub fn open(paths: &[PathBuf]) -> Result<FileSet, SimError> {
        if paths.is_empty() {
            return Err(SimError::Invalid {
                key: "paths",
                reason: "must not be empty".into(),
            });
        }
        let files = paths
            .iter()
            .map(|path| {
                Ok(OutFile {
                    path: path.clone(),
                    file: open_append(path)?,
                    buf: Vec::new(),
                })
            })
            .collect::<Result<_, SimError>>()?;
        Ok(FileSet {
            files,
            split_this_chunk: false,
        })
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Always false: a set has at least one file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file paths, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    /// Buffers `line` for booth `booth`'s file (`booth % len`).
    pub fn push(&mut self, booth: usize, line: &[u8]) {
        let n = self.files.len();
        self.files[booth % n].buf.extend_from_slice(line);
    }

    /// Writes out what is buffered. With `split`, every other call holds back the second half
    /// of each file's last line, which goes out with the next flush.
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] naming the file whose write failed.
    pub fn flush_chunk(&mut self, split: bool) -> Result<(), SimError> {
        self.split_this_chunk = split && !self.split_this_chunk;
        let cut_lines = self.split_this_chunk;
        self.flush_with(cut_lines)
    }

    /// Writes out everything buffered, so each file ends with a complete line.
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] naming the file whose write failed.
    pub fn flush_all(&mut self) -> Result<(), SimError> {
        self.flush_with(false)
    }

    /// Flushes, then reopens every path: after a test renamed (rotated) or deleted a file,
    /// writing continues in a new file at the same path.
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] naming the file that failed.
    pub fn reopen(&mut self) -> Result<(), SimError> {
        self.flush_all()?;
        for f in &mut self.files {
            f.file = open_append(&f.path)?;
        }
        Ok(())
    }

    /// Writes out what is buffered; with `cut_lines`, all but the second half of each
    /// file's last line.
    pub(crate) fn flush_with(&mut self, cut_lines: bool) -> Result<(), SimError> {
        for f in &mut self.files {
            let end = if cut_lines {
                mid_last_line(&f.buf)
            } else {
                f.buf.len()
            };
            if end == 0 {
                continue;
            }
            f.file
                .write_all(&f.buf[..end])
                .map_err(|source| SimError::Io {
                    path: f.path.clone(),
                    source,
                })?;
            f.buf.drain(..end);
        }
        Ok(())
    }
}

/// The middle of the last line in `buf` (which ends in `\n` when not empty).
fn mid_last_line(buf: &[u8]) -> usize {
    let Some((_, body)) = buf.split_last() else {
        return 0;
    };
    let line_start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    line_start + (buf.len() - line_start) / 2
}

fn open_append(path: &Path) -> Result<File, SimError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SimError::Io {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_falls_inside_the_last_line() {
        assert_eq!(mid_last_line(b""), 0);
        assert_eq!(mid_last_line(b"abcd\n"), 2);
        assert_eq!(mid_last_line(b"ab\nabcdefg\n"), 3 + 4);
    }

    #[test]
    fn split_flushes_alternate_and_a_full_flush_completes_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut set = FileSet::open(std::slice::from_ref(&path)).unwrap();
        set.push(7, b"first line\n");
        set.flush_chunk(true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        set.push(0, b"second\n");
        set.flush_chunk(true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first line\nsecond\n");
        set.push(0, b"third\n");
        set.flush_chunk(true).unwrap();
        set.flush_all().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"first line\nsecond\nthird\n"
        );
    }
}
