//! `gust usage`: what functions used, rolled up by function, hour or day, with cost.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use gust_api_types::UsageReport;
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::output::{OutputArgs, Table, print};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GroupBy {
    Function,
    Hour,
    Day,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Function => "function",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this function
    #[arg(long = "fn")]
    function: Option<String>,
    /// How far back, e.g. 1h, 24h, 30d
    #[arg(long, default_value = "24h")]
    since: String,
    /// One row per function for the whole period, or per function and hour or day
    #[arg(long, value_enum, default_value = "function")]
    by: GroupBy,
    #[command(flatten)]
    output: OutputArgs,
}

pub async fn run(args: UsageArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    let mut path = ApiPath::new(["v1", "usage"])
        .query("since", &args.since)
        .query("by", args.by.as_str());
    if let Some(function) = &args.function {
        path = path.query("function", function);
    }
    let report: UsageReport = client.json(Method::GET, &path, NO_BODY).await?;
    print(args.output.format, &report, || {
        let mut table = Table::new(UsageReport::COLUMNS.to_vec());
        for row in report.cells() {
            table.row(row);
        }
        table
    })?;
    Ok(ExitCode::SUCCESS)
}
