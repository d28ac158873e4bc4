//! `/v1/mqtriggers`: create, list, show and delete queue triggers. The broker URL is shown
//! with its credentials redacted, and beside each trigger its connection state and last error.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use bytes::Bytes;
use gust_api_types::{MqTriggerView, NamespaceQuery, TriggerStatusView};
use gust_model::{MqTrigger, MqTriggerConfig};
use gust_trigger_mq::TriggerStatus;
use http::StatusCode;

use crate::functions::now_ms;
use crate::routes::generated_name;
use crate::{ApiError, ApiState, NamespaceExt, Scoped, find_named, parse_json};

type Shared = State<Arc<ApiState>>;

/// A trigger as shown to users, with its connection state.
fn trigger_view(trigger: MqTrigger, state: &ApiState) -> MqTriggerView {
    let status = state
        .mq
        .status(&trigger)
        .unwrap_or_else(TriggerStatus::connecting);
    MqTriggerView {
        namespace: trigger.namespace.to_string(),
        name: trigger.name.to_string(),
        function: trigger.function.to_string(),
        kind: trigger.kind.as_str().to_owned(),
        url: trigger.url.redacted(),
        topic: trigger.topic,
        resp_topic: trigger.resp_topic,
        error_topic: trigger.error_topic,
        max_retries: trigger.max_retries,
        concurrency: trigger.concurrency,
        content_type: trigger.content_type,
        created_at_ms: trigger.created_at_ms,
        app: trigger.app.map(|app| app.to_string()),
        status: TriggerStatusView {
            state: status.state.as_str().to_owned(),
            last_error: status.last_error,
            last_error_at_ms: status.last_error_at_ms,
            succeeded: status.succeeded,
            failed: status.failed,
        },
    }
}

#[utoipa::path(get, path = "/mqtriggers", tag = "queue triggers", params(NamespaceQuery), responses((status = 200, body = [MqTriggerView])))]
pub async fn list(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<MqTriggerView>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| {
            Ok(s.store
                .mq_triggers(Some(&namespace))?
                .into_iter()
                .map(|t| trigger_view(t, s))
                .collect())
        })
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/mqtriggers/{name}", tag = "queue triggers", params(("name" = String, Path, description = "the queue trigger's name"), NamespaceQuery), responses((status = 200, body = MqTriggerView)))]
pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<MqTriggerView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("trigger")?;
    state
        .blocking(move |s| {
            let triggers = s.store.mq_triggers(Some(&namespace))?;
            let trigger = find_named(triggers, |t| &t.name, "queue trigger", &name)?;
            Ok(trigger_view(trigger, s))
        })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/mqtriggers", tag = "queue triggers", params(NamespaceQuery), request_body = MqTriggerConfig, responses((status = 201, body = MqTriggerView)))]
pub async fn create(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<MqTriggerView>), ApiError> {
    let namespace = query.namespace()?;
    let config: MqTriggerConfig = parse_json(&body)?;
    let trigger = config.validate(namespace, generated_name("mqt", &config.function), now_ms())?;
    state
        .blocking(move |s| {
            s.store.create_mq_trigger(&trigger)?;
            s.mq.triggers_changed();
            Ok(trigger_view(trigger, s))
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

#[utoipa::path(delete, path = "/mqtriggers/{name}", tag = "queue triggers", params(("name" = String, Path, description = "the queue trigger's name"), NamespaceQuery), responses((status = 204, description = "deleted")))]
pub async fn delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("trigger")?;
    state
        .blocking(move |s| {
            s.store.delete_mq_trigger(&namespace, &name)?;
            s.mq.triggers_changed();
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
