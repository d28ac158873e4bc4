//! Asynchronous invocations and their dead letters: `/v1/invocations/{id}` and `/v1/dlq`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine;
use bytes::Bytes;
use gust_async_queue::QueueError;
use gust_model::{AsyncInvocation, Name, Namespace};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, NamespaceQuery, parse_json};

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

pub async fn show_invocation(
    State(state): Shared,
    Path(id): Path<String>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<AsyncInvocation>, ApiError> {
    let namespace = query.namespace()?;
    load(&state, &namespace, &id).await.map(Json)
}

#[derive(Debug, Deserialize)]
pub struct DeadLetterQuery {
    namespace: Option<String>,
    function: Option<String>,
    limit: Option<usize>,
}

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

/// A dead letter with the request it would deliver again.
#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    #[serde(flatten)]
    invocation: AsyncInvocation,
    request: RequestView,
}

#[derive(Debug, Serialize)]
struct RequestView {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body_base64: String,
}

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

/// Which dead letters a redrive or purge acts on: exactly one of the three.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    function: Option<String>,
    #[serde(default)]
    all: bool,
}

impl Selection {
    async fn resolve(
        self,
        state: &ApiState,
        namespace: &Namespace,
    ) -> Result<Vec<String>, ApiError> {
        let chosen = usize::from(!self.ids.is_empty())
            + usize::from(self.function.is_some())
            + usize::from(self.all);
        if chosen != 1 {
            return Err(ApiError::Invalid(
                "name dead letters by ids, by function, or all of them (exactly one)".into(),
            ));
        }
        if !self.ids.is_empty() {
            for id in &self.ids {
                check_id(id)?;
            }
            return Ok(self.ids);
        }
        let function = self
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
}

#[derive(Debug, Serialize)]
pub struct Redriven {
    from: String,
    id: String,
}

pub async fn redrive(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<Json<Vec<Redriven>>, ApiError> {
    let namespace = query.namespace()?;
    let selection: Selection = parse_json(&body)?;
    let ids = selection.resolve(&state, &namespace).await?;
    let mut out = Vec::with_capacity(ids.len());
    // Bounded transactions: a thousand dead letters at a time.
    for chunk in ids.chunks(1_000) {
        for (from, id) in state.queue.redrive(&namespace, chunk.to_vec()).await? {
            out.push(Redriven { from, id });
        }
    }
    Ok(Json(out))
}

#[derive(Debug, Serialize)]
pub struct Purged {
    purged: usize,
}

pub async fn purge(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<Json<Purged>, ApiError> {
    let namespace = query.namespace()?;
    let selection: Selection = parse_json(&body)?;
    let by_id = !selection.ids.is_empty();
    let ids = selection.resolve(&state, &namespace).await?;
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
