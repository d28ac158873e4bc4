use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use gust_api_types::{
    Accepted, ErrorBody, InvokeQuery, LogLine, LogsQuery, NamespaceQuery, parse_log_cursor,
};
use gust_edge::{
    accepted_response, add_param_headers, forwardable_headers, function_response,
    invoke_error_response, unsupported_transfer_coding,
};
use gust_executor::{Enqueue, Invocation, LogQuery, RequestId, TriggerKind, function_key};
use gust_model::AsyncSource;
use http::{HeaderValue, Method};

use crate::{ApiError, ApiState, PeerLogsRequest, Scoped};

type Shared = State<Arc<ApiState>>;

/// Invokes a function through the authenticated API: the body and headers of this request
/// (minus `Authorization` and every `X-Gust-*`) become the function's request.
#[utoipa::path(method(get, post, put, patch, delete), path = "/functions/{name}/invoke", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery, InvokeQuery), request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the body the function receives"), responses((status = 200, description = "the function's own response, any status, headers and body"), (status = 202, description = "with ?async=true: accepted; the body's id (also in X-Gust-Request-Id) names the invocation", body = Accepted), (status = 413, description = "the request body is over the limit", body = ErrorBody), (status = 501, description = "the request body's transfer coding is other than chunked", body = ErrorBody), (status = 429, description = "no capacity within the queue timeout, or the asynchronous queue is full; Retry-After says when to try again", body = ErrorBody), (status = 502, description = "the function failed (an exception, a crash, an invalid answer)", body = ErrorBody), (status = 503, description = "the invocation could not be stored or Gust is stopping", body = ErrorBody), (status = 504, description = "the function did not answer within its timeout, or its instance did not start in time", body = ErrorBody)))]
pub async fn invoke(
    State(state): Shared,
    scoped: Scoped,
    Query(query): Query<InvokeQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let namespace = scoped.namespace.clone();
    let function = scoped.name("function")?;
    let method = match &query.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| ApiError::Invalid(format!("invalid method {m:?}")))?,
        None => request.method().clone(),
    };
    let path = query.path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || gust_model::is_reserved_path(path.split('?').next().unwrap_or(""))
    {
        return Err(ApiError::Invalid(format!("invalid path {path:?}")));
    }
    let id = RequestId::generate();
    if query.asynchronous {
        let (ns, name) = (namespace.clone(), function.clone());
        let exists = state
            .blocking(move |s| Ok(s.store.function(&ns, &name)?.is_some()))
            .await?;
        if !exists {
            return Err(ApiError::NotFound {
                kind: "function",
                name: function.to_string(),
            });
        }
    }
    let (parts, body) = request.into_parts();
    if let Some(refused) = unsupported_transfer_coding(&parts.headers, &id) {
        return Ok(refused);
    }
    let mut forwarded = http::Request::builder()
        .method(method)
        .uri(path.as_str())
        .body(())
        .map_err(|_| ApiError::Invalid(format!("invalid path {path:?}")))?;
    *forwarded.headers_mut() = forwardable_headers(&parts.headers, true);
    // When the path matches one of this function's routes, the function gets its parameters
    // as it would through the public listener.
    let table = state.routes.snapshot();
    let route_path = path.split('?').next().unwrap_or("/");
    let is_this_function =
        |route: &gust_model::Route| route.namespace == namespace && route.function == function;
    // Its routes may be on hosts of their own: the path is matched as each would see it.
    let hosts = table
        .routes()
        .iter()
        .filter(|route| is_this_function(route) && route.host.is_some())
        .map(|route| route.host.as_ref());
    if let Some(found) = std::iter::once(None).chain(hosts).find_map(|host| {
        table
            .find(forwarded.method().as_str(), host, route_path)
            .filter(|found| is_this_function(found.route))
    }) {
        add_param_headers(forwarded.headers_mut(), &found.params);
    }
    let id_header = HeaderValue::from_str(id.as_str()).expect("request ids are ASCII");
    forwarded
        .headers_mut()
        .insert("x-gust-request-id", id_header);
    let (forwarded, ()) = forwarded.into_parts();
    if query.asynchronous {
        // Stored until it runs: read whole, within the async limit, here.
        let body = match state.bodies.read_for_queue(&parts.headers, body, &id).await {
            Ok(body) => body,
            Err(refused) => return Ok(refused),
        };
        let stored = Enqueue::enqueue(
            &state.queue,
            &id,
            namespace,
            function,
            AsyncSource::Api,
            &http::Request::from_parts(forwarded, body),
        )
        .await;
        return Ok(accepted_response(stored, &id));
    }
    let body = state.bodies.arriving(&parts.headers, body);
    let invocation = Invocation {
        id: id.clone(),
        namespace,
        function,
        trigger: TriggerKind::Api,
        attempt: 1,
        request: http::Request::from_parts(forwarded, body),
    };
    Ok(match state.invoker.invoke(invocation).await {
        Ok(response) => function_response(response, &id),
        Err(error) => invoke_error_response(&error, id.as_str()),
    })
}

#[utoipa::path(get, path = "/functions/{name}/logs", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery, LogsQuery), responses((status = 200, body = [LogLine])))]
pub async fn logs(
    State(state): Shared,
    scoped: Scoped,
    Query(query): Query<LogsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let namespace = scoped.namespace.clone();
    let function = scoped.name("function")?;
    let exists = {
        let (namespace, function) = (namespace.clone(), function.clone());
        state
            .blocking(move |s| Ok(s.store.function(&namespace, &function)?.is_some()))
            .await?
    };
    if !exists {
        return Err(ApiError::NotFound {
            kind: "function",
            name: function.to_string(),
        });
    }
    // In a cluster, each node's lines resume from their own point (`seq` counts per node)
    // and, unless only this node's are asked for, every live node's are merged in time order.
    let this_node = state.nodes.cluster_node_id().map(str::to_owned);
    let cursor: HashMap<String, u64> = match &query.cursor {
        Some(cursor) => parse_log_cursor(cursor)
            .map_err(|e| ApiError::Invalid(format!("cursor: {e}")))?
            .into_iter()
            .collect(),
        None => HashMap::new(),
    };
    let local_after = match (&this_node, &query.cursor) {
        (Some(id), Some(_)) => cursor.get(id).copied(),
        _ => query.after,
    };
    let mut lines: Vec<LogLine> = state
        .logs
        .read(
            &function_key(&namespace, &function),
            &LogQuery {
                after: local_after,
                request_id: query.request_id.clone(),
                limit: query.limit,
            },
        )
        .into_iter()
        .map(|line| LogLine {
            seq: line.seq,
            time_ms: line.time_ms,
            stream: line.stream.as_str().to_owned(),
            instance: line.instance,
            request_id: line.request_id,
            text: line.text,
            node: this_node.clone(),
        })
        .collect();
    if this_node.is_some() && !query.local {
        let peers = PeerLogsRequest {
            namespace: namespace.to_string(),
            function: function.to_string(),
            after: cursor,
            request_id: query.request_id,
            limit: query.limit,
        };
        lines.extend(state.nodes.peer_logs(&peers).await);
        lines.sort_by(|a, b| (a.time_ms, &a.node, a.seq).cmp(&(b.time_ms, &b.node, b.seq)));
        if let Some(limit) = query.limit
            && lines.len() > limit
        {
            lines.drain(..lines.len() - limit);
        }
    }
    Ok(Json(lines))
}
