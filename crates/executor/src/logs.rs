//! Captured function output: every line of every instance's stdout and stderr, tagged by the
//! platform (never parsed from what the function printed), in a bounded buffer per function.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Longest line kept; the rest of a longer line is cut and marked.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Default)]
struct Buffer {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

/// Bounded per-function log buffers: the newest lines are kept, at most `lines_per_function`
/// of them and at most [`MAX_BYTES_PER_FUNCTION`] of text.
pub struct FunctionLogs {
    lines_per_function: usize,
    next_seq: AtomicU64,
    buffers: Mutex<HashMap<String, Buffer>>,
}

impl FunctionLogs {
    pub fn new(lines_per_function: usize) -> Self {
        Self {
            lines_per_function,
            next_seq: AtomicU64::new(1),
            buffers: Mutex::new(HashMap::new()),
        }
    }

    /// Records one raw line of output of `function` (key `namespace/name`).
    pub fn append(
        &self,
        function: &str,
        stream: LogStream,
        instance: &str,
        request_id: Option<String>,
        raw: &[u8],
    ) {
        let line = LogLine {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            time_ms: now_ms(),
            stream,
            instance: instance.to_owned(),
            request_id,
            text: escape_line(raw),
        };
        let mut buffers = self
            .buffers
            .lock()
            .expect("log buffer lock is never poisoned");
        let buffer = buffers.entry(function.to_owned()).or_default();
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
        let buffers = self
            .buffers
            .lock()
            .expect("log buffer lock is never poisoned");
        let Some(buffer) = buffers.get(function) else {
            return Vec::new();
        };
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

    /// Forgets a deleted function's lines.
    pub fn remove(&self, function: &str) {
        self.buffers
            .lock()
            .expect("log buffer lock is never poisoned")
            .remove(function);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Decodes as UTF-8 (lossy), cuts to [`MAX_LINE_BYTES`] and escapes every control character
/// but tab, so terminal escapes and fake newlines show as text.
fn escape_line(raw: &[u8]) -> String {
    let cut = raw.len() > MAX_LINE_BYTES;
    let raw = &raw[..raw.len().min(MAX_LINE_BYTES)];
    let text = String::from_utf8_lossy(raw);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push_str(" [line truncated]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
