use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Value, json};

use crate::client::{ApiClient, ApiPath, ConnectionArgs};
use crate::commands::resource::Resource;
use crate::output::{OutputArgs, Table};

#[derive(Debug, Args)]
pub struct RouteArgs {
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// Serve a function on the public listener at a path.
    Create {
        /// The function to invoke
        #[arg(long = "fn")]
        function: String,
        /// Path, with whole-segment parameters: /users/{id}
        #[arg(long)]
        url: String,
        /// Methods (GET,POST or repeated; any case); every method when omitted
        #[arg(long = "method")]
        methods: Vec<String>,
        /// Also serve every path below --url
        #[arg(long)]
        prefix: bool,
        /// Route name; generated and printed when omitted
        #[arg(long)]
        name: Option<String>,
        /// Invoke asynchronously: answer 202 with an invocation id once the request is stored
        #[arg(long = "async", conflicts_with = "allow_async")]
        asynchronous: bool,
        /// Invoke asynchronously when the request has `X-Gust-Invoke: async`
        #[arg(long)]
        allow_async: bool,
    },
    /// List routes.
    List(OutputArgs),
    /// Show one route.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a route.
    Delete { name: String },
}

fn table(routes: &[Value]) -> Table {
    let mut table = Table::new(vec!["NAME", "METHODS", "URL", "PREFIX", "MODE", "FUNCTION"]);
    for route in routes {
        let methods = route["methods"]
            .as_array()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "*".to_owned());
        table.row(vec![
            route["name"].as_str().unwrap_or_default().to_owned(),
            methods,
            route["path"].as_str().unwrap_or_default().to_owned(),
            route["prefix"].to_string(),
            route["mode"].as_str().unwrap_or("sync").to_owned(),
            route["function"].as_str().unwrap_or_default().to_owned(),
        ]);
    }
    table
}

const RESOURCE: Resource = Resource {
    kind: "route",
    collection: "routes",
    table,
};

pub async fn run(args: RouteArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        RouteCommand::Create {
            function,
            url,
            methods,
            prefix,
            name,
            asynchronous,
            allow_async,
        } => {
            let body = json!({
                "name": name, "function": function, "url": url, "methods": methods, "prefix": prefix,
                "async": asynchronous, "allow_async": allow_async,
            });
            let route: Value = client
                .json(Method::POST, &ApiPath::new(["v1", "routes"]), Some(&body))
                .await?;
            let name = route["name"].as_str().unwrap_or_default();
            eprintln!("route {name} created: {url} -> {function}");
            println!("{name}");
        }
        RouteCommand::List(output) => RESOURCE.list(&client, &output).await?,
        RouteCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        RouteCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
