//! `gust mqt`: queue triggers (NATS JetStream, MQTT, AMQP, Redis Streams).

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Nats,
    Mqtt,
    Amqp,
    Redis,
}

#[derive(Debug, Subcommand)]
enum MqtCommand {
    /// Deliver every message of a topic to a function, at least once.
    Create {
        /// Trigger name; generated and printed when omitted
        name: Option<String>,
        /// The function to invoke
        #[arg(long = "fn")]
        function: String,
        /// The broker
        #[arg(long, value_enum)]
        kind: Kind,
        /// Broker URL, e.g. nats://127.0.0.1:4222, mqtt://user:pass@host:1883,
        /// amqp://user:pass@host:5672/%2f, redis://127.0.0.1:6379 (credentials are never shown)
        #[arg(long)]
        url: String,
        /// nats: a subject; mqtt: a topic filter; amqp: a durable queue; redis: a stream key
        #[arg(long)]
        topic: String,
        /// Where the function's responses are published
        #[arg(long = "resp-topic")]
        resp_topic: Option<String>,
        /// Where messages go after their last failed attempt (else the dead-letter store)
        #[arg(long = "error-topic")]
        error_topic: Option<String>,
        /// Attempts after the first one [default: 3]
        #[arg(long = "max-retries")]
        max_retries: Option<u32>,
        /// Messages worked on at once; 1 keeps their order [default: 1]
        #[arg(long)]
        concurrency: Option<u32>,
        /// Content type the function receives (else what the message says)
        #[arg(long = "content-type")]
        content_type: Option<String>,
    },
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
        MqtCommand::Create {
            name,
            function,
            kind,
            url,
            topic,
            resp_topic,
            error_topic,
            max_retries,
            concurrency,
            content_type,
        } => {
            let kind = kind.to_possible_value().expect("no variant is skipped");
            let body = MqTriggerConfig {
                name,
                function: function.clone(),
                kind: kind.get_name().to_owned(),
                url,
                topic,
                resp_topic,
                error_topic,
                max_retries,
                concurrency,
                content_type,
            };
            let trigger: MqTriggerView = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "mqtriggers"]),
                    Some(&body),
                )
                .await?;
            let name = &trigger.name;
            eprintln!(
                "queue trigger {name} created: {} {} on {} -> {function}",
                trigger.kind, trigger.topic, trigger.url,
            );
            println!("{name}");
        }
        MqtCommand::List(output) => RESOURCE.list(&client, &output).await?,
        MqtCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        MqtCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
