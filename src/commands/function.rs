use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use gust_api_types::{
    Accepted, FunctionSettings, FunctionSpec, FunctionView, LogLine, RollbackRequest,
};
use gust_model::Revision;
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::code_upload;
use crate::output::{Format, OutputArgs, Table, duration_ms, print};

#[derive(Debug, Args)]
pub struct FunctionArgs {
    #[command(subcommand)]
    command: FunctionCommand,
}

/// Settings shared by create and update; on update only the given ones change. The flags
/// are the API's own fields ([`FunctionSettings`]), so the CLI cannot drift from the server.
#[derive(Debug, Args)]
struct SpecArgs {
    /// A source file, a directory, or a .zip/.tar.gz archive
    #[arg(long)]
    code: Option<PathBuf>,
    #[command(flatten)]
    settings: FunctionSettings,
}

impl SpecArgs {
    async fn body(&self, client: &ApiClient, name: &str) -> anyhow::Result<FunctionSpec> {
        let code = match self.code.as_deref() {
            Some(path) => Some(code_upload::upload(client, path).await?),
            None => None,
        };
        Ok(FunctionSpec {
            name: Some(name.to_owned()),
            code,
            settings: self.settings.clone(),
        })
    }
}

#[derive(Debug, Subcommand)]
enum FunctionCommand {
    /// Deploy a new function.
    Create {
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Make a new revision with the given changes.
    Update {
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Make a new revision that copies an earlier one (the previous one by default).
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u32>,
    },
    /// Show one function.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List functions.
    List(OutputArgs),
    /// List a function's revisions.
    Revisions {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a function (its routes stay and answer 404 until it exists again).
    Delete { name: String },
    /// Invoke a function through the API and print its response body.
    Invoke {
        name: String,
        /// Request body: text, or @FILE to read a file
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// Method the function sees [default: POST with --data, else GET]
        #[arg(long, short = 'X')]
        method: Option<String>,
        /// Header K:V (repeatable)
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Path and query the function sees
        #[arg(long, default_value = "/")]
        path: String,
        /// Do not wait: store the invocation, print its id (see `gust invocation get`)
        #[arg(long = "async")]
        asynchronous: bool,
    },
    /// Print a function's stdout and stderr, each line with its request id.
    Logs {
        name: String,
        /// Keep printing new lines
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only lines of this request
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

fn function_table(functions: &[FunctionView]) -> Table {
    let mut table = Table::new(vec![
        "NAME",
        "ENV",
        "REVISION",
        "TIMEOUT",
        "MEMORY",
        "SCALE",
        "INSTANCES",
    ]);
    for f in functions {
        table.row(vec![
            f.name.to_string(),
            f.env.to_string(),
            f.revision.to_string(),
            duration_ms(f.timeout_ms),
            format!("{}MB", f.memory_mb),
            format!("{}-{}", f.scaling.min_instances, f.scaling.max_instances),
            format!("{} busy, {} idle", f.instances.busy, f.instances.idle),
        ]);
    }
    table
}

pub async fn run(args: FunctionArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        FunctionCommand::Create { name, spec } => {
            let f: FunctionView = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "functions"]),
                    Some(&spec.body(&client, &name).await?),
                )
                .await?;
            eprintln!("function {name} created (revision {})", f.revision);
        }
        FunctionCommand::Update { name, spec } => {
            let f: FunctionView = client
                .json(
                    Method::PUT,
                    &ApiPath::new(["v1", "functions", name.as_str()]),
                    Some(&spec.body(&client, &name).await?),
                )
                .await?;
            eprintln!("function {name} updated (revision {})", f.revision);
        }
        FunctionCommand::Rollback { name, to } => {
            let f: FunctionView = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "functions", name.as_str(), "rollback"]),
                    Some(&RollbackRequest { to }),
                )
                .await?;
            eprintln!("function {name} rolled back (revision {})", f.revision);
        }
        FunctionCommand::Get { name, output } => {
            let f: FunctionView = client
                .json(
                    Method::GET,
                    &ApiPath::new(["v1", "functions", name.as_str()]),
                    NO_BODY,
                )
                .await?;
            print(output.format, &f, || {
                function_table(std::slice::from_ref(&f))
            })?;
        }
        FunctionCommand::List(output) => {
            let functions: Vec<FunctionView> = client
                .json(Method::GET, &ApiPath::new(["v1", "functions"]), NO_BODY)
                .await?;
            print(output.format, &functions, || function_table(&functions))?;
        }
        FunctionCommand::Revisions { name, output } => {
            let revisions: Vec<Revision> = client
                .json(
                    Method::GET,
                    &ApiPath::new(["v1", "functions", name.as_str(), "revisions"]),
                    NO_BODY,
                )
                .await?;
            print(output.format, &revisions, || {
                let mut table = Table::new(vec!["REVISION", "ENV", "CODE", "COPIED FROM"]);
                for r in &revisions {
                    table.row(vec![
                        r.number.to_string(),
                        r.environment.to_string(),
                        r.code.digest.chars().take(12).collect(),
                        r.copied_from.map(|c| c.to_string()).unwrap_or_default(),
                    ]);
                }
                table
            })?;
        }
        FunctionCommand::Delete { name } => {
            client
                .call(
                    Method::DELETE,
                    &ApiPath::new(["v1", "functions", name.as_str()]),
                    NO_BODY,
                )
                .await?;
            eprintln!("function {name} deleted");
        }
        FunctionCommand::Invoke {
            name,
            data,
            method,
            headers,
            path,
            asynchronous,
        } => {
            return invoke(&client, &name, data, method, headers, &path, asynchronous).await;
        }
        FunctionCommand::Logs {
            name,
            follow,
            request_id,
            output,
        } => {
            logs(&client, &name, follow, request_id, output.format).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn invoke(
    client: &ApiClient,
    name: &str,
    data: Option<String>,
    method: Option<String>,
    headers: Vec<String>,
    path: &str,
    asynchronous: bool,
) -> anyhow::Result<ExitCode> {
    let body = match data.as_deref() {
        Some(file) if file.starts_with('@') => Bytes::from(
            std::fs::read(&file[1..]).with_context(|| format!("cannot read {}", &file[1..]))?,
        ),
        Some(text) => Bytes::from(text.to_owned()),
        None => Bytes::new(),
    };
    let method = method.unwrap_or_else(|| if data.is_some() { "POST" } else { "GET" }.to_owned());
    let mut pairs = Vec::new();
    for header in headers {
        let (key, value) = header
            .split_once(':')
            .with_context(|| format!("invalid header {header:?}: expected K:V"))?;
        pairs.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    let mut query = ApiPath::new(["v1", "functions", name, "invoke"])
        .query("method", &method)
        .query("path", path);
    if asynchronous {
        query = query.query("async", "true");
    }
    let response = client.send(Method::POST, &query, &pairs, body).await?;
    if let Some(message) = response.gust_error() {
        anyhow::bail!("{message}");
    }
    if asynchronous {
        let Accepted { id } = serde_json::from_slice(&response.body)
            .context("the server's answer to an asynchronous invoke is not an invocation id")?;
        eprintln!("accepted; see `gust invocation get {id}`");
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    std::io::stdout().write_all(&response.body)?;
    if response.status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the function answered {}", response.status);
        Ok(ExitCode::FAILURE)
    }
}

async fn logs(
    client: &ApiClient,
    name: &str,
    follow: bool,
    request_id: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let mut after: Option<u64> = None;
    loop {
        let mut path = ApiPath::new(["v1", "functions", name, "logs"]).query("limit", 1000);
        if let Some(after) = after {
            path = path.query("after", after);
        }
        if let Some(id) = &request_id {
            path = path.query("request_id", id);
        }
        let lines: Vec<LogLine> = client.json(Method::GET, &path, NO_BODY).await?;
        if let Some(last) = lines.last() {
            after = Some(last.seq);
        }
        if format == Format::Table {
            for line in &lines {
                println!(
                    "{} {} {} {} {}",
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + Duration::from_millis(line.time_ms)
                    ),
                    line.request_id.as_deref().unwrap_or("-"),
                    line.instance,
                    line.stream,
                    line.text,
                );
            }
        } else if !(follow && lines.is_empty()) {
            print(format, &lines, || Table::new(vec![]))?;
        }
        std::io::stdout().flush()?;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
