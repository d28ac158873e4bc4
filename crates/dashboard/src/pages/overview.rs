//! The overview: what runs in the namespace and how it is doing, each figure linking to its
//! page. The tiles refresh themselves every 5 s (htmx).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use chrono::Timelike;
use futures_util::{StreamExt, stream};
use gust_api_types::{AsyncCountsView, FunctionStats, FunctionView, UsageReport};
use maud::{Markup, html};

use crate::Dashboard;
use crate::api::{ApiFailure, ApiPath};
use crate::layout::{Context, Section, number};

/// The functions whose minutes the overview adds up; a namespace with more shows the sum
/// of the first this many (by name) and says so.
pub(crate) const MAX_FUNCTIONS_SUMMED: usize = 100;
/// Functions' minutes read at once for one overview.
const STATS_READ_AT_ONCE: usize = 8;

/// `GET /ui`.
pub(crate) async fn page(State(dashboard): State<Arc<Dashboard>>, ctx: Context) -> Response {
    let content = tiles_markup(&dashboard, &ctx).await;
    ctx.show(&dashboard, Section::Overview, "Overview", content)
}

/// `GET /ui/tiles`: the tiles alone, for the page's refresh.
pub(crate) async fn tiles(State(dashboard): State<Arc<Dashboard>>, ctx: Context) -> Response {
    match tiles_markup(&dashboard, &ctx).await {
        Ok(tiles) => Html(tiles.into_string()).into_response(),
        Err(failure) => ctx.fetch_failed(&dashboard, failure),
    }
}

struct Summary {
    functions: usize,
    busy: usize,
    idle: usize,
    summed: usize,
    requests_last_5m: u64,
    errors_last_hour: u64,
    cold_starts_last_hour: u64,
    throttled_last_hour: u64,
    async_open: u64,
    dead_letters: u64,
    usage: UsageReport,
}

/// A function's traffic on this node over the last hour.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LastHour {
    pub requests: u64,
    pub requests_last_5m: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub throttled: u64,
}

/// How long a namespace's last hour, read for one page, serves the pages after it: however
/// many tabs and users look, a namespace's minutes are read at most this often.
const LAST_HOUR_FRESH: Duration = Duration::from_secs(5);
/// Namespaces whose last hour is kept at once; past it the oldest goes.
const LAST_HOURS_KEPT: usize = 256;

type LastHours = Arc<HashMap<String, LastHour>>;

/// Each namespace's last hour, with when it was read.
#[derive(Default)]
pub(crate) struct LastHourCache(Mutex<HashMap<String, (Instant, LastHours)>>);

impl LastHourCache {
    fn fresh(&self, namespace: &str) -> Option<LastHours> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(namespace)
            .filter(|(read, _)| read.elapsed() < LAST_HOUR_FRESH)
            .map(|(_, hours)| hours.clone())
    }

    fn keep(&self, namespace: &str, hours: LastHours) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|_, (read, _)| read.elapsed() < LAST_HOUR_FRESH);
        if kept.len() >= LAST_HOURS_KEPT
            && let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, (read, _))| *read)
                .map(|(ns, _)| ns.clone())
        {
            kept.remove(&oldest);
        }
        kept.insert(namespace.to_owned(), (Instant::now(), hours));
    }
}

/// The last hour of the first [`MAX_FUNCTIONS_SUMMED`] of a namespace's `functions` (sorted
/// by name), by name; a function deleted meanwhile is left out. Read a few functions at a
/// time, a few pages at a time per node, and kept for [`LAST_HOUR_FRESH`]: the caller has
/// just listed the namespace's functions with its own token, so it may read their minutes.
pub(crate) async fn last_hour(
    dashboard: &Dashboard,
    ctx: &Context,
    functions: &[FunctionView],
) -> LastHours {
    let (token, ns) = (&ctx.signed.token, &ctx.namespace);
    if let Some(hours) = dashboard.last_hours.fresh(ns) {
        return hours;
    }
    let _turn = dashboard.heavy_pages.acquire().await;
    // Another page may have read it while this one waited its turn.
    if let Some(hours) = dashboard.last_hours.fresh(ns) {
        return hours;
    }
    // Paths first: a stream of futures over borrowed items is not `Send` for the handler.
    let paths: Vec<(String, ApiPath)> = functions
        .iter()
        .take(MAX_FUNCTIONS_SUMMED)
        .map(|f| {
            let path = ApiPath::new(["functions", f.name.as_str(), "stats"])
                .namespace(ns)
                .query("since", "1h");
            (f.name.to_string(), path)
        })
        .collect();
    let stats: Vec<(String, Result<FunctionStats, ApiFailure>)> = stream::iter(paths)
        .map(|(name, path)| async move {
            (name, dashboard.api.get::<FunctionStats>(token, &path).await)
        })
        .buffer_unordered(STATS_READ_AT_ONCE)
        .collect()
        .await;
    let five_minutes_ago = chrono::Utc::now() - chrono::Duration::minutes(5);
    let mut by_name = HashMap::new();
    for (name, stats) in stats {
        let Ok(stats) = stats else { continue };
        let mut hour = LastHour::default();
        for minute in &stats.minutes {
            hour.requests += minute.invocations;
            hour.errors += minute.server_errors + minute.client_errors;
            hour.cold_starts += minute.cold_starts;
            hour.throttled += minute.throttled;
            let recent = chrono::DateTime::parse_from_rfc3339(&minute.minute)
                .is_ok_and(|start| start >= five_minutes_ago);
            if recent {
                hour.requests_last_5m += minute.invocations;
            }
        }
        by_name.insert(name, hour);
    }
    let hours = Arc::new(by_name);
    dashboard.last_hours.keep(ns, hours.clone());
    hours
}

async fn summary(dashboard: &Dashboard, ctx: &Context) -> Result<Summary, ApiFailure> {
    let token = &ctx.signed.token;
    let ns = &ctx.namespace;
    let functions: Vec<FunctionView> = dashboard
        .api
        .get(token, &ApiPath::new(["functions"]).namespace(ns))
        .await?;
    let summed = functions.len().min(MAX_FUNCTIONS_SUMMED);
    let mut functions = functions;
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let hours = last_hour(dashboard, ctx, &functions).await;
    let total = |read: fn(&LastHour) -> u64| hours.values().map(read).sum::<u64>();
    let counts: AsyncCountsView = dashboard
        .api
        .get(token, &ApiPath::new(["async"]).namespace(ns))
        .await?;
    let now = chrono::Utc::now();
    let since_midnight = now.hour() * 60 + now.minute() + 1;
    let usage: UsageReport = dashboard
        .api
        .get(
            token,
            &ApiPath::new(["usage"])
                .namespace(ns)
                .query("since", &format!("{since_midnight}m")),
        )
        .await?;
    Ok(Summary {
        functions: functions.len(),
        busy: functions.iter().map(|f| f.instances.busy).sum(),
        idle: functions.iter().map(|f| f.instances.idle).sum(),
        summed,
        requests_last_5m: total(|h| h.requests_last_5m),
        errors_last_hour: total(|h| h.errors),
        cold_starts_last_hour: total(|h| h.cold_starts),
        throttled_last_hour: total(|h| h.throttled),
        async_open: counts.open,
        dead_letters: counts.dead_letters,
        usage,
    })
}

async fn tiles_markup(dashboard: &Dashboard, ctx: &Context) -> Result<Markup, ApiFailure> {
    let s = summary(dashboard, ctx).await?;
    let tile = |label: &str, value: String, note: String, href: String| {
        html! {
            li.tile {
                a href=(href) {
                    span.label { (label) }
                    span.value { (value) }
                    span.note { (note) }
                }
            }
        }
    };
    let functions = ctx.link("/functions");
    let sorted_by = |sort: &str| ctx.link(&format!("/functions?sort={sort}"));
    Ok(html! {
        ul #tiles.tiles hx-get=(ctx.link("/tiles")) hx-trigger="every 5s" hx-swap="outerHTML" aria-live="polite" {
            (tile("Functions", s.functions.to_string(), format!("{} busy, {} idle instances", s.busy, s.idle), functions.clone()))
            (tile("Requests per second", number(s.requests_last_5m as f64 / 300.0, 2), "mean of the last 5 minutes".to_owned(), sorted_by("requests")))
            (tile("Errors", s.errors_last_hour.to_string(), "4xx and 5xx, last hour".to_owned(), sorted_by("errors")))
            (tile("Cold starts", s.cold_starts_last_hour.to_string(), "last hour".to_owned(), sorted_by("cold")))
            (tile("Throttled", s.throttled_last_hour.to_string(), "last hour".to_owned(), sorted_by("throttled")))
            (tile("Async invocations", s.async_open.to_string(), format!("accepted, not ended; {} waiting on this node", (dashboard.queue_depth)()), ctx.link("/async")))
            (tile("Dead letters", s.dead_letters.to_string(), "in this namespace".to_owned(), ctx.link("/async")))
            (tile("Requests today", s.usage.totals.invocations.to_string(), format!("{} GB-s", number(s.usage.totals.gb_seconds, 3)), ctx.link("/usage")))
            (tile("Cost today", format!("{} {}", number(s.usage.totals.cost, 6), s.usage.currency), "since 00:00 UTC".to_owned(), ctx.link("/usage")))
        }
        @if s.summed < s.functions {
            p.hint { "Traffic figures add up the first " (s.summed) " of " (s.functions) " functions." }
        }
        p.hint { "Traffic is counted on this node." }
    })
}
