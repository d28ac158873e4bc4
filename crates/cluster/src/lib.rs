//! Cluster mode: several `gust up --cluster nats://...` nodes sharing one state through NATS
//! JetStream. NATS does the replication and the ordering (Raft-replicated streams, key-value
//! buckets, an object store); Gust writes no consensus of its own.
//!
//! Key types: [`Cluster`] (the connection and its buckets), [`ClusterStore`] (the metadata
//! store traits over a key-value bucket, with a local copy every read is served from, kept
//! current by a watch), [`SharedCode`] through [`ClusterCode`] (code trees in the object store
//! by digest, fetched into the local code store on first use), [`Nodes`] (heartbeats:
//! `gust nodes`).
//!
//! What lives where:
//! - bucket `gust-metadata`: environments, functions, routes, timers, queue triggers and the
//!   hashes of admin tokens, one key each (`fn.<namespace>.<name>`, ...);
//! - bucket `gust-nodes`: one heartbeat per live node, expiring with the heartbeat timeout;
//! - stream `GUST_ASYNC` and buckets `gust-invocations`, `gust-dead-letters`: the
//!   asynchronous queue (see [`ClusterQueue`]); timer ticks go in as messages whose id is
//!   (timer, tick time), which JetStream keeps once;
//! - stream `GUST_USAGE`: every attempt's usage record, once per (invocation, attempt); every
//!   node folds it into its embedded store (see [`ClusterUsage`]);
//! - stream `GUST_AUDIT`: every control-plane write through any node, folded likewise into
//!   every node's audit table (see [`ClusterAudit`]);
//! - object store `gust-code`: code trees as tar streams, named by digest.

mod audit;
mod bridge;
mod code;
mod follow;
mod metadata;
mod nodes;
mod queue;
mod usage;

pub use audit::ClusterAudit;
pub use code::ClusterCode;
pub use metadata::{ClusterStore, MetadataChanges};
pub use nodes::{HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, NodeHeartbeat, Nodes};
pub use queue::{ClusterQueue, QueueRetention};
pub use usage::ClusterUsage;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use gust_store::StoreError;

use crate::bridge::Bridge;

/// Longest a NATS call may take before the store answers "unavailable".
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a node reaches NATS.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); any one is enough to join.
    pub urls: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// A CA certificate (PEM) that NATS servers' TLS certificates are checked against, beside
    /// the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// This node's id, as `gust nodes` shows it.
    pub node_id: String,
}

/// A node's connection to the cluster.
pub struct Cluster {
    bridge: Bridge,
    jetstream: jetstream::Context,
    client: async_nats::Client,
    /// Replicas of every bucket: min(3, servers).
    replicas: usize,
    node_id: String,
}

fn unavailable(what: &str) -> impl FnOnce(String) -> StoreError + '_ {
    move |err| StoreError::Unavailable(format!("{what}: {err}"))
}

impl Cluster {
    /// Connects to NATS (waiting up to 10 s for a first server) and checks JetStream is on.
    pub fn connect(options: &ClusterOptions) -> Result<Self, StoreError> {
        if options.urls.is_empty() {
            return Err(StoreError::Unavailable(
                "--cluster names no NATS server".to_owned(),
            ));
        }
        let bridge = Bridge::new()
            .map_err(|e| unavailable("cannot start the NATS runtime")(e.to_string()))?;
        let connect = {
            let options = options.clone();
            async move {
                let mut connect = async_nats::ConnectOptions::new()
                    .name(format!("gust {}", options.node_id))
                    .retry_on_initial_connect()
                    .connection_timeout(Duration::from_secs(5));
                if let Some(path) = &options.credentials {
                    connect = connect
                        .credentials_file(path)
                        .await
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                }
                if let Some(ca) = &options.tls_ca {
                    connect = connect.add_root_certificates(ca.clone());
                }
                let servers = options
                    .urls
                    .iter()
                    .map(|url| {
                        url.parse::<async_nats::ServerAddr>()
                            .map_err(|e| format!("{url:?} is not a NATS URL: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let client = connect.connect(servers).await.map_err(|e| e.to_string())?;
                // The first server's info arrives with the connection; wait for it.
                for _ in 0..100 {
                    if client.connection_state() == async_nats::connection::State::Connected {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Asked by hand: the client's account type does not parse every server
                // version's answer.
                let info = client
                    .request("$JS.API.INFO", bytes::Bytes::new())
                    .await
                    .map_err(|e| format!("JetStream does not answer ({e})"))?;
                let info: serde_json::Value = serde_json::from_slice(&info.payload)
                    .map_err(|e| format!("JetStream's answer is not JSON ({e})"))?;
                if let Some(error) = info.get("error") {
                    return Err(format!(
                        "JetStream is not enabled for this account: {error}"
                    ));
                }
                let jetstream = jetstream::new(client.clone());
                let servers = client.server_info().connect_urls.len().max(1);
                Ok::<_, String>((jetstream, client, servers))
            }
        };
        let (jetstream, client, servers) = bridge
            .wait(Duration::from_secs(15), connect)?
            .map_err(unavailable("cannot connect to NATS"))?;
        Ok(Self {
            bridge,
            jetstream,
            client,
            replicas: servers.min(3),
            node_id: options.node_id.clone(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Replicas of the cluster's buckets.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// A key-value bucket, created with these settings if it does not exist yet (by whichever
    /// node starts first).
    fn bucket(
        &self,
        name: &'static str,
        max_age: Duration,
    ) -> Result<jetstream::kv::Store, StoreError> {
        let jetstream = self.jetstream.clone();
        // The bucket's stream made by hand, as the client's `create_key_value` would: that
        // one first reads the account's information, which it cannot parse from NATS 2.9.
        let config = jetstream::stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        self.bridge
            .wait(CALL_TIMEOUT, async move {
                match jetstream.get_key_value(name).await {
                    Ok(store) => Ok(store),
                    Err(_) => {
                        // Another node may create it meanwhile: then that one is used.
                        let created = jetstream.create_stream(config).await;
                        jetstream
                            .get_key_value(name)
                            .await
                            .map_err(|get| match created {
                                Err(create) => create.to_string(),
                                Ok(_) => get.to_string(),
                            })
                    }
                }
            })?
            .map_err(unavailable(name))
    }
}
