use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use bytes::Bytes;
use gust_api_types::{
    CodeSource, FunctionSpec, FunctionStats, FunctionView, InstancesView, NamespaceQuery,
    RollbackRequest, ScalingView, StatsQuery, UpdateQuery,
};
use gust_executor::{
    EffectiveScaling, InstanceSpec, InvokeError, LogQuery, RequestId, function_key,
};
use gust_model::{
    CodeRef, Environment, Function, Limits, Name, Namespace, NetworkPolicy, Revision,
    RevisionFields, RevisionNumber, Tier,
};
use gust_store::{CodeUpload, StoreError};
use http::StatusCode;

use crate::builds::{Builds, Pending, build_view};
use crate::{ApiError, ApiState, NamespaceExt, Scoped, parse_json};

type Shared = State<Arc<ApiState>>;

/// What `fn get` shows of `function` now.
fn function_view(function: &Function, state: &ApiState) -> FunctionView {
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
    FunctionView {
        namespace: function.namespace.clone(),
        name: function.name.clone(),
        revision: current.number,
        revisions: function.revisions.len(),
        keep_revisions: current.keep_revisions,
        env: current.environment.clone(),
        entrypoint: current.entrypoint.clone(),
        timeout: current.limits.timeout.into(),
        memory_mb: current.limits.memory_mb,
        request_body: current.limits.request_body,
        env_vars: current.env_vars.clone(),
        allow_outbound: current.allow_outbound.clone(),
        network: (tier == Tier::Process).then(|| current.network.unwrap_or_default()),
        scaling: scaling_view(state.executor.config().effective(&current.scaling, tier)),
        delivery: current.delivery,
        code_digest: current.code.digest.clone(),
        source_digest: current
            .build
            .as_ref()
            .map_or(&current.code, |build| &build.source)
            .digest
            .clone(),
        app: current.app.clone(),
        mounts: current.mounts.clone(),
        code_file: current.code.file.clone(),
        code_bytes: current.code.size_bytes,
        updated_at_ms: current.created_at_ms,
        instances: InstancesView {
            busy: counts.busy,
            idle: counts.idle,
        },
        latest_revision: function
            .revisions
            .iter()
            .map(|r| r.number)
            .max()
            .unwrap_or(function.current),
        builds: function
            .revisions
            .iter()
            .filter_map(|revision| build_view(state, function, revision))
            .collect(),
    }
}

fn scaling_view(scaling: EffectiveScaling) -> ScalingView {
    ScalingView {
        concurrency: scaling.concurrency,
        min_instances: scaling.min_instances,
        max_instances: scaling.max_instances,
        idle_timeout: scaling.idle_timeout.into(),
        queue_depth: scaling.queue_depth,
        queue_timeout: scaling.queue_timeout.into(),
        reuse: scaling.reuse,
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
    code: &CodeSource,
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
    code: &CodeSource,
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

/// Settings alone wait for code still building: they would go live with the older code, and
/// the newer code's build would then never take over.
fn still_building_error(name: &Name, revision: RevisionNumber) -> ApiError {
    ApiError::Conflict(format!(
        "revision {revision} of {name:?} is still building; change settings once it is live (`gust fn build-logs {name} -f`), or upload code with them"
    ))
}

/// Loads a revision in an instance before it is stored (see [`gust_executor::Executor::trial`]):
/// code that cannot load is refused with the error and what loading printed (a traceback),
/// and the function's current revision keeps serving.
pub(crate) fn check_loads(
    state: &ApiState,
    function: &Function,
    revision: &Revision,
    environment: &Environment,
) -> Result<(), ApiError> {
    let mut spec = InstanceSpec::of_revision(
        &function.namespace,
        &function.name,
        &function.uid,
        revision,
        environment.clone(),
        state.code.tree(&revision.code.digest),
    );
    // The mounted values go in as a request will find them: every named set must exist.
    let opened = gust_store::open_mounts(
        state.store.as_ref(),
        &state.sealer,
        &function.namespace,
        &revision.mounts,
    )?;
    spec.mounted = opened.files;
    spec.secret_env = opened.env;
    let id = RequestId::generate();
    // On the blocking pool, like every storage call of the handler around it.
    let Err(err) = tokio::runtime::Handle::current().block_on(state.executor.trial(spec, &id))
    else {
        return Ok(());
    };
    let key = function_key(&function.namespace, &function.name);
    let query = LogQuery {
        request_id: Some(id.to_string()),
        ..LogQuery::default()
    };
    // The worker's last words may still be on their way from its pipe, a line at a time:
    // read until they stop growing (a traceback cut after its first line says nothing).
    let mut printed: Vec<_> = Vec::new();
    for _ in 0..20 {
        let now = state.logs.read(&key, &query);
        let settled = !now.is_empty() && now.len() == printed.len();
        printed = now;
        if settled {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output: Vec<&str> = printed.iter().map(|line| line.text.as_str()).collect();
    // No worker to load it in: why the environment's workers do not start is the cause.
    let error = match (&err, state.runtime.start_failure(environment)) {
        (InvokeError::StartFailed { .. }, Some(cause)) => format!("{err}: {cause}"),
        _ => err.to_string(),
    };
    Err(ApiError::CannotLoad {
        revision: revision.number,
        error,
        output: output.join("\n"),
    })
}

/// The environment a function names: it must exist, and its workers must not be failing to
/// start (a function there could not run).
fn require_environment(state: &ApiState, env: &Name) -> Result<Environment, ApiError> {
    let environment = state.store.environment(env)?.ok_or_else(|| {
        ApiError::Invalid(format!(
            "environment {env:?} does not exist (see `gust env list`)"
        ))
    })?;
    if state.runtime.ready_workers(&environment) == Some(0)
        && let Some(failure) = state.runtime.start_failure(&environment)
    {
        return Err(ApiError::Invalid(format!(
            "environment {env:?} cannot start workers: {failure} (see `gust env get {env}`)"
        )));
    }
    Ok(environment)
}

#[utoipa::path(get, path = "/functions", tag = "functions", params(NamespaceQuery), responses((status = 200, body = [FunctionView])))]
pub async fn list(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<FunctionView>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| {
            let functions = s.store.functions(Some(&namespace))?;
            Ok(functions.iter().map(|f| function_view(f, s)).collect())
        })
        .await
        .map(Json)
}

pub(crate) fn load(
    state: &ApiState,
    namespace: &Namespace,
    name: &Name,
) -> Result<Function, ApiError> {
    state
        .store
        .function(namespace, name)?
        .ok_or(ApiError::NotFound {
            kind: "function",
            name: name.to_string(),
        })
}

#[utoipa::path(get, path = "/functions/{name}", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery), responses((status = 200, body = FunctionView)))]
pub async fn show(State(state): Shared, scoped: Scoped) -> Result<Json<FunctionView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    state
        .blocking(move |s| Ok(function_view(&load(s, &namespace, &name)?, s)))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/functions/{name}/revisions", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery), responses((status = 200, body = [Revision])))]
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

/// The longest span `/stats` covers: what the series keep.
const STATS_SPAN: std::time::Duration =
    std::time::Duration::from_secs(gust_metering::stats::MINUTES_KEPT * 60);

#[utoipa::path(get, path = "/functions/{name}/stats", tag = "functions", params(("name" = String, Path, description = "the function's name"), StatsQuery), responses((status = 200, body = FunctionStats)))]
pub async fn stats(
    State(state): Shared,
    scoped: Scoped,
    Query(query): Query<StatsQuery>,
) -> Result<Json<FunctionStats>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    let since = match &query.since {
        Some(since) => gust_model::parse_duration("since", since)?,
        None => std::time::Duration::from_secs(3600),
    };
    if since > STATS_SPAN {
        return Err(ApiError::Invalid(format!(
            "since: at most 24h is kept per minute, not {}",
            query.since.as_deref().unwrap_or_default()
        )));
    }
    // A function that does not exist is a 404, not an empty series.
    let function = name.clone();
    let checked = namespace.clone();
    state
        .blocking(move |s| load(s, &checked, &function).map(|_| ()))
        .await?;
    Ok(Json(state.meter.stats().query(&namespace, &name, since)))
}

/// Code exports at once: each holds a blocking thread while its client reads.
static CODE_EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

#[utoipa::path(get, path = "/functions/{name}/code", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery), responses((status = 200, description = "the current revision's code as uploaded (before any dependency build), a tar archive", content_type = "application/x-tar")))]
pub async fn code(
    State(state): Shared,
    scoped: Scoped,
) -> Result<axum::response::Response, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    let permit = CODE_EXPORTS.try_acquire().map_err(|_| {
        ApiError::Unavailable("other code exports are under way; try again shortly".into())
    })?;
    let digest = state
        .blocking(move |s| {
            let function = load(s, &namespace, &name)?;
            let current = function.current_revision();
            let source = current.build.as_ref().map_or(&current.code, |b| &b.source);
            if let Some(shared) = &s.shared_code {
                shared.fetch(&source.digest)?;
            }
            Ok(source.digest.clone())
        })
        .await?;
    // Streamed as it is written, a piece at a time: the tree can be as large as code may be.
    let (pieces, received) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let code = state.code.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // Held while it is read: collection cannot take it meanwhile.
        let _pin = code.pin(&digest);
        let mut out = PieceWriter {
            pieces,
            piece: Vec::with_capacity(PieceWriter::SIZE),
        };
        let written = code
            .export_tar(&digest, &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| std::io::Write::flush(&mut out));
        if let Err(err) = written {
            let _ = out.pieces.blocking_send(Err(err));
        }
    });
    let stream = futures_util::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|piece| (piece, received))
    });
    Ok(axum::response::IntoResponse::into_response((
        [(http::header::CONTENT_TYPE, "application/x-tar")],
        axum::body::Body::from_stream(stream),
    )))
}

/// Sends what is written in pieces of [`PieceWriter::SIZE`]; fails once the reader is gone.
struct PieceWriter {
    pieces: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    piece: Vec<u8>,
}

impl PieceWriter {
    const SIZE: usize = 64 * 1024;

    fn send(&mut self) -> std::io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(
            &mut self.piece,
            Vec::with_capacity(Self::SIZE),
        ));
        self.pieces
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl std::io::Write for PieceWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = Self::SIZE - self.piece.len();
        let taken = bytes.len().min(room);
        self.piece.extend_from_slice(&bytes[..taken]);
        if self.piece.len() == Self::SIZE {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Refuses new code that would take the namespace's kept revisions past its code quota.
fn check_code_quota(state: &ApiState, namespace: &Namespace, adding: u64) -> Result<(), ApiError> {
    let quota = state
        .store
        .namespace_record(namespace)?
        .and_then(|record| record.quotas.max_code_mb);
    let Some(quota_mb) = quota else {
        return Ok(());
    };
    let held: u64 = state
        .store
        .functions(Some(namespace))?
        .iter()
        .flat_map(|f| f.revisions.iter())
        .map(|r| r.code.size_bytes)
        .sum();
    if held.saturating_add(adding) > quota_mb.saturating_mul(1024 * 1024) {
        return Err(ApiError::Quota(format!(
            "namespace {namespace} would hold {} KB of code, past its quota of {quota_mb} MB",
            (held + adding).div_ceil(1024)
        )));
    }
    Ok(())
}

/// Refuses a new function to a namespace that holds its quota of them already.
fn check_function_quota(state: &ApiState, namespace: &Namespace) -> Result<(), ApiError> {
    let quota = state
        .store
        .namespace_record(namespace)?
        .and_then(|record| record.quotas.max_functions);
    if let Some(quota) = quota {
        let held = state.store.functions(Some(namespace))?.len();
        if held >= quota as usize {
            return Err(ApiError::Quota(format!(
                "namespace {namespace} holds {held} functions, its quota"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/functions", tag = "functions", params(NamespaceQuery), request_body = FunctionSpec, responses((status = 201, body = FunctionView)))]
pub async fn create(
    State(state): Shared,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<FunctionView>), ApiError> {
    let namespace = query.namespace()?;
    let body: FunctionSpec = parse_json(&body)?;
    let name = Name::parse("function", body.name.as_deref().unwrap_or_default())?;
    let fields = body.settings.apply(None)?;
    let environment = fields
        .environment
        .clone()
        .ok_or_else(|| ApiError::Invalid("env is required".into()))?;
    let code = body
        .code
        .ok_or_else(|| ApiError::Invalid("code is required".into()))?;
    state
        .blocking_shared(move |s| {
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
            check_function_quota(s, &namespace)?;
            let code = ingest(s, &code, &env, &fields.limits)?;
            check_code_quota(s, &namespace, code.size_bytes)?;
            let plan = s.builds.plan(&namespace, &env, &code)?;
            let function = Function {
                namespace,
                name,
                uid: uuid::Uuid::now_v7().hyphenated().to_string(),
                current: 1,
                revisions: vec![Revision {
                    number: 1,
                    environment,
                    code: code.clone(),
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
                    app: fields.app,
                    mounts: fields.mounts,
                    build: plan.as_ref().map(|plan| s.builds.building(plan, &code)),
                }],
            };
            let revision = &function.revisions[0];
            if revision.is_ready()
                && let Err(err) = check_loads(s, &function, revision, &env)
            {
                // Nothing is stored: what loading printed goes with the refusal.
                s.logs
                    .remove(&function_key(&function.namespace, &function.name));
                return Err(err);
            }
            let stored = {
                // Checked again with the store as it is now, and stored before another
                // create can check: two at once cannot both take the last place.
                let _quota_guard = s.bounded_writes.lock().expect("never poisoned");
                check_function_quota(s, &function.namespace)
                    .and_then(|()| {
                        check_code_quota(
                            s,
                            &function.namespace,
                            function.revisions[0].code.size_bytes,
                        )
                    })
                    .and_then(|()| s.store.create_function(&function).map_err(ApiError::from))
            };
            if let Err(err) = stored {
                s.executor
                    .discard_trial(&function.namespace, &function.name);
                return Err(err);
            }
            s.executor
                .function_deployed(&function.namespace, &function.name);
            let pending = plan.map(|plan| Pending {
                namespace: function.namespace.clone(),
                name: function.name.clone(),
                revision: 1,
                build_id: function.revisions[0]
                    .build
                    .as_ref()
                    .map(|b| b.id.clone())
                    .unwrap_or_default(),
                plan,
                source: code,
            });
            // Started here, not after the answer: a caller gone by then must not leave the
            // revision building for ever.
            if let Some(pending) = pending {
                Builds::start(s, pending);
            }
            Ok(function_view(&function, s))
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

#[utoipa::path(put, path = "/functions/{name}", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery, UpdateQuery), request_body = FunctionSpec, responses((status = 200, body = FunctionView)))]
pub async fn update(
    State(state): Shared,
    scoped: Scoped,
    Query(update): Query<UpdateQuery>,
    body: Bytes,
) -> Result<Json<FunctionView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    let body: FunctionSpec = parse_json(&body)?;
    if body.name.as_ref().is_some_and(|n| n != name.as_str()) {
        return Err(ApiError::Invalid("a function cannot be renamed".into()));
    }
    let config = body.settings.clone();
    state
        .blocking_shared(move |s| {
            // Garbage collection waits until the new code's revision is stored.
            let _code = s.code.hold();
            let current = load(s, &namespace, &name)?;
            let base = (!update.replace).then(|| current.current_revision());
            let fields = config.apply(base)?;
            if update.replace && config.env.is_none() {
                return Err(ApiError::Invalid(
                    "env is required when the body replaces the whole configuration".into(),
                ));
            }
            let environment = fields
                .environment
                .clone()
                .expect("an update starts from a revision with an environment");
            let env = require_environment(s, &environment)?;
            check_tier_settings(&env, &fields)?;
            let (code, plan, build) = match &body.code {
                Some(code) => {
                    let code = ingest(s, code, &env, &fields.limits)?;
                    check_code_quota(s, &namespace, code.size_bytes)?;
                    let plan = s.builds.plan(&namespace, &env, &code)?;
                    let build = plan.as_ref().map(|plan| s.builds.building(plan, &code));
                    (code, plan, build)
                }
                None => {
                    let previous = current.current_revision();
                    // (Newer code still building is refused where the revision is stored.)
                    if previous.is_building() {
                        return Err(still_building_error(&name, previous.number));
                    }
                    if !previous.is_ready() {
                        return Err(ApiError::Conflict(format!(
                            "revision {} of {name:?} failed to build; upload code to make a new one",
                            previous.number
                        )));
                    }
                    if previous.build.is_some() && previous.environment != environment {
                        return Err(ApiError::Invalid(format!(
                            "revision {} was built for environment {}: give its code again (--code) to build it for {environment}",
                            previous.number, previous.environment
                        )));
                    }
                    if previous.environment != environment || previous.limits != fields.limits {
                        revalidate(s, &previous.code, &env, &fields.limits)?;
                    }
                    (previous.code.clone(), None, previous.build.clone())
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
                app: fields.app,
                mounts: fields.mounts,
                build,
            };
            // Checked under the number it will most likely get; a concurrent update that takes
            // that number first makes a different instance spec, which the trial's instance
            // then does not serve.
            let checked = revision.is_ready();
            if checked {
                let mut candidate = revision.clone();
                candidate.number = current.next_number();
                check_loads(s, &current, &candidate, &env)?;
            }
            let mut number = 0;
            let mut still_building = None;
            // New code is checked again against its quota and stored before another write
            // can check (see `create`).
            let quota_guard = s.bounded_writes.lock().expect("never poisoned");
            let rechecked = match &body.code {
                Some(_) => check_code_quota(s, &namespace, revision.code.size_bytes),
                None => Ok(()),
            };
            let stored = rechecked.and_then(|()| {
                s.store
                .update_function(&namespace, &name, &mut |mut function| {
                    // Checked again here, on the stored function: code uploaded since the
                    // check above may be building now.
                    if body.code.is_none()
                        && let Some(building) = function.revisions.iter().find(|r| r.is_building())
                    {
                        still_building = Some(building.number);
                        return Ok(function);
                    }
                    number = function.push_revision(revision.clone());
                    Ok(function)
                })
                .map_err(ApiError::from)
            })
            .and_then(|updated| match still_building {
                Some(building) => Err(still_building_error(&name, building)),
                None => Ok(updated),
            });
            drop(quota_guard);
            // Not stored: the instance that loaded it has nothing to serve.
            if stored.is_err() && checked {
                s.executor.discard_trial(&namespace, &name);
            }
            let updated = stored?;
            // A revision still building does not serve yet: the instances of the one that
            // does stay warm.
            if updated.current == number {
                s.executor.function_deployed(&namespace, &name);
            }
            // An update can prune the oldest revision and with it the last use of its code.
            s.code_released.notify_one();
            let pending = plan.map(|plan| Pending {
                namespace: namespace.clone(),
                name: name.clone(),
                revision: number,
                build_id: revision
                    .build
                    .as_ref()
                    .map(|b| b.id.clone())
                    .unwrap_or_default(),
                plan,
                source: revision.code.clone(),
            });
            if let Some(pending) = pending {
                Builds::start(s, pending);
            }
            Ok(function_view(&updated, s))
        })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/functions/{name}/rollback", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery), request_body(content = RollbackRequest, description = "`to`: the revision to copy; an empty body or `{}` copies the one before the current one"), responses((status = 200, body = FunctionView)))]
pub async fn rollback(
    State(state): Shared,
    scoped: Scoped,
    body: Bytes,
) -> Result<Json<FunctionView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    let body: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
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
                            .filter(|r| r.is_ready())
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
                    if !source.is_ready() {
                        return Err(StoreError::InvalidCode {
                            reason: format!(
                                "revision {target} of {name:?} has no built package (its build is {})",
                                source.build.as_ref().map_or("missing", |b| b.state.as_str())
                            ),
                        });
                    }
                    // How many revisions to keep is the function's setting now, not the
                    // old revision's.
                    let keep_revisions = function.current_revision().keep_revisions;
                    let app = function.current_revision().app.clone();
                    function.push_revision(Revision {
                        created_at_ms: now_ms(),
                        copied_from: Some(target),
                        keep_revisions,
                        app,
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
            Ok(function_view(&updated, s))
        })
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/functions/{name}", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery), responses((status = 204, description = "deleted")))]
pub async fn delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    state
        .blocking(move |s| {
            s.store.delete_function(&namespace, &name)?;
            crate::builds::forget(s, &namespace, &name);
            s.executor.function_deleted(&namespace, &name);
            s.code_released.notify_one();
            s.logs
                .remove(&gust_executor::function_key(&namespace, &name));
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
