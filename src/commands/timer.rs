//! `gust timer`: run a function on a schedule.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use gust_api_types::TimerView;
use gust_model::{ScheduleConfig, TimerConfig};
use http::Method;

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
    /// List timers with their next tick and what their ticks came to.
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

fn table(timers: &[TimerView]) -> Table {
    let mut table = Table::new(vec![
        "NAME",
        "FUNCTION",
        "CRON",
        "TZ",
        "NEXT",
        "FIRED",
        "SUCCEEDED",
        "FAILED",
        "LAST ERROR",
    ]);
    for view in timers {
        let schedule = ScheduleConfig::from(view.timer.schedule.clone());
        table.row(vec![
            view.timer.name.to_string(),
            view.timer.function.to_string(),
            schedule.cron,
            schedule.tz.unwrap_or_else(|| "UTC".to_owned()),
            time_ms(view.next_fire_ms),
            view.status.fired.to_string(),
            view.status.succeeded.to_string(),
            view.status.failed.to_string(),
            view.status
                .last_error
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table
}

const RESOURCE: Resource<TimerView> = Resource {
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
            let body = TimerConfig {
                name,
                function: function.clone(),
                cron: cron.clone(),
                tz,
                app: None,
            };
            let view: TimerView = client
                .json(Method::POST, &ApiPath::new(["v1", "timers"]), Some(&body))
                .await?;
            let name = &view.timer.name;
            eprintln!(
                "timer {name} created: {cron} -> {function}, next tick {}",
                time_ms(view.next_fire_ms)
            );
            println!("{name}");
        }
        TimerCommand::List(output) => RESOURCE.list(&client, &output).await?,
        TimerCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        TimerCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
