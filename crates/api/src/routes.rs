use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use bytes::Bytes;
use gust_model::{Name, Route, RouteConfig};
use http::StatusCode;
use rand::RngExt;

use gust_api_types::NamespaceQuery;

use crate::{ApiError, ApiState, NamespaceExt, Scoped, find_named, parse_json};

type Shared = State<Arc<ApiState>>;

#[utoipa::path(get, path = "/routes", tag = "routes", params(NamespaceQuery), responses((status = 200, body = [Route])))]
pub async fn list(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<Route>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| Ok(s.store.routes(Some(&namespace))?))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/routes/{name}", tag = "routes", params(("name" = String, Path, description = "the route's name"), NamespaceQuery), responses((status = 200, body = Route)))]
pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<Route>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("route")?;
    state
        .blocking(move |s| {
            let routes = s.store.routes(Some(&namespace))?;
            find_named(routes, |r| &r.name, "route", &name)
        })
        .await
        .map(Json)
}

/// A route may claim only a host its namespace was granted: whoever reaches a namespace as
/// deployer must not take another team's domain by claiming it first.
fn check_host_granted(
    state: &ApiState,
    namespace: &gust_model::Namespace,
    host: &gust_model::RouteHost,
) -> Result<(), ApiError> {
    let granted = state
        .store
        .namespace_record(namespace)?
        .is_some_and(|record| record.hosts.iter().any(|h| h.matches(host)));
    if granted {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "namespace {namespace} was not granted host {host} (an admin of every namespace grants hosts with `gust ns update {namespace} --hosts ...`)"
        )))
    }
}

#[utoipa::path(post, path = "/routes", tag = "routes", params(NamespaceQuery), request_body = RouteConfig, responses((status = 201, body = Route)))]
pub async fn create(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Route>), ApiError> {
    let namespace = query.namespace()?;
    let config: RouteConfig = parse_json(&body)?;
    let route = config.validate(namespace, generated_name("route", &config.function))?;
    if let gust_model::RouteAuth::Jwt {
        jwks,
        issuer,
        audience,
    } = &route.auth
    {
        gust_router::keys_of(jwks).map_err(|e| ApiError::Invalid(format!("auth.jwks: {e}")))?;
        if issuer.is_empty() || audience.is_empty() {
            return Err(ApiError::Invalid(
                "auth: a jwt route names its issuer and audience".into(),
            ));
        }
    }
    state
        .blocking(move |s| {
            // Against the grants as they are, stored before they can change.
            let _granting = s.bounded_writes.lock().expect("never poisoned");
            if let Some(host) = &route.host {
                check_host_granted(s, &route.namespace, host)?;
            }
            s.store.create_route(&route)?;
            s.sync_routes()?;
            Ok(route)
        })
        .await
        .map(|route| (StatusCode::CREATED, Json(route)))
}

#[utoipa::path(delete, path = "/routes/{name}", tag = "routes", params(("name" = String, Path, description = "the route's name"), NamespaceQuery), responses((status = 204, description = "deleted")))]
pub async fn delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("route")?;
    state
        .blocking(move |s| {
            s.store.delete_route(&namespace, &name)?;
            s.sync_routes()?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}

/// `<function>-<5 random letters>` (`<what>-...` if nothing of the function's name is usable),
/// trimmed to stay a valid name of a `what`.
pub(crate) fn generated_name(what: &'static str, function: &str) -> Name {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
        .collect();
    let base: String = function
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(50)
        .collect();
    let base = base.trim_matches('-');
    let candidate = if base.is_empty() {
        format!("{what}-{suffix}")
    } else {
        format!("{base}-{suffix}")
    };
    Name::parse(what, &candidate).expect("generated from lowercase letters, digits and '-'")
}
