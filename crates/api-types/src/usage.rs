//! Usage reports: billed time, memory and cost per function and period.

use serde::{Deserialize, Serialize};

/// `?namespace=&function=&since=&by=&limit=` of `/v1/usage` and `/v1/usage/records`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub namespace: Option<String>,
    pub function: Option<String>,
    /// How far back, e.g. `24h`, `7d` [default: 24h]
    pub since: Option<String>,
    /// `function` (default), `hour` or `day`.
    pub by: Option<String>,
    /// Records only: at most this many [default: 1000]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub function: String,
    /// RFC 3339, UTC.
    pub period_start: String,
    pub invocations: u64,
    pub errors: u64,
    pub billed_ms: u64,
    pub gb_seconds: f64,
    pub cpu_ms: f64,
    pub cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub since: String,
    pub currency: String,
    pub rows: Vec<UsageRow>,
    pub totals: UsageRow,
}
