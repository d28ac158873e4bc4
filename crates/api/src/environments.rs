use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use gust_api_types::EnvironmentView;
use gust_model::{Environment, EnvironmentConfig, EnvironmentKind};
use http::StatusCode;

use crate::{ApiError, ApiState, Scoped, parse_json};

type Shared = State<Arc<ApiState>>;

#[utoipa::path(get, path = "/environments", tag = "environments", responses((status = 200, body = [Environment])))]
pub async fn list(State(state): Shared) -> Result<Json<Vec<Environment>>, ApiError> {
    state
        .blocking(|s| Ok(s.store.environments()?))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/environments/{name}", tag = "environments", params(("name" = String, Path, description = "the environment's name")), responses((status = 200, body = EnvironmentView)))]
pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<EnvironmentView>, ApiError> {
    let name = scoped.name("environment")?;
    state
        .blocking(move |s| {
            let environment = s.store.environment(&name)?.ok_or(ApiError::NotFound {
                kind: "environment",
                name: name.to_string(),
            })?;
            Ok(EnvironmentView {
                pool_ready: s.runtime.ready_workers(&environment),
                start_error: s.runtime.start_failure(&environment),
                environment,
            })
        })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/environments", tag = "environments", request_body = EnvironmentConfig, responses((status = 201, body = Environment)))]
pub async fn create(
    State(state): Shared,
    body: Bytes,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    let config: EnvironmentConfig = parse_json(&body)?;
    let env = config.validate()?;
    state
        .blocking(move |s| {
            s.runtime
                .validate_environment(&env)
                .map_err(ApiError::Invalid)?;
            s.store.create_environment(&env)?;
            s.sync_environments()?;
            Ok(env)
        })
        .await
        .map(|env| (StatusCode::CREATED, Json(env)))
}

#[utoipa::path(delete, path = "/environments/{name}", tag = "environments", params(("name" = String, Path, description = "the environment's name")), responses((status = 204, description = "deleted")))]
pub async fn delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
    let name = scoped.name("environment")?;
    state
        .blocking(move |s| {
            let env = s.store.environment(&name)?.ok_or(ApiError::NotFound {
                kind: "environment",
                name: name.to_string(),
            })?;
            if matches!(env.kind, EnvironmentKind::Builtin { .. }) {
                return Err(ApiError::Invalid(format!(
                    "environment {name:?} is built in and cannot be deleted"
                )));
            }
            s.store.delete_environment(&name)?;
            s.sync_environments()?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
