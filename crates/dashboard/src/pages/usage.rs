//! Usage and cost per function and hour, as a chart, a table and the CSV `gust usage -o csv`
//! prints.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use gust_api_types::UsageReport;
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use maud::html;
use serde::Deserialize;

use crate::Dashboard;
use crate::api::ApiPath;
use crate::layout::{Context, Section, empty_row};
use crate::session::Signed;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsageParam {
    namespace: Option<String>,
    /// How far back [default: 24h].
    since: Option<String>,
    /// `function`, `hour` (default) or `day`.
    by: Option<String>,
}

impl UsageParam {
    fn api_path(&self, ctx: &Context) -> ApiPath {
        ApiPath::new(["usage"])
            .namespace(&ctx.namespace)
            .query("since", self.since())
            .query("by", self.by())
    }

    fn since(&self) -> &str {
        self.since
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("24h")
    }

    fn by(&self) -> &str {
        self.by
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("hour")
    }

    fn query(&self) -> String {
        format!("?since={}&by={}", encode(self.since()), encode(self.by()))
    }
}

fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `GET /ui/usage`.
pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    signed: Signed,
    Query(query): Query<UsageParam>,
) -> Response {
    let ctx = Context::new(signed, query.namespace.clone());
    let report = match dashboard
        .api
        .get::<UsageReport>(&ctx.signed.token, &query.api_path(&ctx))
        .await
    {
        Ok(report) => report,
        Err(failure) => return ctx.failed(&dashboard, Section::Usage, failure),
    };
    let rows = report.cells();
    let chart: Vec<(String, String, f64)> = report
        .rows
        .iter()
        .map(|r| (r.function.clone(), r.period_start.clone(), r.cost))
        .collect();
    let chart = serde_json::to_string(&chart).unwrap_or_else(|_| "[]".to_owned());
    let content = html! {
        form.filters method="get" action="/ui/usage" {
            input type="hidden" name="namespace" value=(ctx.namespace);
            label for="since" { "Since" }
            input #since name="since" value=(query.since()) size="6";
            label for="by" { "By" }
            select #by name="by" {
                @for by in ["hour", "day", "function"] {
                    option value=(by) selected[query.by() == by] { (by) }
                }
            }
            button type="submit" { "Show" }
            a #usage-csv href=(ctx.link(&format!("/usage.csv{}", query.query()))) download="usage.csv" { "Download CSV" }
        }
        p { "Total cost " strong #usage-total { (format!("{:.6}", report.totals.cost)) " " (report.currency) } " for " (report.totals.invocations) " requests since " (report.since) "." }
        @if report.currency.is_empty() {
            p.hint { "No price sheet is set, so every cost is 0: start gust up with --prices to charge for usage." }
        }
        div #usage-chart data-rows=(chart) data-currency=(report.currency) {}
        table #usage {
            thead { tr { @for column in UsageReport::COLUMNS { th scope="col" { (column) } } } }
            tbody {
                @for row in &rows { tr { @for cell in row { td { (cell) } } } }
                @if report.rows.is_empty() { (empty_row(7, "No usage in this period.")) }
            }
        }
    };
    ctx.page(Section::Usage, "Usage and cost", content)
}

/// `GET /ui/usage.csv`: the same bytes as `gust usage -o csv` with the same `--since` and
/// `--by`.
pub(crate) async fn csv(
    State(dashboard): State<Arc<Dashboard>>,
    signed: Signed,
    Query(query): Query<UsageParam>,
) -> Response {
    let ctx = Context::new(signed, query.namespace.clone());
    match dashboard
        .api
        .get::<UsageReport>(&ctx.signed.token, &query.api_path(&ctx))
        .await
    {
        Ok(report) => (
            [
                (CONTENT_TYPE, "text/csv; charset=utf-8"),
                (CONTENT_DISPOSITION, "attachment; filename=\"usage.csv\""),
            ],
            gust_api_types::csv(&UsageReport::COLUMNS, &report.cells()),
        )
            .into_response(),
        Err(failure) => ctx.fetch_failed(&dashboard, failure),
    }
}
