//! `gust mqt`: queue triggers (NATS JetStream, MQTT, AMQP, Redis Streams).

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use serde_json::{Value, json};

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

fn table(triggers: &[Value]) -> Table {
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
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let status = &trigger["status"];
        let last_error = match status["last_error"].as_str() {
            Some(error) => format!("{} ({error})", time_ms(status["last_error_at_ms"].as_u64())),
            None => String::new(),
        };
        table.row(vec![
            text(&trigger["name"]),
            text(&trigger["function"]),
            text(&trigger["kind"]),
            text(&trigger["url"]),
            text(&trigger["topic"]),
            text(&status["state"]),
            status["succeeded"].as_u64().unwrap_or_default().to_string(),
            status["failed"].as_u64().unwrap_or_default().to_string(),
            last_error,
        ]);
    }
    table
}

const RESOURCE: Resource = Resource {
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
            let body = json!({
                "name": name, "function": function, "kind": kind.get_name(), "url": url,
                "topic": topic, "resp_topic": resp_topic, "error_topic": error_topic,
                "max_retries": max_retries, "concurrency": concurrency,
                "content_type": content_type,
            });
            let trigger: Value = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "mqtriggers"]),
                    Some(&body),
                )
                .await?;
            let name = trigger["name"].as_str().unwrap_or_default();
            eprintln!(
                "queue trigger {name} created: {} {} on {} -> {function}",
                trigger["kind"].as_str().unwrap_or_default(),
                trigger["topic"].as_str().unwrap_or_default(),
                trigger["url"].as_str().unwrap_or_default(),
            );
            println!("{name}");
        }
        MqtCommand::List(output) => RESOURCE.list(&client, &output).await?,
        MqtCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        MqtCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
