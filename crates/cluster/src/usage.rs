//! Usage records in a cluster: every node publishes the records of the attempts it ran to one
//! stream, each with the message id (invocation, attempt) so that JetStream's duplicate window
//! drops a repeat, and every node folds the whole stream into its own embedded usage store.
//! `gust usage` therefore reads local data on any node and gives the same totals on all of
//! them once each has caught up, without a query fanned out to its peers.
//!
//! The embedded store counts a record once by its key, so folding a message twice changes no
//! total (see [`crate::follow`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use gust_model::{HourlyUsage, Name, Namespace, UsageRecord};
use gust_store::{StoreError, UsagePruned, UsageStore};

use crate::bridge::Bridge;
use crate::follow::open_and_follow;
use crate::{CALL_TIMEOUT, Cluster, unavailable};

const USAGE_STREAM: &str = "GUST_USAGE";
const USAGE_SUBJECT: &str = "gust.usage";

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
        let store = local.clone();
        let fold = move |records: Vec<(u64, UsageRecord)>| {
            let records: Vec<UsageRecord> = records.into_iter().map(|(_, r)| r).collect();
            store.record_usage(&records).map(drop)
        };
        open_and_follow(
            cluster,
            (USAGE_STREAM, USAGE_SUBJECT),
            retention,
            "usage",
            position_file,
            Arc::new(fold),
        )?;
        let jetstream = cluster.jetstream.clone();
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
