//! `gust invocation get`: one asynchronous invocation's state.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::Value;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::output::{OutputArgs, Table, print, time_ms};

#[derive(Debug, Args)]
pub struct InvocationArgs {
    #[command(subcommand)]
    command: InvocationCommand,
}

#[derive(Debug, Subcommand)]
enum InvocationCommand {
    /// Show an asynchronous invocation: state, attempts, times, last status and response.
    Get {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// The table shared with `gust dlq`.
pub fn invocation_table(invocations: &[Value]) -> Table {
    let mut table = Table::new(vec![
        "ID", "FUNCTION", "STATE", "REASON", "ATTEMPTS", "STATUS", "ACCEPTED", "UPDATED",
    ]);
    for i in invocations {
        table.row(vec![
            i["id"].as_str().unwrap_or_default().to_owned(),
            i["function"].as_str().unwrap_or_default().to_owned(),
            i["state"].as_str().unwrap_or_default().to_owned(),
            i["reason"].as_str().unwrap_or("-").to_owned(),
            i["attempts"].to_string(),
            i["last_status"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            time_ms(i["accepted_at_ms"].as_u64()),
            time_ms(i["updated_at_ms"].as_u64()),
        ]);
    }
    table
}

/// One invocation's row with its last error under it.
pub fn one_invocation_table(invocation: &Value) -> Table {
    let mut table = invocation_table(std::slice::from_ref(invocation));
    if let Some(error) = invocation["last_error"].as_str() {
        table.footer(format!("last error: {error}"));
    }
    table
}

pub async fn run(args: InvocationArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        InvocationCommand::Get { id, output } => {
            let invocation: Value = client
                .json(
                    Method::GET,
                    &ApiPath::new(["v1", "invocations", id.as_str()]),
                    NO_BODY,
                )
                .await?;
            print(output.format, &invocation, || {
                let mut table = one_invocation_table(&invocation);
                if let Some(body) = invocation["response"]["body"].as_str() {
                    table.footer(format!("response: {body}"));
                }
                table
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
