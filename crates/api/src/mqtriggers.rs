//! `/v1/mqtriggers`: create, list, show and delete queue triggers. The broker URL is shown
//! with its credentials redacted, and beside each trigger its connection state and last error.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use bytes::Bytes;
use gust_model::{MqTrigger, MqTriggerConfig};
use gust_trigger_mq::TriggerStatus;
use http::StatusCode;
use serde::Serialize;

use crate::functions::now_ms;
use crate::routes::generated_name;
use crate::{ApiError, ApiState, NamespaceQuery, Scoped, find_named, parse_json};

type Shared = State<Arc<ApiState>>;

/// A trigger as shown to users.
#[derive(Debug, Serialize)]
pub struct MqTriggerView {
    namespace: String,
    name: String,
    function: String,
    kind: &'static str,
    /// The broker URL with any password or token replaced by `***`.
    url: String,
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resp_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_topic: Option<String>,
    max_retries: u32,
    concurrency: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    created_at_ms: u64,
    status: TriggerStatus,
}

impl MqTriggerView {
    fn new(trigger: MqTrigger, state: &ApiState) -> Self {
        let status = state
            .mq
            .status(&trigger)
            .unwrap_or_else(TriggerStatus::connecting);
        Self {
            namespace: trigger.namespace.to_string(),
            name: trigger.name.to_string(),
            function: trigger.function.to_string(),
            kind: trigger.kind.as_str(),
            url: trigger.url.redacted(),
            topic: trigger.topic,
            resp_topic: trigger.resp_topic,
            error_topic: trigger.error_topic,
            max_retries: trigger.max_retries,
            concurrency: trigger.concurrency,
            content_type: trigger.content_type,
            created_at_ms: trigger.created_at_ms,
            status,
        }
    }
}

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
                .map(|t| MqTriggerView::new(t, s))
                .collect())
        })
        .await
        .map(Json)
}

pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<MqTriggerView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("trigger")?;
    state
        .blocking(move |s| {
            let triggers = s.store.mq_triggers(Some(&namespace))?;
            let trigger = find_named(triggers, |t| &t.name, "queue trigger", &name)?;
            Ok(MqTriggerView::new(trigger, s))
        })
        .await
        .map(Json)
}

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
            Ok(MqTriggerView::new(trigger, s))
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

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
