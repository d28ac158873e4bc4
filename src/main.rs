//! `gust`: one binary for the server (`gust up`) and the CLI that drives it through the API.
//!
//! The root crate is the only place that knows every concrete type: `commands/up.rs` wires
//! the embedded store, the process runtime, the executor, the router and the API together.
//! Every other command is an API client.

mod app;
mod cli_config;
mod client;
mod cluster;
mod code_upload;
mod commands;
mod deployments;
mod garbage;
mod node_config;
mod output;
mod roles;
mod templates;
mod tiers;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::commands::{
    apps, completion, dlq, env, function, invocation, mqt, nodes, route, tenancy, timer, up, usage,
    values, version,
};

/// mimalloc instead of the C library's allocator: memory freed on another thread than the one
/// that allocated it (requests, messages and wasm stores cross tokio's workers all the time)
/// made glibc's arena locks the place where busy workers slept.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "gust", version = version::LONG_VERSION, about = "Serverless functions in one binary")]
pub struct Cli {
    #[command(flatten)]
    pub connection: client::ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Gust: API, router, executor and embedded store in one process.
    Up(Box<up::UpArgs>),
    /// Create, update, inspect, invoke and delete functions.
    #[command(name = "fn")]
    Function(Box<function::FunctionArgs>),
    /// Manage environments (language runtimes).
    Env(env::EnvArgs),
    /// Manage HTTP routes (triggers on the public listener).
    Route(route::RouteArgs),
    /// Manage timers (functions on a schedule).
    Timer(timer::TimerArgs),
    /// Manage queue triggers (NATS JetStream, MQTT, AMQP, Redis Streams).
    Mqt(mqt::MqtArgs),
    /// Show an asynchronous invocation.
    Invocation(invocation::InvocationArgs),
    /// List, show, re-drive and purge dead letters (failed asynchronous invocations).
    Dlq(dlq::DlqArgs),
    /// Manage secrets: values functions mount at /secrets/<namespace>/<name>/<key>, sealed at
    /// rest, never shown again.
    Secret(values::ValuesArgs),
    /// Manage configs: values functions mount at /configs/<namespace>/<name>/<key>.
    Config(values::ValuesArgs),
    /// Manage namespaces (tenants).
    Ns(tenancy::NamespaceArgs),
    /// Create, list and revoke API tokens (a role in some namespaces).
    Token(tenancy::TokenArgs),
    /// Read the audit log: control-plane writes, who made them and the answer.
    Audit(tenancy::AuditArgs),
    /// Show the token this client uses: its name, role and namespaces.
    Whoami(output::OutputArgs),
    /// Show what functions used and cost: invocations, GB-seconds, CPU.
    Usage(usage::UsageArgs),
    /// Make the platform match an app file (gust.yaml): create, update, and with --prune delete.
    Apply(apps::ApplyArgs),
    /// Apply an app file, then again on every save, streaming its functions' logs.
    Dev(apps::DevArgs),
    /// Check an app file offline: each problem with its file, line and column.
    Validate(apps::ValidateArgs),
    /// Write an app or some functions from the server as gust.yaml, code beside it.
    Export(apps::ExportArgs),
    /// Print the JSON Schema of gust.yaml, for editors.
    Schema,
    /// Write a working starting point from a template: code, gust.yaml and a README.
    New(apps::NewArgs),
    /// Print a shell completion script.
    Completion(completion::CompletionArgs),
    /// Print the client's and the server's release and commit.
    Version,
    /// List the nodes this Gust runs on: one, or a cluster's live nodes.
    Nodes(output::OutputArgs),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = node_config::apply(Cli::command(), &args)?;
    let matches = match command.try_get_matches_from(args) {
        Ok(matches) => matches,
        // A bad value (`--timeout soon`) is one line naming the flag and the value, like every
        // other refusal; usage mistakes keep clap's hints.
        Err(err)
            if matches!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            // The message and its possible values, on one line; not the usage hint after.
            let rendered = err.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", message.join(" "));
            return Ok(ExitCode::from(2));
        }
        Err(err) => err.exit(),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Up(_)) {
        end_quietly_on_closed_stdout();
    }
    match cli.command {
        Command::Up(args) => up::run(*args),
        Command::Completion(args) => completion::run(args),
        Command::Apply(args) => client::block_on(apps::apply(args, &cli.connection)),
        Command::Dev(args) => client::block_on(apps::dev(args, &cli.connection)),
        Command::Validate(args) => apps::validate(args, &cli.connection),
        Command::Export(args) => client::block_on(apps::export_app(args, &cli.connection)),
        Command::Schema => apps::print_schema(),
        Command::New(args) => apps::new(args),
        Command::Function(args) => client::block_on(function::run(*args, &cli.connection)),
        Command::Env(args) => client::block_on(env::run(args, &cli.connection)),
        Command::Usage(args) => client::block_on(usage::run(args, &cli.connection)),
        Command::Secret(args) => client::block_on(values::run(
            gust_model::ValueKind::Secret,
            args,
            &cli.connection,
        )),
        Command::Config(args) => client::block_on(values::run(
            gust_model::ValueKind::Config,
            args,
            &cli.connection,
        )),
        Command::Ns(args) => client::block_on(tenancy::namespaces(args, &cli.connection)),
        Command::Token(args) => client::block_on(tenancy::tokens(args, &cli.connection)),
        Command::Audit(args) => client::block_on(tenancy::audit(args, &cli.connection)),
        Command::Whoami(output) => client::block_on(tenancy::whoami(output, &cli.connection)),
        Command::Route(args) => client::block_on(route::run(args, &cli.connection)),
        Command::Timer(args) => client::block_on(timer::run(args, &cli.connection)),
        Command::Mqt(args) => client::block_on(mqt::run(args, &cli.connection)),
        Command::Invocation(args) => client::block_on(invocation::run(args, &cli.connection)),
        Command::Dlq(args) => client::block_on(dlq::run(args, &cli.connection)),
        Command::Version => client::block_on(version::run(&cli.connection)),
        Command::Nodes(output) => client::block_on(nodes::run(output, &cli.connection)),
    }
}

/// A client command whose output goes to a pipe that closes early (`gust fn list | head -1`)
/// ends there, as Unix tools do, instead of panicking in `println!`. Only the client: the
/// server keeps ignoring SIGPIPE (Rust's default), because a client or worker that goes away
/// is an error it answers, not a reason to stop.
fn end_quietly_on_closed_stdout() {
    // SAFETY: restoring a signal's default disposition, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
