//! The page shell every page shares (navigation, namespace, sign out) and small formatting
//! helpers. maud escapes every interpolated value, so a function's name, output or log line
//! is text wherever it appears.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::response::{Html, IntoResponse, Redirect, Response};
use gust_model::Action;
use http::header::SET_COOKIE;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::Dashboard;
use crate::api::ApiFailure;
use crate::session::Signed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Functions,
    Async,
    Triggers,
    Usage,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "", "Overview"),
    (Section::Functions, "/functions", "Functions"),
    (Section::Async, "/async", "Async"),
    (Section::Triggers, "/triggers", "Triggers"),
    (Section::Usage, "/usage", "Usage"),
];

/// `?namespace=` of every page: the tenant it shows (`default` when absent).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NamespaceParam {
    pub namespace: Option<String>,
}

/// `?done=&count=` of the page a write returns to: what it did, said in the dashboard's own
/// words (never text from the query).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DoneParam {
    pub done: Option<String>,
    pub count: Option<u64>,
}

/// The line a page shows after a write.
pub(crate) fn notice(text: Option<String>) -> Markup {
    html! { @if let Some(text) = text { p.notice role="status" { (text) } } }
}

/// A signed-in request and the namespace it looks at.
pub(crate) struct Context {
    pub signed: Signed,
    pub namespace: String,
}

/// Extracted from a request with a session and `?namespace=`; without a session, the
/// request is answered as [`Signed`] answers it.
impl FromRequestParts<Arc<Dashboard>> for Context {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        dashboard: &Arc<Dashboard>,
    ) -> Result<Self, Response> {
        let signed = Signed::from_request_parts(parts, dashboard).await?;
        let Query(query) = Query::<NamespaceParam>::try_from_uri(&parts.uri)
            .map_err(|e| (http::StatusCode::BAD_REQUEST, e.body_text()).into_response())?;
        Ok(Self::new(signed, query.namespace))
    }
}

impl Context {
    pub fn new(signed: Signed, namespace: Option<String>) -> Self {
        let namespace = namespace
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| signed.home.clone());
        Self { signed, namespace }
    }

    /// Whether the session's role allows `action`: what a page offers. The API decides each
    /// call still (a token's namespaces, a role changed since sign-in).
    pub fn may(&self, action: Action) -> bool {
        self.signed.role.allows(action)
    }

    /// A dashboard link that stays in this namespace. `path` is under `/ui` and may carry a
    /// query of its own.
    pub fn link(&self, path: &str) -> String {
        let mut link = format!("/ui{path}");
        if self.namespace != self.signed.home {
            link.push(if path.contains('?') { '&' } else { '?' });
            link.push_str("namespace=");
            link.extend(percent_encoding::utf8_percent_encode(
                &self.namespace,
                percent_encoding::NON_ALPHANUMERIC,
            ));
        }
        link
    }

    /// The hidden field every form that writes carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.signed.csrf); }
    }

    /// A page: the shell around `content`.
    pub fn page(&self, section: Section, title: &str, content: Markup) -> Response {
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    // htmx must not inject its own style element: the policy allows none.
                    meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
                    title { (title) " · Gust" }
                    // No icon to fetch (a missing one is a failed load in the console).
                    link rel="icon" href="data:,";
                    link rel="stylesheet" href="/ui/assets/uPlot.min.css";
                    link rel="stylesheet" href="/ui/assets/dashboard.css";
                    script src="/ui/assets/htmx.min.js" defer {}
                    script src="/ui/assets/uPlot.iife.min.js" defer {}
                    script src="/ui/assets/dashboard.js" defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        a.brand href=(self.link("")) { "Gust" }
                        nav aria-label="Sections" {
                            ul {
                                @for (item, path, label) in SECTIONS {
                                    li {
                                        @if item == section {
                                            a href=(self.link(path)) aria-current="page" { (label) }
                                        } @else {
                                            a href=(self.link(path)) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form.namespace method="get" action="" {
                            label for="namespace" { "Namespace" }
                            input #namespace name="namespace" value=(self.namespace) size="12";
                            button type="submit" { "Show" }
                        }
                        form.signout method="post" action="/ui/logout" {
                            (self.csrf_field())
                            button type="submit" { "Sign out" }
                        }
                    }
                    main #main {
                        h1 { (title) }
                        (content)
                    }
                }
            }
        };
        Html(markup.into_string()).into_response()
    }

    /// A page from what its API calls gave: the page, or what [`Context::failed`] shows.
    pub fn show(
        &self,
        dashboard: &Dashboard,
        section: Section,
        title: &str,
        content: Result<Markup, ApiFailure>,
    ) -> Response {
        match content {
            Ok(content) => self.page(section, title, content),
            Err(failure) => self.failed(dashboard, section, failure),
        }
    }

    /// What a page shows when the API refused: the API's own words, or the sign-in page
    /// when the session's token is no longer accepted.
    pub fn failed(&self, dashboard: &Dashboard, section: Section, failure: ApiFailure) -> Response {
        if matches!(failure, ApiFailure::SignedOut) {
            dashboard.sessions.end(&self.signed.id);
            return signed_out(dashboard);
        }
        let status = failure.status();
        let forbidden = status == http::StatusCode::FORBIDDEN;
        let mut response = self.page(
            section,
            "Not shown",
            html! {
                p.error role="alert" { (failure.message()) }
                @if forbidden {
                    p.hint { "A token may reach other namespaces than this one: enter one in the Namespace field above." }
                }
                p { a href=(format!("/ui?namespace={}", percent_encoding::utf8_percent_encode(&self.signed.home, percent_encoding::NON_ALPHANUMERIC))) { "Back to the overview of " (self.signed.home) } }
            },
        );
        *response.status_mut() = status;
        response
    }

    /// What a fragment or a script's fetch answers when the API refused; a token no longer
    /// accepted ends the session here too.
    pub fn fetch_failed(&self, dashboard: &Dashboard, failure: ApiFailure) -> Response {
        if matches!(failure, ApiFailure::SignedOut) {
            dashboard.sessions.end(&self.signed.id);
        }
        failure.into_response()
    }
}

/// To the sign-in page, with the session cookie cleared.
pub(crate) fn signed_out(dashboard: &Dashboard) -> Response {
    (
        [(SET_COOKIE, dashboard.sessions.cookie(None, false))],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

/// Unix milliseconds as a UTC time to the second.
pub(crate) fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// A number with at most `decimals` digits after the point.
pub(crate) fn number(value: f64, decimals: usize) -> String {
    format!("{value:.decimals$}")
}

/// An empty table's single row, spanning its columns.
pub(crate) fn empty_row(columns: u32, text: &str) -> Markup {
    html! { tr { td colspan=(columns) { (text) } } }
}

/// A timer's cron expression with its time zone.
pub(crate) fn schedule(schedule: &gust_model::Schedule) -> String {
    let config = gust_model::ScheduleConfig::from(schedule.clone());
    format!(
        "{} ({})",
        config.cron,
        config.tz.as_deref().unwrap_or("UTC")
    )
}
