//! Gust's API contract: every request and response body of `/v1`, defined once. The server's
//! handlers build and read these types, the CLI's client decodes them, and the OpenAPI
//! document (`GET /v1/openapi.json`) is generated from them, so a renamed field breaks the
//! build, not a user's script.
//!
//! Settings a user writes (a function's [`FunctionSettings`], an environment's, a route's, a
//! timer's, a queue trigger's) are the model's own `*Config` types; this crate adds what only
//! the API has: code sources, views with live state, queries and errors.

mod access;
mod asynchronous;
mod error;
mod functions;
mod resources;
mod usage;

pub use access::{
    AuditList, AuditQuery, NamespaceCreate, NamespaceUpdate, NamespaceView, TokenCreate,
    TokenCreated, TokenView, ValuesCreate, ValuesUpdate, ValuesView, WhoAmIView,
};
pub use asynchronous::{
    Accepted, AsyncCountsView, DeadLetterQuery, DeadLetterView, Purged, Redriven, RequestView,
    Selection,
};
pub use error::ErrorBody;
pub use functions::{
    BuildLogChunk, BuildQuery, BuildView, CodeSource, FunctionSpec, FunctionView, InstancesView,
    InvokeQuery, LogLine, LogsQuery, RollbackRequest, ScalingView, UpdateQuery, parse_log_cursor,
};
pub use gust_model::FunctionSettings;
pub use resources::{
    EnvironmentView, MqTriggerView, NamespaceQuery, TimerView, TriggerStatusView, UploadView,
};
pub use usage::{
    ColdStartPhases, FunctionStats, MinuteStats, StatsQuery, UsageQuery, UsageReport, UsageRow, csv,
};

/// What `GET /v1/version` answers: the server's release and the commit it was built from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: String,
    pub commit: String,
}

/// One live node, as `GET /v1/nodes` lists it: a single Gust is one node; a cluster's nodes
/// each put a heartbeat, and a node whose heartbeat stopped leaves the list within the
/// heartbeat timeout.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: String,
    /// Its API listener's URL, if it runs the API.
    pub api: Option<String>,
    /// Its public listener's URL, if it runs the router.
    pub public: Option<String>,
    pub version: String,
    pub roles: Vec<String>,
    /// Unix time in milliseconds.
    pub started_at_ms: u64,
    /// Function instances it runs now (busy and idle).
    pub instances: u64,
    /// Requests its instances are serving now.
    pub in_flight: u64,
    /// Unix time in milliseconds of its last heartbeat.
    pub heartbeat_at_ms: u64,
}
