//! The control plane: the REST API on its own listener, behind a bearer token.
//!
//! Key types: [`ApiState`] (what handlers reach: the metadata, code and usage stores, the
//! executor, the live route table, the captured logs, the meter and price sheet), [`api_router`] (every `/v1` route plus the
//! unauthenticated health and OpenAPI endpoints), [`AdminToken`] and [`ApiError`].
//!
//! The token is checked before routing, so an unknown `/v1/` path without a token is 401, not
//! 404. Storage calls run on the blocking pool: redb commits fsync.

mod access;
mod asynchronous;
mod builds;
mod environments;
mod error;
mod functions;
mod invoke;
mod mqtriggers;
mod nodes;
mod routes;
mod tenants;
mod timers;
mod token;
mod uploads;
mod usage;
mod values;

pub use access::{Principal, RouteTokens, principal_of, secret_hash};
pub use builds::Builds;
pub use error::ApiError;
pub use nodes::{NodeDirectory, PeerLogsRequest};
pub use tenants::prune_audit;
pub use token::{AdminToken, TokenCheck};

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use gust_api_types::ErrorBody;
use gust_api_types::{NamespaceQuery, VersionView};
use gust_async_queue::AsyncQueue;
use gust_edge::BodyBudget;
use gust_executor::{Executor, FunctionLogs, Invoker, Runtime};
use gust_metering::{Meter, PriceSheet};
use gust_model::{Environment, Namespace};
use gust_router::{NamespaceRates, Routes};
use gust_store::{AuditStore, CodeStore, MetadataStore, SharedCode, UsageStore};
use gust_trigger_mq::MqTriggers;
use gust_trigger_timer::TimerScheduler;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Paths served without a token.
const UNAUTHENTICATED: [&str; 3] = ["/healthz", "/readyz", "/v1/openapi.json"];
/// Largest JSON body (code inlined as base64 included). Larger code goes to `/v1/uploads`,
/// which streams it to disk.
const MAX_API_BODY_BYTES: usize = 16 * 1024 * 1024;

pub struct ApiState {
    pub store: Arc<dyn MetadataStore>,
    pub code: Arc<CodeStore>,
    /// A cluster's shared code store, where a tree this node has not used yet is fetched
    /// from; none on a single node.
    pub shared_code: Option<Arc<dyn SharedCode>>,
    pub executor: Arc<Executor>,
    pub invoker: Arc<dyn Invoker>,
    pub runtime: Arc<dyn Runtime>,
    pub routes: Routes,
    /// Namespaces' request rate quotas, which the public listener applies.
    pub rates: NamespaceRates,
    pub logs: Arc<FunctionLogs>,
    /// Which admin tokens the API accepts: this node's, or any of a cluster's. Created
    /// tokens are records of `store`.
    pub tokens: Arc<dyn TokenCheck>,
    /// Where control-plane writes are logged.
    pub audit: Arc<dyn AuditStore>,
    /// Seals secret values before they are stored, and opens them for a deploy's load check.
    pub sealer: Arc<gust_store::Sealer>,
    /// The nodes `GET /v1/nodes` lists.
    pub nodes: Arc<dyn NodeDirectory>,
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
    /// Dependency builds of new revisions.
    pub builds: Builds,
    /// This server's release and commit.
    pub version: VersionView,
    /// Held while a write that a shared bound limits (a quota on functions or code, the hosts
    /// granted to namespaces) checks it against the store and stores: two at once cannot both
    /// take the last place. (A cluster's nodes each hold their own.)
    pub bounded_writes: std::sync::Mutex<()>,
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

    /// [`ApiState::blocking`] for a call that starts background work of its own (a build),
    /// which needs the shared state.
    pub(crate) async fn blocking_shared<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl FnOnce(&Arc<ApiState>) -> Result<T, ApiError> + Send + 'static,
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

    /// Gives the public listener every namespace's request rate quota, and the executor their
    /// quotas on instances and memory in use, from storage.
    pub fn sync_namespaces(&self) -> Result<(), ApiError> {
        let records = self.store.namespace_records()?;
        self.executor.quotas().replace(
            records
                .iter()
                .filter(|r| r.quotas.max_instances.is_some() || r.quotas.max_memory_mb.is_some())
                .map(|r| {
                    let quota = gust_executor::RunQuota {
                        instances: r.quotas.max_instances,
                        memory_mb: r.quotas.max_memory_mb,
                    };
                    (r.name.clone(), quota)
                })
                .collect(),
        );
        self.queue.set_namespace_depths(
            records
                .iter()
                .filter_map(|r| Some((r.name.clone(), r.quotas.max_async_queue?)))
                .collect(),
        );
        self.rates.replace(records.into_iter().filter_map(|record| {
            let per_second = record.quotas.max_requests_per_second?;
            Some((record.name, per_second))
        }));
        Ok(())
    }

    /// Rebuilds the public route table from storage.
    pub fn sync_routes(&self) -> Result<(), ApiError> {
        self.routes.replace(self.store.routes(None)?);
        Ok(())
    }
}

type Shared = State<Arc<ApiState>>;

/// The validated namespace of a `?namespace=` query.
pub(crate) trait NamespaceExt {
    fn namespace(&self) -> Result<Namespace, ApiError>;
}

impl NamespaceExt for NamespaceQuery {
    fn namespace(&self) -> Result<Namespace, ApiError> {
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

/// Parses a JSON body, answering malformed input with our own error format; the message
/// names the field at fault (`timeout: invalid duration "soon"`).
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.to_string().contains(&format!("`{path}`")) {
            ApiError::Invalid(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::Invalid(format!("invalid JSON body: {path}: {inner}"))
        }
    })?;
    // One JSON value and nothing after it (`{...}{...}` is not a body).
    json.end()
        .map_err(|e| ApiError::Invalid(format!("invalid JSON body: {e}")))?;
    Ok(value)
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
    let (router, _) = routes().split_for_parts();
    router
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

/// The OpenAPI document of every route [`api_router`] serves, generated from the handlers'
/// annotations and the contract's types.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = routes().split_for_parts().1;
    // After the routes are in: a modifier on the derive would run before they are.
    utoipa::Modify::modify(&Conventions, &mut document);
    document
}

/// Every route with its documentation: a route cannot be served without being documented.
fn routes() -> OpenApiRouter<Arc<ApiState>> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(environments::list, environments::create))
        .routes(routes!(environments::show, environments::delete))
        .routes(routes!(functions::list, functions::create))
        .routes(routes!(
            functions::show,
            functions::update,
            functions::delete
        ))
        .routes(routes!(functions::revisions))
        .routes(routes!(functions::stats))
        .routes(routes!(functions::code))
        .routes(routes!(functions::rollback))
        .routes(routes!(builds::show))
        .routes(routes!(builds::log))
        .routes(routes!(invoke::invoke))
        .routes(routes!(invoke::logs))
        .routes(routes!(routes::list, routes::create))
        .routes(routes!(routes::show, routes::delete))
        .routes(routes!(timers::list, timers::create))
        .routes(routes!(timers::show, timers::delete))
        .routes(routes!(mqtriggers::list, mqtriggers::create))
        .routes(routes!(mqtriggers::show, mqtriggers::delete))
        .routes(routes!(asynchronous::show_invocation))
        .routes(routes!(asynchronous::counts))
        .routes(routes!(asynchronous::list_dead_letters))
        .routes(routes!(asynchronous::redrive))
        .routes(routes!(asynchronous::purge))
        .routes(routes!(asynchronous::show_dead_letter))
        .routes(routes!(uploads::create))
        .routes(routes!(usage::usage))
        .routes(routes!(usage::records))
        .routes(routes!(nodes::list))
        .routes(routes!(tenants::list_namespaces, tenants::create_namespace))
        .routes(routes!(
            tenants::show_namespace,
            tenants::update_namespace,
            tenants::delete_namespace
        ))
        .routes(routes!(tenants::list_tokens, tenants::create_token))
        .routes(routes!(tenants::revoke_token))
        .routes(routes!(tenants::whoami))
        .routes(routes!(tenants::audit))
        .routes(routes!(values::list_secrets, values::create_secret))
        .routes(routes!(
            values::show_secret,
            values::update_secret,
            values::delete_secret
        ))
        .routes(routes!(values::list_configs, values::create_config))
        .routes(routes!(
            values::show_config,
            values::update_config,
            values::delete_config
        ))
        .routes(routes!(openapi))
        .routes(routes!(version));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(usage::metrics))
        .nest("/v1", v1)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Gust API",
        description = "Gust's control plane: functions, routes, triggers, asynchronous invocations and usage. Every path but /healthz, /readyz and /v1/openapi.json takes `Authorization: Bearer <token>`; every error is an ErrorBody with the same reason in the X-Gust-Error header."
    ),
    servers((url = "http://127.0.0.1:8081", description = "gust up's default API listener")),
    security(("bearer" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// What every operation shares: the bearer scheme and the error answers.
struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = UNAUTHENTICATED.contains(&path.as_str());
            for (method, operation) in [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
                ("head", &mut item.head),
            ] {
                let Some(operation) = operation else {
                    continue;
                };
                // Handlers' names repeat across resources (`list`, `create`); an operation's
                // id is its method and path, unique by construction.
                operation.operation_id = Some(operation_id(method, path));
                let responses = &mut operation.responses.responses;
                if open {
                    operation.security = Some(Vec::new());
                    continue;
                }
                for (status, description) in [
                    ("400", "invalid input; the message names what was wrong"),
                    ("401", "no valid bearer token"),
                    (
                        "403",
                        "the token does not reach the namespace, or its role may not do this",
                    ),
                    (
                        "404",
                        "no such resource (reason not_found or function_not_found)",
                    ),
                    ("409", "conflicts with what exists"),
                    ("500", "internal error; the server log has the details"),
                ] {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// Authenticates the bearer token into a [`Principal`] for [`access::authorize`]; a call
/// without a valid one ends here with 401, whether or not its path exists.
async fn require_token(State(state): Shared, mut request: Request, next: Next) -> Response {
    if UNAUTHENTICATED.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110, 11.1): `bearer` is `Bearer`.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    let principal = match presented {
        Some(token) => access::authenticate(&state, token.trim()).await,
        None => None,
    };
    match principal {
        Some(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// `get_v1_functions_name_logs` for `GET /v1/functions/{name}/logs`.
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    format!("{method}_{}", words.join("_"))
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String, description = "the process is up")))]
async fn health() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = String, description = "ready to serve")))]
async fn ready() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/version", tag = "health", responses((status = 200, body = VersionView, description = "this server's release and commit")))]
async fn version(State(state): Shared) -> axum::Json<VersionView> {
    axum::Json(state.version.clone())
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "this document")))]
async fn openapi() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(|| {
        openapi_document()
            .to_pretty_json()
            .expect("the OpenAPI document is JSON")
    });
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        text.as_str(),
    )
}

/// The framework's own refusals (a query string that does not parse, a body over the API's
/// limit, a method a path does not take) come as plain text; every error of this API is an
/// [`ErrorBody`] with `X-Gust-Error`. A function's own answer through `invoke` (it carries
/// `X-Gust-Request-Id`) is left as the function wrote it.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let headers = response.headers();
    if !(status.is_client_error() || status.is_server_error())
        || headers.contains_key("x-gust-error")
        || headers.contains_key("x-gust-request-id")
    {
        return response;
    }
    let reason = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "too_large",
        500.. => "internal",
        _ => "invalid_input",
    };
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase()
    } else {
        error::printable(&text)
    };
    gust_edge::ErrorBody {
        component: "api",
        reason,
        request_id: None,
        message,
    }
    .into_response_with(status)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound {
        kind: "path",
        name: request.uri().path().to_owned(),
    }
}
