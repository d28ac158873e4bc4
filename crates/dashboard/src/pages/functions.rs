//! The functions of a namespace: search by name, sort by a column.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use gust_api_types::FunctionView;
use maud::html;
use serde::Deserialize;

use crate::Dashboard;
use crate::api::ApiPath;
use crate::layout::{Context, Section, empty_row, time};
use crate::pages::overview::{LastHour, MAX_FUNCTIONS_SUMMED, last_hour};
use crate::session::Signed;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    namespace: Option<String>,
    /// Names containing this.
    #[serde(default)]
    q: String,
    /// `name` (default), `env`, `updated` (newest first), `instances` (busiest first), or the
    /// last hour's `requests`, `errors`, `cold` starts or `throttled` (most first).
    #[serde(default)]
    sort: String,
}

const SORTS: [(&str, &str); 8] = [
    ("name", "Name"),
    ("env", "Environment"),
    ("updated", "Last updated"),
    ("instances", "Busy instances"),
    ("requests", "Requests, last hour"),
    ("errors", "Errors, last hour"),
    ("cold", "Cold starts, last hour"),
    ("throttled", "Throttled, last hour"),
];

/// `GET /ui/functions`.
pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    signed: Signed,
    Query(query): Query<ListQuery>,
) -> Response {
    let ctx = Context::new(signed, query.namespace);
    let listed = dashboard
        .api
        .get::<Vec<FunctionView>>(
            &ctx.signed.token,
            &ApiPath::new(["functions"]).namespace(&ctx.namespace),
        )
        .await;
    let mut functions = match listed {
        Ok(functions) => functions,
        Err(failure) => return ctx.failed(&dashboard, Section::Functions, failure),
    };
    let total = functions.len();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    // The namespace's first functions by name, as the overview reads them (and shares).
    let hours = last_hour(&dashboard, &ctx, &functions).await;
    let needle = query.q.trim().to_lowercase();
    functions.retain(|f| f.name.as_str().contains(&needle));
    let hour = |f: &FunctionView| hours.get(f.name.as_str()).copied();
    let most = |read: fn(&LastHour) -> u64| {
        move |f: &FunctionView| std::cmp::Reverse(hour(f).as_ref().map_or(0, read))
    };
    match query.sort.as_str() {
        "env" => functions.sort_by(|a, b| (&a.env, &a.name).cmp(&(&b.env, &b.name))),
        "updated" => functions.sort_by_key(|f| std::cmp::Reverse(f.updated_at_ms)),
        "instances" => functions.sort_by_key(|f| std::cmp::Reverse(f.instances.busy)),
        "requests" => functions.sort_by_key(most(|h| h.requests)),
        "errors" => functions.sort_by_key(most(|h| h.errors)),
        "cold" => functions.sort_by_key(most(|h| h.cold_starts)),
        "throttled" => functions.sort_by_key(most(|h| h.throttled)),
        _ => {}
    }
    let figure = |f: &FunctionView, read: fn(&LastHour) -> u64| {
        hour(f).map_or_else(|| "-".to_owned(), |h| read(&h).to_string())
    };
    let content = html! {
        form.filters method="get" action="/ui/functions" role="search" {
            input type="hidden" name="namespace" value=(ctx.namespace);
            label for="q" { "Name contains" }
            input #q type="search" name="q" value=(query.q);
            label for="sort" { "Sort by" }
            select #sort name="sort" {
                @for (value, label) in SORTS {
                    option value=(value) selected[query.sort == value] { (label) }
                }
            }
            button type="submit" { "Apply" }
        }
        p.hint { (functions.len()) " of " (total) " functions" }
        table {
            caption.visually-hidden { "Functions" }
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Environment" } th scope="col" { "Revision" }
                th scope="col" { "Busy" } th scope="col" { "Idle" } th scope="col" { "Max instances" }
                th scope="col" { "Memory" } th scope="col" { "Last updated" }
                th scope="col" { "Requests 1h" } th scope="col" { "Errors 1h" }
                th scope="col" { "Cold starts 1h" } th scope="col" { "Throttled 1h" }
            } }
            tbody {
                @for f in &functions {
                    tr {
                        td { a href=(ctx.link(&format!("/functions/{}", f.name))) { (f.name) } }
                        td { (f.env) }
                        td { (f.revision) }
                        td { (f.instances.busy) }
                        td { (f.instances.idle) }
                        td { (f.scaling.max_instances) }
                        td { (f.memory_mb) " MB" }
                        td { (time(f.updated_at_ms)) }
                        td { (figure(f, |h| h.requests)) }
                        td { (figure(f, |h| h.errors)) }
                        td { (figure(f, |h| h.cold_starts)) }
                        td { (figure(f, |h| h.throttled)) }
                    }
                }
                @if functions.is_empty() {
                    (empty_row(12, "No functions match."))
                }
            }
        }
        p.hint { "Traffic is counted on this node; it is read for the first " (MAX_FUNCTIONS_SUMMED) " functions listed by name (\"-\" past them)." }
    };
    ctx.page(Section::Functions, "Functions", content)
}
