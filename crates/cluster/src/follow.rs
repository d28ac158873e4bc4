//! Following a stream into this node's embedded store: every node folds every message of a
//! cluster-wide stream (usage records, audit entries) into its own copy, so that reads are
//! local and give the same answer on every node once each has caught up.
//!
//! A node remembers the last stream sequence it folded in (a small file in its data
//! directory); a fold keyed so that a message folded twice (a crash between the store's write
//! and the position's) is stored once changes nothing. A node started with an empty data
//! directory folds in what the stream still holds: messages younger than its retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer, stream};
use futures_util::StreamExt;
use gust_store::StoreError;
use serde::de::DeserializeOwned;

/// Messages folded into the local store in one transaction at most.
const FOLD_BATCH: usize = 1_000;
/// How long a partial batch waits for more messages before it is folded in.
const FOLD_AFTER: Duration = Duration::from_millis(50);
/// How often a silent follower asks whether the stream holds messages it has not seen, and
/// how long it may stay behind before it starts again.
const STALL_CHECK: Duration = Duration::from_secs(1);
const STALL_LIMIT: Duration = Duration::from_secs(3);

/// Stores a batch of (stream sequence, record) in the local copy, on a blocking thread.
pub(crate) type Fold<T> = Arc<dyn Fn(Vec<(u64, T)>) -> Result<(), StoreError> + Send + Sync>;

/// Opens (or creates) the file-backed stream `name` of one `subject`, keeping messages for
/// `retention`, and starts folding it into this node's copy from `position_file`.
pub(crate) fn open_and_follow<T: DeserializeOwned + Send + 'static>(
    cluster: &crate::Cluster,
    (name, subject): (&str, &str),
    retention: Duration,
    what: &'static str,
    position_file: PathBuf,
    fold: Fold<T>,
) -> Result<(), StoreError> {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: cluster.replicas,
        max_age: retention,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let jetstream = cluster.jetstream.clone();
    let source = cluster
        .bridge
        .wait(crate::CALL_TIMEOUT, async move {
            jetstream.get_or_create_stream(config).await
        })?
        .map_err(|e| crate::unavailable(name)(e.to_string()))?;
    cluster
        .bridge
        .handle()
        .spawn(follow(source, what, position_file, fold));
    Ok(())
}

/// A message published again within this window (a retried batch) is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

fn read_position(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Written to a temporary file and renamed: a crash leaves the old position or the new one.
fn save_position(file: &Path, sequence: u64) -> std::io::Result<()> {
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, sequence.to_string())?;
    std::fs::rename(&temporary, file)
}

/// Folds the stream (of `what`: "usage", "audit") into the local store for as long as the
/// node runs, starting again from the saved position whenever the consumer breaks or falls
/// silent while behind.
pub(crate) async fn follow<T: DeserializeOwned + Send + 'static>(
    source: stream::Stream,
    what: &'static str,
    position_file: PathBuf,
    fold: Fold<T>,
) {
    let mut position = read_position(&position_file);
    let mut reported_down = false;
    loop {
        let deliver_policy = if position == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            }
        };
        let messages = match source
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
        {
            Ok(ordered) => ordered.messages().await.map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(err) => {
                if !reported_down {
                    tracing::warn!(error = %err, stream = what, "cannot read a cluster stream; retrying");
                    reported_down = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        reported_down = false;
        let mut batch: Vec<(u64, T)> = Vec::new();
        let mut batch_end = position;
        let mut behind_since: Option<Instant> = None;
        loop {
            let wait = if batch.is_empty() {
                STALL_CHECK
            } else {
                FOLD_AFTER
            };
            let next = tokio::select! {
                next = messages.next() => Some(next),
                _ = tokio::time::sleep(wait) => None,
            };
            match next {
                Some(Some(Ok(message))) => {
                    let Ok(info) = message.info() else { continue };
                    let sequence = info.stream_sequence;
                    batch_end = sequence;
                    match serde_json::from_slice::<T>(&message.payload) {
                        Ok(record) => batch.push((sequence, record)),
                        // Nothing a node publishes fails to parse; something else did.
                        Err(err) => {
                            tracing::warn!(sequence, stream = what, error = %err, "skipping a message that is not a record of its stream")
                        }
                    }
                    if batch.len() < FOLD_BATCH {
                        continue;
                    }
                }
                Some(Some(Err(err))) => {
                    tracing::warn!(error = %err, stream = what, "a cluster stream's consumer broke; resuming");
                    break;
                }
                Some(None) => break,
                None => {}
            }
            if batch_end > position {
                let records = std::mem::take(&mut batch);
                let fold = fold.clone();
                let folded = tokio::task::spawn_blocking(move || fold(records)).await;
                match folded {
                    Ok(Ok(_)) => {
                        position = batch_end;
                        behind_since = None;
                        if let Err(err) = save_position(&position_file, position) {
                            tracing::warn!(error = %err, stream = what, "cannot save a cluster stream's position");
                        }
                    }
                    _ => {
                        tracing::error!(
                            stream = what,
                            "cannot fold a cluster stream into the local store; retrying"
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
                continue;
            }
            // Silent: a consumer that went with a NATS server may stay so while the stream
            // holds records this node has not folded in.
            match source.get_info().await {
                // The stream was made anew (deleted, or its servers' storage lost): its
                // sequences start again below this node's position, which would wait for ever.
                Ok(info) if info.state.last_sequence < position => {
                    tracing::warn!(
                        stream = what,
                        position,
                        last = info.state.last_sequence,
                        "a cluster stream ends before this node's position: it was made anew; following it from its start"
                    );
                    position = 0;
                    if let Err(err) = save_position(&position_file, position) {
                        tracing::warn!(error = %err, stream = what, "cannot save a cluster stream's position");
                    }
                    break;
                }
                Ok(info) if info.state.last_sequence > position => {
                    if behind_since.get_or_insert_with(Instant::now).elapsed() >= STALL_LIMIT {
                        tracing::warn!(
                            stream = what,
                            "a cluster stream's consumer fell behind; starting it again"
                        );
                        break;
                    }
                }
                _ => behind_since = None,
            }
        }
    }
}
