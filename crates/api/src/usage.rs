//! `GET /v1/usage` (totals rolled up with cost), `GET /v1/usage/records` (the records
//! themselves) and `GET /metrics`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use gust_api_types::UsageQuery;
use gust_metering::report::{self, GroupBy, UsageReport};
use gust_model::{Name, Namespace, UsageRecord, parse_duration};

use crate::{ApiError, ApiState, Principal};

type Shared = State<Arc<ApiState>>;

const DEFAULT_SINCE: Duration = Duration::from_secs(24 * 3600);
const MAX_RECORDS: usize = 10_000;

struct Scope {
    namespace: Namespace,
    function: Option<Name>,
    since_ms: u64,
}

/// What a usage query covers.
fn scope(query: &UsageQuery) -> Result<Scope, ApiError> {
    let namespace = match &query.namespace {
        Some(ns) => Namespace::parse(ns)?,
        None => Namespace::default(),
    };
    let function = query
        .function
        .as_deref()
        .map(|f| Name::parse("function", f))
        .transpose()?;
    let since = match &query.since {
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

#[utoipa::path(get, path = "/usage", tag = "usage", params(UsageQuery), responses((status = 200, body = UsageReport)))]
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
    let scope = scope(&query)?;
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

#[utoipa::path(get, path = "/usage/records", tag = "usage", params(UsageQuery), responses((status = 200, body = [UsageRecord])))]
pub async fn records(
    State(state): Shared,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Vec<UsageRecord>>, ApiError> {
    let scope = scope(&query)?;
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

#[utoipa::path(get, path = "/metrics", tag = "usage", responses((status = 200, description = "Prometheus metrics in the OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub async fn metrics(
    State(state): Shared,
    Extension(principal): Extension<Principal>,
) -> impl IntoResponse {
    let mut text = state
        .meter
        .metrics()
        .encode(&state.executor.all_instances());
    if principal.namespaces.is_some() {
        text = series_reached(&text, &principal);
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// The metrics text without the series of namespaces `principal` does not reach: a token of
/// one namespace sees its own functions' series and the node's own, never another tenant's.
fn series_reached(text: &str, principal: &Principal) -> String {
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        let namespace = line
            .split_once("namespace=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(namespace, _)| namespace);
        let reached = match namespace {
            None => true,
            Some(namespace) => {
                Namespace::parse(namespace).is_ok_and(|namespace| principal.reaches(&namespace))
            }
        };
        if line.starts_with('#') || reached {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespaced_token_sees_its_own_series_and_the_node_s() {
        let principal = Principal {
            name: "t".into(),
            role: gust_model::Role::Viewer,
            namespaces: Some(vec![Namespace::parse("team-a").unwrap()]),
        };
        let text = "# TYPE x counter\nx_total{namespace=\"team-a\",function=\"f\"} 1\nx_total{namespace=\"team-b\",function=\"f\"} 2\nnode_total 3\n# EOF\n";
        assert_eq!(
            series_reached(text, &principal),
            "# TYPE x counter\nx_total{namespace=\"team-a\",function=\"f\"} 1\nnode_total 3\n# EOF\n"
        );
    }
}
