use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use bytes::Bytes;
use gust_executor::EffectiveScaling;
use gust_model::{
    CodeRef, Delivery, DeliveryConfig, Environment, Function, FunctionConfig, Limits, Name,
    Namespace, NetworkPolicy, OutboundRule, Revision, RevisionFields, RevisionNumber,
    ScalingConfig, Tier,
};
use gust_store::{CodeUpload, StoreError};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, NamespaceQuery, Scoped, parse_json};

type Shared = State<Arc<ApiState>>;

/// Code as uploaded: a file name (its suffix tells an archive from a source file) and the
/// bytes in base64.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    filename: String,
    /// The code itself, for small code.
    #[serde(default)]
    content_base64: Option<String>,
    /// An upload received by `POST /v1/uploads`, for code of any size.
    #[serde(default)]
    upload: Option<String>,
}

/// The body of create (name, env and code required) and update (everything optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    code: Option<CodeBody>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    entrypoint: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    memory_mb: Option<u32>,
    #[serde(default)]
    env_vars: Option<Vec<String>>,
    #[serde(default)]
    allow_outbound: Option<Vec<String>>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    min_instances: Option<u32>,
    #[serde(default)]
    max_instances: Option<u32>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    queue_depth: Option<u32>,
    #[serde(default)]
    queue_timeout: Option<String>,
    #[serde(default)]
    reuse: Option<u32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    keep_revisions: Option<u32>,
}

impl FunctionBody {
    fn config(&self) -> FunctionConfig {
        FunctionConfig {
            env: self.env.clone(),
            entrypoint: self.entrypoint.clone(),
            timeout: self.timeout.clone(),
            memory_mb: self.memory_mb,
            env_vars: self.env_vars.clone(),
            allow_outbound: self.allow_outbound.clone(),
            network: self.network.clone(),
            scaling: ScalingConfig {
                concurrency: self.concurrency,
                min_instances: self.min_instances,
                max_instances: self.max_instances,
                idle_timeout: self.idle_timeout.clone(),
                queue_depth: self.queue_depth,
                queue_timeout: self.queue_timeout.clone(),
                reuse: self.reuse,
            },
            delivery: DeliveryConfig {
                max_attempts: self.max_attempts,
                max_age: self.max_age.clone(),
            },
            keep_revisions: self.keep_revisions,
        }
    }
}

/// What `fn get` shows: the function with its current revision spelled out.
#[derive(Debug, Serialize)]
pub struct FunctionView {
    namespace: Namespace,
    name: Name,
    revision: RevisionNumber,
    revisions: usize,
    keep_revisions: u32,
    env: Name,
    entrypoint: Option<String>,
    timeout_ms: u64,
    memory_mb: u32,
    env_vars: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_outbound: Vec<OutboundRule>,
    /// Process functions only: what their workers may reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<NetworkPolicy>,
    /// The scaling settings in force, tier and `gust up` defaults filled in.
    scaling: EffectiveScaling,
    /// Retry budget of asynchronous invocations.
    delivery: Delivery,
    code_digest: String,
    code_file: Option<String>,
    code_bytes: u64,
    updated_at_ms: u64,
    instances: InstancesView,
}

#[derive(Debug, Serialize)]
struct InstancesView {
    busy: usize,
    idle: usize,
}

impl FunctionView {
    fn new(function: &Function, state: &ApiState) -> Self {
        let current = function.current_revision();
        let counts = state
            .executor
            .instance_counts(&function.namespace, &function.name);
        let tier = state
            .store
            .environment(&current.environment)
            .ok()
            .flatten()
            .map_or(Tier::Process, |env| env.tier());
        Self {
            namespace: function.namespace.clone(),
            name: function.name.clone(),
            revision: current.number,
            revisions: function.revisions.len(),
            keep_revisions: current.keep_revisions,
            env: current.environment.clone(),
            entrypoint: current.entrypoint.clone(),
            timeout_ms: current.limits.timeout.as_millis() as u64,
            memory_mb: current.limits.memory_mb,
            env_vars: current.env_vars.clone(),
            allow_outbound: current.allow_outbound.clone(),
            network: (tier == Tier::Process).then(|| current.network.unwrap_or_default()),
            scaling: state.executor.config().effective(&current.scaling, tier),
            delivery: current.delivery,
            code_digest: current.code.digest.clone(),
            code_file: current.code.file.clone(),
            code_bytes: current.code.size_bytes,
            updated_at_ms: current.created_at_ms,
            instances: InstancesView {
                busy: counts.busy,
                idle: counts.idle,
            },
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks an upload with the environment's runtime (a wasm component is compiled here), then
/// stores it. Nothing is stored when the check fails; a received upload is used up either way.
fn ingest(
    state: &ApiState,
    code: &CodeBody,
    environment: &Environment,
    limits: &Limits,
) -> Result<gust_model::CodeRef, ApiError> {
    match (&code.content_base64, &code.upload) {
        (Some(content), None) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content.as_bytes())
                .map_err(|e| {
                    ApiError::Invalid(format!("code.content_base64 is not base64: {e}"))
                })?;
            state
                .runtime
                .validate_upload(environment, &code.filename, &bytes, limits)
                .map_err(ApiError::Invalid)?;
            Ok(state.code.ingest(&CodeUpload {
                filename: &code.filename,
                bytes: &bytes,
            })?)
        }
        (None, Some(upload)) => {
            let checked = check_received(state, upload, code, environment, limits);
            if checked.is_err() {
                state.code.discard_upload(upload);
            }
            checked?;
            Ok(state.code.ingest_upload(upload, &code.filename)?)
        }
        _ => Err(ApiError::Invalid(
            "code needs exactly one of content_base64 and upload".to_owned(),
        )),
    }
}

/// The runtime's check of a received upload. Only a component is read whole (the wasm tier
/// compiles it); other code is never read into memory: the process tier checks no bytes, and
/// the upload is unpacked from disk.
fn check_received(
    state: &ApiState,
    upload: &str,
    code: &CodeBody,
    environment: &Environment,
    limits: &Limits,
) -> Result<(), ApiError> {
    let bytes = if environment.tier() != Tier::Wasm || is_archive(&code.filename) {
        Vec::new()
    } else {
        let path = state.code.upload_file(upload)?;
        std::fs::read(&path).map_err(|_| ApiError::NotFound {
            kind: "upload",
            name: upload.to_owned(),
        })?
    };
    state
        .runtime
        .validate_upload(environment, &code.filename, &bytes, limits)
        .map_err(ApiError::Invalid)
}

fn is_archive(filename: &str) -> bool {
    let lower = filename.to_ascii_lowercase();
    [".zip", ".tar.gz", ".tgz", ".tar"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
}

/// Checks already-stored code again when the settings it was checked with change.
fn revalidate(
    state: &ApiState,
    code: &CodeRef,
    environment: &Environment,
    limits: &Limits,
) -> Result<(), ApiError> {
    let Some(file) = &code.file else {
        return Ok(());
    };
    let path = state.code.tree(&code.digest).join(file);
    let bytes = std::fs::read(&path)
        .map_err(|e| ApiError::Internal(format!("cannot read {}: {e}", path.display())))?;
    state
        .runtime
        .validate_upload(environment, file, &bytes, limits)
        .map_err(ApiError::Invalid)
}

/// Settings of one tier are refused in the other, and allow-list rules a process function's
/// network filter cannot enforce are refused, so that no user believes a function is confined
/// or recycled by something that does not apply to it.
fn check_tier_settings(environment: &Environment, fields: &RevisionFields) -> Result<(), ApiError> {
    if environment.tier() == Tier::Wasm {
        if fields.network.is_some() {
            return Err(ApiError::Invalid(
                "--network applies to process functions only: a wasm function reaches only the origins given with --allow-outbound".to_owned(),
            ));
        }
        if fields.scaling.concurrency.is_some_and(|c| c > 1) {
            return Err(ApiError::Invalid(
                "--concurrency applies to process functions only: a wasm instance serves one request at a time (raise --max-instances instead)".to_owned(),
            ));
        }
        return Ok(());
    }
    if !fields.allow_outbound.is_empty() && fields.network == Some(NetworkPolicy::None) {
        return Err(ApiError::Invalid(
            "--allow-outbound and --network none contradict each other: choose one".to_owned(),
        ));
    }
    for rule in &fields.allow_outbound {
        if let Some(why) = rule.unenforceable_by_address() {
            return Err(ApiError::Invalid(format!("--allow-outbound {rule}: {why}")));
        }
    }
    if fields.scaling.reuse != 1 {
        return Err(ApiError::Invalid(
            "--reuse applies to wasm functions only (a process instance serves requests until it stops)".to_owned(),
        ));
    }
    Ok(())
}

fn require_environment(state: &ApiState, env: &Name) -> Result<Environment, ApiError> {
    state.store.environment(env)?.ok_or_else(|| {
        ApiError::Invalid(format!(
            "environment {env:?} does not exist (see `gust env list`)"
        ))
    })
}

pub async fn list(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<FunctionView>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| {
            let functions = s.store.functions(Some(&namespace))?;
            Ok(functions.iter().map(|f| FunctionView::new(f, s)).collect())
        })
        .await
        .map(Json)
}

fn load(state: &ApiState, namespace: &Namespace, name: &Name) -> Result<Function, ApiError> {
    state
        .store
        .function(namespace, name)?
        .ok_or(ApiError::NotFound {
            kind: "function",
            name: name.to_string(),
        })
}

pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<FunctionView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    state
        .blocking(move |s| Ok(FunctionView::new(&load(s, &namespace, &name)?, s)))
        .await
        .map(Json)
}

pub async fn revisions(
    State(state): Shared,
    scoped: Scoped,
) -> Result<Json<Vec<Revision>>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    state
        .blocking(move |s| Ok(load(s, &namespace, &name)?.revisions))
        .await
        .map(Json)
}

pub async fn create(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<FunctionView>), ApiError> {
    let namespace = query.namespace()?;
    let body: FunctionBody = parse_json(&body)?;
    let name = Name::parse("function", body.name.as_deref().unwrap_or_default())?;
    let fields = body.config().apply(None)?;
    let environment = fields
        .environment
        .clone()
        .ok_or_else(|| ApiError::Invalid("env is required".into()))?;
    let code = body
        .code
        .ok_or_else(|| ApiError::Invalid("code is required".into()))?;
    state
        .blocking(move |s| {
            // Garbage collection waits until the new code's revision is stored.
            let _code = s.code.hold();
            // Check what can be checked before storing any code.
            let env = require_environment(s, &environment)?;
            check_tier_settings(&env, &fields)?;
            if s.store.function(&namespace, &name)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "function",
                    name: name.to_string(),
                }
                .into());
            }
            let code = ingest(s, &code, &env, &fields.limits)?;
            let function = Function {
                namespace,
                name,
                current: 1,
                revisions: vec![Revision {
                    number: 1,
                    environment,
                    code,
                    entrypoint: fields.entrypoint,
                    env_vars: fields.env_vars,
                    limits: fields.limits,
                    allow_outbound: fields.allow_outbound,
                    network: fields.network,
                    scaling: fields.scaling,
                    delivery: fields.delivery,
                    created_at_ms: now_ms(),
                    copied_from: None,
                    keep_revisions: fields.keep_revisions,
                }],
            };
            s.store.create_function(&function)?;
            s.executor
                .function_deployed(&function.namespace, &function.name);
            Ok(FunctionView::new(&function, s))
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

pub async fn update(
    State(state): Shared,
    scoped: Scoped,
    body: Bytes,
) -> Result<Json<FunctionView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    let body: FunctionBody = parse_json(&body)?;
    if body.name.as_ref().is_some_and(|n| n != name.as_str()) {
        return Err(ApiError::Invalid("a function cannot be renamed".into()));
    }
    let config = body.config();
    state
        .blocking(move |s| {
            // Garbage collection waits until the new code's revision is stored.
            let _code = s.code.hold();
            let current = load(s, &namespace, &name)?;
            let fields = config.apply(Some(current.current_revision()))?;
            let environment = fields
                .environment
                .clone()
                .expect("an update starts from a revision with an environment");
            let env = require_environment(s, &environment)?;
            check_tier_settings(&env, &fields)?;
            let code = match &body.code {
                Some(code) => ingest(s, code, &env, &fields.limits)?,
                None => {
                    let previous = current.current_revision();
                    if previous.environment != environment || previous.limits != fields.limits {
                        revalidate(s, &previous.code, &env, &fields.limits)?;
                    }
                    previous.code.clone()
                }
            };
            let revision = Revision {
                number: 0,
                environment,
                code,
                entrypoint: fields.entrypoint,
                env_vars: fields.env_vars,
                limits: fields.limits,
                allow_outbound: fields.allow_outbound,
                network: fields.network,
                scaling: fields.scaling,
                delivery: fields.delivery,
                created_at_ms: now_ms(),
                copied_from: None,
                keep_revisions: fields.keep_revisions,
            };
            let updated = s
                .store
                .update_function(&namespace, &name, &mut |mut function| {
                    function.push_revision(revision.clone());
                    Ok(function)
                })?;
            s.executor.function_deployed(&namespace, &name);
            // An update can prune the oldest revision and with it the last use of its code.
            s.code_released.notify_one();
            Ok(FunctionView::new(&updated, s))
        })
        .await
        .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    to: Option<RevisionNumber>,
}

pub async fn rollback(
    State(state): Shared,
    scoped: Scoped,
    body: Bytes,
) -> Result<Json<FunctionView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    let body: RollbackBody = if body.is_empty() {
        RollbackBody::default()
    } else {
        parse_json(&body)?
    };
    state
        .blocking(move |s| {
            let updated = s
                .store
                .update_function(&namespace, &name, &mut |mut function| {
                    let target = match body.to {
                        Some(to) => to,
                        None => function
                            .revisions
                            .iter()
                            .map(|r| r.number)
                            .filter(|n| *n < function.current)
                            .max()
                            .ok_or_else(|| StoreError::InvalidCode {
                                reason: format!(
                                    "function {name:?} has no revision before {}",
                                    function.current
                                ),
                            })?,
                    };
                    let Some(source) = function.revision(target).cloned() else {
                        return Err(StoreError::NotFound {
                            kind: "revision",
                            name: format!("{name}@{target}"),
                        });
                    };
                    // How many revisions to keep is the function's setting now, not the
                    // old revision's.
                    let keep_revisions = function.current_revision().keep_revisions;
                    function.push_revision(Revision {
                        created_at_ms: now_ms(),
                        copied_from: Some(target),
                        keep_revisions,
                        ..source
                    });
                    Ok(function)
                });
            let updated = updated.map_err(|err| match err {
                // No earlier revision is the caller's mistake, not bad code.
                StoreError::InvalidCode { reason } => ApiError::Invalid(reason),
                other => other.into(),
            })?;
            s.executor.function_deployed(&namespace, &name);
            s.code_released.notify_one();
            Ok(FunctionView::new(&updated, s))
        })
        .await
        .map(Json)
}

pub async fn delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    state
        .blocking(move |s| {
            s.store.delete_function(&namespace, &name)?;
            s.executor.function_deleted(&namespace, &name);
            s.code_released.notify_one();
            s.logs
                .remove(&gust_executor::function_key(&namespace, &name));
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
