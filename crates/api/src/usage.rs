//! `GET /v1/usage` (totals rolled up with cost), `GET /v1/usage/records` (the records
//! themselves) and `GET /metrics`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use gust_metering::report::{self, GroupBy, UsageReport};
use gust_model::{Name, Namespace, UsageRecord, parse_duration};
use serde::Deserialize;

use crate::{ApiError, ApiState};

type Shared = State<Arc<ApiState>>;

const DEFAULT_SINCE: Duration = Duration::from_secs(24 * 3600);
const MAX_RECORDS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    namespace: Option<String>,
    function: Option<String>,
    /// How far back, e.g. `24h`, `7d`.
    since: Option<String>,
    /// `function` (default), `hour` or `day`.
    by: Option<String>,
    /// Records only: at most this many.
    limit: Option<usize>,
}

struct Scope {
    namespace: Namespace,
    function: Option<Name>,
    since_ms: u64,
}

impl UsageQuery {
    fn scope(&self) -> Result<Scope, ApiError> {
        let namespace = match &self.namespace {
            Some(ns) => Namespace::parse(ns)?,
            None => Namespace::default(),
        };
        let function = self
            .function
            .as_deref()
            .map(|f| Name::parse("function", f))
            .transpose()?;
        let since = match &self.since {
            Some(since) => parse_duration("since", since)?,
            None => DEFAULT_SINCE,
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok(Scope {
            namespace,
            function,
            since_ms: now_ms.saturating_sub(since.as_millis() as u64),
        })
    }
}

pub async fn usage(
    State(state): Shared,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let by = match query.by.as_deref() {
        None => GroupBy::Function,
        Some(by) => GroupBy::parse(by).ok_or_else(|| {
            ApiError::Invalid(format!("invalid by {by:?}: use function, hour or day"))
        })?,
    };
    let scope = query.scope()?;
    state
        .blocking(move |s| {
            let hours =
                s.usage
                    .usage_hours(&scope.namespace, scope.function.as_ref(), scope.since_ms)?;
            Ok(report::build(&hours, scope.since_ms, by, &s.prices))
        })
        .await
        .map(Json)
}

pub async fn records(
    State(state): Shared,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Vec<UsageRecord>>, ApiError> {
    let scope = query.scope()?;
    let limit = query.limit.unwrap_or(1_000).min(MAX_RECORDS);
    state
        .blocking(move |s| {
            Ok(s.usage.usage_records(
                &scope.namespace,
                scope.function.as_ref(),
                scope.since_ms,
                limit,
            )?)
        })
        .await
        .map(Json)
}

pub async fn metrics(State(state): Shared) -> impl IntoResponse {
    let text = state
        .meter
        .metrics()
        .encode(&state.executor.all_instances());
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
