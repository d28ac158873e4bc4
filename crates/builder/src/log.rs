//! A build's output: written to a file as it comes (for `gust fn build-logs`), bounded, with
//! its last line kept for progress and its tail for the error a failed build reports.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Lines kept for a failed build's error: its last ones, and the first that say "error"
/// (a tool may print its reason first and pages of help after it, as npm does).
const TAIL_LINES: usize = 20;
const FIRST_ERROR_LINES: usize = 6;
/// The longest line kept whole; the rest of a longer one is cut.
pub(crate) const MAX_LINE_BYTES: usize = 2048;

pub struct BuildLog {
    path: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    file: Option<File>,
    written: u64,
    cut: bool,
    tail: VecDeque<String>,
    first_errors: Vec<String>,
}

impl BuildLog {
    /// Creates (truncating) the log file; at most `limit` bytes are written to it, after which
    /// only the tail is kept (and written when the build ends).
    pub fn create(path: &Path, limit: u64) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::create(path)?;
        Ok(Self {
            path: path.to_owned(),
            limit,
            inner: Mutex::new(Inner {
                file: Some(file),
                written: 0,
                cut: false,
                tail: VecDeque::new(),
                first_errors: Vec::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (a trailing newline is added).
    pub fn line(&self, text: &str) {
        // Control characters (a terminal's escape sequences) are shown, not obeyed, by
        // whoever reads the log.
        let mut line: String = text
            .trim_end_matches(['\r', '\n'])
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect();
        if line.len() > MAX_LINE_BYTES {
            let mut end = MAX_LINE_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(" [...]");
        }
        let mut inner = self.inner.lock().expect("build log lock is never poisoned");
        let bytes = line.len() as u64 + 1;
        if !inner.cut && inner.written + bytes > self.limit {
            inner.cut = true;
            let note = format!(
                "[the build's output passed {} bytes: only its last lines follow]\n",
                self.limit
            );
            if let Some(file) = inner.file.as_mut() {
                let _ = file.write_all(note.as_bytes());
            }
        }
        if !inner.cut {
            inner.written += bytes;
            if let Some(file) = inner.file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
        }
        if inner.first_errors.len() < FIRST_ERROR_LINES
            && line.to_ascii_lowercase().contains("error")
        {
            inner.first_errors.push(line.clone());
        }
        if inner.tail.len() == TAIL_LINES {
            inner.tail.pop_front();
        }
        inner.tail.push_back(line);
    }

    /// The last non-empty line, for a progress display.
    pub fn last_line(&self) -> String {
        let inner = self.inner.lock().expect("build log lock is never poisoned");
        inner
            .tail
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
            .cloned()
            .unwrap_or_default()
    }

    /// For a failed build's error: the first lines that say "error" (unless the last lines
    /// hold them), then the last lines.
    pub fn tail(&self) -> String {
        let inner = self.inner.lock().expect("build log lock is never poisoned");
        let mut shown: Vec<String> = inner
            .first_errors
            .iter()
            .filter(|line| !inner.tail.contains(line))
            .cloned()
            .collect();
        if !shown.is_empty() {
            shown.push("[...]".to_owned());
        }
        shown.extend(inner.tail.iter().cloned());
        shown.join("\n")
    }

    /// Ends the log: a cut log gets its last lines, then the file is closed.
    pub fn finish(&self) {
        let mut inner = self.inner.lock().expect("build log lock is never poisoned");
        let tail: Vec<String> = if inner.cut {
            inner.tail.iter().cloned().collect()
        } else {
            Vec::new()
        };
        if let Some(mut file) = inner.file.take() {
            for line in tail {
                let _ = writeln!(file, "{line}");
            }
            let _ = file.sync_all();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.inner
            .lock()
            .expect("build log lock is never poisoned")
            .file
            .is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_its_limit_keeps_its_head_and_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::create(&dir.path().join("b.log"), 100).unwrap();
        for n in 0..100 {
            log.line(&format!("line {n}"));
        }
        log.finish();
        let written = std::fs::read_to_string(log.path()).unwrap();
        assert!(written.starts_with("line 0\n"), "{written}");
        assert!(written.contains("only its last lines follow"), "{written}");
        assert!(written.ends_with("line 99\n"), "{written}");
        assert!(!written.contains("line 50\n"), "{written}");
        assert_eq!(log.last_line(), "line 99");
        assert!(log.tail().starts_with("line 80"));
    }
}
