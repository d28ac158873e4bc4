//! `/v1/timers`: create, list, show and delete timers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use bytes::Bytes;
use gust_api_types::{NamespaceQuery, TimerView};
use gust_model::{Timer, TimerConfig, TimerStatus};
use http::StatusCode;

use crate::functions::now_ms;
use crate::routes::generated_name;
use crate::{ApiError, ApiState, NamespaceExt, Scoped, find_named, parse_json};

type Shared = State<Arc<ApiState>>;

/// A timer with its next tick and what its ticks came to (`statuses`: its namespace's).
fn timer_view(
    timer: Timer,
    state: &ApiState,
    statuses: &mut HashMap<String, TimerStatus>,
) -> TimerView {
    let next_fire_ms = state.timers.next_tick(&timer);
    let status = statuses.remove(timer.name.as_str()).unwrap_or_default();
    TimerView {
        timer,
        next_fire_ms,
        status,
    }
}

#[utoipa::path(get, path = "/timers", tag = "timers", params(NamespaceQuery), responses((status = 200, body = [TimerView])))]
pub async fn list(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<TimerView>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| {
            let mut statuses = s.queue.timer_statuses(&namespace)?;
            Ok(s.store
                .timers(Some(&namespace))?
                .into_iter()
                .map(|t| timer_view(t, s, &mut statuses))
                .collect())
        })
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/timers/{name}", tag = "timers", params(("name" = String, Path, description = "the timer's name"), NamespaceQuery), responses((status = 200, body = TimerView)))]
pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<TimerView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("timer")?;
    state
        .blocking(move |s| {
            let timers = s.store.timers(Some(&namespace))?;
            let timer = find_named(timers, |t| &t.name, "timer", &name)?;
            let mut statuses = s.queue.timer_statuses(&namespace)?;
            Ok(timer_view(timer, s, &mut statuses))
        })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/timers", tag = "timers", params(NamespaceQuery), request_body = TimerConfig, responses((status = 201, body = TimerView)))]
pub async fn create(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<TimerView>), ApiError> {
    let namespace = query.namespace()?;
    let config: TimerConfig = parse_json(&body)?;
    let timer = config.validate(
        namespace,
        generated_name("timer", &config.function),
        now_ms(),
    )?;
    state
        .blocking(move |s| {
            s.store.create_timer(&timer)?;
            // Ticks of a timer deleted under the same name, ending later, do not count.
            s.queue
                .reset_timer(&timer.namespace, &timer.name, Some(timer.created_at_ms))?;
            s.timers.timers_changed();
            let mut fresh = HashMap::from([(
                timer.name.to_string(),
                TimerStatus::since(timer.created_at_ms),
            )]);
            Ok(timer_view(timer, s, &mut fresh))
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

#[utoipa::path(delete, path = "/timers/{name}", tag = "timers", params(("name" = String, Path, description = "the timer's name"), NamespaceQuery), responses((status = 204, description = "deleted")))]
pub async fn delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("timer")?;
    state
        .blocking(move |s| {
            s.store.delete_timer(&namespace, &name)?;
            s.queue.reset_timer(&namespace, &name, None)?;
            s.timers.timers_changed();
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
