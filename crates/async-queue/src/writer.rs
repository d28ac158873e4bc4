//! Group commit: every change to the queue goes through one writer thread, which applies all
//! the changes waiting for it in one transaction (one fsync) and then answers each caller.
//! While a batch is being written the next one gathers, so the number of fsyncs per second
//! stays about the same as load grows and each one carries more invocations.

use std::sync::Arc;

use gust_store::{InvocationStore, QueueChange, QueueOutcome, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::QueueError;

/// The most changes in one transaction.
const MAX_BATCH: usize = 4_096;
/// Changes waiting for the writer before callers wait to hand theirs over.
const CHANNEL_CAPACITY: usize = 16_384;

type Reply = oneshot::Sender<Result<Vec<Result<QueueOutcome, String>>, QueueError>>;

struct Submission {
    changes: Vec<QueueChange>,
    reply: Reply,
}

/// Hands changes to the writer thread. Cheap to clone; the thread ends when every clone is
/// dropped.
#[derive(Clone)]
pub struct QueueWriter {
    sender: mpsc::Sender<Submission>,
}

impl QueueWriter {
    pub fn start(store: Arc<dyn InvocationStore>) -> Self {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("gust-queue-writer".into())
            .spawn(move || write_batches(store, receiver))
            .expect("the OS can start one more thread at start-up");
        Self { sender }
    }

    /// Applies `changes` durably; resolves once the batch holding them is on disk. Each
    /// change has its own outcome (an id that exists fails alone).
    pub async fn submit(
        &self,
        changes: Vec<QueueChange>,
    ) -> Result<Vec<Result<QueueOutcome, String>>, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Submission { changes, reply })
            .await
            .map_err(|_| QueueError::Stopped)?;
        answer.await.map_err(|_| QueueError::Stopped)?
    }
}

fn write_batches(store: Arc<dyn InvocationStore>, mut receiver: mpsc::Receiver<Submission>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        let mut changes = batch[0].changes.len();
        while changes < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => {
                    changes += next.changes.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let counts: Vec<usize> = batch.iter().map(|s| s.changes.len()).collect();
        let all: Vec<QueueChange> = batch
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.changes))
            .collect();
        match store.apply_queue_changes(&all) {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (submission, count) in batch.into_iter().zip(counts) {
                    let mine: Vec<Result<QueueOutcome, String>> = outcomes
                        .by_ref()
                        .take(count)
                        .map(|r| r.map_err(|e: StoreError| e.to_string()))
                        .collect();
                    let _ = submission.reply.send(Ok(mine));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, changes = all.len(), "cannot write to the invocation queue");
                for submission in batch {
                    let _ = submission
                        .reply
                        .send(Err(QueueError::Unavailable(err.to_string())));
                }
            }
        }
    }
}
