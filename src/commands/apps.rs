//! `gust apply`, `gust validate`, `gust export` and `gust schema`: apps kept as code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::app::export::{Selection, export};
use crate::app::load::LoadedApp;
use crate::app::{apply, plan, schema};
use crate::client::{ApiClient, ConnectionArgs};
use crate::templates;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The app file, or a directory holding gust.yaml
    #[arg(long, short = 'f', default_value = "gust.yaml")]
    file: PathBuf,
    /// Print what would change and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Also delete resources of this app that the file no longer has
    #[arg(long)]
    prune: bool,
    /// Take over resources of the file's names that belong to no app (made by hand)
    #[arg(long)]
    adopt: bool,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// The app file, or a directory holding gust.yaml
    #[arg(long, short = 'f', default_value = "gust.yaml")]
    file: PathBuf,
}

pub async fn dev(args: DevArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    crate::app::dev::dev(&args.file, connection).await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The app file, or a directory holding gust.yaml
    #[arg(long, short = 'f', default_value = "gust.yaml")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Export every resource of this app
    #[arg(
        long,
        conflicts_with = "functions",
        required_unless_present = "functions"
    )]
    app: Option<String>,
    /// Export these functions with their routes, timers and queue triggers (repeatable)
    #[arg(long = "fn", value_name = "NAME")]
    functions: Vec<String>,
    /// The app name the exported file gives them [default: the first function's app, or its name]
    #[arg(long, requires = "functions")]
    app_name: Option<String>,
    /// Where to write gust.yaml and the code (created if missing; nothing is overwritten)
    #[arg(long, short = 'o', default_value = ".")]
    output: PathBuf,
}

/// Reads and checks an app file; warnings go to stderr.
fn read(file: &std::path::Path, namespace: &str) -> anyhow::Result<LoadedApp> {
    let loaded = crate::app::read_app(file, namespace)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded)
}

pub async fn apply(args: ApplyArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let loaded = read(&args.file, connection.namespace()?)?;
    let mut client = ApiClient::new(connection)?;
    client.namespace = loaded.namespace(connection.namespace()?);
    let options = plan::PlanOptions {
        prune: args.prune,
        adopt: args.adopt,
        dry_run: args.dry_run,
    };
    let plan = plan::plan(&client, &loaded, options).await?;
    for step in &plan.steps {
        println!("{step}");
    }
    println!("{}", plan.summary());
    if !plan.left_over.is_empty() {
        println!(
            "not in the file but kept (`--prune` deletes them): {}",
            plan.left_over.join(", ")
        );
    }
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    if plan.changes() == 0 {
        println!("no changes: the platform matches {}", loaded.file.display());
        return Ok(ExitCode::SUCCESS);
    }
    apply::execute(&client, &loaded, &plan).await?;
    let changes = plan.changes();
    println!(
        "applied {changes} change{} of app {}",
        if changes == 1 { "" } else { "s" },
        loaded.spec.app
    );
    Ok(ExitCode::SUCCESS)
}

pub fn validate(args: ValidateArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let loaded = read(&args.file, connection.namespace()?)?;
    let spec = &loaded.spec;
    println!(
        "{}: app {} is valid ({} environments, {} functions, {} routes, {} timers, {} queue triggers)",
        loaded.file.display(),
        spec.app,
        spec.environments.len(),
        spec.functions.len(),
        spec.routes.len(),
        spec.timers.len(),
        spec.queue_triggers.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn export_app(args: ExportArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(connection)?;
    let selection = match args.app {
        Some(app) => Selection::App(app),
        None => Selection::Functions {
            app: args.app_name,
            names: args.functions,
        },
    };
    let file = export(&client, &selection, &args.output).await?;
    println!("wrote {}", file.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The template (see --list)
    #[arg(required_unless_present = "list")]
    template: Option<String>,
    /// Where to write it, a new or empty directory; its name is the app's [default: the
    /// template's name]
    dir: Option<PathBuf>,
    /// List the templates
    #[arg(long)]
    list: bool,
}

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let Some(name) = args.template.filter(|_| !args.list) else {
        for template in templates::TEMPLATES {
            println!("{:<14} {}", template.name, template.description);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let template = templates::find(&name)?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(template.name));
    let app = templates::app_name(&dir)?;
    templates::write(template, &dir, &app)?;
    let shown = dir.display().to_string();
    println!(
        "wrote app {app} ({}) into {shown}: `gust apply -f {}` deploys it; its README says more",
        template.name,
        shlex::try_quote(&shown).unwrap_or(std::borrow::Cow::Borrowed(&shown))
    );
    Ok(ExitCode::SUCCESS)
}

pub fn print_schema() -> anyhow::Result<ExitCode> {
    println!("{:#}", schema::json_schema());
    Ok(ExitCode::SUCCESS)
}
