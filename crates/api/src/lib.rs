//! The control plane: the REST API on its own listener, behind a bearer token.
//!
//! Key types: [`ApiState`] (what handlers reach: the metadata, code and usage stores, the
//! executor, the live route table, the captured logs, the meter and price sheet), [`api_router`] (every `/v1` route plus the
//! unauthenticated health and OpenAPI endpoints), [`AdminToken`] and [`ApiError`].
//!
//! The token is checked before routing, so an unknown `/v1/` path without a token is 401, not
//! 404. Storage calls run on the blocking pool: redb commits fsync.

mod asynchronous;
mod environments;
mod error;
mod functions;
mod invoke;
mod mqtriggers;
mod routes;
mod timers;
mod token;
mod uploads;
mod usage;

pub use error::ApiError;
pub use token::AdminToken;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gust_async_queue::AsyncQueue;
use gust_executor::{Executor, FunctionLogs, Invoker, Runtime};
use gust_metering::{Meter, PriceSheet};
use gust_model::{Environment, Namespace};
use gust_router::{BodyBudget, Routes};
use gust_store::{CodeStore, MetadataStore, UsageStore};
use gust_trigger_mq::MqTriggers;
use gust_trigger_timer::TimerScheduler;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Paths served without a token.
const UNAUTHENTICATED: [&str; 3] = ["/healthz", "/readyz", "/v1/openapi.json"];
/// Largest JSON body (code inlined as base64 included). Larger code goes to `/v1/uploads`,
/// which streams it to disk.
const MAX_API_BODY_BYTES: usize = 16 * 1024 * 1024;
const OPENAPI: &str = include_str!("openapi.json");

pub struct ApiState {
    pub store: Arc<dyn MetadataStore>,
    pub code: Arc<CodeStore>,
    pub executor: Arc<Executor>,
    pub invoker: Arc<dyn Invoker>,
    pub runtime: Arc<dyn Runtime>,
    pub routes: Routes,
    pub logs: Arc<FunctionLogs>,
    pub token: AdminToken,
    pub usage: Arc<dyn UsageStore>,
    pub meter: Arc<Meter>,
    pub prices: PriceSheet,
    pub queue: AsyncQueue,
    pub timers: Arc<TimerScheduler>,
    pub mq: Arc<MqTriggers>,
    /// Memory for invocation bodies in flight, shared with the public listener.
    pub bodies: BodyBudget,
    /// Notified when stored code may have lost its last reference (a function deleted, a
    /// revision pruned): garbage collection runs soon after.
    pub code_released: Arc<tokio::sync::Notify>,
}

impl ApiState {
    /// Runs a storage call on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl FnOnce(&ApiState) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || call(&state))
            .await
            .map_err(|e| ApiError::Internal(format!("storage task failed: {e}")))?
    }

    /// Tells the runtime which environments exist now.
    pub fn sync_environments(&self) -> Result<Vec<Environment>, ApiError> {
        let environments = self.store.environments()?;
        self.runtime.set_environments(&environments);
        Ok(environments)
    }

    /// Rebuilds the public route table from storage.
    pub fn sync_routes(&self) -> Result<(), ApiError> {
        self.routes.replace(self.store.routes(None)?);
        Ok(())
    }
}

type Shared = State<Arc<ApiState>>;

/// `?namespace=`; `default` when absent.
#[derive(Debug, Deserialize)]
pub(crate) struct NamespaceQuery {
    pub(crate) namespace: Option<String>,
}

impl NamespaceQuery {
    pub(crate) fn namespace(&self) -> Result<Namespace, ApiError> {
        match &self.namespace {
            Some(ns) => Ok(Namespace::parse(ns)?),
            None => Ok(Namespace::default()),
        }
    }
}

/// `/{name}` in the path and `?namespace=`: one named resource of one tenant. Answers bad
/// input with our own error format rather than axum's plain-text rejections.
pub(crate) struct Scoped {
    pub namespace: Namespace,
    raw_name: String,
}

impl Scoped {
    /// The name, validated as the name of a `what`.
    pub fn name(&self, what: &'static str) -> Result<gust_model::Name, ApiError> {
        Ok(gust_model::Name::parse(what, &self.raw_name)?)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Path(raw_name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::Invalid(e.body_text()))?;
        let Query(query) = Query::<NamespaceQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::Invalid(e.body_text()))?;
        Ok(Self {
            namespace: query.namespace()?,
            raw_name,
        })
    }
}

/// Parses a JSON body, answering malformed input with our own error format.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Invalid(format!("invalid JSON body: {e}")))
}

/// The one of `items` that `name_of` calls `name`, or a 404 naming the `kind` looked for.
pub(crate) fn find_named<T>(
    items: Vec<T>,
    name_of: impl Fn(&T) -> &gust_model::Name,
    kind: &'static str,
    name: &gust_model::Name,
) -> Result<T, ApiError> {
    items
        .into_iter()
        .find(|item| name_of(item) == name)
        .ok_or_else(|| ApiError::NotFound {
            kind,
            name: name.to_string(),
        })
}

pub fn api_router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route(
            "/environments",
            get(environments::list).post(environments::create),
        )
        .route(
            "/environments/{name}",
            get(environments::show).delete(environments::delete),
        )
        .route("/functions", get(functions::list).post(functions::create))
        .route(
            "/functions/{name}",
            get(functions::show)
                .put(functions::update)
                .delete(functions::delete),
        )
        .route("/functions/{name}/revisions", get(functions::revisions))
        .route(
            "/functions/{name}/rollback",
            axum::routing::post(functions::rollback),
        )
        .route(
            "/functions/{name}/invoke",
            axum::routing::any(invoke::invoke),
        )
        .route("/functions/{name}/logs", get(invoke::logs))
        .route("/routes", get(routes::list).post(routes::create))
        .route("/routes/{name}", get(routes::show).delete(routes::delete))
        .route("/timers", get(timers::list).post(timers::create))
        .route("/timers/{name}", get(timers::show).delete(timers::delete))
        .route(
            "/mqtriggers",
            get(mqtriggers::list).post(mqtriggers::create),
        )
        .route(
            "/mqtriggers/{name}",
            get(mqtriggers::show).delete(mqtriggers::delete),
        )
        .route("/invocations/{id}", get(asynchronous::show_invocation))
        .route("/dlq", get(asynchronous::list_dead_letters))
        .route("/dlq/redrive", axum::routing::post(asynchronous::redrive))
        .route("/dlq/purge", axum::routing::post(asynchronous::purge))
        .route("/dlq/{id}", get(asynchronous::show_dead_letter))
        .route("/uploads", axum::routing::post(uploads::create))
        .route("/usage", get(usage::usage))
        .route("/usage/records", get(usage::records))
        .route("/openapi.json", get(openapi));
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/metrics", get(usage::metrics))
        .nest("/v1", v1)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(State(state): Shared, request: Request, next: Next) -> Response {
    if UNAUTHENTICATED.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if state.token.matches(token.trim()) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn openapi() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound {
        kind: "path",
        name: request.uri().path().to_owned(),
    }
}
