use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use gust_api_types::{
    Accepted, BuildLogChunk, BuildView, FunctionSettings, FunctionSpec, FunctionStats,
    FunctionView, LogLine, RollbackRequest,
};
use gust_model::{BuildState, Revision, Route, RouteConfig};
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
    /// Return at once when the code has dependencies to build, instead of waiting for the
    /// build (follow it with `gust fn build-logs NAME -f`)
    #[arg(long)]
    no_wait: bool,
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
        /// Also serve it on the public listener at this path (a route named after the
        /// function), as `fission fn create --url` does
        #[arg(long)]
        url: Option<String>,
        /// The route's methods (GET,POST or repeated); every method when omitted
        #[arg(long = "method", requires = "url")]
        methods: Vec<String>,
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
    /// Print the output of a revision's dependency build.
    BuildLogs {
        name: String,
        /// The revision [default: the newest with a build]
        #[arg(long)]
        revision: Option<u32>,
        /// Keep printing until the build ends
        #[arg(long, short = 'f')]
        follow: bool,
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
    /// Show a function's traffic per minute on this node: requests by status, throttled,
    /// cold starts, latency and concurrency.
    Stats {
        name: String,
        /// How far back, up to 24h
        #[arg(long, default_value = "1h")]
        since: String,
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
            f.timeout.to_string(),
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
        FunctionCommand::Create {
            name,
            spec,
            url,
            methods,
        } => {
            let f: FunctionView = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "functions"]),
                    Some(&spec.body(&client, &name).await?),
                )
                .await?;
            if let Some(url) = url {
                create_route(&client, &name, url, methods).await?;
            }
            return deployed(&client, &f, "created", spec.no_wait).await;
        }
        FunctionCommand::Update { name, spec } => {
            let f: FunctionView = client
                .json(
                    Method::PUT,
                    &ApiPath::new(["v1", "functions", name.as_str()]),
                    Some(&spec.body(&client, &name).await?),
                )
                .await?;
            return deployed(&client, &f, "updated", spec.no_wait).await;
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
                let mut table = function_table(std::slice::from_ref(&f));
                for build in &f.builds {
                    table.footer(build_summary(build));
                }
                table
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
                let mut table = Table::new(vec![
                    "REVISION",
                    "ENV",
                    "CODE",
                    "BUILD",
                    "COPIED FROM",
                    "CHANGED",
                ]);
                let mut previous: Option<&Revision> = None;
                for r in &revisions {
                    let changed = match previous {
                        Some(before) => revision_changes(before, r),
                        None => "-".to_owned(),
                    };
                    previous = Some(r);
                    table.row(vec![
                        r.number.to_string(),
                        r.environment.to_string(),
                        r.code.digest.chars().take(12).collect(),
                        r.build
                            .as_ref()
                            .map_or("-", |b| b.state.as_str())
                            .to_owned(),
                        r.copied_from.map(|c| c.to_string()).unwrap_or_default(),
                        changed,
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
        FunctionCommand::Stats {
            name,
            since,
            output,
        } => {
            let stats: FunctionStats = client
                .json(
                    Method::GET,
                    &ApiPath::new(["v1", "functions", name.as_str(), "stats"])
                        .query("since", &since),
                    NO_BODY,
                )
                .await?;
            print(output.format, &stats, || stats_table(&stats))?;
        }
        FunctionCommand::BuildLogs {
            name,
            revision,
            follow,
        } => {
            build_logs(&client, &name, revision, follow).await?;
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

/// One row per minute with traffic; a missing minute had none.
fn stats_table(stats: &FunctionStats) -> Table {
    let mut table = Table::new(vec![
        "MINUTE",
        "REQUESTS",
        "4XX",
        "5XX",
        "THROTTLED",
        "FAILED STARTS",
        "COLD",
        "P50 MS",
        "P99 MS",
        "CONCURRENCY",
    ]);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    for m in &stats.minutes {
        table.row(vec![
            m.minute.clone(),
            m.invocations.to_string(),
            m.client_errors.to_string(),
            m.server_errors.to_string(),
            m.throttled.to_string(),
            m.start_failures.to_string(),
            m.cold_starts.to_string(),
            ms(m.p50_ms),
            ms(m.p99_ms),
            format!("{:.2}", m.concurrency),
        ]);
    }
    if stats.minutes.is_empty() {
        table.footer(format!("no requests on this node since {}", stats.since));
    }
    table
}

/// What a revision changed from the one before it, by setting (`fn revisions`' CHANGED).
fn revision_changes(before: &Revision, after: &Revision) -> String {
    let mut changed = Vec::new();
    let mut note = |differs: bool, what: &str| {
        if differs {
            changed.push(what.to_owned());
        }
    };
    note(before.code.digest != after.code.digest, "code");
    note(before.environment != after.environment, "env");
    note(before.entrypoint != after.entrypoint, "entrypoint");
    note(before.limits.timeout != after.limits.timeout, "timeout");
    note(before.limits.memory_mb != after.limits.memory_mb, "memory");
    note(
        before.limits.request_body != after.limits.request_body,
        "request-body",
    );
    note(before.scaling != after.scaling, "scaling");
    note(
        before.allow_outbound != after.allow_outbound,
        "allow-outbound",
    );
    note(before.network != after.network, "network");
    note(before.delivery != after.delivery, "delivery");
    note(
        before.keep_revisions != after.keep_revisions,
        "keep-revisions",
    );
    // Names only: values may be secrets.
    let keys = |r: &Revision| r.env_vars.keys().cloned().collect::<Vec<_>>();
    if before.env_vars != after.env_vars {
        let changed_keys: Vec<String> = keys(before)
            .into_iter()
            .chain(keys(after))
            .filter(|k| before.env_vars.get(k) != after.env_vars.get(k))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        changed.push(format!("env-var {}", changed_keys.join(",")));
    }
    if changed.is_empty() {
        "nothing".to_owned()
    } else {
        changed.join(", ")
    }
}

/// The route of `fn create --url`, named after the function. A route that cannot be created
/// takes the new function with it, so the command either does both or neither.
async fn create_route(
    client: &ApiClient,
    function: &str,
    url: String,
    methods: Vec<String>,
) -> anyhow::Result<()> {
    let route = RouteConfig {
        name: Some(function.to_owned()),
        function: function.to_owned(),
        url: url.clone(),
        methods,
        ..Default::default()
    };
    let created: anyhow::Result<Route> = client
        .json(Method::POST, &ApiPath::new(["v1", "routes"]), Some(&route))
        .await;
    if let Err(err) = created {
        let path = ApiPath::new(["v1", "functions", function]);
        if let Err(undo) = client.call(Method::DELETE, &path, NO_BODY).await {
            eprintln!(
                "error: function {function} was created, but could not be deleted again: {undo:#}"
            );
        }
        return Err(err.context(format!("route {url} for function {function}")));
    }
    eprintln!("route {function} created: {url} -> {function}");
    Ok(())
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
    let mut stdout = std::io::stdout();
    stdout.write_all(&response.body)?;
    // Text ends its last line, so a shell prompt or the next output does not start on it;
    // binary bodies stay byte for byte.
    if std::str::from_utf8(&response.body)
        .is_ok_and(|text| !text.is_empty() && !text.ends_with('\n'))
    {
        stdout.write_all(b"\n")?;
    }
    if response.status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the function answered {}", response.status);
        Ok(ExitCode::FAILURE)
    }
}

/// Where a function's log resumes: one sequence number, or one per node in a cluster (each
/// node numbers its own lines).
#[derive(Debug, Default)]
pub(crate) struct LogCursor {
    after: Option<u64>,
    nodes: std::collections::BTreeMap<String, u64>,
}

impl LogCursor {
    /// The logs call that reads what follows what was read.
    pub(crate) fn path(&self, name: &str) -> ApiPath {
        let path = ApiPath::new(["v1", "functions", name, "logs"]).query("limit", 1000);
        if !self.nodes.is_empty() {
            let pairs: Vec<String> = self.nodes.iter().map(|(n, s)| format!("{n}={s}")).collect();
            path.query("cursor", pairs.join(","))
        } else if let Some(after) = self.after {
            path.query("after", after)
        } else {
            path
        }
    }

    pub(crate) fn advance(&mut self, lines: &[LogLine]) {
        for line in lines {
            match &line.node {
                Some(node) => {
                    let last = self.nodes.entry(node.clone()).or_default();
                    *last = (*last).max(line.seq);
                }
                None => self.after = Some(line.seq),
            }
        }
    }
}

async fn logs(
    client: &ApiClient,
    name: &str,
    follow: bool,
    request_id: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let mut cursor = LogCursor::default();
    loop {
        let mut path = cursor.path(name);
        if let Some(id) = &request_id {
            path = path.query("request_id", id);
        }
        let lines: Vec<LogLine> = client.json(Method::GET, &path, NO_BODY).await?;
        cursor.advance(&lines);
        if format == Format::Table {
            for line in &lines {
                let node = line
                    .node
                    .as_ref()
                    .map(|node| format!("{node} "))
                    .unwrap_or_default();
                println!(
                    "{} {node}{} {} {} {}",
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

/// Reports a create or update; when the new revision has dependencies to build, waits for
/// the build (unless `no_wait`) and fails if it failed.
async fn deployed(
    client: &ApiClient,
    f: &FunctionView,
    done: &str,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    Ok(if wait_live(client, f, done, no_wait).await? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Says what a create or update did and, unless `no_wait`, waits for the dependency build of
/// its newest revision; false when that build failed.
pub(crate) async fn wait_live(
    client: &ApiClient,
    f: &FunctionView,
    done: &str,
    no_wait: bool,
) -> anyhow::Result<bool> {
    let name = &f.name;
    let latest = f.latest_revision;
    let building = f
        .builds
        .iter()
        .any(|b| b.revision == latest && b.state == BuildState::Building);
    if !building {
        eprintln!("function {name} {done} (revision {latest})");
        return Ok(true);
    }
    if no_wait {
        eprintln!(
            "function {name} {done}: revision {latest} is building (follow it with `gust fn build-logs {name} -f`)"
        );
        return Ok(true);
    }
    let build = wait_for_build(client, name.as_str(), latest).await?;
    match build.state {
        BuildState::Ready => {
            eprintln!(
                "function {name} {done} (revision {latest}: {})",
                build_outcome(&build)
            );
            Ok(true)
        }
        _ => {
            eprintln!(
                "function {name}: revision {latest} failed to build; {}\n{}",
                if f.revision == latest {
                    "the function has no revision to serve yet".to_owned()
                } else {
                    format!("revision {} keeps serving", f.revision)
                },
                build.error.as_deref().unwrap_or("(no reason recorded)")
            );
            Ok(false)
        }
    }
}

/// "built in 12.3s, package 45.1 MB" and the like.
fn build_outcome(build: &BuildView) -> String {
    let mut said = format!("built in {}", duration_ms(build.duration_ms));
    if build.cached {
        said.push_str(", dependencies from the build cache");
    }
    if let Some(bytes) = build.package_bytes {
        said.push_str(&format!(", package {:.1} MB", bytes as f64 / 1_000_000.0));
    }
    said
}

/// One line per build under `fn get`'s table.
fn build_summary(build: &BuildView) -> String {
    let state = build.state.as_str();
    let detail = match build.state {
        BuildState::Ready => build_outcome(build),
        BuildState::Building => format!("for {}", duration_ms(build.duration_ms)),
        BuildState::BuildFailed => build
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or_default()
            .to_owned(),
    };
    let current = if build.current { " (current)" } else { "" };
    format!("revision {}{current}: {state}, {detail}", build.revision)
}

/// Polls a build until it ends; on a terminal shows a spinner with the build's latest output
/// line and the time so far.
async fn wait_for_build(
    client: &ApiClient,
    name: &str,
    revision: u32,
) -> anyhow::Result<BuildView> {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let terminal = std::io::stderr().is_terminal();
    let path = ApiPath::new(["v1", "functions", name, "build"]).query("revision", revision);
    for tick in 0usize.. {
        let build: BuildView = client.json(Method::GET, &path, NO_BODY).await?;
        if build.state != BuildState::Building {
            if terminal {
                eprint!("\r\x1b[2K");
            }
            return Ok(build);
        }
        if terminal {
            let line: String = build
                .last_line
                .as_deref()
                .unwrap_or_default()
                .chars()
                .take(70)
                .collect();
            eprint!(
                "\r\x1b[2K{} building revision {revision} ({}) {line}",
                FRAMES[tick % FRAMES.len()],
                duration_ms(build.duration_ms)
            );
            std::io::stderr().flush()?;
        } else if tick == 0 {
            eprintln!("building revision {revision} of {name}...");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!("the loop above only ends by returning")
}

async fn build_logs(
    client: &ApiClient,
    name: &str,
    revision: Option<u32>,
    follow: bool,
) -> anyhow::Result<()> {
    let mut offset = 0;
    loop {
        let mut path =
            ApiPath::new(["v1", "functions", name, "build", "log"]).query("offset", offset);
        if let Some(revision) = revision {
            path = path.query("revision", revision);
        }
        let chunk: BuildLogChunk = client.json(Method::GET, &path, NO_BODY).await?;
        print!("{}", chunk.text);
        std::io::stdout().flush()?;
        let caught_up = chunk.next_offset == offset;
        offset = chunk.next_offset;
        if chunk.finished || (!follow && caught_up) {
            return Ok(());
        }
        if caught_up {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
