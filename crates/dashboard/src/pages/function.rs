//! A function's page: settings, revisions with rollback, routes and triggers, charts of its
//! minutes, live logs and an invoke form.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use bytes::Bytes;
use futures_util::Stream;
use gust_api_types::{
    FunctionStats, FunctionView, LogLine, MqTriggerView, RollbackRequest, TimerView,
};
use gust_model::{Action, Revision, Route};
use http::{Method, StatusCode};
use maud::{Markup, html};
use serde::Deserialize;

use crate::Dashboard;
use crate::api::{ApiFailure, ApiPath};
use crate::layout::{Context, DoneParam, Section, empty_row, notice, schedule, time};
use crate::session::{Signed, StreamGuard};

/// Lines a log view starts with; later ones arrive as they are printed.
const LOG_BACKLOG: usize = 200;
/// How often the log stream asks for new lines.
const LOG_POLL: Duration = Duration::from_millis(500);
/// How long one log stream lasts before the browser opens it again.
const LOG_STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// The invoke form shows at most this much of an answer.
const MAX_SHOWN_ANSWER: usize = 64 * 1024;

/// `GET /ui/functions/{name}`.
pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    ctx: Context,
    Path(name): Path<String>,
    Query(done): Query<DoneParam>,
) -> Response {
    let content = content(&dashboard, &ctx, &name, &done).await;
    ctx.show(&dashboard, Section::Functions, &name, content)
}

async fn content(
    dashboard: &Dashboard,
    ctx: &Context,
    name: &str,
    done: &DoneParam,
) -> Result<Markup, ApiFailure> {
    let (token, ns) = (&ctx.signed.token, &ctx.namespace);
    let api = &dashboard.api;
    let function: FunctionView = api
        .get(token, &ApiPath::new(["functions", name]).namespace(ns))
        .await?;
    let revisions: Vec<Revision> = api
        .get(
            token,
            &ApiPath::new(["functions", name, "revisions"]).namespace(ns),
        )
        .await?;
    let of_this = |f: &gust_model::Name| f.as_str() == name;
    let routes: Vec<Route> = api
        .get::<Vec<Route>>(token, &ApiPath::new(["routes"]).namespace(ns))
        .await?
        .into_iter()
        .filter(|r| of_this(&r.function))
        .collect();
    let timers: Vec<TimerView> = api
        .get::<Vec<TimerView>>(token, &ApiPath::new(["timers"]).namespace(ns))
        .await?
        .into_iter()
        .filter(|t| of_this(&t.timer.function))
        .collect();
    let queues: Vec<MqTriggerView> = api
        .get::<Vec<MqTriggerView>>(token, &ApiPath::new(["mqtriggers"]).namespace(ns))
        .await?
        .into_iter()
        .filter(|t| t.function == name)
        .collect();
    let base = format!("/functions/{name}");
    let done = (done.done.as_deref() == Some("rollback"))
        .then(|| format!("Rolled back: revision {} serves now.", function.revision));
    Ok(html! {
        (notice(done))
        section aria-labelledby="settings-title" {
            h2 #settings-title { "Settings" }
            dl.settings {
                dt { "Environment" } dd { (function.env) }
                dt { "Revision" } dd { (function.revision) " of " (function.revisions) " kept (newest " (function.latest_revision) ")" }
                dt { "Entry point" } dd { (function.entrypoint.as_deref().unwrap_or("the environment's default")) }
                dt { "Memory" } dd { (function.memory_mb) " MB" }
                dt { "Timeout" } dd { (function.timeout.to_string()) }
                dt { "Concurrency" } dd { (function.scaling.concurrency) " requests per instance" }
                dt { "Instances" } dd { (function.scaling.min_instances) " to " (function.scaling.max_instances) ", idle after " (function.scaling.idle_timeout.to_string()) }
                dt { "Running now" } dd #instances-now { (function.instances.busy) " busy, " (function.instances.idle) " idle" }
                dt { "Code" } dd { (function.code_file.as_deref().unwrap_or("-")) ", " (function.code_bytes) " bytes" }
            }
        }
        section aria-labelledby="charts-title" {
            h2 #charts-title { "Traffic" }
            div.range role="group" aria-label="Time range" {
                button type="button" data-range="1h" aria-pressed="true" { "Last hour" }
                button type="button" data-range="24h" aria-pressed="false" { "Last day" }
            }
            div #charts data-stats=(ctx.link(&format!("{base}/stats"))) {}
            p.hint { "Per minute on this node. Latency is what callers saw (queue, cold start and run). Cold starts show how many requests waited for an instance to start, their mean wait and its phases: preparing the revision (a wasm component, once), taking a worker, applying limits, placing the code and loading it." }
        }
        section aria-labelledby="revisions-title" {
            h2 #revisions-title { "Revisions" }
            table {
                thead { tr {
                    th scope="col" { "Revision" } th scope="col" { "Environment" } th scope="col" { "Created" }
                    th scope="col" { "Copied from" } th scope="col" { "State" } th scope="col" { span.visually-hidden { "Action" } }
                } }
                tbody {
                    @for revision in revisions.iter().rev() {
                        tr {
                            td { (revision.number) }
                            td { (revision.environment) }
                            td { (time(revision.created_at_ms)) }
                            td { (revision.copied_from.map_or_else(|| "-".to_owned(), |r| r.to_string())) }
                            td {
                                @if revision.number == function.revision { strong { "serving" } }
                                @else if revision.is_ready() { "ready" }
                                @else { "not ready" }
                            }
                            td {
                                @if revision.number != function.revision && revision.is_ready() && ctx.may(Action::Deploy) {
                                    form method="post" action=(ctx.link(&format!("{base}/rollback"))) data-confirm=(format!("Serve revision {} of {name} again?", revision.number)) {
                                        (ctx.csrf_field())
                                        input type="hidden" name="to" value=(revision.number);
                                        button type="submit" { "Roll back to " (revision.number) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="triggers-title" {
            h2 #triggers-title { "Routes and triggers" }
            table {
                thead { tr { th scope="col" { "Kind" } th scope="col" { "Name" } th scope="col" { "What" } } }
                tbody {
                    @for route in &routes {
                        tr { td { "route" } td { (route.name) } td { (route.methods.to_string()) " " (route.path.to_string()) @if route.prefix { " (prefix)" } } }
                    }
                    @for timer in &timers {
                        tr { td { "timer" } td { (timer.timer.name) } td { (schedule(&timer.timer.schedule)) ", next " (timer.next_fire_ms.map_or_else(|| "never".to_owned(), time)) } }
                    }
                    @for queue in &queues {
                        tr { td { "queue" } td { (queue.name) } td { (queue.kind) " " (queue.topic) " (" (queue.status.state) ")" } }
                    }
                    @if routes.is_empty() && timers.is_empty() && queues.is_empty() {
                        (empty_row(3, "Only the API invokes it."))
                    }
                }
            }
        }
        section aria-labelledby="invoke-title" {
            h2 #invoke-title { "Invoke" }
            @if !ctx.may(Action::Invoke) {
                p.hint #invoke-not-allowed { "This token's role (" (ctx.signed.role) ") may not invoke functions." }
            } @else {
                form.invoke method="post" action=(ctx.link(&format!("{base}/invoke"))) hx-post=(ctx.link(&format!("{base}/invoke"))) hx-target="#invoke-result" {
                    (ctx.csrf_field())
                    label for="invoke-method" { "Method" }
                    select #invoke-method name="method" {
                        @for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] { option { (method) } }
                    }
                    label for="invoke-path" { "Path" }
                    input #invoke-path name="path" value="/";
                    label for="invoke-body" { "Body" }
                    textarea #invoke-body name="body" rows="3" {}
                    button type="submit" { "Invoke" }
                }
                div #invoke-result aria-live="polite" {}
            }
        }
        section aria-labelledby="logs-title" {
            h2 #logs-title { "Logs" }
            form.log-filter role="search" {
                label for="request-id" { "Request id" }
                input #request-id name="request_id" placeholder="all requests";
                button type="submit" { "Filter" }
            }
            ol #log-lines data-stream=(ctx.link(&format!("{base}/logs"))) aria-live="polite" aria-label="Log lines, newest last" {}
        }
    })
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StatsParam {
    namespace: Option<String>,
    since: Option<String>,
}

/// `GET /ui/functions/{name}/stats?since=1h`: the API's minutes, for the charts.
pub(crate) async fn stats(
    State(dashboard): State<Arc<Dashboard>>,
    signed: Signed,
    Path(name): Path<String>,
    Query(query): Query<StatsParam>,
) -> Response {
    let ctx = Context::new(signed, query.namespace);
    let path = ApiPath::new(["functions", &name, "stats"])
        .namespace(&ctx.namespace)
        .query("since", query.since.as_deref().unwrap_or("1h"));
    match dashboard
        .api
        .get::<FunctionStats>(&ctx.signed.token, &path)
        .await
    {
        Ok(stats) => axum::Json(stats).into_response(),
        Err(failure) => ctx.fetch_failed(&dashboard, failure),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LogsParam {
    namespace: Option<String>,
    request_id: Option<String>,
}

/// `GET /ui/functions/{name}/logs`: server-sent events, one per log line (a JSON
/// [`LogLine`]), starting with the last [`LOG_BACKLOG`] lines. A stream ends when its session
/// does and after [`LOG_STREAM_LIFETIME`]; the browser then opens it again, resuming after
/// the last line it got (`Last-Event-ID`), with its session checked anew. A token holds a
/// few streams at most.
pub(crate) async fn logs(
    State(dashboard): State<Arc<Dashboard>>,
    signed: Signed,
    Path(name): Path<String>,
    Query(query): Query<LogsParam>,
    headers: http::HeaderMap,
) -> Response {
    let ctx = Context::new(signed, query.namespace);
    let Some(held) = dashboard.sessions.open_stream(&ctx.signed.token) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "this token has as many log streams open as it may; close another page's logs",
        )
            .into_response();
    };
    let request_id = query.request_id.filter(|id| !id.trim().is_empty());
    let namespace = ctx.namespace.clone();
    let path = move |cursor: &LogCursor| {
        let mut path = ApiPath::new(["functions", &name, "logs"]).namespace(&namespace);
        if let Some(id) = &request_id {
            path = path.query("request_id", id.trim());
        }
        match cursor {
            LogCursor::Start => path.query("limit", &LOG_BACKLOG.to_string()),
            LogCursor::After(seq) => path.query("after", &seq.to_string()),
            LogCursor::Nodes(pairs) => path.query("cursor", pairs),
        }
    };
    let start = headers
        .get("last-event-id")
        .and_then(|id| id.to_str().ok())
        .and_then(LogCursor::parse)
        .unwrap_or(LogCursor::Start);
    // The first read answers the request: a function that does not exist is a 404, not an
    // empty stream.
    let first = match dashboard
        .api
        .get::<Vec<LogLine>>(&ctx.signed.token, &path(&start))
        .await
    {
        Ok(lines) => lines,
        Err(failure) => return ctx.fetch_failed(&dashboard, failure),
    };
    let stream = log_events(dashboard, ctx.signed, held, start, first, path);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Where the next read of a log resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LogCursor {
    Start,
    /// After this node's sequence number.
    After(u64),
    /// A cluster's `node=seq` pairs.
    Nodes(String),
}

impl LogCursor {
    fn after(lines: &[LogLine], previous: LogCursor) -> LogCursor {
        if lines.iter().any(|l| l.node.is_some()) {
            let mut last = std::collections::BTreeMap::new();
            if let LogCursor::Nodes(pairs) = &previous {
                for (node, seq) in gust_api_types::parse_log_cursor(pairs).unwrap_or_default() {
                    last.insert(node, seq);
                }
            }
            for line in lines {
                let node = line.node.clone().unwrap_or_default();
                let seq = last.entry(node).or_insert(0);
                *seq = (*seq).max(line.seq);
            }
            let pairs: Vec<String> = last.iter().map(|(n, s)| format!("{n}={s}")).collect();
            return LogCursor::Nodes(pairs.join(","));
        }
        match (lines.iter().map(|l| l.seq).max(), previous) {
            (Some(seq), _) => LogCursor::After(seq),
            (None, LogCursor::Start) => LogCursor::After(0),
            (None, previous) => previous,
        }
    }

    /// The event id a browser sends back as `Last-Event-ID` to resume here.
    fn event_id(&self) -> String {
        match self {
            LogCursor::Start => String::new(),
            LogCursor::After(seq) => format!("a{seq}"),
            LogCursor::Nodes(pairs) => format!("n{pairs}"),
        }
    }

    fn parse(id: &str) -> Option<LogCursor> {
        if let Some(seq) = id.strip_prefix('a') {
            return seq.parse().ok().map(LogCursor::After);
        }
        let pairs = id.strip_prefix('n')?;
        gust_api_types::parse_log_cursor(pairs).ok()?;
        Some(LogCursor::Nodes(pairs.to_owned()))
    }
}

fn log_events(
    dashboard: Arc<Dashboard>,
    signed: Signed,
    held: StreamGuard,
    start: LogCursor,
    first: Vec<LogLine>,
    path: impl Fn(&LogCursor) -> ApiPath + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |sender| async move {
        let _held = held;
        let opened = std::time::Instant::now();
        // Reopened soon after it ends.
        if sender
            .send(Ok(Event::default().retry(Duration::from_secs(1))))
            .await
            .is_err()
        {
            return;
        }
        let mut cursor = LogCursor::after(&first, start);
        let mut lines = first;
        loop {
            let last = lines.len().saturating_sub(1);
            for (i, line) in lines.iter().enumerate() {
                let Ok(mut event) = Event::default().event("line").json_data(line) else {
                    continue;
                };
                if i == last {
                    event = event.id(cursor.event_id());
                }
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(LOG_POLL).await;
            if !dashboard.sessions.is_live(&signed.id)
                || sender.is_closed()
                || opened.elapsed() >= LOG_STREAM_LIFETIME
            {
                return;
            }
            lines = match dashboard
                .api
                .get::<Vec<LogLine>>(&signed.token, &path(&cursor))
                .await
            {
                Ok(lines) => lines,
                Err(_) => return,
            };
            cursor = LogCursor::after(&lines, cursor);
        }
    })
}

/// A stream fed by a task: the task ends when the browser goes (its sends fail).
fn async_stream<F, Fut>(produce: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(sender));
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct RollbackForm {
    #[serde(default)]
    csrf: String,
    to: u32,
}

/// `POST /ui/functions/{name}/rollback`.
pub(crate) async fn rollback(
    State(dashboard): State<Arc<Dashboard>>,
    ctx: Context,
    Path(name): Path<String>,
    Form(form): Form<RollbackForm>,
) -> Response {
    if let Err(refused) = ctx.signed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let body = RollbackRequest { to: Some(form.to) };
    let rolled = dashboard
        .api
        .json::<FunctionView>(
            &ctx.signed.token,
            Method::POST,
            &ApiPath::new(["functions", &name, "rollback"]).namespace(&ctx.namespace),
            Some(&body),
        )
        .await;
    match rolled {
        Ok(_) => {
            Redirect::to(&ctx.link(&format!("/functions/{name}?done=rollback"))).into_response()
        }
        Err(failure) => ctx.failed(&dashboard, Section::Functions, failure),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct InvokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    body: String,
}

/// `POST /ui/functions/{name}/invoke`: the answer as a fragment for the page (or a page of
/// its own without script).
pub(crate) async fn invoke(
    State(dashboard): State<Arc<Dashboard>>,
    ctx: Context,
    Path(name): Path<String>,
    Form(form): Form<InvokeForm>,
) -> Response {
    if let Err(refused) = ctx.signed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let method = if form.method.is_empty() {
        "GET"
    } else {
        &form.method
    };
    let path = if form.path.is_empty() {
        "/"
    } else {
        &form.path
    };
    let call = ApiPath::new(["functions", &name, "invoke"])
        .namespace(&ctx.namespace)
        .query("method", method)
        .query("path", path);
    let answer = match dashboard
        .api
        .send(
            &ctx.signed.token,
            Method::POST,
            &call,
            None,
            Bytes::from(form.body),
        )
        .await
    {
        Ok(answer) => answer,
        Err(failure) => return ctx.fetch_failed(&dashboard, failure),
    };
    // The API's refusals (a role that may not invoke) and Gust's errors (a timeout) show
    // like any answer: their status and their JSON body, which says why.
    let request_id = answer
        .headers
        .get("x-gust-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let shown = &answer.body[..answer.body.len().min(MAX_SHOWN_ANSWER)];
    let fragment = html! {
        p {
            "Status " strong.status { (answer.status.as_u16()) }
            ", request id " code.request-id { (request_id) }
            @if shown.len() < answer.body.len() { ", first " (MAX_SHOWN_ANSWER) " of " (answer.body.len()) " bytes" }
        }
        pre.answer { (String::from_utf8_lossy(shown)) }
    };
    Html(fragment.into_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_cursor_survives_its_event_id() {
        for cursor in [
            LogCursor::After(42),
            LogCursor::Nodes("node-a=3,node-b=9".to_owned()),
        ] {
            assert_eq!(LogCursor::parse(&cursor.event_id()), Some(cursor));
        }
        assert_eq!(LogCursor::parse("a-1"), None);
        assert_eq!(LogCursor::parse("nnode"), None);
        assert_eq!(LogCursor::parse(""), None);
    }
}
