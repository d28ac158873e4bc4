//! What `gust up` adds to a node that joins a cluster (`--cluster`): the shared store in place
//! of the embedded metadata, tokens any node accepts, heartbeats for `gust nodes`, and the
//! loop that applies other nodes' changes to this node's routes, pools, timers, queue
//! triggers and instances. A single node uses the same [`ThisNode`] for `gust nodes`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gust_api::{ApiError, ApiState, NodeDirectory, TokenCheck};
use gust_api_types::NodeView;
use gust_cluster::{Cluster, ClusterOptions, ClusterStore, NodeHeartbeat, Nodes};
use gust_executor::Executor;
use gust_store::CodeStore;
use tokio_util::sync::CancellationToken;

/// This node, as it describes itself in `gust nodes` and its heartbeats.
pub struct ThisNode {
    pub id: String,
    pub api: Option<String>,
    pub public: Option<String>,
    pub roles: Vec<String>,
    pub started_at_ms: u64,
    pub executor: Arc<Executor>,
}

impl ThisNode {
    pub fn heartbeat(&self) -> NodeHeartbeat {
        let (mut instances, mut in_flight) = (0, 0);
        for function in self.executor.all_instances() {
            instances += (function.counts.busy + function.counts.idle) as u64;
            in_flight += function.counts.busy as u64;
        }
        NodeHeartbeat {
            id: self.id.clone(),
            api: self.api.clone(),
            public: self.public.clone(),
            version: crate::commands::version::LONG_VERSION.to_owned(),
            roles: self.roles.clone(),
            started_at_ms: self.started_at_ms,
            instances,
            in_flight,
            heartbeat_at_ms: now_ms(),
        }
    }
}

fn view(node: NodeHeartbeat) -> NodeView {
    NodeView {
        id: node.id,
        api: node.api,
        public: node.public,
        version: node.version,
        roles: node.roles,
        started_at_ms: node.started_at_ms,
        instances: node.instances,
        in_flight: node.in_flight,
        heartbeat_at_ms: node.heartbeat_at_ms,
    }
}

/// A single node lists itself.
impl NodeDirectory for ThisNode {
    fn nodes(&self) -> Result<Vec<NodeView>, ApiError> {
        Ok(vec![view(self.heartbeat())])
    }
}

/// A cluster's nodes are those whose heartbeat has not expired.
pub struct ClusterNodes(pub Nodes);

impl NodeDirectory for ClusterNodes {
    fn nodes(&self) -> Result<Vec<NodeView>, ApiError> {
        Ok(self.0.list()?.into_iter().map(view).collect())
    }
}

/// Any node's admin token works on every node: the cluster holds their hashes.
pub struct ClusterTokens(pub Arc<ClusterStore>);

impl TokenCheck for ClusterTokens {
    fn accepts(&self, presented: &str) -> bool {
        self.0.accepts_token(presented)
    }
}

/// A node joined to its cluster.
pub struct Joined {
    pub cluster: Cluster,
    pub store: Arc<ClusterStore>,
    pub nodes: Nodes,
}

/// Connects to NATS, loads the cluster's metadata and registers this node's admin token.
pub fn join(
    urls: &[String],
    options: ClusterOptions,
    code: Arc<CodeStore>,
    token: &str,
) -> anyhow::Result<Joined> {
    let what = urls.join(",");
    let cluster =
        Cluster::connect(&options).with_context(|| format!("cannot join the cluster at {what}"))?;
    let store = ClusterStore::open(&cluster, code)
        .with_context(|| format!("cannot load the cluster's metadata from {what}"))?;
    store
        .register_token(token)
        .context("cannot register this node's admin token with the cluster")?;
    let nodes = Nodes::open(&cluster).context("cannot open the cluster's node list")?;
    tracing::info!(
        node = cluster.node_id(),
        replicas = cluster.replicas(),
        "joined the cluster"
    );
    Ok(Joined {
        cluster,
        store,
        nodes,
    })
}

/// This node's id: kept in the data directory (`node.id`) so that it stays the same across
/// restarts; made from the host name and a random suffix at first start.
pub fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node.id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_owned());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let suffix: u32 = rand::random();
    let id = format!(
        "{}-{:06x}",
        if host.is_empty() { "gust" } else { &host },
        suffix & 0xff_ffff
    );
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Applies what other nodes change to this node until `stop`: the route table, the
/// environments' pools, timers, queue triggers, and the instances of changed functions.
pub async fn follow_changes(
    store: Arc<ClusterStore>,
    state: Arc<ApiState>,
    stop: CancellationToken,
) {
    loop {
        let changes = tokio::select! {
            _ = stop.cancelled() => return,
            changes = store.changes() => changes,
        };
        if changes.environments
            && let Err(err) = state.sync_environments()
        {
            tracing::error!(error = %err, "cannot apply the cluster's environments");
        }
        for ((namespace, name), deleted) in &changes.functions {
            if *deleted {
                state.executor.function_deleted(namespace, name);
            } else {
                state.executor.function_deployed(namespace, name);
            }
        }
        if !changes.functions.is_empty() {
            state.code_released.notify_one();
        }
        if changes.routes
            && let Err(err) = state.sync_routes()
        {
            tracing::error!(error = %err, "cannot apply the cluster's routes");
        }
        if changes.timers {
            state.timers.timers_changed();
        }
        if changes.mq_triggers {
            state.mq.triggers_changed();
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
