//! Usage reports: billed time, memory and cost per function and period.

use serde::{Deserialize, Serialize};

/// `?namespace=&function=&since=&by=&limit=` of `/v1/usage` and `/v1/usage/records`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub namespace: Option<String>,
    pub function: Option<String>,
    /// How far back, e.g. `24h`, `7d` [default: 24h]
    pub since: Option<String>,
    /// `function` (default), `hour` or `day`.
    pub by: Option<String>,
    /// Records only: at most this many [default: 1000]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub function: String,
    /// RFC 3339, UTC.
    pub period_start: String,
    pub invocations: u64,
    pub errors: u64,
    pub billed_ms: u64,
    pub gb_seconds: f64,
    pub cpu_ms: f64,
    pub cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub since: String,
    pub currency: String,
    pub rows: Vec<UsageRow>,
    pub totals: UsageRow,
}

/// `?namespace=&since=` of `/v1/functions/{name}/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    pub namespace: Option<String>,
    /// How far back, e.g. `15m`, `1h`, at most `24h` [default: 1h]
    pub since: Option<String>,
}

/// One function's traffic per minute on this node, as `gust fn stats` and the dashboard's
/// charts read it. Minutes with nothing to count are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionStats {
    pub namespace: String,
    pub function: String,
    /// The first minute covered, RFC 3339, UTC.
    pub since: String,
    pub minutes: Vec<MinuteStats>,
}

/// What one minute counted. Latencies are as the caller saw them (queue, cold start and run),
/// to within 19 % (the upper bound of the histogram bucket the percentile falls in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MinuteStats {
    /// The minute's start, RFC 3339, UTC.
    pub minute: String,
    /// Attempts that reached the function, whatever their status.
    pub invocations: u64,
    /// Of them, answered 1xx to 3xx, 4xx, and 5xx (timeouts and crashes included).
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    /// Requests refused for the function's capacity or the namespace's quota (429) before
    /// reaching the function (not the route's `--max-rps` refusals).
    pub throttled: u64,
    /// Instances that failed to start for a request.
    pub start_failures: u64,
    /// Attempts that waited for an instance to start, and the mean of that wait (ms).
    pub cold_starts: u64,
    pub cold_start_ms: Option<f64>,
    /// Where those starts went: the mean of each phase (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_phases: Option<ColdStartPhases>,
    /// The mean wait for capacity and the mean run of the minute's attempts: with the cold
    /// start, the phases of what callers saw.
    pub queue_wait_ms: Option<f64>,
    pub run_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Mean requests running over the minute (the run time that fell in it / 60 s).
    pub concurrency: f64,
}

/// The mean time of each phase of a minute's cold starts (ms), in order; a phase a tier does
/// not have is 0. What is left of the cold start is handing the instance to the request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ColdStartPhases {
    /// Preparing the revision, once per revision and node: loading and linking a compiled
    /// component (wasm tier).
    pub prepare_ms: f64,
    /// Taking a pooled worker, or starting one when the pool had none (process tier).
    pub worker_ms: f64,
    /// Applying the function's limits to the worker (memory cgroup, network).
    pub limits_ms: f64,
    /// Placing the code, secrets and configs in the worker's view.
    pub place_ms: f64,
    /// The specialize round trip, in which the worker imports the code.
    pub load_ms: f64,
}

impl UsageReport {
    /// The columns of `gust usage` and the dashboard's usage table and CSV.
    pub const COLUMNS: [&'static str; 7] = [
        "FUNCTION",
        "PERIOD START",
        "INVOCATIONS",
        "ERRORS",
        "GB-SECONDS",
        "CPU MS",
        "COST",
    ];

    /// The report's rows as cells under [`UsageReport::COLUMNS`], with the totals last.
    pub fn cells(&self) -> Vec<Vec<String>> {
        let cells = |row: &UsageRow| {
            vec![
                row.function.clone(),
                row.period_start.clone(),
                row.invocations.to_string(),
                row.errors.to_string(),
                format!("{:.6}", row.gb_seconds),
                format!("{:.3}", row.cpu_ms),
                format!("{:.6}", row.cost),
            ]
        };
        let mut rows: Vec<Vec<String>> = self.rows.iter().map(cells).collect();
        let mut totals = cells(&self.totals);
        totals[0] = "TOTAL".to_owned();
        totals[1] = self.since.clone();
        rows.push(totals);
        rows
    }
}

/// Rows as comma-separated values under a header line; a cell holding a comma, quote or line
/// break is quoted.
pub fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let field = |cell: &str| {
        if cell.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell.to_owned()
        }
    };
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = cells.map(field).collect::<Vec<_>>().join(",");
        line.push('\n');
        line
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}
