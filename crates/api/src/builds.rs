//! Dependency builds of revisions: started when a function's new code declares dependencies,
//! one at a time per function (a newer upload supersedes a build still running), resumed
//! after a restart. A revision goes live only when its build succeeded; until then the
//! function's current revision keeps serving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use gust_api_types::{BuildLogChunk, BuildQuery, BuildView, NamespaceQuery};
use gust_builder::{BuildLog, BuildPlan, Builder};
use gust_model::{
    Build, BuildState, CodeRef, Environment, Function, Name, Namespace, Revision, RevisionNumber,
};
use tokio_util::sync::CancellationToken;

use crate::functions::now_ms;
use crate::{ApiError, ApiState, Scoped};

type Shared = State<Arc<ApiState>>;

/// The most of a build's log one answer carries.
const LOG_CHUNK_BYTES: u64 = 256 * 1024;

pub struct Builds {
    builder: Arc<Builder>,
    /// `<data>/build-logs/<namespace>/<function>/<revision>.log`
    log_dir: PathBuf,
    log_bytes: u64,
    running: Mutex<HashMap<(Namespace, Name), Running>>,
    /// Build ids: this process's start time and a count.
    started_ms: u64,
    count: std::sync::atomic::AtomicU64,
}

struct Running {
    revision: RevisionNumber,
    build_id: String,
    log: Arc<BuildLog>,
    cancel: CancellationToken,
}

/// A build to start once its revision is stored.
pub(crate) struct Pending {
    pub namespace: Namespace,
    pub name: Name,
    pub revision: RevisionNumber,
    /// The id of the revision's build record.
    pub build_id: String,
    pub plan: BuildPlan,
    pub source: CodeRef,
}

impl Builds {
    pub fn new(builder: Arc<Builder>, log_dir: PathBuf, log_bytes: u64) -> Self {
        Self {
            builder,
            log_dir,
            log_bytes,
            running: Mutex::new(HashMap::new()),
            started_ms: now_ms(),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// What `source` needs built in `environment`: `None` when it declares no dependencies.
    pub(crate) fn plan(
        &self,
        namespace: &Namespace,
        environment: &Environment,
        source: &CodeRef,
    ) -> Result<Option<BuildPlan>, ApiError> {
        Ok(self.builder.plan(namespace, environment, source)?)
    }

    /// The build record a new revision starts with.
    pub(crate) fn building(&self, plan: &BuildPlan, source: &CodeRef) -> Build {
        let count = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Build {
            id: format!("{}-{count}", self.started_ms),
            state: BuildState::Building,
            source: source.clone(),
            cache_key: plan.cache_key.clone(),
            dependencies: None,
            cached: false,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            error: None,
        }
    }

    fn log_path(&self, namespace: &Namespace, name: &Name, revision: RevisionNumber) -> PathBuf {
        self.log_dir
            .join(namespace.as_str())
            .join(name.as_str())
            .join(format!("{revision}.log"))
    }

    /// Starts a stored revision's build in the background, cancelling the function's build
    /// still running (its revision is marked failed, superseded).
    pub(crate) fn start(state: &Arc<ApiState>, pending: Pending) {
        let builds = &state.builds;
        let log = match BuildLog::create(
            &builds.log_path(&pending.namespace, &pending.name, pending.revision),
            builds.log_bytes,
        ) {
            Ok(log) => Arc::new(log),
            Err(err) => {
                tracing::error!(error = %err, "cannot create a build log");
                let state = state.clone();
                tokio::task::spawn_blocking(move || {
                    finish(
                        &state,
                        &pending,
                        None,
                        Err(format!("cannot create the build log: {err}")),
                    )
                });
                return;
            }
        };
        let cancel = CancellationToken::new();
        let key = (pending.namespace.clone(), pending.name.clone());
        if let Some(older) = builds
            .running
            .lock()
            .expect("builds lock is never poisoned")
            .insert(
                key,
                Running {
                    revision: pending.revision,
                    build_id: pending.build_id.clone(),
                    log: log.clone(),
                    cancel: cancel.clone(),
                },
            )
        {
            older.cancel.cancel();
        }
        let state = state.clone();
        tokio::spawn(async move {
            log.line(&format!(
                "building revision {} of {}/{}",
                pending.revision, pending.namespace, pending.name
            ));
            // A scan of the stored functions: off the runtime's own threads.
            let cached = || {
                tokio::task::block_in_place(|| find_cached(&state, &pending.plan.cache_key))
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot look up the build cache"))
                    .ok()
                    .flatten()
            };
            let built = state
                .builds
                .builder
                .build(&pending.plan, &pending.source, &log, cached, &cancel)
                .await;
            let outcome = match built {
                Ok(dependencies) => Ok(dependencies),
                Err(failure) => {
                    let reason = failure.to_string();
                    log.line(&format!(
                        "build failed: {}",
                        reason.lines().next().unwrap_or_default()
                    ));
                    Err(reason)
                }
            };
            let finished = {
                let (state, log) = (state.clone(), log.clone());
                tokio::task::spawn_blocking(move || {
                    finish(&state, &pending, Some(&log), outcome);
                    pending
                })
                .await
            };
            log.finish();
            if let Ok(pending) = finished {
                let mut running = state
                    .builds
                    .running
                    .lock()
                    .expect("builds lock is never poisoned");
                let key = (pending.namespace, pending.name);
                if running
                    .get(&key)
                    .is_some_and(|r| r.build_id == pending.build_id)
                {
                    running.remove(&key);
                }
            }
        });
    }

    /// Starts again the builds a stop interrupted: the newest building revision of each
    /// function; older ones are marked failed. With `only_local_sources` (a cluster's node),
    /// a build whose sources are not in this node's code store is left alone: another node
    /// is running it.
    pub fn resume(state: &Arc<ApiState>, only_local_sources: bool) -> Result<(), ApiError> {
        for function in state.store.functions(None)? {
            let building: Vec<&Revision> = function
                .revisions
                .iter()
                .filter(|r| r.is_building())
                .collect();
            let Some(newest) = building.iter().map(|r| r.number).max() else {
                continue;
            };
            let revision = function
                .revision(newest)
                .expect("the newest building revision is among the revisions");
            let build = revision
                .build
                .clone()
                .expect("a building revision has a build");
            if only_local_sources && !state.code.tree(&build.source.digest).exists() {
                continue;
            }
            let environment = state.store.environment(&revision.environment)?;
            let plan = match environment
                .map(|env| state.builds.plan(&function.namespace, &env, &build.source))
                .transpose()
            {
                Ok(Some(Some(plan))) => plan,
                _ => {
                    // The environment is gone, or in it the sources no longer ask for a build.
                    let stale = Pending {
                        namespace: function.namespace.clone(),
                        name: function.name.clone(),
                        revision: newest,
                        build_id: build.id.clone(),
                        plan: BuildPlan {
                            kind: gust_builder::BuildKind::Command {
                                argv: Vec::new(),
                                mounts: Vec::new(),
                            },
                            cache_key: build.cache_key.clone(),
                        },
                        source: build.source.clone(),
                    };
                    finish(
                        state,
                        &stale,
                        None,
                        Err(format!(
                            "the build could not start again after a restart: environment {} no longer builds this code",
                            revision.environment
                        )),
                    );
                    continue;
                }
            };
            tracing::info!(function = %function.name, revision = newest, "resuming a build a stop interrupted");
            let pending = Pending {
                namespace: function.namespace.clone(),
                name: function.name.clone(),
                revision: newest,
                build_id: build.id,
                plan,
                source: build.source,
            };
            for older in building.iter().filter(|r| r.number != newest) {
                let stale = Pending {
                    revision: older.number,
                    build_id: older
                        .build
                        .as_ref()
                        .map(|b| b.id.clone())
                        .unwrap_or_default(),
                    ..pending.clone_ids()
                };
                finish(
                    state,
                    &stale,
                    None,
                    Err("superseded by a newer revision".to_owned()),
                );
            }
            Builds::start(state, pending);
        }
        Ok(())
    }

    /// Deletes the build logs of revisions the function no longer has (pruned).
    fn prune_logs(&self, function: &Function) {
        let dir = self
            .log_dir
            .join(function.namespace.as_str())
            .join(function.name.as_str());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<RevisionNumber>().ok());
            if number.is_some_and(|n| function.revision(n).is_none()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The latest output line of a build still running.
    fn last_line(
        &self,
        namespace: &Namespace,
        name: &Name,
        revision: RevisionNumber,
    ) -> Option<String> {
        let running = self.running.lock().expect("builds lock is never poisoned");
        running
            .get(&(namespace.clone(), name.clone()))
            .filter(|r| r.revision == revision)
            .map(|r| r.log.last_line())
    }
}

impl Pending {
    fn clone_ids(&self) -> Pending {
        Pending {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            revision: self.revision,
            build_id: self.build_id.clone(),
            plan: self.plan.clone(),
            source: self.source.clone(),
        }
    }
}

/// A dependency tree some ready revision made or used for `cache_key`, still stored.
fn find_cached(state: &ApiState, cache_key: &str) -> Result<Option<String>, ApiError> {
    for function in state.store.functions(None)? {
        for revision in &function.revisions {
            let Some(build) = &revision.build else {
                continue;
            };
            if build.state == BuildState::Ready
                && build.cache_key == cache_key
                && let Some(dependencies) = &build.dependencies
                && state.code.tree(dependencies).is_dir()
            {
                return Ok(Some(dependencies.clone()));
            }
        }
    }
    Ok(None)
}

/// Records how a build ended: a built revision gets its package (sources with the
/// dependencies laid over them) and, when newer than the current one, goes live.
fn finish(
    state: &ApiState,
    pending: &Pending,
    log: Option<&BuildLog>,
    outcome: Result<gust_builder::BuiltDependencies, String>,
) {
    let _code = state.code.hold();
    let finished_at_ms = now_ms();
    let (package, build_result) = match outcome {
        Ok(dependencies) => match if dependencies.is_package {
            state.code.tree_ref(dependencies.tree.digest())
        } else {
            state
                .code
                .assemble(&pending.source, dependencies.tree.digest())
        } {
            Ok(package) => (Some(package), Ok(dependencies)),
            Err(err) => (None, Err(format!("cannot assemble the package: {err}"))),
        },
        Err(reason) => (None, Err(reason)),
    };
    // Built code is loaded before it goes live, as uploaded code is at deploy: code that does
    // not load fails its build, and the revision serving keeps serving.
    let mut checked = false;
    let build_result = match (build_result, &package) {
        (Ok(dependencies), Some(package)) => {
            checked = true;
            match load_built(state, pending, package) {
                Ok(()) => Ok(dependencies),
                Err(reason) => {
                    if let Some(log) = log {
                        log.line(&reason);
                    }
                    Err(reason)
                }
            }
        }
        (result, _) => result,
    };
    let mut went_live = false;
    let updated = state.store.update_function(
        &pending.namespace,
        &pending.name,
        &mut |mut function: Function| {
            // The revision this build was started for, not another of the same number (the
            // function deleted and created again meanwhile).
            let Some(mut build) = function
                .revision(pending.revision)
                .and_then(|r| r.build.clone())
                .filter(|b| b.id == pending.build_id)
            else {
                return Ok(function);
            };
            build.finished_at_ms = Some(finished_at_ms);
            // The key the build ran under (a build resumed after a restart planned again).
            build.cache_key = pending.plan.cache_key.clone();
            match &build_result {
                Ok(dependencies) => {
                    build.state = BuildState::Ready;
                    build.dependencies = Some(dependencies.tree.digest().to_owned());
                    build.cached = dependencies.cached;
                }
                Err(reason) => {
                    build.state = BuildState::BuildFailed;
                    build.error = Some(reason.clone());
                }
            }
            if let Some(package) = &package
                && let Some(revision) = function
                    .revisions
                    .iter_mut()
                    .find(|r| r.number == pending.revision)
            {
                revision.code = package.clone();
            }
            let serving =
                |f: &Function| f.current == pending.revision && f.current_revision().is_ready();
            let before = serving(&function);
            function.finish_build(pending.revision, build);
            went_live = !before && serving(&function);
            Ok(function)
        },
    );
    // Loaded for a revision that is not going live (a newer one serves, or it was deleted).
    if checked && !went_live {
        state
            .executor
            .discard_trial(&pending.namespace, &pending.name);
    }
    match updated {
        Ok(function) => {
            state.builds.prune_logs(&function);
            if went_live {
                state
                    .executor
                    .function_deployed(&pending.namespace, &pending.name);
            }
            state.code_released.notify_one();
            if let Some(log) = log {
                match (&build_result, went_live) {
                    (Ok(_), true) => log.line(&format!("revision {} is live", pending.revision)),
                    (Ok(_), false) => log.line(&format!(
                        "revision {} is built (a newer revision serves)",
                        pending.revision
                    )),
                    (Err(_), _) => {}
                }
            }
        }
        // Deleted meanwhile: nothing to record.
        Err(gust_store::StoreError::NotFound { .. }) => {}
        Err(err) => {
            tracing::error!(error = %err, function = %pending.name, "cannot record a build's end")
        }
    }
}

/// Loads a built revision (its package as `package`) in an instance, as
/// [`crate::functions::check_loads`] does at deploy; the reason it did not load, if so.
fn load_built(state: &ApiState, pending: &Pending, package: &CodeRef) -> Result<(), String> {
    let stored = state
        .store
        .function(&pending.namespace, &pending.name)
        .map_err(|e| e.to_string())?;
    let Some(function) = stored else {
        return Ok(()); // deleted meanwhile: nothing will serve it
    };
    let Some(mut revision) = function.revision(pending.revision).cloned() else {
        return Ok(());
    };
    revision.code = package.clone();
    let environment = state
        .store
        .environment(&revision.environment)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("environment {} is gone", revision.environment))?;
    crate::functions::check_loads(state, &function, &revision, &environment)
        .map_err(|err| format!("the built code did not load: {err}"))
}

/// What `fn get` shows of one revision's build.
pub(crate) fn build_view(
    state: &ApiState,
    function: &Function,
    revision: &Revision,
) -> Option<BuildView> {
    let build = revision.build.as_ref()?;
    let running = build.state == BuildState::Building;
    let end = build.finished_at_ms.unwrap_or_else(now_ms);
    Some(BuildView {
        revision: revision.number,
        state: build.state,
        current: function.current == revision.number,
        started_at_ms: build.started_at_ms,
        finished_at_ms: build.finished_at_ms,
        duration_ms: end.saturating_sub(build.started_at_ms),
        cached: build.cached,
        package_bytes: (build.state == BuildState::Ready).then_some(revision.code.size_bytes),
        last_line: running
            .then(|| {
                state
                    .builds
                    .last_line(&function.namespace, &function.name, revision.number)
            })
            .flatten(),
        error: build.error.clone(),
    })
}

/// The function and the revision a build query names.
fn queried_build(
    state: &ApiState,
    namespace: &Namespace,
    name: &Name,
    query: &BuildQuery,
) -> Result<(Function, RevisionNumber), ApiError> {
    let function = crate::functions::load(state, namespace, name)?;
    let number = queried_revision(&function, query)?;
    Ok((function, number))
}

/// The revision a build query names: the given one, or the newest with a build.
fn queried_revision(function: &Function, query: &BuildQuery) -> Result<RevisionNumber, ApiError> {
    let with_build = |r: &&Revision| r.build.is_some();
    match query.revision {
        Some(number) => function
            .revision(number)
            .filter(with_build)
            .map(|r| r.number)
            .ok_or_else(|| ApiError::NotFound {
                kind: "build of revision",
                name: number.to_string(),
            }),
        None => function
            .revisions
            .iter()
            .filter(with_build)
            .map(|r| r.number)
            .max()
            .ok_or_else(|| ApiError::NotFound {
                kind: "build of function",
                name: function.name.to_string(),
            }),
    }
}

#[utoipa::path(get, path = "/functions/{name}/build", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery, BuildQuery), responses((status = 200, body = BuildView)))]
pub async fn show(
    State(state): Shared,
    scoped: Scoped,
    Query(query): Query<BuildQuery>,
) -> Result<Json<BuildView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    state
        .blocking(move |s| {
            let (function, number) = queried_build(s, &namespace, &name, &query)?;
            let revision = function
                .revision(number)
                .expect("the queried revision exists");
            Ok(build_view(s, &function, revision).expect("the queried revision has a build"))
        })
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/functions/{name}/build/log", tag = "functions", params(("name" = String, Path, description = "the function's name"), NamespaceQuery, BuildQuery), responses((status = 200, body = BuildLogChunk)))]
pub async fn log(
    State(state): Shared,
    scoped: Scoped,
    Query(query): Query<BuildQuery>,
) -> Result<Json<BuildLogChunk>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name("function")?;
    state
        .blocking(move |s| {
            let (function, number) = queried_build(s, &namespace, &name, &query)?;
            let finished = !function.revision(number).is_some_and(|r| r.is_building());
            let path = s.builds.log_path(&namespace, &name, number);
            let offset = query.offset.unwrap_or(0);
            let mut text = Vec::new();
            if let Ok(file) = std::fs::File::open(&path) {
                use std::io::{Read, Seek};
                let mut file = file;
                file.seek(std::io::SeekFrom::Start(offset))
                    .map_err(|e| ApiError::Internal(format!("cannot read the build log: {e}")))?;
                file.take(LOG_CHUNK_BYTES)
                    .read_to_end(&mut text)
                    .map_err(|e| ApiError::Internal(format!("cannot read the build log: {e}")))?;
            }
            // Only whole lines, unless a line alone is larger than a chunk.
            if let Some(end) = text.iter().rposition(|b| *b == b'\n') {
                text.truncate(end + 1);
            }
            let next_offset = offset + text.len() as u64;
            Ok(BuildLogChunk {
                revision: number,
                text: String::from_utf8_lossy(&text).into_owned(),
                next_offset,
                // Finished once the revision left `building` and every byte was read.
                finished: finished
                    && std::fs::metadata(&path).map_or(true, |m| m.len() <= next_offset),
            })
        })
        .await
        .map(Json)
}

/// Deletes the build logs of a deleted function.
pub(crate) fn forget(state: &ApiState, namespace: &Namespace, name: &Name) {
    let dir = state
        .builds
        .log_dir
        .join(namespace.as_str())
        .join(name.as_str());
    let _ = std::fs::remove_dir_all(dir);
    if let Some(running) = state
        .builds
        .running
        .lock()
        .expect("builds lock is never poisoned")
        .remove(&(namespace.clone(), name.clone()))
    {
        running.cancel.cancel();
    }
}
