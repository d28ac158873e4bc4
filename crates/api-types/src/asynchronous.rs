//! Asynchronous invocations' dead letters: listing, showing, re-driving and purging them.

use gust_model::AsyncInvocation;
use serde::{Deserialize, Serialize};

/// The answer to an invocation accepted to run later (`202`): the invocation's id, also in
/// `X-Gust-Request-Id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: String,
}

/// `?namespace=&function=&limit=` of `GET /v1/dlq`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    pub namespace: Option<String>,
    /// Only this function's dead letters.
    pub function: Option<String>,
    /// At most this many [default: 1000]
    pub limit: Option<usize>,
}

/// The request a dead letter would deliver again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestView {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body_base64: String,
}

/// A dead letter with the request it would deliver again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    #[serde(flatten)]
    pub invocation: AsyncInvocation,
    pub request: RequestView,
}

/// Which dead letters a redrive or purge acts on: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// A dead letter re-driven: its id and the new invocation's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Redriven {
    pub from: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Purged {
    pub purged: usize,
}

/// `GET /v1/async`: a namespace's asynchronous invocations by state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AsyncCountsView {
    pub namespace: String,
    /// Accepted and not ended: waiting for an attempt, or running one.
    pub open: u64,
    /// Of them, running an attempt now. Absent in a cluster, where only the node running
    /// each one knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// Failed for good or expired, kept for re-drive.
    pub dead_letters: u64,
    /// Ended with success, and ended as a dead letter, ever. Absent in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
}
