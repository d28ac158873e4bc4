//! Group commit of usage records: records arrive after their responses were sent and are
//! written in batches, one transaction (one fsync) each, at most [`FLUSH_INTERVAL`] after the
//! first record of a batch arrived. A clean stop writes everything; a kill -9 loses at most
//! the records of that window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gust_model::UsageRecord;
use gust_store::UsageStore;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The longest a record waits before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Records queued for writing; past this, senders wait (off the request path) instead of
/// growing memory.
const QUEUE_CAPACITY: usize = 65_536;
const MAX_BATCH: usize = 10_000;
/// Wait before retrying a batch the store refused (disk full, I/O error).
const RETRY_AFTER: Duration = Duration::from_secs(1);

enum Message {
    Record(UsageRecord),
    /// Write everything received so far, then answer.
    Flush(oneshot::Sender<()>),
}

/// Hands records to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct UsageWriter {
    queue: mpsc::Sender<Message>,
    written: Arc<AtomicU64>,
}

impl UsageWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(store: Arc<dyn UsageStore>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let written = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(store, receiver, written.clone()));
        Self { queue, written }
    }

    /// Queues a record; never blocks the caller.
    pub fn record(&self, record: UsageRecord) {
        match self.queue.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let queue = self.queue.clone();
                tokio::spawn(async move {
                    let _ = queue.send(message).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("usage writer stopped; a usage record was not written");
            }
        }
    }

    /// Waits until every record queued before this call is on disk.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Records written since start (new ones; duplicates are not counted).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

async fn run(
    store: Arc<dyn UsageStore>,
    mut receiver: mpsc::Receiver<Message>,
    written: Arc<AtomicU64>,
) {
    let mut batch: Vec<UsageRecord> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        // A batch opens with its first message and closes at the interval, when full, or when
        // someone asks for a flush.
        let Some(first) = receiver.recv().await else {
            write(&store, &mut batch, &written).await;
            return;
        };
        let deadline = Instant::now() + FLUSH_INTERVAL;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => batch.push(record),
                Message::Flush(done) => {
                    waiting.push(done);
                    break;
                }
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = tokio::select! {
                message = receiver.recv() => message,
                _ = tokio::time::sleep_until(deadline) => None,
            };
        }
        write(&store, &mut batch, &written).await;
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes the batch, retrying until the store takes it: records are never dropped here.
async fn write(store: &Arc<dyn UsageStore>, batch: &mut Vec<UsageRecord>, written: &AtomicU64) {
    while !batch.is_empty() {
        let records = std::mem::take(batch);
        let writer = store.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let result = writer.record_usage(&records);
            (records, result)
        })
        .await;
        match outcome {
            Ok((_, Ok(new))) => {
                written.fetch_add(new as u64, Ordering::Relaxed);
            }
            Ok((records, Err(err))) => {
                tracing::error!(error = %err, records = records.len(), "cannot write usage records; retrying");
                *batch = records;
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "usage writer task failed");
                return;
            }
        }
    }
}
