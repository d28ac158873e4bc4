//! Captured function output: every line of every instance's stdout and stderr, tagged by the
//! platform (never parsed from what the function printed), in a bounded buffer per function.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::log_journal::LogJournal;

/// Longest line kept; the rest of a longer line is cut and marked.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// Increases across all functions; `after` in a query resumes from it.
    pub seq: u64,
    pub time_ms: u64,
    pub stream: LogStream,
    pub instance: String,
    pub request_id: Option<String>,
    /// The line with control characters escaped (`\x1b`), so it is safe on a terminal.
    pub text: String,
}

/// The key a function's lines are kept under.
pub fn function_key(namespace: &gust_model::Namespace, function: &gust_model::Name) -> String {
    format!("{namespace}/{function}")
}

#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    pub after: Option<u64>,
    pub request_id: Option<String>,
    pub limit: Option<usize>,
}

/// Text kept per function, whatever the number of lines: a log flood costs a bounded amount
/// of memory.
pub const MAX_BYTES_PER_FUNCTION: usize = 256 * 1024;

/// Output a function may log per second, all its instances together; lines beyond it are
/// dropped (and counted in a marker line) so that a log flood costs Gust bounded CPU.
pub const MAX_LOG_BYTES_PER_SECOND: usize = 256 * 1024;
const RATE_WINDOW_MS: u64 = 1_000;

#[derive(Default)]
struct Buffer {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// Start of the current rate window, bytes taken in it, lines dropped in it.
    window_start_ms: u64,
    window_bytes: usize,
    dropped: u64,
}

/// Whether a line was kept; a dropped line says how long until the function's output is
/// taken again, so that its reader can stop reading (and the writer wait) meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Kept,
    Dropped { retry_in: std::time::Duration },
}

/// Bounded per-function log buffers: the newest lines are kept, at most `lines_per_function`
/// of them and at most [`MAX_BYTES_PER_FUNCTION`] of text.
pub struct FunctionLogs {
    lines_per_function: usize,
    next_seq: AtomicU64,
    buffers: Mutex<HashMap<String, Buffer>>,
    /// Where kept lines also go, to outlive a restart; `None`: memory only.
    journal: Option<LogJournal>,
}

impl FunctionLogs {
    pub fn new(lines_per_function: usize) -> Self {
        Self {
            lines_per_function,
            next_seq: AtomicU64::new(1),
            buffers: Mutex::new(HashMap::new()),
            journal: None,
        }
    }

    /// Logs that are also kept on disk in `dir` (see [`LogJournal`]), starting with the lines
    /// a previous run left there (numbered anew, in their order).
    pub fn with_journal(lines_per_function: usize, dir: &std::path::Path) -> std::io::Result<Self> {
        let (journal, kept) = LogJournal::open(dir)?;
        let logs = Self::new(lines_per_function);
        {
            let mut buffers = logs
                .buffers
                .lock()
                .expect("log buffer lock is never poisoned");
            for (function, lines) in kept {
                let buffer = buffers.entry(function).or_default();
                for line in lines {
                    logs.keep(buffer, line);
                }
            }
        }
        Ok(Self {
            journal: Some(journal),
            ..logs
        })
    }

    /// Records one raw line of output of `function` (key `namespace/name`), unless the
    /// function is over its log rate.
    pub fn append(
        &self,
        function: &str,
        stream: LogStream,
        instance: &str,
        request_id: Option<String>,
        raw: &[u8],
    ) -> Admission {
        let now = now_ms();
        let mut buffers = self
            .buffers
            .lock()
            .expect("log buffer lock is never poisoned");
        let buffer = buffers.entry(function.to_owned()).or_default();
        self.roll_window(function, buffer, now);
        if buffer.window_bytes + raw.len() > MAX_LOG_BYTES_PER_SECOND {
            buffer.dropped += 1;
            let retry_in = (buffer.window_start_ms + RATE_WINDOW_MS).saturating_sub(now);
            return Admission::Dropped {
                retry_in: std::time::Duration::from_millis(retry_in.max(1)),
            };
        }
        buffer.window_bytes += raw.len();
        self.push(
            function,
            buffer,
            now,
            stream,
            instance,
            request_id,
            escape_line(raw),
        );
        Admission::Kept
    }

    /// Starts a new rate window once the last one is over, first recording a marker line for
    /// what was dropped in it.
    fn roll_window(&self, function: &str, buffer: &mut Buffer, now: u64) {
        if now < buffer.window_start_ms + RATE_WINDOW_MS {
            return;
        }
        buffer.window_start_ms = now;
        buffer.window_bytes = 0;
        if buffer.dropped > 0 {
            let marker = format!(
                "[gust] {} lines dropped: output over {MAX_LOG_BYTES_PER_SECOND} bytes per second",
                buffer.dropped
            );
            buffer.dropped = 0;
            self.push(
                function,
                buffer,
                now,
                LogStream::Stderr,
                "gust",
                None,
                marker,
            );
        }
    }

    /// Counts lines of `function` its reader discarded unread while over the rate; they go
    /// into the next marker line.
    pub fn dropped(&self, function: &str, lines: u64) {
        if lines == 0 {
            return;
        }
        let mut buffers = self
            .buffers
            .lock()
            .expect("log buffer lock is never poisoned");
        buffers.entry(function.to_owned()).or_default().dropped += lines;
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        function: &str,
        buffer: &mut Buffer,
        time_ms: u64,
        stream: LogStream,
        instance: &str,
        request_id: Option<String>,
        text: String,
    ) {
        let line = LogLine {
            seq: 0,
            time_ms,
            stream,
            instance: instance.to_owned(),
            request_id,
            text,
        };
        if let Some(journal) = &self.journal {
            journal.record(function, &line);
        }
        self.keep(buffer, line);
    }

    /// Numbers a line and keeps it, dropping the oldest past the function's bounds.
    fn keep(&self, buffer: &mut Buffer, mut line: LogLine) {
        line.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        buffer.bytes += line.text.len();
        buffer.lines.push_back(line);
        while buffer.lines.len() > self.lines_per_function || buffer.bytes > MAX_BYTES_PER_FUNCTION
        {
            match buffer.lines.pop_front() {
                Some(old) => buffer.bytes -= old.text.len(),
                None => break,
            }
        }
    }

    pub fn read(&self, function: &str, query: &LogQuery) -> Vec<LogLine> {
        let mut buffers = self
            .buffers
            .lock()
            .expect("log buffer lock is never poisoned");
        let Some(buffer) = buffers.get_mut(function) else {
            return Vec::new();
        };
        // A flood that has ended still gets its marker.
        self.roll_window(function, buffer, now_ms());
        let matching = buffer.lines.iter().filter(|line| {
            query.after.is_none_or(|after| line.seq > after)
                && query
                    .request_id
                    .as_ref()
                    .is_none_or(|id| line.request_id.as_ref() == Some(id))
        });
        let mut lines: Vec<LogLine> = matching.cloned().collect();
        if let Some(limit) = query.limit
            && lines.len() > limit
        {
            lines.drain(..lines.len() - limit);
        }
        lines
    }

    /// Forgets a deleted function's lines, on disk too.
    pub fn remove(&self, function: &str) {
        self.buffers
            .lock()
            .expect("log buffer lock is never poisoned")
            .remove(function);
        if let Some(journal) = &self.journal {
            journal.remove(function);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Decodes as UTF-8 (lossy), cuts to [`MAX_LINE_BYTES`] and escapes every control character
/// but tab, and the invisible characters that change how a line reads (bidirectional
/// overrides, line and paragraph separators), so terminal escapes, fake newlines and text
/// shown in another order than written show as what they are.
pub fn escape_line(raw: &[u8]) -> String {
    let cut = raw.len() > MAX_LINE_BYTES;
    let raw = &raw[..raw.len().min(MAX_LINE_BYTES)];
    let text = String::from_utf8_lossy(raw);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() && c != '\t') || reorders_or_breaks(c) {
            match c as u32 {
                code @ ..=0xff => out.push_str(&format!("\\x{code:02x}")),
                code => out.push_str(&format!("\\u{{{code:04x}}}")),
            }
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push_str(" [line truncated]");
    }
    out
}

/// Unicode's bidirectional controls, and its line and paragraph separators.
fn reorders_or_breaks(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_reordering_and_separating_characters() {
        assert_eq!(
            escape_line("a\u{202e}evil\u{2028}b\u{85}".as_bytes()),
            "a\\u{202e}evil\\u{2028}b\\x85"
        );
    }

    #[test]
    fn escapes_terminal_sequences() {
        assert_eq!(
            escape_line(b"\x1b[31mred\x1b[0m\tok\r"),
            "\\x1b[31mred\\x1b[0m\tok"
        );
        assert_eq!(escape_line(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn keeps_the_newest_lines_and_filters() {
        let logs = FunctionLogs::new(3);
        for i in 0..5 {
            let id = if i % 2 == 0 { "even" } else { "odd" };
            logs.append(
                "default/f",
                LogStream::Stdout,
                "i1",
                Some(id.into()),
                format!("{i}").as_bytes(),
            );
        }
        let all = logs.read("default/f", &LogQuery::default());
        assert_eq!(
            all.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
        let odd = logs.read(
            "default/f",
            &LogQuery {
                request_id: Some("odd".into()),
                ..Default::default()
            },
        );
        assert_eq!(odd.len(), 1);
        let after = logs.read(
            "default/f",
            &LogQuery {
                after: Some(all[1].seq),
                ..Default::default()
            },
        );
        assert_eq!(after.len(), 1);
        assert!(logs.read("default/other", &LogQuery::default()).is_empty());
    }

    #[test]
    fn a_flood_of_long_lines_stays_within_the_byte_cap() {
        let logs = FunctionLogs::new(1_000_000);
        let long = vec![b'x'; MAX_LINE_BYTES];
        for _ in 0..1_000 {
            logs.append("default/flood", LogStream::Stdout, "i1", None, &long);
        }
        let kept = logs.read("default/flood", &LogQuery::default());
        let bytes: usize = kept.iter().map(|l| l.text.len()).sum();
        assert!(bytes <= MAX_BYTES_PER_FUNCTION, "{bytes}");
        assert!(kept.len() >= MAX_BYTES_PER_FUNCTION / (MAX_LINE_BYTES + 32) - 1);
    }

    #[test]
    fn cuts_long_lines() {
        let line = escape_line(&vec![b'a'; MAX_LINE_BYTES * 2]);
        assert!(line.len() < MAX_LINE_BYTES + 32 && line.ends_with("[line truncated]"));
    }
}
