//! The process tier: functions run in worker processes of any language that speak Gust's
//! worker protocol (HTTP/1.1 on a Unix socket: `/healthz`, `/v2/specialize`, then
//! invocations), each confined by a bubblewrap sandbox.
//!
//! Key types: [`ProcessRuntime`] (the [`Runtime`] the executor uses), [`Sandbox`] (how a
//! worker is confined), `WarmPool` (generic workers started ahead of need, per environment) and
//! `Worker` (one process and its connection).
//!
//! Each worker also gets cgroups of its own (`Cgroups`): memory, pids and CPU limits enforced
//! by the kernel, CPU time measured, out-of-memory kills recognised.
//!
//! Not here: deciding when to start or stop instances (the executor does).

mod address;
mod cgroup;
mod connection;
mod egress;
mod error;
mod network;
mod pool;
mod sandbox;
mod seccomp;
mod spawner;
mod worker;

pub use cgroup::{Cgroups, WORKER_PIDS_MAX, WorkerCgroup};
pub use error::RuntimeError;
pub use network::Uplinks;
pub use sandbox::{
    BUILD_FILE_MAX_BYTES, BUILD_OUTPUT_DIR, BUILD_SOURCE_DIR, BuildBinds, BuildUplink, Sandbox,
};
pub use worker::FUNCTION_ERROR_HEADER;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use gust_executor::{
    FunctionLogs, Instance, InstanceSpec, InvokeError, PreparedRevision, RequestId, Runtime,
};
use gust_model::{
    BuiltinRuntime, DEFAULT_MEMORY_MB, Environment, EnvironmentKind, Name, Tier, WorkerProtocol,
};
use tokio_util::sync::CancellationToken;

use crate::pool::WarmPool;
use crate::spawner::Spawner;
use crate::worker::{Lane, SharedWorker, WorkerCommand};

const PYTHON_SERVER: &str = include_str!("../../../environments/python/server.py");
const NODE_SERVER: &str = include_str!("../../../environments/node/server.js");

/// Interpreters of the built-in environments. They must run inside the sandbox: a real
/// binary under `/usr`, not a version-manager shim.
#[derive(Debug, Clone)]
pub struct Interpreters {
    pub python: PathBuf,
    pub node: PathBuf,
}

impl Default for Interpreters {
    fn default() -> Self {
        Self {
            python: PathBuf::from("/usr/bin/python3"),
            node: PathBuf::from("/usr/bin/node"),
        }
    }
}

pub struct ProcessRuntime {
    workers: Arc<Workers>,
}

/// The tier's workers: its pools, how to start a worker, where they live. Shared with the
/// revisions prepared from it.
struct Workers {
    /// Gust's own directory for workers and environment servers; removed at a clean stop.
    run_dir: PathBuf,
    spawner: Arc<Spawner>,
    interpreters: Interpreters,
    env_root: PathBuf,
    pools: Mutex<HashMap<Name, Arc<WarmPool>>>,
    /// Why the last worker started for a request (not the pool) failed, per environment, until
    /// one starts.
    start_failures: Mutex<HashMap<Name, String>>,
    stop: CancellationToken,
    /// Where no environment's mount may point (see [`ProcessRuntime::with_protected`]).
    protected: Vec<PathBuf>,
}

impl ProcessRuntime {
    /// Prepares `run_dir` (removing what a previous, killed run left there) and writes the
    /// built-in environment servers into it. When Gust runs as root, workers start as an
    /// unprivileged uid that must be able to traverse every directory above `run_dir`.
    pub fn new(
        run_dir: &Path,
        sandbox: Sandbox,
        cgroups: Option<Cgroups>,
        interpreters: Interpreters,
        logs: Arc<FunctionLogs>,
    ) -> Result<Self, RuntimeError> {
        let workers_dir = run_dir.join("workers");
        if workers_dir.exists() {
            stop_leftover_workers(&workers_dir);
            std::fs::remove_dir_all(&workers_dir).map_err(RuntimeError::io(&workers_dir))?;
        }
        for dir in [run_dir, &workers_dir] {
            std::fs::create_dir_all(dir).map_err(RuntimeError::io(dir))?;
            // Traversable, not listable: bubblewrap, running as the workers' uid, must reach
            // each worker's own directory by path.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(RuntimeError::io(dir))?;
        }
        let env_root = run_dir.join("env");
        for (runtime, file, source) in [
            (BuiltinRuntime::Python, "server.py", PYTHON_SERVER),
            (BuiltinRuntime::Node, "server.js", NODE_SERVER),
        ] {
            let dir = env_root.join(runtime.name());
            std::fs::create_dir_all(&dir).map_err(RuntimeError::io(&dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(RuntimeError::io(&dir))?;
            let path = dir.join(file);
            std::fs::write(&path, source).map_err(RuntimeError::io(&path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .map_err(RuntimeError::io(&path))?;
        }
        let values_root = match &sandbox {
            Sandbox::Bubblewrap { .. } => Some(
                gust_executor::private_memory_dir(run_dir, "values")
                    .map_err(RuntimeError::io(run_dir))?,
            ),
            Sandbox::Disabled => None,
        };
        Ok(Self {
            workers: Arc::new(Workers {
                run_dir: run_dir.to_owned(),
                spawner: Arc::new(Spawner::new(
                    sandbox,
                    cgroups,
                    workers_dir,
                    values_root,
                    logs,
                )),
                interpreters,
                env_root,
                pools: Mutex::new(HashMap::new()),
                start_failures: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
                protected: vec![run_dir.to_owned()],
            }),
        })
    }

    /// Paths no environment may mount, nor any path inside or above them (the data
    /// directory); the workers' own run directory is always among them.
    pub fn with_protected(mut self, paths: Vec<PathBuf>) -> Self {
        Arc::get_mut(&mut self.workers)
            .expect("protected paths are set before the runtime is used")
            .protected
            .extend(paths);
        self
    }
}

impl Workers {
    /// How to start `env`'s workers for functions of `memory_mb`; `None` for an environment
    /// of another tier.
    fn worker_command(&self, env: &Environment, memory_mb: u32) -> Option<WorkerCommand> {
        Some(match &env.kind {
            EnvironmentKind::Builtin { runtime } => {
                let interpreter = match runtime {
                    BuiltinRuntime::Python => &self.interpreters.python,
                    BuiltinRuntime::Node => &self.interpreters.node,
                    BuiltinRuntime::Wasm => return None,
                };
                let mut program = vec![interpreter.to_string_lossy().into_owned()];
                let mut heap_sized_for = None;
                match runtime {
                    BuiltinRuntime::Node => {
                        // V8 fails with a heap error before the kernel kills the worker.
                        program.push(format!("--max-old-space-size={}", node_heap_mb(memory_mb)));
                        // Above what the router lets through plus the headers Gust adds.
                        program.push("--max-http-header-size=65536".to_owned());
                        program.push("{env}/server.js".to_owned());
                        heap_sized_for = Some(memory_mb);
                    }
                    _ => program.push("{env}/server.py".to_owned()),
                }
                WorkerCommand {
                    environment: env.name.to_string(),
                    program,
                    env_dir: Some(self.env_root.join(runtime.name())),
                    extra_ro: Vec::new(),
                    heap_sized_for,
                    port: None,
                    protocol: WorkerProtocol::Gust,
                }
            }
            EnvironmentKind::Custom {
                command,
                mounts,
                port,
                protocol,
                ..
            } => WorkerCommand {
                environment: env.name.to_string(),
                program: command.clone(),
                env_dir: None,
                heap_sized_for: None,
                port: *port,
                protocol: *protocol,
                // Only what the environment names with --mount, checked again now: a path
                // may have become a link into Gust's own directories since it was created.
                extra_ro: mounts
                    .iter()
                    .filter_map(|mount| match self.check_mount(mount) {
                        Ok(resolved) => Some((resolved, mount.clone())),
                        Err(err) => {
                            tracing::warn!(environment = %env.name, error = %err, "mount left out");
                            None
                        }
                    })
                    .collect(),
            },
        })
    }
}

impl Workers {
    /// Resolves a mount's links and checks where it really points.
    fn check_mount(&self, mount: &Path) -> Result<PathBuf, String> {
        let resolved = mount
            .canonicalize()
            .map_err(|e| format!("cannot mount {}: {e}", mount.display()))?;
        gust_model::validate_mount(&resolved.to_string_lossy()).map_err(|e| e.to_string())?;
        if let Some(protected) = self
            .protected
            .iter()
            .find(|p| resolved.starts_with(p) || p.starts_with(&resolved))
        {
            return Err(format!(
                "cannot mount {}: it is or holds Gust's own {}",
                mount.display(),
                protected.display()
            ));
        }
        Ok(resolved)
    }
}

/// Node.js's old-space heap for a function of `memory_mb`: V8's whole heap (old space plus
/// about 50 MB of young generation and code) and the runtime itself must fit below the
/// cgroup limit, so half of it, or all but 128 MB for large functions.
fn node_heap_mb(memory_mb: u32) -> u32 {
    (memory_mb / 2).max(memory_mb.saturating_sub(128)).max(8)
}

/// Kills the workers a previous Gust on this data directory left running (it was killed before
/// it could stop them), and orphaned sandbox processes of any Gust: a sandbox that was being
/// set up when its Gust was killed can miss the parent-death signal and be left to init. A pid
/// is only trusted while it still looks like one of our workers.
fn stop_leftover_workers(workers_dir: &Path) {
    for pid in orphaned_sandboxes() {
        tracing::info!(pid, "stopping an orphaned worker sandbox");
        // SAFETY: kill with a pid just checked to be an orphaned worker sandbox.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let Ok(entries) = std::fs::read_dir(workers_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = std::fs::read_to_string(entry.path().join(worker::PID_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let sandboxed = String::from_utf8_lossy(&cmdline).contains(sandbox::WORKER_HOSTNAME);
        let unconfined =
            std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| cwd.starts_with(workers_dir));
        if sandboxed || unconfined {
            tracing::info!(pid, "stopping a worker left by a previous run");
            // SAFETY: kill with a pid just checked to be one of our workers.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Worker sandboxes (bwrap with Gust's worker hostname) whose parent is init.
fn orphaned_sandboxes() -> Vec<i32> {
    let marker = format!("--hostname\0{}\0", sandbox::WORKER_HOSTNAME);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let dir = PathBuf::from(format!("/proc/{pid}"));
            let orphan = std::fs::read_to_string(dir.join("status")).is_ok_and(|status| {
                status.lines().any(|line| {
                    line.strip_prefix("PPid:")
                        .is_some_and(|ppid| ppid.trim() == "1")
                })
            });
            orphan
                && std::fs::read(dir.join("cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker))
        })
        .collect()
}

/// A revision of a process function, ready to start workers for: the tier's workers and,
/// for functions with `--concurrency` above 1, the revision's running shared workers (a new
/// instance is a new lane of one of them while it has room).
struct PreparedProcess {
    workers: Arc<Workers>,
    spec: InstanceSpec,
    shared: Mutex<Vec<Weak<SharedWorker>>>,
    /// Workers this revision starts at once beyond the pool, at most
    /// [`concurrent_starts`]: a start takes tens of milliseconds of CPU, and a burst that
    /// asks for fifty at once would take the cores from the instances serving it (the warm
    /// instance answers the burst while new ones start a few at a time). Per revision, so that
    /// one function's burst never queues another's start.
    starting: tokio::sync::Semaphore,
}

/// Two starts per core: enough to keep the cores busy while a start waits on the kernel.
fn concurrent_starts() -> usize {
    gust_executor::cores() * 2
}

impl PreparedProcess {
    /// A new lane of a running worker of this revision that has room for one more request.
    async fn join_shared(&self, concurrency: usize) -> Option<Lane> {
        let candidate = {
            let mut shared = self
                .shared
                .lock()
                .expect("shared list lock is never poisoned");
            shared.retain(|w| w.strong_count() > 0);
            shared
                .iter()
                .filter_map(Weak::upgrade)
                .find(|w| w.reserve(concurrency))
        }?;
        candidate.open_lane().await
    }
}

#[async_trait]
impl PreparedRevision for PreparedProcess {
    async fn start(&self, first_request: &RequestId) -> Result<Box<dyn Instance>, InvokeError> {
        let spec = &self.spec;
        let concurrency = spec.scaling.concurrency.unwrap_or(1) as usize;
        if concurrency > 1
            && let Some(lane) = self.join_shared(concurrency).await
        {
            return Ok(Box::new(lane));
        }
        let pool = self
            .workers
            .pools
            .lock()
            .expect("pool map lock is never poisoned")
            .get(&spec.environment.name)
            .cloned();
        let started = std::time::Instant::now();
        // A pooled Node.js worker's heap limit was set for the default memory; a function
        // with another limit gets a worker of its own.
        let pool = pool.filter(|pool| {
            pool.command()
                .heap_sized_for
                .is_none_or(|mb| mb == spec.limits.memory_mb)
        });
        let pooled = pool.as_ref().and_then(|pool| pool.take());
        let from_pool = pooled.is_some();
        let mut worker = match pooled {
            Some(worker) => worker,
            None => {
                let command = match &pool {
                    Some(pool) => Some(pool.command().clone()),
                    None => self
                        .workers
                        .worker_command(&spec.environment, spec.limits.memory_mb),
                };
                let command = command.ok_or_else(|| InvokeError::StartFailed {
                    function: spec.function.to_string(),
                    detail: format!("{} is not a process environment", spec.environment.name),
                })?;
                let started = {
                    let _turn = self
                        .starting
                        .acquire()
                        .await
                        .expect("the start limit is never closed");
                    self.workers.spawner.start_worker(&command).await
                };
                let mut failures = self
                    .workers
                    .start_failures
                    .lock()
                    .expect("failure map lock is never poisoned");
                match &started {
                    Ok(_) => failures.remove(&spec.environment.name),
                    Err(err) => failures.insert(spec.environment.name.clone(), err.to_string()),
                };
                drop(failures);
                // The worker's output stays out of the answer: a caller of a route sees it.
                started.map_err(|err| {
                    tracing::warn!(function = %spec.function, error = %err, "worker start failed");
                    InvokeError::StartFailed {
                        function: spec.function.to_string(),
                        detail: format!(
                            "the {} environment's worker did not start",
                            spec.environment.name
                        ),
                    }
                })?
            }
        };
        let worker_ready = started.elapsed();
        worker.specialize(spec, first_request).await?;
        worker.start_phases.worker = worker_ready;
        tracing::debug!(
            function = %spec.function,
            from_pool,
            worker_ms = worker_ready.as_secs_f64() * 1e3,
            specialize_ms = (started.elapsed() - worker_ready).as_secs_f64() * 1e3,
            "cold start"
        );
        if concurrency > 1 {
            let start_phases = worker.start_phases;
            let shared = SharedWorker::new(worker);
            let reserved = shared.reserve(concurrency);
            debug_assert!(reserved, "a new worker has room");
            self.shared
                .lock()
                .expect("shared list lock is never poisoned")
                .push(Arc::downgrade(&shared));
            let mut lane = shared
                .open_lane()
                .await
                .ok_or_else(|| InvokeError::StartFailed {
                    function: spec.function.to_string(),
                    detail: "the worker stopped answering after it was specialized".to_owned(),
                })?;
            lane.start_phases = Some(start_phases);
            return Ok(Box::new(lane));
        }
        Ok(Box::new(worker))
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn prepare(&self, spec: &InstanceSpec) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
        Ok(Arc::new(PreparedProcess {
            workers: self.workers.clone(),
            spec: spec.clone(),
            shared: Mutex::new(Vec::new()),
            starting: tokio::sync::Semaphore::new(concurrent_starts()),
        }))
    }

    fn start_failure(&self, environment: &Environment) -> Option<String> {
        let pooled = self
            .workers
            .pools
            .lock()
            .expect("pool map lock is never poisoned")
            .get(&environment.name)
            .and_then(|pool| pool.start_failure());
        pooled.or_else(|| {
            self.workers
                .start_failures
                .lock()
                .expect("failure map lock is never poisoned")
                .get(&environment.name)
                .cloned()
        })
    }

    fn ready_workers(&self, environment: &Environment) -> Option<usize> {
        self.workers
            .pools
            .lock()
            .expect("pool map lock is never poisoned")
            .get(&environment.name)
            .map(|pool| pool.ready_count())
    }

    fn validate_environment(&self, environment: &Environment) -> Result<(), String> {
        match &environment.kind {
            EnvironmentKind::Custom { mounts, .. } => mounts
                .iter()
                .try_for_each(|mount| self.workers.check_mount(mount).map(|_| ())),
            EnvironmentKind::Builtin { .. } => Ok(()),
        }
    }

    fn set_environments(&self, environments: &[Environment]) {
        // Other tiers' environments have no workers.
        let commands: Vec<(&Environment, WorkerCommand)> = environments
            .iter()
            .filter(|env| env.tier() == Tier::Process)
            .filter_map(|env| Some((env, self.workers.worker_command(env, DEFAULT_MEMORY_MB)?)))
            .collect();
        let mut pools = self
            .workers
            .pools
            .lock()
            .expect("pool map lock is never poisoned");
        // A deleted environment's failures go with it (a new one of its name starts clean).
        self.workers
            .start_failures
            .lock()
            .expect("failure map lock is never poisoned")
            .retain(|name, _| commands.iter().any(|(env, _)| env.name == *name));
        pools.retain(|name, pool| {
            let keep = commands.iter().any(|(env, command)| {
                env.name == *name && command.program == pool.command().program
            });
            if !keep {
                pool.close();
            }
            keep
        });
        for (env, command) in commands {
            if !pools.contains_key(&env.name) {
                let pool = WarmPool::start(
                    command,
                    env.pool_size as usize,
                    self.workers.spawner.clone(),
                    self.workers.stop.child_token(),
                );
                pools.insert(env.name.clone(), pool);
            }
        }
    }

    async fn shutdown(&self) {
        self.workers.stop.cancel();
        let pools: Vec<_> = self
            .workers
            .pools
            .lock()
            .expect("pool map lock is never poisoned")
            .drain()
            .map(|(_, pool)| pool)
            .collect();
        for pool in pools {
            pool.close();
        }
        if let Some(cgroups) = self.workers.spawner.cgroups.clone() {
            let _ = tokio::task::spawn_blocking(move || cgroups.remove()).await;
        }
        // Every worker is gone with its pool or its instance: nothing of this run stays.
        if let Err(err) = std::fs::remove_dir_all(&self.workers.run_dir) {
            tracing::warn!(dir = %self.workers.run_dir.display(), error = %err, "cannot remove the workers' directory");
        }
    }
}
