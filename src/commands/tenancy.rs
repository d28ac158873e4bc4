//! `gust ns`, `gust token` and `gust audit`: tenants, the tokens that reach them, and the log
//! of what was changed in them.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use gust_api_types::{
    AuditList, NamespaceCreate, NamespaceUpdate, NamespaceView, TokenCreate, TokenCreated,
    TokenView, WhoAmIView,
};
use gust_model::{HostPattern, HumanDuration, Name, Namespace, NamespaceQuotas, Role};
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::commands::resource::Resource;
use crate::output::{OutputArgs, Table, print, time_ms};

#[derive(Debug, Args)]
pub struct NamespaceArgs {
    #[command(subcommand)]
    command: NamespaceCommand,
}

#[derive(Debug, Subcommand)]
enum NamespaceCommand {
    /// Create a namespace (a tenant); needs a token that reaches every namespace as admin.
    Create {
        name: String,
        #[command(flatten)]
        quotas: NamespaceQuotas,
        /// Hosts its routes may claim with --host: names and `*.`-names, comma separated
        /// (api.team-a.example,*.team-a.example); a host is granted to one namespace only
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// Set a namespace's quotas (each one left out is lifted) and, with --hosts, the hosts
    /// its routes may claim.
    Update {
        name: String,
        #[command(flatten)]
        quotas: NamespaceQuotas,
        /// Replace the hosts its routes may claim (comma separated; "" for none); left out,
        /// they stay as they are
        #[arg(long, value_delimiter = ',')]
        hosts: Option<Vec<String>>,
    },
    /// List the namespaces your token reaches, with what each holds.
    List(OutputArgs),
    /// Show one namespace.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete an empty namespace, and the tokens that reach only it.
    Delete { name: String },
}

fn namespace_table(namespaces: &[NamespaceView]) -> Table {
    let mut table = Table::new(vec![
        "NAME",
        "FUNCTIONS",
        "ROUTES",
        "TIMERS",
        "QUEUE TRIGGERS",
        "MAX RPS",
        "RUNNING",
        "MEMORY MB",
        "HOSTS",
        "CREATED",
    ]);
    // Use against its quota where there is one: `3/10`.
    let of = |used: usize, quota: Option<u32>| match quota {
        Some(quota) => format!("{used}/{quota}"),
        None => used.to_string(),
    };
    for view in namespaces {
        let quotas = view.record.quotas;
        table.row(vec![
            view.record.name.to_string(),
            of(view.functions, quotas.max_functions),
            view.routes.to_string(),
            view.timers.to_string(),
            view.mq_triggers.to_string(),
            quotas
                .max_requests_per_second
                .map_or_else(|| "-".to_owned(), |rps| rps.to_string()),
            of(view.running_instances as usize, quotas.max_instances),
            match quotas.max_memory_mb {
                Some(max) => format!("{}/{max}", view.running_memory_mb),
                None => view.running_memory_mb.to_string(),
            },
            if view.record.hosts.is_empty() {
                "-".to_owned()
            } else {
                let hosts: Vec<String> = view.record.hosts.iter().map(|h| h.to_string()).collect();
                hosts.join(",")
            },
            match view.record.created_at_ms {
                0 => "-".to_owned(),
                at => time_ms(Some(at)),
            },
        ]);
    }
    table
}

/// `--hosts` as patterns; empty items (`--hosts ""`) are none.
fn host_patterns(hosts: &[String]) -> anyhow::Result<Vec<HostPattern>> {
    hosts
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| Ok(HostPattern::parse(h.trim())?))
        .collect()
}

const NAMESPACES: Resource<NamespaceView> = Resource {
    kind: "namespace",
    collection: "namespaces",
    table: namespace_table,
};

pub async fn namespaces(
    args: NamespaceArgs,
    connection: &ConnectionArgs,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    match args.command {
        NamespaceCommand::Create {
            name,
            quotas,
            hosts,
        } => {
            let body = NamespaceCreate {
                name: Namespace::parse(&name)?,
                quotas,
                hosts: host_patterns(&hosts)?,
            };
            let view: NamespaceView = client
                .json(
                    Method::POST,
                    &ApiPath::new(["v1", "namespaces"]),
                    Some(&body),
                )
                .await?;
            eprintln!("namespace {} created", view.record.name);
        }
        NamespaceCommand::Update {
            name,
            quotas,
            hosts,
        } => {
            let hosts = hosts.as_deref().map(host_patterns).transpose()?;
            let view: NamespaceView = client
                .json(
                    Method::PUT,
                    &ApiPath::new(["v1", "namespaces", &name]),
                    Some(&NamespaceUpdate { quotas, hosts }),
                )
                .await?;
            eprintln!("namespace {} updated", view.record.name);
        }
        NamespaceCommand::List(output) => NAMESPACES.list(&client, &output).await?,
        NamespaceCommand::Get { name, output } => NAMESPACES.get(&client, &name, &output).await?,
        NamespaceCommand::Delete { name } => NAMESPACES.delete(&client, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token for the namespaces given with -n (each -n adds one) and print it once;
    /// only its hash is kept.
    Create {
        /// What it may do: viewer reads; invoker also invokes; deployer also changes
        /// functions, routes and triggers; admin also manages tokens and reads the audit log
        #[arg(long, value_enum)]
        role: Role,
        /// Unique name, shown in the audit log [default: generated]
        #[arg(long)]
        name: Option<String>,
        /// How long it is valid, such as 30d or 12h [default: until revoked]
        #[arg(long)]
        expires: Option<HumanDuration>,
        /// Every namespace, present and future, instead of those given with -n
        #[arg(long)]
        all_namespaces: bool,
    },
    /// List the tokens that reach the namespace (never their secrets).
    List(OutputArgs),
    /// Revoke a token by its id or name: refused from now on, on every node.
    Revoke { token: String },
}

fn token_table(tokens: &[TokenView]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "ROLE",
        "NAMESPACES",
        "CREATED",
        "EXPIRES",
        "CREATED BY",
    ]);
    for token in tokens {
        table.row(vec![
            token.id.clone(),
            token.name.to_string(),
            token.role.to_string(),
            namespaces_cell(token.namespaces.as_deref()),
            time_ms(Some(token.created_at_ms)),
            token
                .expires_at_ms
                .map_or_else(|| "never".to_owned(), |at| time_ms(Some(at))),
            token.created_by.clone(),
        ]);
    }
    table
}

pub async fn tokens(args: TokenArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Create {
            role,
            name,
            expires,
            all_namespaces,
        } => {
            // Several -n are the token's namespaces; the call itself is made in the first.
            let namespaces = connection
                .namespaces
                .iter()
                .map(|ns| Namespace::parse(ns))
                .collect::<Result<Vec<_>, _>>()?;
            let mut first = connection.clone();
            first.namespaces.truncate(1);
            let client = ApiClient::new(&first)?;
            let body = TokenCreate {
                name: name.map(|n| Name::parse("token", &n)).transpose()?,
                role,
                namespaces: if all_namespaces {
                    Vec::new()
                } else {
                    namespaces
                },
                all_namespaces,
                expires,
            };
            let created: TokenCreated = client
                .json(Method::POST, &ApiPath::new(["v1", "tokens"]), Some(&body))
                .await?;
            let reach = match &created.view.namespaces {
                Some(namespaces) => format!(
                    "namespace{} {}",
                    if namespaces.len() == 1 { "" } else { "s" },
                    namespaces
                        .iter()
                        .map(|ns| ns.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "every namespace".to_owned(),
            };
            eprintln!(
                "token {} ({}) created: {} in {reach}{}; it is shown only now",
                created.view.name,
                created.view.id,
                created.view.role,
                created
                    .view
                    .expires_at_ms
                    .map(|at| format!(", until {}", time_ms(Some(at))))
                    .unwrap_or_default(),
            );
            println!("{}", created.token);
        }
        TokenCommand::List(output) => {
            let client = ApiClient::new(connection)?;
            let tokens: Vec<TokenView> = client
                .json(Method::GET, &ApiPath::new(["v1", "tokens"]), NO_BODY)
                .await?;
            print(output.format, &tokens, || token_table(&tokens))?;
        }
        TokenCommand::Revoke { token } => {
            let client = ApiClient::new(connection)?;
            client
                .call(
                    Method::DELETE,
                    &ApiPath::new(["v1", "tokens", &token]),
                    NO_BODY,
                )
                .await?;
            eprintln!("token {token} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List control-plane writes in the namespace, oldest first: who, what, and the answer.
    List {
        /// Entries of this long ago and newer
        #[arg(long, default_value = "24h")]
        since: HumanDuration,
        /// At most this many
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Every namespace's entries and those of none (environments, namespaces); for a token
        /// that reaches every namespace as admin
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

pub async fn audit(args: AuditArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    let AuditCommand::List {
        since,
        limit,
        all,
        output,
    } = args.command;
    let mut path = ApiPath::new(["v1", "audit"])
        .query("since", since)
        .query("limit", limit);
    if all {
        path = path.query("all", "true");
    }
    let list: AuditList = client.json(Method::GET, &path, NO_BODY).await?;
    print(output.format, &list.entries, || {
        let mut table = Table::new(vec![
            "TIME",
            "TOKEN",
            "ROLE",
            "NAMESPACE",
            "ACTION",
            "RESOURCE",
            "STATUS",
        ]);
        for entry in &list.entries {
            table.row(vec![
                time_ms(Some(entry.at_ms)),
                entry.token.clone(),
                entry.role.to_string(),
                entry
                    .namespace
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |ns| ns.to_string()),
                entry.action.clone(),
                entry.resource.clone(),
                entry.status.to_string(),
            ]);
        }
        table
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn whoami(output: OutputArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let me: WhoAmIView = ApiClient::new(connection)?
        .json(Method::GET, &ApiPath::new(["v1", "whoami"]), NO_BODY)
        .await?;
    print(output.format, &me, || {
        let mut table = Table::new(vec!["NAME", "ROLE", "NAMESPACES"]);
        table.row(vec![
            me.name.clone(),
            me.role.to_string(),
            namespaces_cell(me.namespaces.as_deref()),
        ]);
        table
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A token's namespaces in a table: comma-separated, or `*` for every namespace.
fn namespaces_cell(namespaces: Option<&[Namespace]>) -> String {
    match namespaces {
        Some(namespaces) => namespaces
            .iter()
            .map(|ns| ns.to_string())
            .collect::<Vec<_>>()
            .join(","),
        None => "*".to_owned(),
    }
}
