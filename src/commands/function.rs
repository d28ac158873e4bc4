use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Value, json};

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::code_upload;
use crate::output::{Format, OutputArgs, Table, duration_ms, print};

#[derive(Debug, Args)]
pub struct FunctionArgs {
    #[command(subcommand)]
    command: FunctionCommand,
}

/// Settings shared by create and update; on update only the given ones change.
#[derive(Debug, Args)]
struct SpecArgs {
    /// Environment (python, node, or a custom one)
    #[arg(long)]
    env: Option<String>,
    /// A source file, a directory, or a .zip/.tar.gz archive
    #[arg(long)]
    code: Option<PathBuf>,
    /// module.function (Python) or file.export (Node.js); the runtime's default when omitted
    #[arg(long)]
    entrypoint: Option<String>,
    /// Request timeout, e.g. 500ms, 30s [default: 60s]
    #[arg(long)]
    timeout: Option<String>,
    /// Memory in MB [default: 128]
    #[arg(long)]
    memory: Option<u32>,
    /// Environment variable KEY=VALUE (repeatable; on update the given set replaces the old one)
    #[arg(long = "env-var")]
    env_vars: Vec<String>,
    /// Origin a function may call, e.g. https://api.example.com, *://10.0.0.5:6379 or (wasm)
    /// https://*.example.com (repeatable; on update the given list replaces the old one). A
    /// wasm function reaches nothing else; a process function with a list reaches only the
    /// listed hosts' addresses on the listed ports
    #[arg(long = "allow-outbound")]
    allow_outbound: Vec<String>,
    /// Process functions: `outbound` (public addresses only; the host's loopback, private and
    /// link-local ranges unreachable) or `none` (no network) [default: outbound]
    #[arg(long)]
    network: Option<String>,
    /// Requests one process instance serves at once [default: 1]
    #[arg(long)]
    concurrency: Option<u32>,
    /// Instances kept running with no traffic [default: 0, scale to zero]
    #[arg(long)]
    min_instances: Option<u32>,
    /// Most instances at once [default: 10 for process environments, 1000 for wasm]
    #[arg(long)]
    max_instances: Option<u32>,
    /// Stop an instance unused this long, down to --min-instances [default: gust up's, 120s]
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Requests that may wait when every instance is busy [default: 1000]
    #[arg(long)]
    queue_depth: Option<u32>,
    /// How long a request may wait for an instance before 429 [default: 10s]
    #[arg(long)]
    queue_timeout: Option<String>,
    /// Requests one wasm instance serves before a fresh one replaces it [default: 1, a fresh
    /// instance per request]; see the docs for the isolation trade-off
    #[arg(long)]
    reuse: Option<u32>,
    /// Attempts of an asynchronous invocation, the first one included [default: 3]
    #[arg(long)]
    max_attempts: Option<u32>,
    /// An asynchronous invocation not done this long after it was accepted expires [default: 6h]
    #[arg(long)]
    max_age: Option<String>,
    /// Revisions the function keeps, the current one included; older ones and code only they
    /// used are deleted [default: 10]
    #[arg(long)]
    keep_revisions: Option<u32>,
}

impl SpecArgs {
    async fn body(&self, client: &ApiClient, name: &str) -> anyhow::Result<Value> {
        let code = match self.code.as_deref() {
            Some(path) => Some(code_upload::upload(client, path).await?),
            None => None,
        };
        Ok(json!({
            "name": name,
            "code": code,
            "env": self.env,
            "entrypoint": self.entrypoint,
            "timeout": self.timeout,
            "memory_mb": self.memory,
            "env_vars": (!self.env_vars.is_empty()).then_some(&self.env_vars),
            "allow_outbound": (!self.allow_outbound.is_empty()).then_some(&self.allow_outbound),
            "network": self.network,
            "concurrency": self.concurrency,
            "min_instances": self.min_instances,
            "max_instances": self.max_instances,
            "idle_timeout": self.idle_timeout,
            "queue_depth": self.queue_depth,
            "queue_timeout": self.queue_timeout,
            "reuse": self.reuse,
            "max_attempts": self.max_attempts,
            "max_age": self.max_age,
            "keep_revisions": self.keep_revisions,
        }))
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

fn function_table(functions: &[Value]) -> Table {
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
            f["name"].as_str().unwrap_or_default().to_owned(),
            f["env"].as_str().unwrap_or_default().to_owned(),
            f["revision"].to_string(),
            duration_ms(f["timeout_ms"].as_u64().unwrap_or(0)),
            format!("{}MB", f["memory_mb"]),
            format!(
                "{}-{}",
                f["scaling"]["min_instances"], f["scaling"]["max_instances"]
            ),
            format!(
                "{} busy, {} idle",
                f["instances"]["busy"], f["instances"]["idle"]
            ),
        ]);
    }
    table
}

pub async fn run(args: FunctionArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        FunctionCommand::Create { name, spec } => {
            let f: Value = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "functions"]),
                    Some(&spec.body(&client, &name).await?),
                )
                .await?;
            eprintln!("function {name} created (revision {})", f["revision"]);
        }
        FunctionCommand::Update { name, spec } => {
            let f: Value = client
                .json(
                    Method::PUT,
                    &ApiPath::new(["v1", "functions", name.as_str()]),
                    Some(&spec.body(&client, &name).await?),
                )
                .await?;
            eprintln!("function {name} updated (revision {})", f["revision"]);
        }
        FunctionCommand::Rollback { name, to } => {
            let f: Value = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "functions", name.as_str(), "rollback"]),
                    Some(&json!({ "to": to })),
                )
                .await?;
            eprintln!("function {name} rolled back (revision {})", f["revision"]);
        }
        FunctionCommand::Get { name, output } => {
            let f: Value = client
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
            let functions: Vec<Value> = client
                .json(Method::GET, &ApiPath::new(["v1", "functions"]), NO_BODY)
                .await?;
            print(output.format, &functions, || function_table(&functions))?;
        }
        FunctionCommand::Revisions { name, output } => {
            let revisions: Vec<Value> = client
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
                        r["number"].to_string(),
                        r["environment"].as_str().unwrap_or_default().to_owned(),
                        r["code"]["digest"]
                            .as_str()
                            .unwrap_or_default()
                            .chars()
                            .take(12)
                            .collect(),
                        r.get("copied_from")
                            .map(|c| c.to_string())
                            .unwrap_or_default(),
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
        let accepted: Value = serde_json::from_slice(&response.body)
            .context("the server's answer to an asynchronous invoke is not JSON")?;
        let id = accepted["id"]
            .as_str()
            .context("no invocation id in the answer")?;
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
        let lines: Vec<Value> = client.json(Method::GET, &path, NO_BODY).await?;
        if let Some(last) = lines.last().and_then(|l| l["seq"].as_u64()) {
            after = Some(last);
        }
        if format == Format::Table {
            for line in &lines {
                println!(
                    "{} {} {} {} {}",
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH
                            + Duration::from_millis(line["time_ms"].as_u64().unwrap_or(0))
                    ),
                    line["request_id"].as_str().unwrap_or("-"),
                    line["instance"].as_str().unwrap_or("-"),
                    line["stream"].as_str().unwrap_or("-"),
                    line["text"].as_str().unwrap_or(""),
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
