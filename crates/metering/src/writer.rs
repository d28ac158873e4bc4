//! Group commit of usage records: records are buffered after their responses were sent and
//! written every [`FLUSH_INTERVAL`] in one transaction (one fsync) per batch. A clean stop
//! writes everything; a kill -9 loses at most the records of the last interval.
//!
//! Recording is a push under a lock, nothing more: no task is woken per request (on a busy
//! 2-core host, waking a writer task for every record cost more than everything else metering
//! does).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_model::UsageRecord;
use gust_store::UsageStore;
use tokio_util::sync::CancellationToken;

/// The longest a record waits before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Wait before retrying a batch the store refused (disk full, I/O error).
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct Shared {
    store: Arc<dyn UsageStore>,
    pending: Mutex<Vec<UsageRecord>>,
    /// One batch is written at a time.
    writing: tokio::sync::Mutex<()>,
}

/// Buffers usage records and writes them in batches. Cheap to clone.
#[derive(Clone)]
pub struct UsageWriter {
    shared: Arc<Shared>,
}

impl UsageWriter {
    /// Starts the flushing task on the current tokio runtime; it stops with `stop`, after a
    /// last flush.
    pub fn start(store: Arc<dyn UsageStore>, stop: CancellationToken) -> Self {
        let writer = Self {
            shared: Arc::new(Shared {
                store,
                pending: Mutex::new(Vec::new()),
                writing: tokio::sync::Mutex::new(()),
            }),
        };
        let flusher = writer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => flusher.flush().await,
                }
            }
            flusher.flush().await;
        });
        writer
    }

    /// Queues a record for the next batch; never blocks on I/O.
    pub fn record(&self, record: UsageRecord) {
        self.pending().push(record);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<UsageRecord>> {
        self.shared
            .pending
            .lock()
            .expect("usage buffer lock is never held across a panic")
    }

    /// Writes every record queued before this call, retrying until the store takes them:
    /// records are never dropped here.
    pub async fn flush(&self) {
        let _one_at_a_time = self.shared.writing.lock().await;
        loop {
            let batch = std::mem::take(&mut *self.pending());
            if batch.is_empty() {
                return;
            }
            let store = self.shared.store.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let result = store.record_usage(&batch);
                (batch, result)
            })
            .await;
            match outcome {
                Ok((_, Ok(_))) => return,
                Ok((batch, Err(err))) => {
                    tracing::error!(error = %err, records = batch.len(), "cannot write usage records; retrying");
                    self.pending().splice(0..0, batch);
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "usage writer task failed");
                    return;
                }
            }
        }
    }
}
