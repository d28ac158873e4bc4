//! `GET /v1/nodes`: the nodes that make up this Gust (one, or a cluster's live ones).

use std::collections::HashMap;

use axum::extract::State;
use gust_api_types::{LogLine, NodeView};

use crate::{ApiError, Shared};

/// Where the list of live nodes comes from: this node alone, or a cluster's heartbeats.
#[async_trait::async_trait]
pub trait NodeDirectory: Send + Sync {
    /// Live nodes, by id. May block (a cluster asks NATS): called on the blocking pool.
    fn nodes(&self) -> Result<Vec<NodeView>, ApiError>;

    /// This node's id when it is one of a cluster's nodes; `None` when it runs alone.
    fn cluster_node_id(&self) -> Option<&str> {
        None
    }

    /// A function's log lines held by the other live nodes, each with its node. A node that
    /// does not answer is left out (and logged): logs are diagnostics, not records.
    async fn peer_logs(&self, _request: &PeerLogsRequest) -> Vec<LogLine> {
        Vec::new()
    }
}

/// What [`NodeDirectory::peer_logs`] asks every other node.
#[derive(Debug, Clone)]
pub struct PeerLogsRequest {
    pub namespace: String,
    pub function: String,
    /// Where each node's lines resume (absent: its latest lines).
    pub after: HashMap<String, u64>,
    pub request_id: Option<String>,
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/nodes", tag = "health", responses((status = 200, body = Vec<NodeView>, description = "live nodes, by id"), (status = 503, description = "the cluster cannot be reached")))]
pub(crate) async fn list(State(state): Shared) -> Result<axum::Json<Vec<NodeView>>, ApiError> {
    state.blocking(|s| s.nodes.nodes()).await.map(axum::Json)
}
