//! Asynchronous invocations and their dead letters: `/v1/invocations/{id}` and `/v1/dlq`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine;
use bytes::Bytes;
use gust_api_types::{
    AsyncCountsView, DeadLetterQuery, DeadLetterView, NamespaceQuery, Purged, Redriven,
    RequestView, Selection,
};
use gust_async_queue::QueueError;
use gust_model::{AsyncInvocation, Name, Namespace};

use crate::{ApiError, ApiState, NamespaceExt, parse_json};

type Shared = State<Arc<ApiState>>;

/// Dead letters shown or acted on per call at most.
const MAX_DEAD_LETTERS: usize = 100_000;

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::NotFound { id } => ApiError::NotFound {
                kind: "invocation",
                name: id,
            },
            QueueError::NotDeadLetter { .. } | QueueError::Full(_) => {
                ApiError::Conflict(err.to_string())
            }
            QueueError::Unavailable(_) | QueueError::Stopped => ApiError::Internal(err.to_string()),
        }
    }
}

#[utoipa::path(get, path = "/async", tag = "asynchronous", params(NamespaceQuery), responses((status = 200, body = AsyncCountsView)))]
pub async fn counts(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<AsyncCountsView>, ApiError> {
    let namespace = query.namespace()?;
    let counts = state.queue.counts(&namespace).await?;
    Ok(Json(AsyncCountsView {
        namespace: namespace.to_string(),
        open: counts.open,
        running: counts.running,
        dead_letters: counts.dead_letters,
        succeeded: counts.succeeded,
        failed: counts.failed,
    }))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::Invalid(format!("invalid invocation id {id:?}")));
    }
    Ok(())
}

async fn load(
    state: &ApiState,
    namespace: &Namespace,
    id: &str,
) -> Result<AsyncInvocation, ApiError> {
    check_id(id)?;
    state
        .queue
        .invocation(id)
        .await?
        .filter(|i| i.namespace == *namespace)
        .ok_or_else(|| ApiError::NotFound {
            kind: "invocation",
            name: id.to_owned(),
        })
}

#[utoipa::path(get, path = "/invocations/{id}", tag = "asynchronous", params(("id" = String, Path, description = "the invocation's id"), NamespaceQuery), responses((status = 200, body = AsyncInvocation)))]
pub async fn show_invocation(
    State(state): Shared,
    Path(id): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<AsyncInvocation>, ApiError> {
    let namespace = query.namespace()?;
    load(&state, &namespace, &id).await.map(Json)
}

#[utoipa::path(get, path = "/dlq", tag = "asynchronous", params(DeadLetterQuery), responses((status = 200, body = [AsyncInvocation])))]
pub async fn list_dead_letters(
    State(state): Shared,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<Vec<AsyncInvocation>>, ApiError> {
    let namespace = NamespaceQuery {
        namespace: query.namespace,
    }
    .namespace()?;
    let function = query
        .function
        .as_deref()
        .map(|f| Name::parse("function", f))
        .transpose()?;
    let limit = query.limit.unwrap_or(1_000).min(MAX_DEAD_LETTERS);
    Ok(Json(
        state
            .queue
            .dead_letters(&namespace, function.as_ref(), limit)
            .await?,
    ))
}

#[utoipa::path(get, path = "/dlq/{id}", tag = "asynchronous", params(("id" = String, Path, description = "the dead letter's invocation id"), NamespaceQuery), responses((status = 200, body = DeadLetterView)))]
pub async fn show_dead_letter(
    State(state): Shared,
    Path(id): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let namespace = query.namespace()?;
    let invocation = load(&state, &namespace, &id).await?;
    if !invocation.is_dead_letter() {
        return Err(ApiError::NotFound {
            kind: "dead letter",
            name: id,
        });
    }
    let request =
        state
            .queue
            .dead_letter_request(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                kind: "dead letter",
                name: id.clone(),
            })?;
    Ok(Json(DeadLetterView {
        invocation,
        request: RequestView {
            method: request.method,
            uri: request.uri,
            headers: request.headers,
            body_base64: base64::engine::general_purpose::STANDARD.encode(&request.body),
        },
    }))
}

/// The ids of the dead letters a redrive or purge acts on.
async fn resolve(
    selection: Selection,
    state: &ApiState,
    namespace: &Namespace,
) -> Result<Vec<String>, ApiError> {
    let chosen = usize::from(!selection.ids.is_empty())
        + usize::from(selection.function.is_some())
        + usize::from(selection.all);
    if chosen != 1 {
        return Err(ApiError::Invalid(
            "name dead letters by ids, by function, or all of them (exactly one)".into(),
        ));
    }
    if !selection.ids.is_empty() {
        for id in &selection.ids {
            check_id(id)?;
        }
        // An id named twice is one dead letter: it is re-driven (or purged) once.
        let mut seen = std::collections::HashSet::new();
        let mut ids = selection.ids;
        ids.retain(|id| seen.insert(id.clone()));
        return Ok(ids);
    }
    let function = selection
        .function
        .as_deref()
        .map(|f| Name::parse("function", f))
        .transpose()?;
    Ok(state
        .queue
        .dead_letters(namespace, function.as_ref(), MAX_DEAD_LETTERS)
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect())
}

#[utoipa::path(post, path = "/dlq/redrive", tag = "asynchronous", params(NamespaceQuery), request_body = Selection, responses((status = 200, body = [Redriven])))]
pub async fn redrive(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<Json<Vec<Redriven>>, ApiError> {
    let namespace = query.namespace()?;
    let selection: Selection = parse_json(&body)?;
    let ids = resolve(selection, &state, &namespace).await?;
    let mut out = Vec::with_capacity(ids.len());
    // Bounded transactions: a thousand dead letters at a time.
    for chunk in ids.chunks(1_000) {
        for (from, id) in state.queue.redrive(&namespace, chunk.to_vec()).await? {
            out.push(Redriven { from, id });
        }
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/dlq/purge", tag = "asynchronous", params(NamespaceQuery), request_body = Selection, responses((status = 200, body = Purged)))]
pub async fn purge(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<Json<Purged>, ApiError> {
    let namespace = query.namespace()?;
    let selection: Selection = parse_json(&body)?;
    let by_id = !selection.ids.is_empty();
    let ids = resolve(selection, &state, &namespace).await?;
    if by_id {
        // Ids of another namespace are not this caller's to purge.
        for id in &ids {
            load(&state, &namespace, id).await?;
        }
    }
    let mut purged = 0;
    for chunk in ids.chunks(1_000) {
        purged += state.queue.purge(chunk.to_vec()).await?;
    }
    Ok(Json(Purged { purged }))
}
