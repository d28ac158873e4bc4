//! `/v1/timers`: create, list, show and delete timers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use bytes::Bytes;
use gust_model::{Timer, TimerConfig};
use http::StatusCode;
use serde::Serialize;

use crate::functions::now_ms;
use crate::routes::generated_name;
use crate::{ApiError, ApiState, NamespaceQuery, Scoped, find_named, parse_json};

type Shared = State<Arc<ApiState>>;

/// A timer with its next tick.
#[derive(Debug, Serialize)]
pub struct TimerView {
    #[serde(flatten)]
    timer: Timer,
    /// Unix milliseconds of the next tick; absent when the schedule has none left.
    next_fire_ms: Option<u64>,
}

impl TimerView {
    fn new(timer: Timer, state: &ApiState) -> Self {
        let next_fire_ms = state.timers.next_tick(&timer);
        Self {
            timer,
            next_fire_ms,
        }
    }
}

pub async fn list(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<TimerView>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| {
            Ok(s.store
                .timers(Some(&namespace))?
                .into_iter()
                .map(|t| TimerView::new(t, s))
                .collect())
        })
        .await
        .map(Json)
}

pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<TimerView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("timer")?;
    state
        .blocking(move |s| {
            let timers = s.store.timers(Some(&namespace))?;
            let timer = find_named(timers, |t| &t.name, "timer", &name)?;
            Ok(TimerView::new(timer, s))
        })
        .await
        .map(Json)
}

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
            s.timers.timers_changed();
            Ok(TimerView::new(timer, s))
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

pub async fn delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("timer")?;
    state
        .blocking(move |s| {
            s.store.delete_timer(&namespace, &name)?;
            s.timers.timers_changed();
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
