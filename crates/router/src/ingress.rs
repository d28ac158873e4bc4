use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use gust_executor::{Enqueue, Invocation, Invoker, RequestId, TriggerKind};
use gust_model::{AsyncSource, RouteHost, RouteMode};
use http::{HeaderValue, StatusCode, header};

use gust_edge::{
    BodyBudget, ErrorBody, accepted_response, add_param_headers, forwardable_headers,
    function_response, invoke_error_response, put_header, unsupported_transfer_coding,
};

use crate::Routes;

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
    /// Namespaces' request rate quotas.
    pub rates: crate::NamespaceRates,
    /// Who holds an invoker token, for routes with `auth: token`.
    pub tokens: Arc<dyn crate::InvokerTokens>,
}

/// What a request names as its host, with the port: its URI's authority (HTTP/2,
/// absolute-form requests), else its `Host` header. Routes are chosen by it, and the function
/// sees it as `X-Forwarded-Host`.
fn request_authority(parts: &http::request::Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(authority) => Some(authority.as_str().rsplit('@').next().unwrap_or_default()),
        None => parts.headers.get(header::HOST)?.to_str().ok(),
    }
}

/// The public listener's app: every request is matched against the route table.
pub fn public_router(state: PublicState) -> Router {
    Router::new().fallback(serve).with_state(state)
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
    let authority = request_authority(&parts);
    let host = authority.and_then(RouteHost::of_request);
    let Some(found) = table.find(parts.method.as_str(), host.as_ref(), path) else {
        let allowed = table.allowed_methods(host.as_ref(), path);
        if allowed.is_empty() {
            return ErrorBody {
                component: "router",
                reason: "no_route",
                request_id: Some(id.to_string()),
                message: format!("no route for {} {}", parts.method, path),
            }
            .into_response_with(StatusCode::NOT_FOUND);
        }
        // The path is served, by other methods.
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut response = ErrorBody {
            component: "router",
            reason: "method_not_allowed",
            request_id: Some(id.to_string()),
            message: format!("{path} answers {allow}, not {}", parts.method),
        }
        .into_response_with(StatusCode::METHOD_NOT_ALLOWED);
        if let Ok(allow) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    };
    let claims = match crate::auth::check(
        &found.route.auth,
        &found.route.namespace,
        &parts.headers,
        &state.tokens,
    )
    .await
    {
        Ok(claims) => claims,
        Err(refusal) => {
            let (status, reason, message) = match refusal {
                crate::auth::Refusal::Unauthenticated(message) => {
                    (StatusCode::UNAUTHORIZED, "unauthorized", message)
                }
                crate::auth::Refusal::Forbidden(message) => {
                    (StatusCode::FORBIDDEN, "forbidden", message)
                }
            };
            let mut response = ErrorBody {
                component: "router",
                reason,
                request_id: Some(id.to_string()),
                message,
            }
            .into_response_with(status);
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return response;
        }
    };
    if let Err(wait) = state.rates.take(&found.route.namespace) {
        let mut response = ErrorBody {
            component: "router",
            reason: "quota",
            request_id: Some(id.to_string()),
            message: format!(
                "namespace {} is over its quota of requests per second",
                found.route.namespace
            ),
        }
        .into_response_with(StatusCode::TOO_MANY_REQUESTS);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return response;
    }
    let asynchronous = match found.route.mode {
        RouteMode::Sync => false,
        RouteMode::Async => true,
        RouteMode::CallerChooses => parts
            .headers
            .get("x-gust-invoke")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"async")),
    };
    if let Some(refused) = unsupported_transfer_coding(&parts.headers, &id) {
        return refused;
    }
    let mut headers = forwardable_headers(&parts.headers, false);
    if found.route.auth == gust_model::RouteAuth::Token {
        // A Gust credential is not the function's to see (or to call the API with).
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(claims) = &claims {
        put_header(&mut headers, "x-gust-jwt-claims", claims);
    }
    put_header(&mut headers, "x-gust-request-id", id.as_str());
    add_param_headers(&mut headers, &found.params);
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    put_header(&mut headers, "x-fission-full-url", target);
    put_header(&mut headers, "x-forwarded-for", &peer.ip().to_string());
    if let Some(authority) = authority {
        put_header(&mut headers, "x-forwarded-host", authority);
    }

    let request = http::Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .body(())
        .expect("method and URI come from a parsed request");
    let (mut forwarded, ()) = request.into_parts();
    forwarded.headers = headers;

    if asynchronous {
        // Stored until it runs: read whole, within the async limit, here.
        let body = match state.bodies.read_for_queue(&parts.headers, body, &id).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
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
                &http::Request::from_parts(forwarded, body),
            )
            .await;
        return accepted_response(stored, &id);
    }
    let body = state.bodies.arriving(&parts.headers, body);
    let invocation = Invocation {
        id: id.clone(),
        namespace: found.route.namespace.clone(),
        function: found.route.function.clone(),
        trigger: TriggerKind::Http,
        attempt: 1,
        request: http::Request::from_parts(forwarded, body),
    };
    match state.invoker.invoke(invocation).await {
        Ok(response) => function_response(response, &id),
        Err(error) => invoke_error_response(&error, id.as_str()),
    }
}
