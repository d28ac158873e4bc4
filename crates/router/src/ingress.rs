use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use gust_executor::{
    Enqueue, EnqueueError, Invocation, Invoker, RequestId, ResponseBody, TriggerKind,
};
use gust_model::{AsyncSource, RouteMode};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::body::{BodyBudget, Reserved, read_limited, streamed_response};
use crate::{ErrorBody, Routes, invoke_error_response};

/// Largest request body a function receives by default (6 MB, as Lambda's synchronous
/// limit; `gust up --body-limit` sets another).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// Largest body of an asynchronous invocation (256 KB, as Lambda's): it is stored until it
/// has run.
pub const MAX_ASYNC_REQUEST_BYTES: usize = 256 * 1024;

/// Headers that describe one hop, not the message; never forwarded either way.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The methods a route can name, exactly as spelled on the wire.
const SERVED_METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::OPTIONS,
];

#[derive(Clone)]
pub struct PublicState {
    pub routes: Routes,
    pub invoker: Arc<dyn Invoker>,
    pub queue: Arc<dyn Enqueue>,
    pub bodies: BodyBudget,
}

/// The public listener's app: every request is matched against the route table.
pub fn public_router(state: PublicState) -> Router {
    Router::new().fallback(serve).with_state(state)
}

/// A caller's headers minus hop-by-hop ones, every `X-Gust-*` (only Gust sets those) and
/// credentials meant for Gust rather than the function (`strip_authorization`).
pub fn forwardable_headers(headers: &HeaderMap, strip_authorization: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        let lower = name.as_str();
        if lower.starts_with("x-gust-")
            || HOP_BY_HOP.contains(&lower)
            || lower == "content-length"
            || (strip_authorization && lower == "authorization")
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

async fn serve(
    State(state): State<PublicState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let id = RequestId::generate();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    // Methods are case-sensitive tokens; a worker server knows these seven and no others.
    if !SERVED_METHODS.contains(&parts.method) {
        let mut response = ErrorBody {
            component: "router",
            reason: "method_not_allowed",
            request_id: Some(id.to_string()),
            message: format!("method {} is not served", parts.method),
        }
        .into_response_with(StatusCode::METHOD_NOT_ALLOWED);
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return response;
    }
    let table = state.routes.snapshot();
    let Some(found) = table.find(parts.method.as_str(), path) else {
        return ErrorBody {
            component: "router",
            reason: "no_route",
            request_id: Some(id.to_string()),
            message: format!("no route for {} {}", parts.method, path),
        }
        .into_response_with(StatusCode::NOT_FOUND);
    };
    let asynchronous = match found.route.mode {
        RouteMode::Sync => false,
        RouteMode::Async => true,
        RouteMode::CallerChooses => parts
            .headers
            .get("x-gust-invoke")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"async")),
    };
    let limit = if asynchronous {
        MAX_ASYNC_REQUEST_BYTES
    } else {
        state.bodies.request_limit()
    };
    // Held until the function has answered and the client has taken the response: the
    // bodies' memory stays counted while it lives.
    let (body, reserved) = match read_limited(&parts.headers, body, limit, &state.bodies).await {
        Ok(read) => read,
        Err(error) => return error.with_request_id(&id),
    };

    let mut headers = forwardable_headers(&parts.headers, false);
    set(&mut headers, "x-gust-request-id", id.as_str());
    add_param_headers(&mut headers, &found.params);
    set(&mut headers, "x-forwarded-for", &peer.ip().to_string());
    if let Some(host) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        set(&mut headers, "x-forwarded-host", host);
    }

    let mut forwarded = http::Request::builder()
        .method(parts.method.clone())
        .uri(
            parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/"),
        )
        .body(body)
        .expect("method and URI come from a parsed request");
    *forwarded.headers_mut() = headers;

    if asynchronous {
        let source = AsyncSource::Http {
            route: found.route.name.clone(),
        };
        let stored = state
            .queue
            .enqueue(
                &id,
                found.route.namespace.clone(),
                found.route.function.clone(),
                source,
                &forwarded,
            )
            .await;
        return accepted_response(stored, &id);
    }
    let invocation = Invocation {
        id: id.clone(),
        namespace: found.route.namespace.clone(),
        function: found.route.function.clone(),
        trigger: TriggerKind::Http,
        attempt: 1,
        request: forwarded,
    };
    match state.invoker.invoke(invocation).await {
        Ok(response) => function_response(response, &id, reserved),
        Err(error) => invoke_error_response(&error, id.as_str()),
    }
}

/// `202` with the invocation id once it is stored; `429` when the queue is full, `503` when
/// it could not be stored.
pub fn accepted_response(stored: Result<(), EnqueueError>, id: &RequestId) -> Response {
    let full = |reason, error: &EnqueueError| {
        let mut response = ErrorBody {
            component: "router",
            reason,
            request_id: Some(id.to_string()),
            message: format!("{error}; nothing was accepted, try again later"),
        }
        .into_response_with(StatusCode::TOO_MANY_REQUESTS);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        response
    };
    match stored {
        Ok(()) => {
            let mut response = (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "id": id.as_str() })),
            )
                .into_response();
            set(response.headers_mut(), "x-gust-request-id", id.as_str());
            response
        }
        Err(error @ EnqueueError::FunctionFull { .. }) => full("async_queue_full", &error),
        Err(error @ EnqueueError::QueueFull { .. }) => full("async_store_full", &error),
        Err(error @ EnqueueError::Unavailable(_)) => {
            tracing::error!(%error, %id, "asynchronous invocation not accepted");
            let mut response = ErrorBody {
                component: "router",
                reason: "queue_unavailable",
                request_id: Some(id.to_string()),
                message: "the invocation could not be stored; nothing was accepted, try again"
                    .to_owned(),
            }
            .into_response_with(StatusCode::SERVICE_UNAVAILABLE);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// Path parameters as `X-Gust-Param-<name>` headers, and all of them, names in their original
/// case, as JSON in `X-Gust-Params`.
pub fn add_param_headers(headers: &mut HeaderMap, params: &[(String, String)]) {
    let mut all = serde_json::Map::new();
    for (name, value) in params {
        if let Ok(header_name) = HeaderName::try_from(format!("x-gust-param-{name}")) {
            set_header(headers, header_name, value);
        }
        all.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    set(
        headers,
        "x-gust-params",
        &serde_json::Value::Object(all).to_string(),
    );
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    set_header(headers, HeaderName::from_static(name), value);
}

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The function's response as the caller gets it: hop-by-hop headers dropped, the request id
/// added, its body streamed as the function writes it, the request's reservation in the body
/// budget held until it ends.
pub fn function_response(
    response: http::Response<ResponseBody>,
    id: &RequestId,
    held: Reserved,
) -> Response {
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    // The connection sets the length from the body where the function's answer had one, and
    // streams it chunked where not.
    parts.headers.remove(header::CONTENT_LENGTH);
    // Only Gust speaks in X-Gust-* headers, in both directions.
    let forged: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-gust-"))
        .cloned()
        .collect();
    for name in forged {
        parts.headers.remove(name);
    }
    set(&mut parts.headers, "x-gust-request-id", id.as_str());
    Response::from_parts(parts, streamed_response(body, id, held))
}
