//! Function logs on disk, so that `gust fn logs` after a restart (a kill included) still shows
//! the recent lines. Every line [`crate::FunctionLogs`] keeps is appended, as it comes, to a
//! file of its function by a writer thread of its own; a file that grows past
//! [`JOURNAL_FILE_BYTES`] becomes the function's previous file (replacing the one before), so a
//! function holds at most two such files. At start the two are read back, oldest first.
//!
//! The writer is fed through a bounded channel: when the disk cannot keep up, lines are left
//! out of the journal (never out of memory) rather than queued without end.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::LogLine;

/// Size past which a function's file is rotated; two files per function at most.
pub const JOURNAL_FILE_BYTES: u64 = 512 * 1024;
/// Lines waiting for the writer; more are left out of the journal.
const QUEUE_LINES: usize = 8192;
/// Suffix of a function's file, and of its previous one.
const CURRENT: &str = "jsonl";
const PREVIOUS: &str = "jsonl.1";

enum Entry {
    Line(String, LogLine),
    Remove(String),
}

pub struct LogJournal {
    sender: SyncSender<Entry>,
}

impl LogJournal {
    /// Opens (creating) the journal in `dir`, and returns what it holds per function key,
    /// oldest line first.
    pub fn open(dir: &Path) -> std::io::Result<(Self, HashMap<String, Vec<LogLine>>)> {
        std::fs::create_dir_all(dir)?;
        // A function has its current file, its previous one, or (just rotated) only that.
        let mut stems = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let stem = name
                .strip_suffix(&format!(".{PREVIOUS}"))
                .or_else(|| name.strip_suffix(&format!(".{CURRENT}")));
            if let Some(stem) = stem {
                stems.insert(stem.to_owned());
            }
        }
        let mut kept = HashMap::new();
        for stem in stems {
            let Some(key) = key_of_file_stem(&stem) else {
                continue;
            };
            let mut lines = read_lines(&dir.join(format!("{stem}.{PREVIOUS}")));
            lines.extend(read_lines(&dir.join(format!("{stem}.{CURRENT}"))));
            kept.insert(key, lines);
        }
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("gust-log-journal".into())
            .spawn(move || write_entries(&dir, receiver))?;
        Ok((Self { sender }, kept))
    }

    /// Appends a line of function `key`, unless the writer is that far behind.
    pub fn record(&self, key: &str, line: &LogLine) {
        match self
            .sender
            .try_send(Entry::Line(key.to_owned(), line.clone()))
        {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!(
                    function = key,
                    "log journal behind: a line stays in memory only"
                )
            }
        }
    }

    /// Deletes a function's files (after the lines already queued for it).
    pub fn remove(&self, key: &str) {
        let _ = self.sender.send(Entry::Remove(key.to_owned()));
    }
}

/// `namespace/name` as a file stem: names hold no `.`, so `namespace.name` is unambiguous.
fn file_stem(key: &str) -> Option<String> {
    let (namespace, name) = key.split_once('/')?;
    let plain = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    (plain(namespace) && plain(name)).then(|| format!("{namespace}.{name}"))
}

fn key_of_file_stem(stem: &str) -> Option<String> {
    let (namespace, name) = stem.split_once('.')?;
    let key = format!("{namespace}/{name}");
    file_stem(&key).is_some().then_some(key)
}

/// A file's lines, those that parse (a line cut by a kill mid-write does not); at most two
/// files' worth is read, whatever the file's size.
fn read_lines(path: &Path) -> Vec<LogLine> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file.take(2 * JOURNAL_FILE_BYTES))
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect()
}

fn write_entries(dir: &Path, receiver: Receiver<Entry>) {
    while let Ok(first) = receiver.recv() {
        // Whatever else is waiting goes in the same pass: one open and write per function.
        let mut batch: Vec<Entry> = vec![first];
        batch.extend(receiver.try_iter().take(QUEUE_LINES));
        let mut pending: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for entry in batch {
            match entry {
                Entry::Line(key, line) => {
                    if let Ok(mut json) = serde_json::to_vec(&line) {
                        json.push(b'\n');
                        pending.entry(key).or_default().push(json);
                    }
                }
                Entry::Remove(key) => {
                    pending.remove(&key);
                    if let Some(stem) = file_stem(&key) {
                        for suffix in [CURRENT, PREVIOUS] {
                            let _ = std::fs::remove_file(dir.join(format!("{stem}.{suffix}")));
                        }
                    }
                }
            }
        }
        for (key, lines) in pending {
            let Some(stem) = file_stem(&key) else {
                continue;
            };
            if let Err(err) = append(&dir.join(format!("{stem}.{CURRENT}")), &lines) {
                tracing::warn!(function = %key, error = %err, "cannot write the log journal");
            }
        }
    }
}

/// Appends lines to a function's file, rotating it whenever the next line would take it past
/// its size: no file grows beyond [`JOURNAL_FILE_BYTES`] and a line, however many lines
/// arrive at once.
fn append(path: &PathBuf, lines: &[Vec<u8>]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let mut size = file.metadata()?.len();
    let mut chunk: Vec<u8> = Vec::new();
    for line in lines {
        if size > 0 && size + line.len() as u64 > JOURNAL_FILE_BYTES {
            file.write_all(&chunk)?;
            chunk.clear();
            std::fs::rename(path, path.with_extension(PREVIOUS))?;
            file = OpenOptions::new().create(true).append(true).open(path)?;
            size = 0;
        }
        chunk.extend_from_slice(line);
        size += line.len() as u64;
    }
    file.write_all(&chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogStream;

    fn line(text: &str) -> LogLine {
        LogLine {
            seq: 0,
            time_ms: 1,
            stream: LogStream::Stdout,
            instance: "w1".into(),
            request_id: Some("r1".into()),
            text: text.into(),
        }
    }

    /// Waits for the writer thread to have written what `done` looks for.
    fn until(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the journal writer did not catch up");
    }

    #[test]
    fn lines_come_back_bounded_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, kept) = LogJournal::open(dir.path()).unwrap();
        assert!(kept.is_empty());
        let text = "x".repeat(1000);
        for i in 0..2000 {
            journal.record("default/chatty", &line(&format!("{i} {text}")));
        }
        journal.record("default/other", &line("other's"));
        // A key that is no function's name never names a file.
        journal.record("../etc/x", &line("nowhere"));
        let current = dir.path().join("default.chatty.jsonl");
        until(|| std::fs::read_to_string(&current).is_ok_and(|text| text.contains("1999 x")));
        drop(journal);
        // A kill mid-write leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&current).unwrap();
        file.write_all(b"{\"seq\":0,\"time_ms\":").unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let size = entry.unwrap().metadata().unwrap().len();
            assert!(
                size <= JOURNAL_FILE_BYTES + 2048,
                "no file past its size and a line: {size}"
            );
        }
        let (_journal, kept) = LogJournal::open(dir.path()).unwrap();
        let chatty = &kept["default/chatty"];
        assert!(chatty.len() < 2000, "bounded: {}", chatty.len());
        assert!(chatty.last().unwrap().text.starts_with("1999 "));
        let numbers: Vec<usize> = chatty
            .iter()
            .map(|l| l.text.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, no gap"
        );
        assert_eq!(kept["default/other"][0].text, "other's");
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn a_removed_function_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = LogJournal::open(dir.path()).unwrap();
        journal.record("default/gone", &line("soon gone"));
        let file = dir.path().join("default.gone.jsonl");
        until(|| file.exists());
        journal.remove("default/gone");
        until(|| !file.exists());
        let (_journal, kept) = LogJournal::open(dir.path()).unwrap();
        assert!(kept.is_empty());
    }
}
