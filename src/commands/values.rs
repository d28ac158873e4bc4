//! `gust secret` and `gust config`: named values of a namespace that functions mount with
//! `--secret NAME` / `--config NAME`. A secret's values go to the server once and never come
//! back: `secret get` shows its keys and version.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use gust_api_types::{ValuesCreate, ValuesUpdate, ValuesView};
use gust_model::{Name, ValueKind};
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs};
use crate::commands::resource::Resource;
use crate::output::{OutputArgs, Table, time_ms};

#[derive(Debug, Args)]
pub struct ValuesArgs {
    #[command(subcommand)]
    command: ValuesCommand,
}

/// Where the values come from: each flag repeatable, a key given twice is refused.
#[derive(Debug, Clone, Args)]
struct Sources {
    /// KEY=VALUE
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    literals: Vec<String>,
    /// KEY=PATH, or PATH (the key is the file's name): the file's bytes
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    files: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum ValuesCommand {
    /// Create one from literals and files.
    Create {
        name: String,
        #[command(flatten)]
        sources: Sources,
    },
    /// Replace its values (all of them); the functions that mount it start new instances
    /// with the new ones, and warm instances keep what they started with.
    Update {
        name: String,
        #[command(flatten)]
        sources: Sources,
        /// Also replace the warm instances, as a deploy does (requests in flight finish)
        #[arg(long)]
        restart: bool,
    },
    /// List them with their keys and versions.
    List(OutputArgs),
    /// Show one: its keys and version (a config's values too).
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete one that no function mounts.
    Delete { name: String },
}

/// Each key with its value in base64, as the API takes them.
fn read_sources(sources: &Sources) -> anyhow::Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    let mut add = |key: String, value: Vec<u8>| {
        if data
            .insert(
                key.clone(),
                base64::engine::general_purpose::STANDARD.encode(value),
            )
            .is_some()
        {
            bail!("key {key:?} is given twice");
        }
        Ok(())
    };
    for literal in &sources.literals {
        let Some((key, value)) = literal.split_once('=') else {
            bail!(
                "--from-literal takes KEY=VALUE; {:?} has no '='",
                literal.split('=').next().unwrap_or_default()
            );
        };
        add(key.to_owned(), value.as_bytes().to_vec())?;
    }
    for file in &sources.files {
        let (key, path) = match file.split_once('=') {
            Some((key, path)) => (key.to_owned(), std::path::PathBuf::from(path)),
            None => {
                let path = std::path::PathBuf::from(file);
                let key = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{file} names no file"))?
                    .to_owned();
                (key, path)
            }
        };
        let value =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        add(key, value)?;
    }
    if data.is_empty() {
        bail!("give its values with --from-literal KEY=VALUE or --from-file [KEY=]PATH");
    }
    Ok(data)
}

fn table(sets: &[ValuesView]) -> Table {
    let mut table = Table::new(vec!["NAME", "VERSION", "KEYS", "MOUNTED BY", "UPDATED"]);
    for set in sets {
        table.row(vec![
            set.name.to_string(),
            set.version.to_string(),
            set.keys.join(","),
            set.mounted_by
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            time_ms(Some(set.updated_at_ms)),
        ]);
    }
    table
}

pub async fn run(
    kind: ValueKind,
    args: ValuesArgs,
    connection: &ConnectionArgs,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    let collection = kind.mount_root();
    let resource = Resource {
        kind: kind.noun(),
        collection,
        table,
    };
    match args.command {
        ValuesCommand::Create { name, sources } => {
            let body = ValuesCreate {
                name: Name::parse(kind.noun(), &name)?,
                data: read_sources(&sources)?,
            };
            let view: ValuesView = client
                .json(Method::POST, &ApiPath::new(["v1", collection]), Some(&body))
                .await?;
            eprintln!(
                "{} {} created: {} key{}",
                kind.noun(),
                view.name,
                view.keys.len(),
                if view.keys.len() == 1 { "" } else { "s" }
            );
        }
        ValuesCommand::Update {
            name,
            sources,
            restart,
        } => {
            let body = ValuesUpdate {
                data: read_sources(&sources)?,
                restart,
            };
            let view: ValuesView = client
                .json(
                    Method::PUT,
                    &ApiPath::new(["v1", collection, &name]),
                    Some(&body),
                )
                .await?;
            let functions = view
                .mounted_by
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let rolled = match (functions.is_empty(), restart) {
                (true, _) => String::new(),
                (false, false) => format!("; new instances of {functions}"),
                (false, true) => format!("; instances of {functions} restarted"),
            };
            eprintln!(
                "{} {} is version {}{rolled}",
                kind.noun(),
                view.name,
                view.version
            );
        }
        ValuesCommand::List(output) => resource.list(&client, &output).await?,
        ValuesCommand::Get { name, output } => resource.get(&client, &name, &output).await?,
        ValuesCommand::Delete { name } => resource.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
