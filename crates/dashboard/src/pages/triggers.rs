//! Timers and queue triggers: their state, last error, next tick and counts.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use gust_api_types::{MqTriggerView, TimerView};
use maud::{Markup, html};

use crate::Dashboard;
use crate::api::{ApiFailure, ApiPath};
use crate::layout::{Context, Section, empty_row, schedule, time};

/// `GET /ui/triggers`.
pub(crate) async fn page(State(dashboard): State<Arc<Dashboard>>, ctx: Context) -> Response {
    let content = content(&dashboard, &ctx).await;
    ctx.show(
        &dashboard,
        Section::Triggers,
        "Timers and queue triggers",
        content,
    )
}

async fn content(dashboard: &Dashboard, ctx: &Context) -> Result<Markup, ApiFailure> {
    let (token, ns) = (&ctx.signed.token, &ctx.namespace);
    let timers: Vec<TimerView> = dashboard
        .api
        .get(token, &ApiPath::new(["timers"]).namespace(ns))
        .await?;
    let queues: Vec<MqTriggerView> = dashboard
        .api
        .get(token, &ApiPath::new(["mqtriggers"]).namespace(ns))
        .await?;
    let function_link = |function: &str| ctx.link(&format!("/functions/{function}"));
    Ok(html! {
        h2 { "Timers" }
        table #timers {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Function" } th scope="col" { "Schedule" }
                th scope="col" { "Next tick" } th scope="col" { "Last tick" } th scope="col" { "Fired" }
                th scope="col" { "Succeeded" } th scope="col" { "Failed" } th scope="col" { "Last error" }
            } }
            tbody {
                @for view in &timers {
                    tr {
                        td { (view.timer.name) }
                        td { a href=(function_link(view.timer.function.as_str())) { (view.timer.function) } }
                        td { code { (schedule(&view.timer.schedule)) } }
                        td { (view.next_fire_ms.map_or_else(|| "none left".to_owned(), time)) }
                        td { (view.status.last_fired_ms.map_or_else(|| "never".to_owned(), time)) }
                        td { (view.status.fired) }
                        td { (view.status.succeeded) }
                        td { (view.status.failed) }
                        td { (last_error(view.status.last_error.as_deref(), view.status.last_error_at_ms)) }
                    }
                }
                @if timers.is_empty() { (empty_row(9, "No timers.")) }
            }
        }
        h2 { "Queue triggers" }
        table #queue-triggers {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Function" } th scope="col" { "Broker" }
                th scope="col" { "Topic" } th scope="col" { "State" } th scope="col" { "Succeeded" }
                th scope="col" { "Failed" } th scope="col" { "Last error" }
            } }
            tbody {
                @for queue in &queues {
                    tr {
                        td { (queue.name) }
                        td { a href=(function_link(&queue.function)) { (queue.function) } }
                        td { (queue.kind) " " code { (queue.url) } }
                        td { code { (queue.topic) } }
                        td { (queue.status.state) }
                        td { (queue.status.succeeded) }
                        td { (queue.status.failed) }
                        td { (last_error(queue.status.last_error.as_deref(), queue.status.last_error_at_ms)) }
                    }
                }
                @if queues.is_empty() { (empty_row(8, "No queue triggers.")) }
            }
        }
    })
}

/// A trigger's last error with when it happened, or `-`.
fn last_error(error: Option<&str>, at_ms: Option<u64>) -> Markup {
    html! {
        (error.unwrap_or("-"))
        @if let Some(at) = at_ms { " (" (time(at)) ")" }
    }
}
