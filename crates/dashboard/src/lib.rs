//! The web dashboard at `/ui` on the API listener: server-rendered pages (maud) over the API,
//! with two vendored scripts (htmx for partial updates, uPlot for charts) and every asset
//! inside the binary.
//!
//! Key types: [`Dashboard`] (the sessions and the in-process API), [`dashboard_router`].
//! Every page and write needs a session ([`session::Signed`]); every write needs the
//! session's CSRF token; every read and write is an API call made with the session's token,
//! so the dashboard can show and do exactly what that token may.

mod api;
mod assets;
mod layout;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use http::HeaderValue;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};

pub use session::Sessions;

/// Heavy pages rendered at once on a node.
const HEAVY_PAGES_AT_ONCE: usize = 4;

/// What the dashboard's handlers share.
pub struct Dashboard {
    api: api::Api,
    sessions: Arc<Sessions>,
    /// Pages that make many API calls at once (the overview, dead letters), rendered a few
    /// at a time: many open tabs queue rather than take every core.
    heavy_pages: tokio::sync::Semaphore,
    /// Each namespace's last hour of traffic, read for one page and served to the next pages
    /// for a few seconds.
    last_hours: pages::overview::LastHourCache,
    /// This node's asynchronous invocations waiting for an attempt.
    queue_depth: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Dashboard {
    /// `api` is the API router the dashboard calls in-process (the one [`dashboard_router`]
    /// is served beside).
    pub fn new(api: Router, queue_depth: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            api: api::Api::new(api),
            sessions: Arc::default(),
            heavy_pages: tokio::sync::Semaphore::new(HEAVY_PAGES_AT_ONCE),
            last_hours: Default::default(),
            queue_depth: Box::new(queue_depth),
        }
    }
}

/// `/ui` and the routes under it, to merge beside the API's.
pub fn dashboard_router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .nest("/ui", pages(dashboard))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
}

fn pages(dashboard: Arc<Dashboard>) -> Router {
    use pages::{asynchronous, function, functions, overview, sign_in, triggers, usage};
    Router::new()
        .route("/", get(overview::page))
        .route("/tiles", get(overview::tiles))
        .route("/login", get(sign_in::form).post(sign_in::sign_in))
        .route("/logout", post(sign_in::sign_out))
        .route("/functions", get(functions::page))
        .route("/functions/{name}", get(function::page))
        .route("/functions/{name}/stats", get(function::stats))
        .route("/functions/{name}/logs", get(function::logs))
        .route("/functions/{name}/rollback", post(function::rollback))
        .route("/functions/{name}/invoke", post(function::invoke))
        .route("/async", get(asynchronous::page))
        .route("/async/redrive", post(asynchronous::redrive))
        .route("/async/purge", post(asynchronous::purge))
        .route("/triggers", get(triggers::page))
        .route("/usage", get(usage::page))
        .route("/usage.csv", get(usage::csv))
        .route("/assets/{file}", get(assets::serve))
        .fallback(not_found)
        .layer(middleware::from_fn(protective_headers))
        .with_state(dashboard)
}

/// A path under `/ui` that is no page: the dashboard's own 404 (a sign-in first without a
/// session), never the API's answer.
async fn not_found(ctx: layout::Context) -> Response {
    let mut page = ctx.page(
        layout::Section::Overview,
        "Page not found",
        maud::html! { p { "There is no such page. " a href=(ctx.link("")) { "Back to the overview" } "." } },
    );
    *page.status_mut() = http::StatusCode::NOT_FOUND;
    page
}

/// Scripts, styles and connections from this listener only, no framing, no referrer to other sites, and
/// no caching of pages that show a tenant's data. Even markup that escaped escaping could
/// not run inline script.
async fn protective_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: with the latter, browsers send `Origin: null` on the
    // dashboard's own form posts, which the origin check refuses.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !is_asset {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
