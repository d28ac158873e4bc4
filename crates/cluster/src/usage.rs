//! Usage records in a cluster: every node publishes the records of the attempts it ran to one
//! stream, each with the message id (invocation, attempt) so that JetStream's duplicate window
//! drops a repeat, and every node folds the whole stream into its own embedded usage store.
//! `gust usage` therefore reads local data on any node and gives the same totals on all of
//! them once each has caught up, without a query fanned out to its peers.
//!
//! A node remembers the last stream sequence it folded in (a small file in its data
//! directory); the embedded store counts a record once by its key, so folding a message twice
//! (a crash between the store's write and the position's) changes no total. A node started
//! with an empty data directory folds in what the stream still holds: records younger than
//! the stream's retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use gust_model::{HourlyUsage, Name, Namespace, UsageRecord};
use gust_store::{StoreError, UsagePruned, UsageStore};

use crate::bridge::Bridge;
use crate::{CALL_TIMEOUT, Cluster, unavailable};

const USAGE_STREAM: &str = "GUST_USAGE";
const USAGE_SUBJECT: &str = "gust.usage";
/// A record published again within this window (a retried batch) is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Records folded into the local store in one transaction at most.
const FOLD_BATCH: usize = 1_000;
/// How long a partial batch waits for more records before it is folded in.
const FOLD_AFTER: Duration = Duration::from_millis(50);
/// How often a silent follower asks whether the stream holds records it has not seen, and
/// how long it may stay behind before it starts again.
const STALL_CHECK: Duration = Duration::from_secs(1);
const STALL_LIMIT: Duration = Duration::from_secs(3);

/// The cluster's usage: written to JetStream, read from this node's copy.
pub struct ClusterUsage {
    bridge: Bridge,
    jetstream: jetstream::Context,
    local: Arc<dyn UsageStore>,
}

impl ClusterUsage {
    /// Opens (or creates) the usage stream, keeping records for `retention`, and starts
    /// folding it into `local` from the position saved in `position_file`.
    pub fn open(
        cluster: &Cluster,
        local: Arc<dyn UsageStore>,
        retention: Duration,
        position_file: PathBuf,
    ) -> Result<Arc<Self>, StoreError> {
        let jetstream = cluster.jetstream.clone();
        let config = stream::Config {
            name: USAGE_STREAM.to_owned(),
            subjects: vec![USAGE_SUBJECT.to_owned()],
            storage: stream::StorageType::File,
            num_replicas: cluster.replicas,
            max_age: retention,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let usage_stream = cluster
            .bridge
            .wait(CALL_TIMEOUT, {
                let jetstream = jetstream.clone();
                async move { jetstream.get_or_create_stream(config).await }
            })?
            .map_err(|e| unavailable("the usage stream")(e.to_string()))?;
        cluster
            .bridge
            .handle()
            .spawn(follow(usage_stream, local.clone(), position_file));
        Ok(Arc::new(Self {
            bridge: cluster.bridge.clone(),
            jetstream,
            local,
        }))
    }
}

impl UsageStore for ClusterUsage {
    /// Durable once JetStream acknowledged every record; the count is of records JetStream
    /// had not seen within its duplicate window.
    fn record_usage(&self, records: &[UsageRecord]) -> Result<usize, StoreError> {
        let mut messages = Vec::with_capacity(records.len());
        for record in records {
            let body = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
                key: record.key(),
                source,
            })?;
            messages.push((record.key(), body));
        }
        let jetstream = self.jetstream.clone();
        self.bridge
            .wait(CALL_TIMEOUT, async move {
                // Published all at once, then every acknowledgement awaited: one round trip.
                let mut acks = Vec::with_capacity(messages.len());
                for (key, body) in messages {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", key.as_str());
                    let ack = jetstream
                        .publish_with_headers(USAGE_SUBJECT, headers, body.into())
                        .await
                        .map_err(|e| e.to_string())?;
                    acks.push(std::future::IntoFuture::into_future(ack));
                }
                let mut new = 0;
                for ack in futures_util::future::join_all(acks).await {
                    if !ack.map_err(|e| e.to_string())?.duplicate {
                        new += 1;
                    }
                }
                Ok::<_, String>(new)
            })?
            .map_err(unavailable("cannot publish usage records"))
    }

    fn usage_hours(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        since_ms: u64,
    ) -> Result<Vec<HourlyUsage>, StoreError> {
        self.local.usage_hours(namespace, function, since_ms)
    }

    fn usage_records(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.local
            .usage_records(namespace, function, since_ms, limit)
    }

    /// Prunes this node's copy; the stream drops records by its own retention.
    fn prune_usage(
        &self,
        records_before_ms: u64,
        hours_before_ms: u64,
        limit: usize,
    ) -> Result<UsagePruned, StoreError> {
        self.local
            .prune_usage(records_before_ms, hours_before_ms, limit)
    }
}

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

/// Folds the stream into the local store for as long as the node runs, starting again from
/// the saved position whenever the consumer breaks or falls silent while behind.
async fn follow(usage_stream: stream::Stream, local: Arc<dyn UsageStore>, position_file: PathBuf) {
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
        let messages = match usage_stream
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
                    tracing::warn!(error = %err, "cannot read the cluster's usage stream; retrying");
                    reported_down = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        reported_down = false;
        let mut batch: Vec<UsageRecord> = Vec::new();
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
                    match serde_json::from_slice::<UsageRecord>(&message.payload) {
                        Ok(record) => batch.push(record),
                        // Nothing a node publishes fails to parse; something else did.
                        Err(err) => {
                            tracing::warn!(sequence, error = %err, "skipping a usage message that is not a usage record")
                        }
                    }
                    if batch.len() < FOLD_BATCH {
                        continue;
                    }
                }
                Some(Some(Err(err))) => {
                    tracing::warn!(error = %err, "the usage stream's consumer broke; resuming");
                    break;
                }
                Some(None) => break,
                None => {}
            }
            if batch_end > position {
                let records = std::mem::take(&mut batch);
                let store = local.clone();
                let folded =
                    tokio::task::spawn_blocking(move || store.record_usage(&records)).await;
                match folded {
                    Ok(Ok(_)) => {
                        position = batch_end;
                        behind_since = None;
                        if let Err(err) = save_position(&position_file, position) {
                            tracing::warn!(error = %err, "cannot save the usage stream's position");
                        }
                    }
                    _ => {
                        tracing::error!("cannot fold usage records into the local store; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
                continue;
            }
            // Silent: a consumer that went with a NATS server may stay so while the stream
            // holds records this node has not folded in.
            match usage_stream.get_info().await {
                Ok(info) if info.state.last_sequence > position => {
                    if behind_since.get_or_insert_with(Instant::now).elapsed() >= STALL_LIMIT {
                        tracing::warn!(
                            "the usage stream's consumer fell behind; starting it again"
                        );
                        break;
                    }
                }
                _ => behind_since = None,
            }
        }
    }
}
