//! What `gust up` adds to a node that joins a cluster (`--cluster`): the shared store in place
//! of the embedded metadata, tokens any node accepts, heartbeats for `gust nodes`, and the
//! loop that applies other nodes' changes to this node's routes, pools, timers, queue
//! triggers and instances. A single node uses the same [`ThisNode`] for `gust nodes`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gust_api::{ApiError, ApiState, NodeDirectory, PeerLogsRequest, TokenCheck};
use gust_api_types::{LogLine, NodeView};
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
pub struct ClusterNodes {
    nodes: Nodes,
    id: String,
    /// This node's admin token, which every node accepts: what it asks its peers with.
    token: String,
    http: reqwest::Client,
}

/// How long a peer has to answer for its log lines.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

impl ClusterNodes {
    pub fn new(nodes: Nodes, id: String, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(PEER_TIMEOUT)
            .build()
            .context("cannot build the HTTP client nodes ask each other with")?;
        Ok(Self {
            nodes,
            id,
            token,
            http,
        })
    }

    /// One peer's lines, each marked with the node that holds them.
    async fn logs_of(
        &self,
        peer: &NodeView,
        api: &str,
        request: &PeerLogsRequest,
    ) -> anyhow::Result<Vec<LogLine>> {
        let mut url = reqwest::Url::parse(api)?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{api} cannot be a base URL"))?
            .extend(["v1", "functions", &request.function, "logs"]);
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("namespace", &request.namespace)
                .append_pair("local", "true");
            if let Some(after) = request.after.get(&peer.id) {
                query.append_pair("after", &after.to_string());
            }
            if let Some(id) = &request.request_id {
                query.append_pair("request_id", id);
            }
            if let Some(limit) = request.limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?;
        let mut lines: Vec<LogLine> = response.json().await?;
        for line in &mut lines {
            line.node = Some(peer.id.clone());
        }
        Ok(lines)
    }
}

#[async_trait::async_trait]
impl NodeDirectory for ClusterNodes {
    fn nodes(&self) -> Result<Vec<NodeView>, ApiError> {
        Ok(self.nodes.list()?.into_iter().map(view).collect())
    }

    fn cluster_node_id(&self) -> Option<&str> {
        Some(&self.id)
    }

    async fn peer_logs(&self, request: &PeerLogsRequest) -> Vec<LogLine> {
        let nodes = self.nodes.clone();
        let peers = match tokio::task::spawn_blocking(move || nodes.list()).await {
            Ok(Ok(peers)) => peers,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot list the nodes to gather logs from");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        let asked = peers
            .into_iter()
            .map(view)
            .filter(|peer| peer.id != self.id)
            .filter_map(|peer| Some((peer.api.clone()?, peer)))
            .map(|(api, peer)| async move {
                let answer = self.logs_of(&peer, &api, request).await;
                (peer.id, answer)
            });
        let mut lines = Vec::new();
        for (peer, answer) in futures_util::future::join_all(asked).await {
            match answer {
                Ok(theirs) => lines.extend(theirs),
                Err(err) => tracing::warn!(%peer, error = %err, "a node's logs could not be read"),
            }
        }
        lines
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
        for (namespace, kind, name) in &changes.values {
            // Another node changed a secret or config: its functions here start new
            // instances with the new values, and restart warm ones if that node did.
            let restarted = state
                .store
                .values(*kind, namespace, name)
                .is_ok_and(|set| set.is_some_and(|set| set.restarted));
            if let Ok(functions) = state.store.functions(Some(namespace)) {
                for function in functions {
                    if function.current_revision().mounts.of(*kind).contains(name) {
                        state.executor.function_values_changed(
                            namespace,
                            &function.name,
                            restarted,
                        );
                    }
                }
            }
        }
        if changes.namespaces
            && let Err(err) = state.sync_namespaces()
        {
            tracing::error!(error = %err, "cannot apply the cluster's namespace quotas");
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
