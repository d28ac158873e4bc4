//! `gust invocation get`: one asynchronous invocation's state; `gust invocation counts`: the
//! namespace's by state.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use gust_api_types::AsyncCountsView;
use gust_model::AsyncInvocation;
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::output::{OutputArgs, Table, label, print, time_ms};

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
    /// Count the namespace's asynchronous invocations by state: accepted and not ended
    /// (waiting or running), running now (not known in a cluster), and dead letters.
    Counts {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// The table shared with `gust dlq`.
pub fn invocation_table(invocations: &[AsyncInvocation]) -> Table {
    let mut table = Table::new(vec![
        "ID", "FUNCTION", "STATE", "REASON", "ATTEMPTS", "STATUS", "ACCEPTED", "UPDATED",
    ]);
    for i in invocations {
        table.row(vec![
            i.id.clone(),
            i.function.to_string(),
            label(&i.state),
            i.reason.map_or_else(|| "-".to_owned(), |r| label(&r)),
            i.attempts.to_string(),
            i.last_status
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            time_ms(Some(i.accepted_at_ms)),
            time_ms(Some(i.updated_at_ms)),
        ]);
    }
    table
}

/// One invocation's row with its last error under it.
pub fn one_invocation_table(invocation: &AsyncInvocation) -> Table {
    let mut table = invocation_table(std::slice::from_ref(invocation));
    if let Some(error) = &invocation.last_error {
        table.footer(format!("last error: {error}"));
    }
    table
}

pub async fn run(args: InvocationArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        InvocationCommand::Get { id, output } => {
            let invocation: AsyncInvocation = client
                .json(
                    Method::GET,
                    &ApiPath::new(["v1", "invocations", id.as_str()]),
                    NO_BODY,
                )
                .await?;
            print(output.format, &invocation, || {
                let mut table = one_invocation_table(&invocation);
                if let Some(body) = invocation.response.as_ref().map(|r| &r.body) {
                    table.footer(format!("response: {body}"));
                }
                table
            })?;
        }
        InvocationCommand::Counts { output } => {
            let counts: AsyncCountsView = client
                .json(Method::GET, &ApiPath::new(["v1", "async"]), NO_BODY)
                .await?;
            print(output.format, &counts, || {
                let mut table = Table::new(vec![
                    "NAMESPACE",
                    "OPEN",
                    "RUNNING",
                    "DEAD LETTERS",
                    "SUCCEEDED",
                    "FAILED",
                ]);
                let told =
                    |count: Option<u64>| count.map_or_else(|| "-".to_owned(), |n| n.to_string());
                table.row(vec![
                    counts.namespace.clone(),
                    counts.open.to_string(),
                    told(counts.running),
                    counts.dead_letters.to_string(),
                    told(counts.succeeded),
                    told(counts.failed),
                ]);
                table
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
