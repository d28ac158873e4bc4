//! `gust mqt`: queue triggers (NATS JetStream, MQTT, AMQP, Redis Streams).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use gust_api_types::MqTriggerView;
use gust_model::MqTriggerConfig;
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs};
use crate::commands::resource::Resource;
use crate::output::{OutputArgs, Table, time_ms};

#[derive(Debug, Args)]
pub struct MqtArgs {
    #[command(subcommand)]
    command: MqtCommand,
}

#[derive(Debug, Subcommand)]
enum MqtCommand {
    /// Deliver every message of a topic to a function, at least once.
    Create(Box<MqTriggerConfig>),
    /// List queue triggers with their connection state and last error.
    List(OutputArgs),
    /// Show one queue trigger.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a queue trigger; messages not yet consumed stay at the broker.
    Delete { name: String },
}

fn table(triggers: &[MqTriggerView]) -> Table {
    let mut table = Table::new(vec![
        "NAME",
        "FUNCTION",
        "KIND",
        "URL",
        "TOPIC",
        "STATE",
        "OK",
        "FAILED",
        "LAST ERROR",
    ]);
    for trigger in triggers {
        let status = &trigger.status;
        let last_error = match &status.last_error {
            Some(error) => format!("{} ({error})", time_ms(status.last_error_at_ms)),
            None => String::new(),
        };
        table.row(vec![
            trigger.name.clone(),
            trigger.function.clone(),
            trigger.kind.clone(),
            trigger.url.clone(),
            trigger.topic.clone(),
            status.state.clone(),
            status.succeeded.to_string(),
            status.failed.to_string(),
            last_error,
        ]);
    }
    table
}

const RESOURCE: Resource<MqTriggerView> = Resource {
    kind: "queue trigger",
    collection: "mqtriggers",
    table,
};

pub async fn run(args: MqtArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        MqtCommand::Create(body) => {
            let trigger: MqTriggerView = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "mqtriggers"]),
                    Some(&body),
                )
                .await?;
            let name = &trigger.name;
            eprintln!(
                "queue trigger {name} created: {} {} on {} -> {}",
                trigger.kind, trigger.topic, trigger.url, trigger.function,
            );
            println!("{name}");
        }
        MqtCommand::List(output) => RESOURCE.list(&client, &output).await?,
        MqtCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        MqtCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
