//! Live nodes: each node puts its heartbeat into the `gust-nodes` bucket every
//! [`HEARTBEAT_INTERVAL`]; the bucket drops a heartbeat [`HEARTBEAT_TIMEOUT`] after it was put,
//! so a node that died leaves the list on its own.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use gust_store::StoreError;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::{CALL_TIMEOUT, Cluster};

const NODES_BUCKET: &str = "gust-nodes";
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node says about itself in each heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeHeartbeat {
    pub id: String,
    /// Where its API listens, if it runs one.
    pub api: Option<String>,
    /// Where its public listener listens, if it runs one.
    pub public: Option<String>,
    pub version: String,
    pub roles: Vec<String>,
    pub started_at_ms: u64,
    pub instances: u64,
    pub in_flight: u64,
    pub heartbeat_at_ms: u64,
}

#[derive(Clone)]
pub struct Nodes {
    bridge: Bridge,
    bucket: kv::Store,
}

impl Nodes {
    pub fn open(cluster: &Cluster) -> Result<Self, StoreError> {
        Ok(Self {
            bridge: cluster.bridge.clone(),
            bucket: cluster.bucket(NODES_BUCKET, HEARTBEAT_TIMEOUT)?,
        })
    }

    /// Puts a heartbeat every [`HEARTBEAT_INTERVAL`], made by `beat`, until `stop`; then
    /// removes this node from the list.
    pub async fn beat(
        &self,
        mut beat: impl FnMut() -> NodeHeartbeat + Send,
        stop: CancellationToken,
    ) {
        let mut heartbeat = beat();
        let id = heartbeat.id.clone();
        loop {
            let bucket = self.bucket.clone();
            let value = Bytes::from(serde_json::to_vec(&heartbeat).expect("serializes"));
            let put = self.bridge.handle().spawn(async move {
                tokio::time::timeout(CALL_TIMEOUT, bucket.put(id_key(&heartbeat.id), value)).await
            });
            if !matches!(put.await, Ok(Ok(Ok(_)))) {
                tracing::warn!("cannot put this node's heartbeat");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
            }
            heartbeat = beat();
        }
        let bucket = self.bucket.clone();
        let _ = self
            .bridge
            .handle()
            .spawn(
                async move { tokio::time::timeout(CALL_TIMEOUT, bucket.delete(id_key(&id))).await },
            )
            .await;
    }

    /// Every live node, by id.
    pub fn list(&self) -> Result<Vec<NodeHeartbeat>, StoreError> {
        let bucket = self.bucket.clone();
        let mut nodes = self
            .bridge
            .wait(CALL_TIMEOUT, async move {
                let mut nodes = Vec::new();
                let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
                while let Some(key) = keys.next().await {
                    let key = key.map_err(|e| e.to_string())?;
                    if let Ok(Some(value)) = bucket.get(&key).await
                        && let Ok(node) = serde_json::from_slice::<NodeHeartbeat>(&value)
                    {
                        nodes.push(node);
                    }
                }
                Ok::<_, String>(nodes)
            })?
            .map_err(|err| StoreError::Unavailable(format!("cannot list nodes: {err}")))?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

/// A node id as a key: the characters keys allow, others replaced.
fn id_key(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
