//! `gust timer`: run a function on a schedule.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Value, json};

use crate::client::{ApiClient, ApiPath, ConnectionArgs};
use crate::commands::resource::Resource;
use crate::output::{OutputArgs, Table, time_ms};

#[derive(Debug, Args)]
pub struct TimerArgs {
    #[command(subcommand)]
    command: TimerCommand,
}

#[derive(Debug, Subcommand)]
enum TimerCommand {
    /// Invoke a function on a schedule; each tick is an asynchronous invocation.
    Create {
        /// Timer name; generated and printed when omitted
        name: Option<String>,
        /// The function to invoke
        #[arg(long = "fn")]
        function: String,
        /// "*/5 * * * *" (minute hour day month weekday), six fields with seconds first,
        /// @hourly/@daily/..., or "@every 30s"
        #[arg(long)]
        cron: String,
        /// IANA time zone the schedule is read in [default: UTC]
        #[arg(long)]
        tz: Option<String>,
    },
    /// List timers with their next tick.
    List(OutputArgs),
    /// Show one timer.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a timer; ticks already enqueued still run.
    Delete { name: String },
}

fn table(timers: &[Value]) -> Table {
    let mut table = Table::new(vec!["NAME", "FUNCTION", "CRON", "TZ", "NEXT"]);
    for timer in timers {
        table.row(vec![
            timer["name"].as_str().unwrap_or_default().to_owned(),
            timer["function"].as_str().unwrap_or_default().to_owned(),
            timer["schedule"]["cron"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            timer["schedule"]["tz"].as_str().unwrap_or("UTC").to_owned(),
            time_ms(timer["next_fire_ms"].as_u64()),
        ]);
    }
    table
}

const RESOURCE: Resource = Resource {
    kind: "timer",
    collection: "timers",
    table,
};

pub async fn run(args: TimerArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        TimerCommand::Create {
            name,
            function,
            cron,
            tz,
        } => {
            let body = json!({ "name": name, "function": function, "cron": cron, "tz": tz });
            let timer: Value = client
                .json(Method::POST, &ApiPath::new(["v1", "timers"]), Some(&body))
                .await?;
            let name = timer["name"].as_str().unwrap_or_default();
            eprintln!(
                "timer {name} created: {cron} -> {function}, next tick {}",
                time_ms(timer["next_fire_ms"].as_u64())
            );
            println!("{name}");
        }
        TimerCommand::List(output) => RESOURCE.list(&client, &output).await?,
        TimerCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        TimerCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
