use serde::{Deserialize, Serialize};

/// The JSON error every Gust listener answers with, beside an `X-Gust-Error` header holding
/// the same `reason`. `reason` is a stable code; `message` is for people and never carries a
/// function's exception text or Gust's internals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `api`, `router` or `executor`: which part of Gust answered.
    pub component: String,
    /// e.g. `invalid_input`, `not_found`, `function_not_found`, `conflict`, `unauthorized`
    pub reason: String,
    /// The request's id where it has one (invocations).
    pub request_id: Option<String>,
    pub message: String,
}
