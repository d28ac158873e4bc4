//! One fire per timer tick across the cluster: every node's scheduler sees every tick, and a
//! node enqueues one only after claiming it in the `gust-ticks` bucket by (timer, tick time),
//! which exactly one node's create wins. Claims expire after a day.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_trait::async_trait;
use bytes::Bytes;
use gust_executor::{Enqueue, EnqueueError, RequestId};
use gust_model::{AsyncInvocation, AsyncSource, Name, Namespace, StoredRequest, Timer};
use gust_store::StoreError;

use crate::bridge::Bridge;
use crate::{CALL_TIMEOUT, Cluster};

const TICKS_BUCKET: &str = "gust-ticks";
const CLAIM_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// An [`Enqueue`] that claims each timer tick cluster-wide before handing it to `inner`.
pub struct ClaimedTicks {
    bridge: Bridge,
    claims: kv::Store,
    node_id: String,
    inner: Arc<dyn Enqueue>,
}

impl ClaimedTicks {
    pub fn new(cluster: &Cluster, inner: Arc<dyn Enqueue>) -> Result<Self, StoreError> {
        Ok(Self {
            bridge: cluster.bridge.clone(),
            claims: cluster.bucket(TICKS_BUCKET, CLAIM_EXPIRY)?,
            node_id: cluster.node_id.clone(),
            inner,
        })
    }
}

#[async_trait]
impl Enqueue for ClaimedTicks {
    async fn enqueue(
        &self,
        id: &RequestId,
        namespace: Namespace,
        function: Name,
        source: AsyncSource,
        request: &http::Request<Bytes>,
    ) -> Result<(), EnqueueError> {
        self.inner
            .enqueue(id, namespace, function, source, request)
            .await
    }

    async fn enqueue_tick(&self, timer: &Timer, tick_ms: u64) -> Result<bool, EnqueueError> {
        let claims = self.claims.clone();
        let key = format!("{}.{}.{tick_ms}", timer.namespace, timer.name);
        let node = Bytes::from(self.node_id.clone());
        let claimed = self
            .bridge
            .handle()
            .spawn(async move {
                let claim = async {
                    match claims.create(&key, node.clone()).await {
                        Ok(_) => Ok(true),
                        // Ours if this node claimed it before and its enqueue failed.
                        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => claims
                            .get(&key)
                            .await
                            .map(|holder| holder == Some(node))
                            .map_err(|err| err.to_string()),
                        Err(err) => Err(err.to_string()),
                    }
                };
                tokio::time::timeout(CALL_TIMEOUT, claim)
                    .await
                    .unwrap_or_else(|_| Err("NATS did not answer".to_owned()))
            })
            .await
            .map_err(|err| err.to_string())
            .and_then(|claimed| claimed)
            .map_err(|err| EnqueueError::Unavailable(format!("cannot claim the tick: {err}")))?;
        if !claimed {
            // Another node has it.
            return Ok(false);
        }
        self.inner.enqueue_tick(timer, tick_ms).await
    }

    async fn store_dead_letter(
        &self,
        invocation: AsyncInvocation,
        request: StoredRequest,
    ) -> Result<(), EnqueueError> {
        self.inner.store_dead_letter(invocation, request).await
    }
}
