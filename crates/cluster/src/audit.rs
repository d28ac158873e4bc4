//! The audit log in a cluster: every node publishes the control-plane writes it served to one
//! stream, and every node folds the whole stream into its embedded audit table (see
//! [`crate::follow`]). `gust audit list` on any node shows the writes made through every node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use gust_model::{AuditEntry, Namespace};
use gust_store::{AuditStore, StoreError};

use crate::bridge::Bridge;
use crate::follow::open_and_follow;
use crate::{CALL_TIMEOUT, Cluster, unavailable};

const AUDIT_STREAM: &str = "GUST_AUDIT";
const AUDIT_SUBJECT: &str = "gust.audit";

/// The cluster's audit log: written to JetStream, read from this node's copy.
pub struct ClusterAudit {
    bridge: Bridge,
    jetstream: jetstream::Context,
    local: Arc<dyn AuditStore>,
}

impl ClusterAudit {
    /// Opens (or creates) the audit stream, keeping entries for `retention`, and starts
    /// folding it into `local` from the position saved in `position_file`.
    pub fn open(
        cluster: &Cluster,
        local: Arc<dyn AuditStore>,
        retention: Duration,
        position_file: PathBuf,
    ) -> Result<Arc<Self>, StoreError> {
        let store = local.clone();
        let fold = move |entries: Vec<(u64, AuditEntry)>| store.fold_audit(&entries);
        open_and_follow(
            cluster,
            (AUDIT_STREAM, AUDIT_SUBJECT),
            retention,
            "audit",
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

impl AuditStore for ClusterAudit {
    /// Durable once JetStream acknowledged it; every node's copy has it soon after. When
    /// JetStream cannot take it, this node keeps it in its own copy, and the error is returned
    /// (and logged by the caller).
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let body = serde_json::to_vec(entry).map_err(|source| StoreError::Corrupt {
            key: format!("audit entry at {}", entry.at_ms),
            source,
        })?;
        let jetstream = self.jetstream.clone();
        let published = self
            .bridge
            .wait(CALL_TIMEOUT, async move {
                jetstream
                    .publish(AUDIT_SUBJECT, body.into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            })
            .and_then(|acked| {
                acked
                    .map(drop)
                    .map_err(unavailable("cannot publish an audit entry"))
            });
        if published.is_err() {
            let _ = self.local.append_audit(entry);
        }
        published
    }

    fn audit(
        &self,
        since_ms: u64,
        namespace: Option<&Namespace>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.local.audit(since_ms, namespace, limit)
    }

    fn fold_audit(&self, entries: &[(u64, AuditEntry)]) -> Result<(), StoreError> {
        self.local.fold_audit(entries)
    }

    /// Prunes this node's copy; the stream drops entries by its own retention.
    fn prune_audit(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.local.prune_audit(before_ms, limit)
    }
}
