use std::process::ExitCode;

use clap::{Args, Subcommand};
use gust_api_types::EnvironmentView;
use gust_model::{EnvironmentConfig, EnvironmentKind};
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs};
use crate::commands::resource::Resource;
use crate::output::{OutputArgs, Table};

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// Add a custom environment: any executable that speaks the worker protocol.
    Create {
        name: String,
        /// Program and arguments, e.g. "/usr/bin/python3 /opt/server.py"
        #[arg(long)]
        command: String,
        /// Generic workers kept started ahead of need
        #[arg(long)]
        pool_size: Option<u32>,
        /// A host directory or file the workers see read-only at the same path, e.g. the
        /// program's own directory (repeatable; system directories are always there)
        #[arg(long = "mount")]
        mounts: Vec<String>,
        /// A command that builds each upload, as a Fission builder: it reads the sources in
        /// $SRC_PKG and writes the package the workers load to $DEPLOY_PKG
        #[arg(long)]
        build_cmd: Option<String>,
        /// The loopback TCP port the workers listen on (each in its own network namespace),
        /// e.g. 8888 for Fission's environment servers; they also find it in $GUST_PORT and
        /// $RUNTIME_PORT [default: the socket Gust hands them; 8888 with --protocol fission]
        #[arg(long)]
        port: Option<u16>,
        /// What the workers speak: gust (the worker protocol), fission (Fission's environment
        /// servers: /v2/specialize, code under /userfunc, requests to /) or fission-v1
        /// (/specialize, the code at /userfunc/user)
        #[arg(long, value_parser = ["gust", "fission", "fission-v1"])]
        protocol: Option<String>,
    },
    /// List environments.
    List(OutputArgs),
    /// Show one environment.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a custom environment no function uses.
    Delete { name: String },
}

fn row(view: &EnvironmentView) -> Vec<String> {
    let env = &view.environment;
    let command = match &env.kind {
        EnvironmentKind::Builtin { runtime } => format!("built-in {}", runtime.name()),
        EnvironmentKind::Custom { command, .. } => command.join(" "),
    };
    // `env get` knows how many pooled workers are ready; `env list` shows the target only.
    let pool = match view.pool_ready {
        Some(ready) => format!("{ready}/{} ready", env.pool_size),
        None => env.pool_size.to_string(),
    };
    vec![env.name.to_string(), pool, command]
}

fn table(envs: &[EnvironmentView]) -> Table {
    let mut table = Table::new(vec!["NAME", "POOL", "COMMAND"]);
    envs.iter().for_each(|env| table.row(row(env)));
    for env in envs {
        if let Some(error) = &env.start_error {
            table.footer(format!(
                "{}: workers fail to start (retried with back-off): {error}",
                env.environment.name
            ));
        }
    }
    table
}

const RESOURCE: Resource<EnvironmentView> = Resource {
    kind: "environment",
    collection: "environments",
    table,
};

pub async fn run(args: EnvArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        EnvCommand::Create {
            name,
            command,
            pool_size,
            mounts,
            build_cmd,
            port,
            protocol,
        } => {
            let body = EnvironmentConfig {
                name: name.clone(),
                command,
                pool_size,
                mounts,
                build_cmd,
                port,
                protocol,
            };
            let _: EnvironmentView = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "environments"]),
                    Some(&body),
                )
                .await?;
            eprintln!("environment {name} created");
        }
        EnvCommand::List(output) => RESOURCE.list(&client, &output).await?,
        EnvCommand::Get { name, output } => RESOURCE.get(&client, &name, &output).await?,
        EnvCommand::Delete { name } => RESOURCE.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
