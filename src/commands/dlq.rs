//! `gust dlq`: dead letters (asynchronous invocations that ended `dead` or `expired`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use gust_api_types::{DeadLetterView, Purged, Redriven};
use gust_model::AsyncInvocation;
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::commands::invocation::{invocation_table, one_invocation_table};
use crate::output::{OutputArgs, Table, print};

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

/// Which dead letters: ids, one function's, or all of them.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Selection {
    /// Dead letter ids
    ids: Vec<String>,
    /// Every dead letter of a function
    #[arg(long = "fn")]
    function: Option<String>,
    /// Every dead letter of the namespace
    #[arg(long)]
    all: bool,
}

impl Selection {
    fn body(&self) -> gust_api_types::Selection {
        gust_api_types::Selection {
            ids: self.ids.clone(),
            function: self.function.clone(),
            all: self.all,
        }
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters.
    List {
        #[arg(long = "fn")]
        function: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a dead letter with its request.
    Show {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Invoke dead letters again, each as a new invocation that records where it came from.
    Redrive {
        #[command(flatten)]
        selection: Selection,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        selection: Selection,
    },
}

pub async fn run(args: DlqArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        DlqCommand::List {
            function,
            limit,
            output,
        } => {
            let mut path = ApiPath::new(["v1", "dlq"]).query("limit", limit);
            if let Some(function) = function {
                path = path.query("function", function);
            }
            let letters: Vec<AsyncInvocation> = client.json(Method::GET, &path, NO_BODY).await?;
            print(output.format, &letters, || invocation_table(&letters))?;
        }
        DlqCommand::Show { id, output } => {
            let letter: DeadLetterView = client
                .json(
                    Method::GET,
                    &ApiPath::new(["v1", "dlq", id.as_str()]),
                    NO_BODY,
                )
                .await?;
            print(output.format, &letter, || {
                let mut table = one_invocation_table(&letter.invocation);
                let request = &letter.request;
                table.footer(format!(
                    "request: {} {} ({} headers, body {} base64 chars)",
                    request.method,
                    request.uri,
                    request.headers.len(),
                    request.body_base64.len(),
                ));
                table
            })?;
        }
        DlqCommand::Redrive { selection } => {
            let redriven: Vec<Redriven> = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "dlq", "redrive"]),
                    Some(&selection.body()),
                )
                .await?;
            eprintln!("{} dead letters re-driven", redriven.len());
            let mut table = Table::new(vec!["FROM", "ID"]);
            for pair in &redriven {
                table.row(vec![pair.from.clone(), pair.id.clone()]);
            }
            print!("{}", table.render());
        }
        DlqCommand::Purge { selection } => {
            let purged: Purged = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "dlq", "purge"]),
                    Some(&selection.body()),
                )
                .await?;
            eprintln!("{} dead letters purged", purged.purged);
        }
    }
    Ok(ExitCode::SUCCESS)
}
