//! `gust export`: what the server has, written as a `gust.yaml` with each function's code in a
//! directory beside it, so that applying it changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use gust_api_types::{EnvironmentView, FunctionView, MqTriggerView, TimerView};
use gust_model::{
    EnvironmentConfig, EnvironmentKind, Method as HttpMethod, MqTriggerConfig, Name, Revision,
    Route, RouteConfig, RouteMode, TimerConfig,
};
use http::Method;

use super::plan::{Kind, list};
use super::spec::{AppFile, FILE_NAME, FunctionEntry};
use crate::client::{ApiClient, ApiPath, NO_BODY};

/// Which functions to export.
pub enum Selection {
    /// Every resource of this app.
    App(String),
    /// These functions with their routes, timers and triggers, as the app `app` (by default
    /// the first function's app, or its name).
    Functions {
        names: Vec<String>,
        app: Option<String>,
    },
}

/// Writes `gust.yaml` and the code into `dir`; returns the file's path. Never overwrites.
pub async fn export(
    client: &ApiClient,
    selection: &Selection,
    dir: &Path,
) -> anyhow::Result<std::path::PathBuf> {
    let file = dir.join(FILE_NAME);
    if file.exists() {
        bail!(
            "{} exists already: export into another directory",
            file.display()
        );
    }
    let functions: Vec<FunctionView> = list(client, Kind::Function).await?;
    let (app, chosen): (String, Vec<&FunctionView>) = match selection {
        Selection::App(app) => (
            app.clone(),
            functions
                .iter()
                .filter(|f| f.app.as_ref().is_some_and(|a| a.as_str() == app))
                .collect(),
        ),
        Selection::Functions { names, app } => {
            let mut chosen = Vec::new();
            for name in names {
                let found = functions
                    .iter()
                    .find(|f| f.name.as_str() == name)
                    .with_context(|| format!("function {name} not found"))?;
                chosen.push(found);
            }
            let app = app.clone().unwrap_or_else(|| {
                let first = chosen[0];
                first.app.as_ref().unwrap_or(&first.name).to_string()
            });
            (app, chosen)
        }
    };
    let in_app = |owner: Option<&Name>, function: &Name| match selection {
        Selection::App(app) => owner.is_some_and(|o| o.as_str() == app),
        Selection::Functions { names, .. } => names.iter().any(|n| n == function.as_str()),
    };
    let mut spec = AppFile {
        app,
        ..AppFile::default()
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let environments: Vec<EnvironmentView> = list(client, Kind::Environment).await?;
    for view in chosen {
        let name = view.name.as_str();
        let revisions: Vec<Revision> = client
            .json(
                Method::GET,
                &ApiPath::new(["v1", "functions", name, "revisions"]),
                NO_BODY,
            )
            .await?;
        let revision = revisions
            .iter()
            .find(|r| r.number == view.revision)
            .with_context(|| format!("function {name}: its current revision is missing"))?;
        let code = write_code(client, name, view.code_file.as_deref(), dir).await?;
        spec.functions
            .insert(name.to_owned(), entry(revision, code, &spec.app)?);
        if let Some(env) = environments
            .iter()
            .find(|e| e.environment.name == revision.environment)
            && let Some(config) =
                environment_config(&env.environment.kind, env.environment.pool_size)
        {
            spec.environments
                .insert(revision.environment.to_string(), config);
        }
    }
    for route in list::<Route>(client, Kind::Route).await? {
        if in_app(route.app.as_ref(), &route.function) {
            spec.routes
                .insert(route.name.to_string(), route_config(&route));
        }
    }
    for TimerView { timer, .. } in list::<TimerView>(client, Kind::Timer).await? {
        if in_app(timer.app.as_ref(), &timer.function) {
            let utc = timer.schedule.time_zone() == "UTC";
            spec.timers.insert(
                timer.name.to_string(),
                TimerConfig {
                    name: None,
                    function: timer.function.to_string(),
                    cron: timer.schedule.expression().to_owned(),
                    tz: (!utc).then(|| timer.schedule.time_zone().to_owned()),
                    app: None,
                },
            );
        }
    }
    for trigger in list::<MqTriggerView>(client, Kind::QueueTrigger).await? {
        let function = Name::parse("function", &trigger.function)?;
        let owner = trigger
            .app
            .as_deref()
            .map(|a| Name::parse("app", a))
            .transpose()?;
        if in_app(owner.as_ref(), &function) {
            if trigger.url.contains("***") {
                eprintln!(
                    "warning: queue trigger {}: its URL's password is not shown by the API; replace *** with ${{VARIABLE}} before applying elsewhere",
                    trigger.name
                );
            }
            spec.queue_triggers.insert(
                trigger.name.clone(),
                MqTriggerConfig {
                    name: None,
                    function: trigger.function,
                    kind: trigger.kind,
                    url: trigger.url,
                    topic: trigger.topic,
                    resp_topic: trigger.resp_topic,
                    error_topic: trigger.error_topic,
                    max_retries: Some(trigger.max_retries),
                    concurrency: Some(trigger.concurrency),
                    content_type: trigger.content_type,
                    app: None,
                },
            );
        }
    }
    if spec.functions.is_empty() && spec.routes.is_empty() {
        bail!(
            "app {} has no functions or routes here (namespace {})",
            spec.app,
            client.namespace
        );
    }
    // `gust apply` replaces `${VAR}`: a value that holds one is written as `$${`, so that it
    // comes back as it is.
    let yaml = serde_norway::to_string(&spec)
        .context("cannot write the app as YAML")?
        .replace("${", "$${");
    std::fs::write(&file, yaml).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// Unpacks the function's code as uploaded into `dir/<name>/`; returns the `code` path the
/// file names: the directory, or the single file in it.
async fn write_code(
    client: &ApiClient,
    name: &str,
    file: Option<&str>,
    dir: &Path,
) -> anyhow::Result<String> {
    let response = client
        .call(
            Method::GET,
            &ApiPath::new(["v1", "functions", name, "code"]),
            NO_BODY,
        )
        .await?;
    let target = dir.join(name);
    if target.exists() {
        bail!(
            "{} exists already: export into another directory",
            target.display()
        );
    }
    std::fs::create_dir(&target).with_context(|| format!("cannot create {}", target.display()))?;
    let mut archive = tar::Archive::new(&response.body[..]);
    archive.set_preserve_permissions(true);
    archive
        .unpack(&target)
        .with_context(|| format!("cannot unpack the code of {name}"))?;
    Ok(match file {
        Some(file) => format!("{name}/{file}"),
        None => name.to_owned(),
    })
}

/// A function entry with only the settings that differ from their defaults.
fn entry(revision: &Revision, code: String, app: &str) -> anyhow::Result<FunctionEntry> {
    let base = FunctionEntry {
        code,
        env: revision.environment.to_string(),
        ..FunctionEntry::default()
    };
    let defaults = base.settings(app).apply(None)?;
    let differs = |same: bool| !same;
    let (limits, scaling) = (&revision.limits, &revision.scaling);
    Ok(FunctionEntry {
        entrypoint: revision.entrypoint.clone(),
        timeout: differs(limits.timeout == defaults.limits.timeout).then(|| limits.timeout.into()),
        memory: differs(limits.memory_mb == defaults.limits.memory_mb).then_some(limits.memory_mb),
        env_vars: revision
            .env_vars
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        allow_outbound: revision
            .allow_outbound
            .iter()
            .map(|r| r.to_string())
            .collect(),
        network: revision.network.map(|n| n.to_string()),
        request_body: differs(limits.request_body == defaults.limits.request_body)
            .then_some(limits.request_body),
        concurrency: scaling.concurrency,
        min_instances: differs(scaling.min_instances == defaults.scaling.min_instances)
            .then_some(scaling.min_instances),
        max_instances: scaling.max_instances,
        idle_timeout: scaling.idle_timeout.map(Into::into),
        queue_depth: scaling.queue_depth,
        queue_timeout: scaling.queue_timeout.map(Into::into),
        reuse: differs(scaling.reuse == defaults.scaling.reuse).then_some(scaling.reuse),
        max_attempts: differs(revision.delivery.max_attempts == defaults.delivery.max_attempts)
            .then_some(revision.delivery.max_attempts),
        max_age: differs(revision.delivery.max_age == defaults.delivery.max_age)
            .then(|| revision.delivery.max_age.into()),
        keep_revisions: differs(revision.keep_revisions == defaults.keep_revisions)
            .then_some(revision.keep_revisions),
        secrets: names(&revision.mounts.secrets),
        configs: names(&revision.mounts.configs),
        secret_env: revision.mounts.secret_env,
        ..base
    })
}

fn names(names: &[gust_model::Name]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn route_config(route: &Route) -> RouteConfig {
    RouteConfig {
        name: None,
        function: route.function.to_string(),
        url: route.path.to_string(),
        methods: Vec::<HttpMethod>::from(route.methods)
            .iter()
            .map(|m| m.as_str().to_owned())
            .collect(),
        prefix: route.prefix,
        async_only: route.mode == RouteMode::Async,
        allow_async: route.mode == RouteMode::CallerChooses,
        app: None,
        auth: route.auth.clone(),
        host: route.host.as_ref().map(ToString::to_string),
    }
}

/// A custom environment as its create body; none for a built-in one.
fn environment_config(kind: &EnvironmentKind, pool_size: u32) -> Option<EnvironmentConfig> {
    let EnvironmentKind::Custom {
        command,
        mounts,
        build_command,
        port,
        protocol,
    } = kind
    else {
        return None;
    };
    let join = |words: &[String]| shlex::try_join(words.iter().map(String::as_str)).ok();
    Some(EnvironmentConfig {
        name: String::new(),
        command: join(command)?,
        pool_size: Some(pool_size),
        mounts: mounts.iter().map(|m| m.display().to_string()).collect(),
        build_cmd: build_command.as_deref().and_then(join),
        port: *port,
        protocol: serde_json::to_value(protocol)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|p| p != "gust"),
    })
}
