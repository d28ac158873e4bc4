//! `GET /v1/nodes`: the nodes that make up this Gust (one, or a cluster's live ones).

use axum::extract::State;
use gust_api_types::NodeView;

use crate::{ApiError, Shared};

/// Where the list of live nodes comes from: this node alone, or a cluster's heartbeats.
pub trait NodeDirectory: Send + Sync {
    /// Live nodes, by id. May block (a cluster asks NATS): called on the blocking pool.
    fn nodes(&self) -> Result<Vec<NodeView>, ApiError>;
}

#[utoipa::path(get, path = "/nodes", tag = "health", responses((status = 200, body = Vec<NodeView>, description = "live nodes, by id"), (status = 503, description = "the cluster cannot be reached")))]
pub(crate) async fn list(State(state): Shared) -> Result<axum::Json<Vec<NodeView>>, ApiError> {
    state.blocking(|s| s.nodes.nodes()).await.map(axum::Json)
}
