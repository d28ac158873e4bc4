//! Usage reports: hourly totals rolled up by function, hour or day, with their cost.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

pub use gust_api_types::{UsageReport, UsageRow};
use gust_model::{HOUR_MS, HourlyUsage, UsageTotals};

use crate::PriceSheet;

const DAY_MS: u64 = 24 * HOUR_MS;

/// How rows of a report are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per function for the whole period.
    Function,
    Hour,
    Day,
}

impl GroupBy {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "function" => Some(Self::Function),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn row(
    function: String,
    period_start_ms: u64,
    totals: &UsageTotals,
    prices: &PriceSheet,
) -> UsageRow {
    UsageRow {
        function,
        period_start: rfc3339(period_start_ms),
        invocations: totals.invocations,
        errors: totals.errors,
        billed_ms: totals.billed_ms,
        gb_seconds: totals.gb_seconds,
        cpu_ms: totals.cpu_ms,
        cost: prices.cost(totals),
    }
}

/// Rolls hourly usage from `since_ms` up into rows, oldest period first, then by function.
pub fn build(
    hours: &[HourlyUsage],
    since_ms: u64,
    by: GroupBy,
    prices: &PriceSheet,
) -> UsageReport {
    let first_hour = since_ms - since_ms % HOUR_MS;
    let mut groups: BTreeMap<(u64, String), UsageTotals> = BTreeMap::new();
    let mut all = UsageTotals::default();
    for hour in hours {
        let period = match by {
            GroupBy::Function => first_hour,
            GroupBy::Hour => hour.hour_start_ms,
            GroupBy::Day => hour.hour_start_ms - hour.hour_start_ms % DAY_MS,
        };
        groups
            .entry((period, hour.function.to_string()))
            .or_default()
            .merge(&hour.totals);
        all.merge(&hour.totals);
    }
    UsageReport {
        since: rfc3339(first_hour),
        currency: prices.currency.clone(),
        rows: groups
            .iter()
            .map(|((period, function), totals)| row(function.clone(), *period, totals, prices))
            .collect(),
        totals: row("(all)".to_owned(), first_hour, &all, prices),
    }
}

#[cfg(test)]
mod tests {
    use gust_model::{Name, Namespace};

    use super::*;

    fn hour(function: &str, hour_start_ms: u64, invocations: u64) -> HourlyUsage {
        HourlyUsage {
            namespace: Namespace::default(),
            function: Name::parse("function", function).unwrap(),
            hour_start_ms,
            totals: UsageTotals {
                invocations,
                errors: 1,
                billed_ms: 100 * invocations,
                gb_seconds: 0.5 * invocations as f64,
                cpu_ms: 2.0,
            },
        }
    }

    #[test]
    fn hours_roll_up_by_function_hour_and_day() {
        let prices = PriceSheet {
            per_million_requests: 1_000_000.0,
            ..Default::default()
        };
        let hours = [
            hour("a", 0, 1),
            hour("b", 0, 2),
            hour("a", HOUR_MS, 3),
            hour("a", DAY_MS + HOUR_MS, 4),
        ];
        let by_function = build(&hours, 0, GroupBy::Function, &prices);
        let a = &by_function.rows[0];
        assert_eq!((a.function.as_str(), a.invocations, a.errors), ("a", 8, 3));
        assert_eq!(a.cost, 8.0);
        assert_eq!(by_function.totals.invocations, 10);
        assert_eq!(by_function.rows.len(), 2);

        assert_eq!(build(&hours, 0, GroupBy::Hour, &prices).rows.len(), 4);
        let by_day = build(&hours, 0, GroupBy::Day, &prices);
        assert_eq!(by_day.rows.len(), 3);
        assert_eq!(by_day.rows[2].period_start, "1970-01-02T00:00:00Z");
        assert_eq!(by_day.rows[2].invocations, 4);
    }
}
