//! What `gust apply` would change: the file's entries compared with what the server has,
//! one step per resource. Every check that could refuse the apply runs here, before anything
//! changes, so a refused apply leaves the platform as it was.

use std::fmt;
use std::path::PathBuf;

use gust_api_types::{EnvironmentView, FunctionView, MqTriggerView, TimerView};
use gust_model::{BuiltinRuntime, Name, Namespace, Revision, RevisionFields, Route, RouteConfig};
use gust_store::{CodeLimits, CodeStore, CodeUpload};
use http::Method;

use super::load::{LoadedApp, Problem, Problems, check_code_path};
use crate::client::{ApiClient, ApiPath, NO_BODY};
use crate::code_upload;

/// The kinds of resource an app holds, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Environment,
    Function,
    Route,
    Timer,
    QueueTrigger,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Environment => "environment",
            Kind::Function => "function",
            Kind::Route => "route",
            Kind::Timer => "timer",
            Kind::QueueTrigger => "queue trigger",
        }
    }

    /// The API's collection of this kind.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Environment => "environments",
            Kind::Function => "functions",
            Kind::Route => "routes",
            Kind::Timer => "timers",
            Kind::QueueTrigger => "mqtriggers",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    /// The fields that differ.
    Update(Vec<String>),
    Delete,
    Unchanged,
}

/// One resource's step.
#[derive(Debug, Clone)]
pub struct Step {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
    /// A function's packed code, when it has to be uploaded.
    pub code: Option<PackedCode>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = (self.kind.as_str(), &self.name);
        match &self.action {
            Action::Create => write!(f, "+ {kind} {name}: create"),
            Action::Update(fields) => write!(f, "~ {kind} {name}: update {}", fields.join(", ")),
            Action::Delete => write!(f, "- {kind} {name}: delete"),
            Action::Unchanged => write!(f, "= {kind} {name}: unchanged"),
        }
    }
}

/// Code packed as `gust fn create --code` packs it, with the digest the server will give it.
#[derive(Debug, Clone)]
pub struct PackedCode {
    pub filename: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

/// Packs `path` and unpacks it in a scratch store, exactly as the server will, for the digest
/// it will have there: code that did not change is not uploaded again.
pub fn pack(path: &std::path::Path) -> anyhow::Result<PackedCode> {
    let (filename, bytes) = code_upload::pack(path)?;
    let scratch = tempfile::tempdir()?;
    let limits = CodeLimits {
        max_files: usize::MAX / 2,
        max_total_bytes: u64::MAX / 2,
    };
    let store = CodeStore::open(scratch.path(), limits)?;
    let digest = store
        .ingest(&CodeUpload {
            filename: &filename,
            bytes: &bytes,
        })?
        .digest;
    Ok(PackedCode {
        filename,
        bytes,
        digest,
    })
}

/// The whole plan: every step, resources of the file first, then what `--prune` deletes.
pub struct Plan {
    pub steps: Vec<Step>,
    /// Resources of the app the file no longer has, kept because `--prune` was not given.
    pub left_over: Vec<String>,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action != Action::Unchanged)
            .count()
    }

    pub fn summary(&self) -> String {
        let count =
            |wanted: fn(&Action) -> bool| self.steps.iter().filter(|s| wanted(&s.action)).count();
        format!(
            "{} to create, {} to update, {} to delete, {} unchanged",
            count(|a| *a == Action::Create),
            count(|a| matches!(a, Action::Update(_))),
            count(|a| *a == Action::Delete),
            count(|a| *a == Action::Unchanged),
        )
    }
}

/// Compares `loaded` with the server behind `client` (already set to the app's namespace).
/// How a plan is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Also delete the app's resources the file no longer has.
    pub prune: bool,
    /// Take over resources of the file's names that belong to no app (made by hand).
    pub adopt: bool,
    /// Run no build command: only say what would be built.
    pub dry_run: bool,
}

pub async fn plan(
    client: &ApiClient,
    loaded: &LoadedApp,
    options: PlanOptions,
) -> anyhow::Result<Plan> {
    let prune = options.prune;
    let spec = &loaded.spec;
    let app = spec.app.as_str();
    let namespace = Namespace::parse(&client.namespace)?;
    let mut steps = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    // `owner` is None for a resource that does not exist yet.
    let not_ours = |kind: Kind, name: &str, owner: Option<Option<&str>>| -> Option<String> {
        match owner {
            Some(Some(owner)) if owner != app => Some(format!(
                "{} {name} belongs to app {owner}; this file's app is {app} (rename one of them, or delete it first)",
                kind.as_str()
            )),
            Some(None) if !options.adopt => Some(format!(
                "{} {name} exists and belongs to no app (it was made by hand): `gust apply --adopt` makes it this app's",
                kind.as_str()
            )),
            _ => None,
        }
    };

    let environments: Vec<EnvironmentView> = list(client, Kind::Environment).await?;
    for (key, config) in &spec.environments {
        let mut config = config.clone();
        config.name = key.clone();
        let desired = config.validate()?;
        let action = match environments
            .iter()
            .find(|e| e.environment.name.as_str() == key)
        {
            None => Action::Create,
            Some(current) if current.environment == desired => Action::Unchanged,
            Some(_) => {
                problems.push(loaded.problem(
                    &["environments", key],
                    format!("environment {key} differs from the server's, and an environment cannot be changed in place: delete it (`gust env delete {key}`) and apply again"),
                ));
                continue;
            }
        };
        steps.push(step(Kind::Environment, key, action));
    }

    let functions: Vec<FunctionView> = list(client, Kind::Function).await?;
    for (key, entry) in &spec.functions {
        let builtin = BuiltinRuntime::ALL.iter().any(|r| r.name() == entry.env);
        let known = builtin
            || spec.environments.contains_key(&entry.env)
            || environments
                .iter()
                .any(|e| e.environment.name.as_str() == entry.env);
        if !known {
            problems.push(loaded.problem(
                &["functions", key, "env"],
                format!(
                    "environment {:?} is neither in this file nor on the server",
                    entry.env
                ),
            ));
            continue;
        }
        if let Some(command) = &entry.build {
            if options.dry_run {
                eprintln!("dry run: the build of {key} is not run ({command})");
                if !loaded.dir.join(&entry.code).exists() {
                    // Nothing built yet: what the build makes is new code, whatever it is.
                    let exists = functions.iter().any(|f| f.name.as_str() == key);
                    let action = if exists {
                        Action::Update(vec!["code (built at apply)".to_owned()])
                    } else {
                        Action::Create
                    };
                    steps.push(step(Kind::Function, key, action));
                    continue;
                }
            } else if let Err(message) = build(&loaded.dir, key, command, &entry.code).await {
                problems.push(loaded.problem(&["functions", key, "build"], message));
                continue;
            }
        }
        let path: PathBuf = match check_code_path(&loaded.dir, &entry.code) {
            Ok(path) => path,
            Err(message) => {
                problems.push(loaded.problem(&["functions", key, "code"], message));
                continue;
            }
        };
        let packed = match pack(&path) {
            Ok(packed) => packed,
            Err(err) => {
                problems.push(loaded.problem(&["functions", key, "code"], format!("{err:#}")));
                continue;
            }
        };
        let desired = entry.settings(app).apply(None)?;
        let Some(current) = functions.iter().find(|f| f.name.as_str() == key) else {
            steps.push(Step {
                code: Some(packed),
                ..step(Kind::Function, key, Action::Create)
            });
            continue;
        };
        let owner = current.app.as_ref().map(Name::as_str);
        if let Some(message) = not_ours(Kind::Function, key, Some(owner)) {
            problems.push(loaded.problem(&["functions", key], message));
            continue;
        }
        let revisions: Vec<Revision> = client
            .json(
                Method::GET,
                &ApiPath::new(["v1", "functions", key.as_str(), "revisions"]),
                NO_BODY,
            )
            .await?;
        let Some(revision) = revisions.iter().find(|r| r.number == current.revision) else {
            anyhow::bail!("function {key}: its current revision is not among its revisions");
        };
        let mut fields = revision_differences(&desired, revision);
        let code_changed = packed.digest != current.source_digest;
        if code_changed {
            fields.insert(0, "code".to_owned());
        }
        let action = action(Some(fields));
        steps.push(Step {
            code: code_changed.then_some(packed),
            ..step(Kind::Function, key, action)
        });
    }

    // A trigger's function must be in the file or on the server: a trigger made again for a
    // missing function would be deleted and never come back.
    let function_known = |name: &str| {
        spec.functions.contains_key(name) || functions.iter().any(|f| f.name.as_str() == name)
    };
    let missing_function = |section: &str, key: &str, function: &str| {
        loaded.problem(
            &[section, key, "function"],
            format!("function {function:?} is neither in this file nor on the server"),
        )
    };
    let routes: Vec<Route> = list(client, Kind::Route).await?;
    for (key, config) in &spec.routes {
        let config = RouteConfig {
            app: Some(app.to_owned()),
            ..config.clone()
        };
        if !function_known(&config.function) {
            problems.push(missing_function("routes", key, &config.function));
            continue;
        }
        let desired = config.validate(namespace.clone(), Name::parse("route", key)?)?;
        let current = routes.iter().find(|r| r.name.as_str() == key);
        if let Some(message) = not_ours(
            Kind::Route,
            key,
            current.map(|r| r.app.as_ref().map(Name::as_str)),
        ) {
            problems.push(loaded.problem(&["routes", key], message));
            continue;
        }
        // Another route stays (another app's, or one this apply does not delete): one that
        // would match the same requests refuses the whole apply.
        let staying = routes.iter().filter(|r| {
            let replaced = spec.routes.contains_key(r.name.as_str());
            let pruned = prune && r.app.as_ref().is_some_and(|a| a.as_str() == app);
            !replaced && !pruned
        });
        for other in staying {
            if other.conflicts_with(&desired) {
                problems.push(loaded.problem(
                    &["routes", key, "url"],
                    format!(
                        "route {key} ({}) conflicts with route {} ({}{})",
                        desired.path,
                        other.name,
                        other.path,
                        other
                            .app
                            .as_ref()
                            .map(|a| format!(", app {a}"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        let action = action(current.map(|current| route_differences(&desired, current)));
        steps.push(step(Kind::Route, key, action));
    }

    let timers: Vec<TimerView> = list(client, Kind::Timer).await?;
    for (key, config) in &spec.timers {
        if !function_known(&config.function) {
            problems.push(missing_function("timers", key, &config.function));
            continue;
        }
        let desired = config.validate(namespace.clone(), Name::parse("timer", key)?, 0)?;
        let current = timers.iter().find(|t| t.timer.name.as_str() == key);
        if let Some(message) = not_ours(
            Kind::Timer,
            key,
            current.map(|t| t.timer.app.as_ref().map(Name::as_str)),
        ) {
            problems.push(loaded.problem(&["timers", key], message));
            continue;
        }
        let action = action(current.map(|TimerView { timer: current, .. }| {
            differing(&[
                ("function", current.function == desired.function),
                (
                    "cron",
                    current.schedule.expression() == desired.schedule.expression(),
                ),
                (
                    "tz",
                    current.schedule.time_zone() == desired.schedule.time_zone(),
                ),
                ("app", current.app.as_ref().map(Name::as_str) == Some(app)),
            ])
        }));
        steps.push(step(Kind::Timer, key, action));
    }

    let triggers: Vec<MqTriggerView> = list(client, Kind::QueueTrigger).await?;
    for (key, config) in &spec.queue_triggers {
        if !function_known(&config.function) {
            problems.push(missing_function("queue_triggers", key, &config.function));
            continue;
        }
        let desired = config.validate(namespace.clone(), Name::parse("trigger", key)?, 0)?;
        let current = triggers.iter().find(|t| t.name == *key);
        if let Some(message) = not_ours(Kind::QueueTrigger, key, current.map(|t| t.app.as_deref()))
        {
            problems.push(loaded.problem(&["queue_triggers", key], message));
            continue;
        }
        if config.url.contains(":***@") {
            problems.push(loaded.problem(
                &["queue_triggers", key, "url"],
                "the URL's password is `***` (as `gust export` shows it): give the real one, from a ${VARIABLE}",
            ));
            continue;
        }
        // Only the redacted URL can be compared: a changed password alone is not seen.
        let action = action(current.map(|current| {
            differing(&[
                ("function", current.function == desired.function.as_str()),
                ("kind", current.kind == desired.kind.as_str()),
                ("url", current.url == desired.url.redacted()),
                ("topic", current.topic == desired.topic),
                ("resp_topic", current.resp_topic == desired.resp_topic),
                ("error_topic", current.error_topic == desired.error_topic),
                ("max_retries", current.max_retries == desired.max_retries),
                ("concurrency", current.concurrency == desired.concurrency),
                ("content_type", current.content_type == desired.content_type),
                ("app", current.app.as_deref() == Some(app)),
            ])
        }));
        steps.push(step(Kind::QueueTrigger, key, action));
    }

    if !problems.is_empty() {
        return Err(Problems(problems).into());
    }
    {
        let ours = |owner: Option<&str>| owner == Some(app);
        let mut deletes = Vec::new();
        for t in &triggers {
            if ours(t.app.as_deref()) && !spec.queue_triggers.contains_key(&t.name) {
                deletes.push(step(Kind::QueueTrigger, &t.name, Action::Delete));
            }
        }
        for t in &timers {
            let t = &t.timer;
            if ours(t.app.as_ref().map(Name::as_str)) && !spec.timers.contains_key(t.name.as_str())
            {
                deletes.push(step(Kind::Timer, t.name.as_str(), Action::Delete));
            }
        }
        for r in &routes {
            if ours(r.app.as_ref().map(Name::as_str)) && !spec.routes.contains_key(r.name.as_str())
            {
                deletes.push(step(Kind::Route, r.name.as_str(), Action::Delete));
            }
        }
        for f in &functions {
            if ours(f.app.as_ref().map(Name::as_str))
                && !spec.functions.contains_key(f.name.as_str())
            {
                deletes.push(step(Kind::Function, f.name.as_str(), Action::Delete));
            }
        }
        if prune {
            steps.extend(deletes);
        } else {
            let left_over = deletes
                .iter()
                .map(|s| format!("{} {}", s.kind.as_str(), s.name))
                .collect();
            return Ok(Plan { steps, left_over });
        }
    }
    Ok(Plan {
        steps,
        left_over: Vec::new(),
    })
}

/// Runs a function's build command in `dir`, its output on stderr, unless nothing it reads
/// changed since it last made `output`: builds are often not reproducible (componentize-py's
/// are not), and an unchanged app must make no new revision.
async fn build(
    dir: &std::path::Path,
    function: &str,
    command: &str,
    output: &str,
) -> Result<(), String> {
    let record = dir.join(".gust/builds").join(function);
    let inputs = || {
        inputs_digest(dir, command, &dir.join(output))
            .map_err(|e| format!("cannot read the build's inputs: {e}"))
    };
    let unchanged = dir.join(output).exists()
        && std::fs::read_to_string(&record).is_ok_and(|recorded| Ok(recorded) == inputs());
    if unchanged {
        return Ok(());
    }
    eprintln!("building {function}: {command}");
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .await
        .map_err(|e| format!("the build command could not start: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&record);
        return Err(format!(
            "the build command failed ({status}); nothing was applied"
        ));
    }
    // Recorded after the build: what it writes besides its output (a stamp, a log) is then
    // part of what it read last. A record that cannot be written only costs a build next time.
    let inputs = inputs()?;
    let _ = std::fs::create_dir_all(dir.join(".gust/builds"))
        .and_then(|()| std::fs::write(&record, &inputs));
    Ok(())
}

/// A digest of the command and every file below `dir` but the build's output and what tools
/// write beside the sources (`.gust`, `.git`, `node_modules`, `__pycache__`).
fn inputs_digest(
    dir: &std::path::Path,
    command: &str,
    output: &std::path::Path,
) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            if [".gust", ".git", "node_modules", "__pycache__"]
                .iter()
                .any(|skip| name == *skip)
                || path == output
            {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    hasher.update(command.as_bytes());
    for file in files {
        hasher.update([0]);
        hasher.update(
            file.strip_prefix(dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update([0]);
        hasher.update(std::fs::read(&file)?);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn step(kind: Kind, name: &str, action: Action) -> Step {
    Step {
        kind,
        name: name.to_owned(),
        action,
        code: None,
    }
}

/// Every resource of a kind in the client's namespace.
pub async fn list<T: serde::de::DeserializeOwned>(
    client: &ApiClient,
    kind: Kind,
) -> anyhow::Result<Vec<T>> {
    client
        .json(
            Method::GET,
            &ApiPath::new(["v1", kind.collection()]),
            NO_BODY,
        )
        .await
}

/// The settings of `current` that differ from `desired`, by their `gust.yaml` names.
fn revision_differences(desired: &RevisionFields, current: &Revision) -> Vec<String> {
    let (want, have) = (&desired.scaling, &current.scaling);
    let checks: [(&str, bool); 22] = [
        (
            "env",
            desired.environment.as_ref() == Some(&current.environment),
        ),
        ("entrypoint", desired.entrypoint == current.entrypoint),
        ("timeout", desired.limits.timeout == current.limits.timeout),
        (
            "memory",
            desired.limits.memory_mb == current.limits.memory_mb,
        ),
        (
            "request_body",
            desired.limits.request_body == current.limits.request_body,
        ),
        ("env_vars", desired.env_vars == current.env_vars),
        (
            "allow_outbound",
            desired.allow_outbound == current.allow_outbound,
        ),
        ("network", desired.network == current.network),
        ("concurrency", want.concurrency == have.concurrency),
        ("min_instances", want.min_instances == have.min_instances),
        ("max_instances", want.max_instances == have.max_instances),
        ("idle_timeout", want.idle_timeout == have.idle_timeout),
        ("queue_depth", want.queue_depth == have.queue_depth),
        ("queue_timeout", want.queue_timeout == have.queue_timeout),
        ("reuse", want.reuse == have.reuse),
        (
            "max_attempts",
            desired.delivery.max_attempts == current.delivery.max_attempts,
        ),
        (
            "max_age",
            desired.delivery.max_age == current.delivery.max_age,
        ),
        (
            "keep_revisions",
            desired.keep_revisions == current.keep_revisions,
        ),
        ("app", desired.app == current.app),
        ("secrets", desired.mounts.secrets == current.mounts.secrets),
        ("configs", desired.mounts.configs == current.mounts.configs),
        (
            "secret_env",
            desired.mounts.secret_env == current.mounts.secret_env,
        ),
    ];
    differing(&checks)
}

fn route_differences(desired: &Route, current: &Route) -> Vec<String> {
    differing(&[
        ("function", desired.function == current.function),
        ("url", desired.path == current.path),
        ("methods", desired.methods == current.methods),
        ("prefix", desired.prefix == current.prefix),
        ("async", desired.mode == current.mode),
        ("auth", desired.auth == current.auth),
        ("host", desired.host == current.host),
        ("app", desired.app == current.app),
    ])
}

/// The fields whose check (field, same) failed.
fn differing(checks: &[(&str, bool)]) -> Vec<String> {
    checks
        .iter()
        .filter(|(_, same)| !same)
        .map(|(field, _)| (*field).to_owned())
        .collect()
}

/// A resource's step: create it when it is missing (`None`), else update the fields that
/// differ, if any.
fn action(differences: Option<Vec<String>>) -> Action {
    match differences {
        None => Action::Create,
        Some(fields) if fields.is_empty() => Action::Unchanged,
        Some(fields) => Action::Update(fields),
    }
}
