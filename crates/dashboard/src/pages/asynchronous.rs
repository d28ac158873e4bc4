//! Asynchronous work: the queue, and dead letters with their payloads, re-drive and purge.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use std::collections::HashMap;

use futures_util::{StreamExt, stream};
use gust_api_types::{AsyncCountsView, DeadLetterView, Purged, Redriven, RequestView, Selection};
use gust_model::{Action, AsyncInvocation};
use http::Method;
use maud::{Markup, html};
use serde::Deserialize;

use crate::Dashboard;
use crate::api::{ApiFailure, ApiPath};
use crate::layout::{Context, DoneParam, Section, empty_row, notice, time};

/// Dead letters listed on the page, newest first as the API lists them.
const SHOWN: usize = 50;
/// Of them, those shown with their request: each is a read of the whole stored request (up
/// to 256 KB), made a few at a time.
const WITH_REQUEST: usize = 20;
const REQUESTS_READ_AT_ONCE: usize = 4;
/// Payload bytes shown per dead letter.
const PAYLOAD_SHOWN: usize = 2048;

/// `GET /ui/async`.
pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    ctx: Context,
    Query(done): Query<DoneParam>,
) -> Response {
    let content = content(&dashboard, &ctx, &done).await;
    ctx.show(
        &dashboard,
        Section::Async,
        "Asynchronous invocations",
        content,
    )
}

async fn content(
    dashboard: &Dashboard,
    ctx: &Context,
    done: &DoneParam,
) -> Result<Markup, ApiFailure> {
    let (token, ns) = (&ctx.signed.token, &ctx.namespace);
    let _turn = dashboard.heavy_pages.acquire().await;
    let letters: Vec<AsyncInvocation> = dashboard
        .api
        .get(
            token,
            &ApiPath::new(["dlq"])
                .namespace(ns)
                .query("limit", &(SHOWN + 1).to_string()),
        )
        .await?;
    let more = letters.len() > SHOWN;
    let counts: AsyncCountsView = dashboard
        .api
        .get(token, &ApiPath::new(["async"]).namespace(ns))
        .await?;
    // Paths first: a stream of futures over borrowed items is not `Send` for the handler.
    let paths: Vec<ApiPath> = letters
        .iter()
        .take(WITH_REQUEST)
        .map(|letter| ApiPath::new(["dlq", &letter.id]).namespace(ns))
        .collect();
    let requests: HashMap<String, RequestView> = stream::iter(paths)
        .map(|path| async move { dashboard.api.get::<DeadLetterView>(token, &path).await })
        .buffer_unordered(REQUESTS_READ_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter_map(Result::ok)
        .map(|view| (view.invocation.id.clone(), preview(view.request)))
        .collect();
    let listed = &letters[..letters.len().min(SHOWN)];
    let count = done.count.unwrap_or(0);
    let letters_done = |verb: &str| {
        let noun = if count == 1 {
            "dead letter"
        } else {
            "dead letters"
        };
        format!("{count} {noun} {verb}.")
    };
    let done = match done.done.as_deref() {
        Some("redrive") => Some(letters_done(
            "re-driven: each is a new invocation in the queue",
        )),
        Some("purge") => Some(letters_done("purged")),
        _ => None,
    };
    Ok(html! {
        (notice(done))
        dl #async-counts.settings {
            dt { "Accepted, not ended" } dd #open { (counts.open) }
            @if let Some(running) = counts.running {
                dt { "Running an attempt" } dd #running { (running) }
                dt { "Waiting for an attempt" } dd #waiting { (counts.open.saturating_sub(running)) }
            }
            dt { "Dead letters" } dd #dead-letter-count { (counts.dead_letters) }
            @if let (Some(succeeded), Some(failed)) = (counts.succeeded, counts.failed) {
                dt { "Succeeded, ever" } dd #succeeded { (succeeded) }
                dt { "Failed for good, ever" } dd #failed { (failed) }
            }
            dt { "Waiting on this node" } dd #queue-depth { ((dashboard.queue_depth)()) }
        }
        @if more {
            p.hint { "The newest " (SHOWN) " dead letters are listed." }
        }
        @if !listed.is_empty() && ctx.may(Action::Deploy) {
            div.actions {
                form method="post" action=(ctx.link("/async/redrive")) data-confirm="Deliver every dead letter of this namespace again?" {
                    (ctx.csrf_field())
                    input type="hidden" name="all" value="true";
                    button type="submit" { "Re-drive all" }
                }
                form method="post" action=(ctx.link("/async/purge")) data-confirm="Delete every dead letter of this namespace for good?" {
                    (ctx.csrf_field())
                    input type="hidden" name="all" value="true";
                    button.danger type="submit" { "Purge all" }
                }
            }
        }
        h2 { "Dead letters" }
        table #dead-letters {
            thead { tr {
                th scope="col" { "Id" } th scope="col" { "Function" } th scope="col" { "State" }
                th scope="col" { "Attempts" } th scope="col" { "Last error" } th scope="col" { "Updated" }
                th scope="col" { "Request" } th scope="col" { span.visually-hidden { "Actions" } }
            } }
            tbody {
                @for letter in listed {
                    tr {
                        td { code { (letter.id) } }
                        td { a href=(ctx.link(&format!("/functions/{}", letter.function))) { (letter.function) } }
                        td { (letter.state.as_str()) }
                        td { (letter.attempts) }
                        td { (letter.last_status.map(|s| s.to_string()).unwrap_or_default()) " " (letter.last_error.as_deref().unwrap_or("")) }
                        td { (time(letter.updated_at_ms)) }
                        td {
                            @if let Some(request) = requests.get(&letter.id) {
                                details {
                                    summary { (request.method) " " (request.uri) }
                                    pre.payload { (request.body_base64) }
                                }
                            } @else {
                                code { "gust dlq show " (letter.id) }
                            }
                        }
                        td.actions {
                            @if ctx.may(Action::Deploy) {
                                form method="post" action=(ctx.link("/async/redrive")) {
                                    (ctx.csrf_field())
                                    input type="hidden" name="id" value=(letter.id);
                                    button type="submit" aria-label=(format!("Re-drive {}", letter.id)) { "Re-drive" }
                                }
                                form method="post" action=(ctx.link("/async/purge")) data-confirm="Delete this dead letter for good?" {
                                    (ctx.csrf_field())
                                    input type="hidden" name="id" value=(letter.id);
                                    button.danger type="submit" aria-label=(format!("Purge {}", letter.id)) { "Purge" }
                                }
                            }
                        }
                    }
                }
                @if listed.is_empty() {
                    (empty_row(8, "No dead letters."))
                }
            }
        }
    })
}

/// The request with the start of its body as text in place of the whole body.
fn preview(mut request: RequestView) -> RequestView {
    request.body_base64 = payload(&request.body_base64);
    request
}

/// The start of a request body, as text.
fn payload(body_base64: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(body_base64) {
        Ok(body) if body.is_empty() => "(no body)".to_owned(),
        Ok(body) => {
            let mut text =
                String::from_utf8_lossy(&body[..body.len().min(PAYLOAD_SHOWN)]).into_owned();
            if body.len() > PAYLOAD_SHOWN {
                text.push_str(&format!("\n… {} bytes in all", body.len()));
            }
            text
        }
        Err(_) => "(unreadable body)".to_owned(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct SelectionForm {
    #[serde(default)]
    csrf: String,
    /// One dead letter, or every one (`all=true`).
    id: Option<String>,
    #[serde(default)]
    all: bool,
}

impl SelectionForm {
    fn selection(&self) -> Selection {
        Selection {
            ids: self.id.iter().cloned().collect(),
            function: None,
            all: self.all && self.id.is_none(),
        }
    }
}

/// `POST /ui/async/redrive`.
pub(crate) async fn redrive(
    State(dashboard): State<Arc<Dashboard>>,
    ctx: Context,
    Form(form): Form<SelectionForm>,
) -> Response {
    act::<Vec<Redriven>>(dashboard, ctx, form, "redrive", |redriven| redriven.len()).await
}

/// `POST /ui/async/purge`.
pub(crate) async fn purge(
    State(dashboard): State<Arc<Dashboard>>,
    ctx: Context,
    Form(form): Form<SelectionForm>,
) -> Response {
    act::<Purged>(dashboard, ctx, form, "purge", |purged| purged.purged).await
}

async fn act<T: serde::de::DeserializeOwned>(
    dashboard: Arc<Dashboard>,
    ctx: Context,
    form: SelectionForm,
    action: &str,
    count: impl Fn(&T) -> usize,
) -> Response {
    if let Err(refused) = ctx.signed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let done = dashboard
        .api
        .json::<T>(
            &ctx.signed.token,
            Method::POST,
            &ApiPath::new(["dlq", action]).namespace(&ctx.namespace),
            Some(&form.selection()),
        )
        .await;
    match done {
        Ok(done) => {
            let back = format!("/async?done={action}&count={}", count(&done));
            Redirect::to(&ctx.link(&back)).into_response()
        }
        Err(failure) => ctx.failed(&dashboard, Section::Async, failure),
    }
}
