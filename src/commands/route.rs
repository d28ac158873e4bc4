use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use gust_model::{Route, RouteAuth, RouteConfig, RouteMode};
use http::Method;

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
        /// Who may call it: public (anyone), token (an invoker token of the route's namespace
        /// in Authorization: Bearer) or jwt (a JSON Web Token signed by a key of --jwks)
        #[arg(long, value_parser = ["public", "token", "jwt"], default_value = "public")]
        auth: String,
        /// --auth jwt: the JSON Web Key Set file whose keys (RS256, ES256) sign the tokens
        #[arg(long, required_if_eq("auth", "jwt"))]
        jwks: Option<std::path::PathBuf>,
        /// --auth jwt: the issuer (`iss`) tokens must name
        #[arg(long, required_if_eq("auth", "jwt"))]
        issuer: Option<String>,
        /// --auth jwt: the audience (`aud`) tokens must name
        #[arg(long, required_if_eq("auth", "jwt"))]
        audience: Option<String>,
        /// Serve only requests for this host name (e.g. api.team-a.example); the first route
        /// on a host claims it for this namespace [default: every host]
        #[arg(long)]
        host: Option<String>,
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

fn table(routes: &[Route]) -> Table {
    let mut table = Table::new(vec![
        "NAME", "METHODS", "HOST", "URL", "PREFIX", "MODE", "AUTH", "FUNCTION",
    ]);
    for route in routes {
        let methods = route.methods.to_string();
        let mode = match route.mode {
            RouteMode::Sync => "sync",
            RouteMode::Async => "async",
            RouteMode::CallerChooses => "caller_chooses",
        };
        table.row(vec![
            route.name.to_string(),
            methods,
            route
                .host
                .as_ref()
                .map_or_else(|| "*".to_owned(), ToString::to_string),
            route.path.as_str().to_owned(),
            route.prefix.to_string(),
            mode.to_owned(),
            route.auth.kind().to_owned(),
            route.function.to_string(),
        ]);
    }
    table
}

const RESOURCE: Resource<Route> = Resource {
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
            auth,
            jwks,
            issuer,
            audience,
            host,
        } => {
            let auth = match auth.as_str() {
                "token" => RouteAuth::Token,
                "jwt" => {
                    let file = jwks.expect("clap requires --jwks with --auth jwt");
                    RouteAuth::Jwt {
                        jwks: std::fs::read_to_string(&file)
                            .with_context(|| format!("cannot read {}", file.display()))?,
                        issuer: issuer.unwrap_or_default(),
                        audience: audience.unwrap_or_default(),
                    }
                }
                _ => RouteAuth::Public,
            };
            let body = RouteConfig {
                auth,
                name,
                function: function.clone(),
                url: url.clone(),
                methods,
                prefix,
                async_only: asynchronous,
                allow_async,
                app: None,
                host,
            };
            let route: Route = client
                .json(Method::POST, &ApiPath::new(["v1", "routes"]), Some(&body))
                .await?;
            let name = &route.name;
            let host = route
                .host
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            eprintln!("route {name} created: {host}{url} -> {function}");
            println!("{name}");
        }
        RouteCommand::List(output) => RESOURCE.list(&client, &output).await?,
        RouteCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        RouteCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
