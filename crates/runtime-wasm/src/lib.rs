//! The WebAssembly tier: functions are components targeting the standard `wasi:http/proxy`
//! world, so the same file runs under Wasmtime, Spin or wasmCloud.
//!
//! Key types: [`WasmRuntime`] (the [`gust_executor::Runtime`] for the `wasm` environment: one
//! wasmtime `Engine` with the pooling allocator and copy-on-write memory images, a `Linker`
//! filled once), a revision's prepared form (its `ProxyPre`, kept by the executor while the
//! revision serves), and the instances started from it.
//!
//! Components are compiled when a function is deployed (`Runtime::validate_upload`), never on
//! its first request, and the compiled artifact is cached in the data directory by content
//! hash and engine settings, so a restart loads it without compiling. Each request gets a
//! fresh instance in a fresh `Store`: nothing leaks from one request to the next, unless the
//! function opts into `--reuse N` (one instantiation serves up to N requests in turn).
//!
//! Limits: the function's timeout through epoch interruption, its memory through a
//! `ResourceLimiter`, its output through bounded pipes. Outbound HTTP is refused.
//!
//! Not here: deciding how many requests run at once (the executor does).

mod compile;
mod cpu;
mod engine;
mod error;
mod guests;
mod instance;
mod outbound;
mod output;

pub use engine::PoolSize;
pub use error::WasmError;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Preparation bound until [`WasmRuntime::with_start_timeout`] sets one.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

use async_trait::async_trait;
use gust_executor::{
    FunctionLogs, Instance, InstanceSpec, InvokeError, PreparedRevision, RequestId, Runtime,
};
use gust_model::{Environment, Limits};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::instance::{WasmInstance, WasmState};

/// How often the epoch advances: a running guest yields at each tick, so this is the longest
/// turn a guest holds while others wait (see `guests`).
const EPOCH_TICK: Duration = Duration::from_millis(2);
/// How often an idle epoch ticker (no guest running) looks whether the runtime has stopped.
const IDLE_TICKER_CHECK: Duration = Duration::from_secs(1);

pub struct WasmRuntime {
    components: Arc<Components>,
    logs: Arc<FunctionLogs>,
    stop: CancellationToken,
    /// Time to instantiate a component for a request (`gust_wasm_instantiation_seconds`).
    instantiation: Histogram,
    /// One permit per slot of the engine's instance pool, held by each store: when stores not
    /// yet dropped (or kept for `--reuse`) hold them all, a request waits for one until its
    /// deadline and is then refused as over capacity, instead of failing to instantiate.
    slots: Arc<Semaphore>,
    pool: PoolSize,
    /// Longest a request waits for its instance to be prepared (a pool slot, instantiation),
    /// apart from the function's timeout.
    start_timeout: Duration,
    /// Where revisions' mounted secrets and configs are written (in memory, emptied at start).
    values_root: PathBuf,
}

/// Compiling and loading components; shared with blocking threads, where loading runs.
struct Components {
    engine: Engine,
    linker: Linker<WasmState>,
    cache_dir: PathBuf,
    /// The cache key of each component file loaded so far, so that loading it again (after
    /// it was unloaded for idleness) neither reads nor hashes it. Code files never change in
    /// place (a new upload is a new tree); the entries of files no revision keeps go with
    /// their compiled artifacts in [`WasmRuntime::retain_compiled`].
    keys: Mutex<HashMap<PathBuf, String>>,
}

impl WasmRuntime {
    /// Builds the engine (with an instance pool of `pool`'s size) and linker and starts the
    /// epoch ticker. `cache_dir` holds compiled components.
    pub fn new(
        cache_dir: &Path,
        logs: Arc<FunctionLogs>,
        pool: PoolSize,
    ) -> Result<Self, WasmError> {
        let engine = engine::build(pool)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(WasmError::linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(WasmError::linker)?;
        std::fs::create_dir_all(cache_dir).map_err(WasmError::io(cache_dir))?;
        let values_root = gust_executor::private_memory_dir(cache_dir, "wasm-values")
            .map_err(WasmError::io("the secrets' directory"))?;
        let stop = CancellationToken::new();
        // The ticker is a plain thread: epochs must advance even if every async worker thread
        // is busy running guest code. It ticks only while a guest is being polled, and sleeps
        // until woken by the next guest otherwise (a guest's deadline counts ticks from its
        // own start, so a pause between guests changes nothing for them).
        let ticking = engine.weak();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("gust-wasm-epoch".into())
            .spawn(move || {
                guests::register_ticker(true);
                while !stopped.is_cancelled() {
                    if !guests::polling() {
                        // Woken by the next guest; the timeout only notices a stop.
                        std::thread::park_timeout(IDLE_TICKER_CHECK);
                        if ticking.upgrade().is_none() {
                            break;
                        }
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match ticking.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
                guests::register_ticker(false);
            })
            .map_err(WasmError::io("epoch thread"))?;
        Ok(Self {
            components: Arc::new(Components {
                engine,
                linker,
                cache_dir: cache_dir.to_owned(),
                keys: Mutex::new(HashMap::new()),
            }),
            logs,
            stop,
            // 2 µs to about 12 ms in steps of 25%: fine enough to tell 20 µs from 30 µs.
            instantiation: Histogram::new(exponential_buckets(2e-6, 1.25, 40)),
            slots: Arc::new(Semaphore::new(pool.slots as usize)),
            pool,
            start_timeout: DEFAULT_START_TIMEOUT,
            values_root,
        })
    }

    /// Sets how long a request may wait for its instance to be prepared (the executor's start
    /// bound, `gust up --start-timeout`).
    pub fn with_start_timeout(mut self, bound: Duration) -> Self {
        self.start_timeout = bound;
        self
    }

    /// Deletes the compiled artifacts of every component but those in `live` (the files of
    /// the revisions that are kept); returns how many went. Reads and hashes each live file
    /// not loaded since the start.
    pub fn retain_compiled(&self, live: &[PathBuf]) -> usize {
        let live: HashSet<&PathBuf> = live.iter().collect();
        // Copied, so that loads (which look keys up) never wait for the hashing below.
        let known = {
            let mut keys = self.components.keys();
            keys.retain(|path, _| live.contains(path));
            keys.clone()
        };
        let computed: Vec<(PathBuf, String)> = live
            .iter()
            .filter(|path| !known.contains_key(**path))
            .filter_map(|path| {
                let wasm = std::fs::read(path).ok()?;
                Some((
                    (*path).clone(),
                    compile::cache_key(&self.components.engine, &wasm),
                ))
            })
            .collect();
        let keep: HashSet<String> = known
            .into_values()
            .chain(computed.iter().map(|(_, key)| key.clone()))
            .collect();
        // Remembered, so that the next collection and the first load do not hash them again.
        self.components.keys().extend(computed);
        compile::retain(&self.components.cache_dir, &keep)
    }

    /// Registers the tier's own metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "gust_wasm_instantiation_seconds",
            "Time to instantiate a component for a request, inside the runtime",
            self.instantiation.clone(),
        );
    }

    fn component_path(spec: &InstanceSpec) -> PathBuf {
        match &spec.code_file {
            Some(file) => spec.code_dir.join(file),
            None => spec.code_dir.join("main.wasm"),
        }
    }

    /// The pre-instantiated component of a revision, loaded from the compiled cache (compiled
    /// first if it is not there) on a blocking thread.
    async fn load(&self, spec: &InstanceSpec) -> Result<ProxyPre<WasmState>, WasmError> {
        let path = Self::component_path(spec);
        let components = self.components.clone();
        let asked = Instant::now();
        let (pre, load, link) =
            tokio::task::spawn_blocking(move || components.load_and_link(&path))
                .await
                .map_err(|e| WasmError::NotProxy {
                    reason: format!("loading was interrupted: {e}"),
                })??;
        Self::trace_load(spec, load, link, asked.elapsed() - load - link);
        Ok(pre)
    }

    /// The phases of a load after an unload, for `benches/wasm_density.py`.
    fn trace_load(spec: &InstanceSpec, load: Duration, link: Duration, handoff: Duration) {
        tracing::debug!(
            function = %spec.function,
            load_ms = load.as_secs_f64() * 1e3,
            link_ms = link.as_secs_f64() * 1e3,
            handoff_ms = handoff.as_secs_f64() * 1e3,
            "component loaded"
        );
    }

    /// A revision's prepared form from its loaded component: its secrets and configs placed.
    fn prepared(
        &self,
        spec: &InstanceSpec,
        loaded: Result<ProxyPre<WasmState>, WasmError>,
    ) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
        let pre = loaded.map_err(|err| {
            tracing::error!(function = %spec.function, error = %err, "cannot load the component");
            InvokeError::StartFailed {
                function: spec.function.to_string(),
                detail: "the component could not be loaded".to_owned(),
            }
        })?;
        let values = instance::MountedValues::place(spec, &self.values_root).map_err(|err| {
            tracing::error!(function = %spec.function, error = %err, "cannot write its secrets and configs");
            InvokeError::StartFailed {
                function: spec.function.to_string(),
                detail: "its secrets and configs could not be mounted".to_owned(),
            }
        })?;
        Ok(Arc::new(PreparedComponent {
            pre,
            spec: spec.clone(),
            values,
            logs: self.logs.clone(),
            instantiation: self.instantiation.clone(),
            slots: self.slots.clone(),
            turns: guests::new_turns(),
            start_timeout: self.start_timeout,
        }))
    }
}

impl Components {
    /// Loads the component at `path` and links it with the host: with the time each took.
    fn load_and_link(
        &self,
        path: &Path,
    ) -> Result<(ProxyPre<WasmState>, Duration, Duration), WasmError> {
        let started = Instant::now();
        let component = self.load_file(path)?;
        let loaded = started.elapsed();
        let pre = self.link(&component)?;
        Ok((pre, loaded, started.elapsed() - loaded))
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, String>> {
        self.keys.lock().expect("cache key lock is never poisoned")
    }

    /// The compiled component of the file at `path`: mapped from the cache under the key it
    /// had when it was loaded before, else read, hashed and loaded (compiled first if the
    /// cache does not have it).
    fn load_file(&self, path: &Path) -> Result<Component, WasmError> {
        let read = || std::fs::read(path).map_err(WasmError::io(path));
        let known = self.keys().get(path).cloned();
        let (key, mut wasm) = match known {
            Some(key) => (key, None),
            None => {
                let wasm = read()?;
                (compile::cache_key(&self.engine, &wasm), Some(wasm))
            }
        };
        let component = match compile::load_cached(&self.engine, &self.cache_dir, &key) {
            Some(component) => component,
            None => {
                let wasm = match wasm.take() {
                    Some(wasm) => wasm,
                    None => read()?,
                };
                compile::compile(&self.engine, &self.cache_dir, &key, &wasm)?
            }
        };
        // Remembered once it loads: a file that fails to is read again next time.
        self.keys().insert(path.to_owned(), key);
        Ok(component)
    }

    /// Compiles (or loads from the cache) a component and checks that it is a
    /// `wasi:http/proxy` component this host can run.
    fn pre_instantiate(&self, wasm: &[u8]) -> Result<ProxyPre<WasmState>, WasmError> {
        self.link(&compile::load(&self.engine, &self.cache_dir, wasm)?)
    }

    /// Links a compiled component with the host's WASI and checks that it is a
    /// `wasi:http/proxy` component this host can run.
    fn link(&self, component: &Component) -> Result<ProxyPre<WasmState>, WasmError> {
        let instance_pre =
            self.linker
                .instantiate_pre(component)
                .map_err(|e| WasmError::NotProxy {
                    reason: format!("{e:#}"),
                })?;
        ProxyPre::new(instance_pre).map_err(|e| WasmError::NotProxy {
            reason: format!("{e:#}"),
        })
    }
}

/// A revision's component, compiled, linked and pre-instantiated: each instance started from
/// it instantiates in microseconds. Dropping it releases the component (and the memory image
/// mapped from its compiled file) once its last instance is gone.
pub(crate) struct PreparedComponent {
    pre: ProxyPre<WasmState>,
    spec: InstanceSpec,
    /// Its mounted secrets and configs, written once for every instance of the revision.
    values: Option<Arc<instance::MountedValues>>,
    logs: Arc<FunctionLogs>,
    instantiation: Histogram,
    slots: Arc<Semaphore>,
    /// The revision's turns on the guest threads (see `guests`), shared by its instances.
    turns: Arc<Semaphore>,
    start_timeout: Duration,
}

#[async_trait]
impl PreparedRevision for PreparedComponent {
    async fn start(&self, _first_request: &RequestId) -> Result<Box<dyn Instance>, InvokeError> {
        Ok(Box::new(WasmInstance::new(self)))
    }
}

#[async_trait]
impl Runtime for WasmRuntime {
    async fn prepare(&self, spec: &InstanceSpec) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
        let loaded = self.load(spec).await;
        self.prepared(spec, loaded)
    }

    fn prepare_blocking(
        &self,
        spec: &InstanceSpec,
    ) -> Option<Result<Arc<dyn PreparedRevision>, InvokeError>> {
        let loaded = self
            .components
            .load_and_link(&Self::component_path(spec))
            .map(|(pre, load, link)| {
                Self::trace_load(spec, load, link, Duration::ZERO);
                pre
            });
        Some(self.prepared(spec, loaded))
    }

    fn validate_upload(
        &self,
        _environment: &Environment,
        file_name: &str,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<(), String> {
        if limits.memory_mb > self.pool.max_memory_mb {
            return Err(format!(
                "a wasm function can have at most {} MB of memory here (gust up --wasm-max-memory), not {}",
                self.pool.max_memory_mb, limits.memory_mb
            ));
        }
        if !file_name.ends_with(".wasm") {
            return Err(format!(
                "a wasm function is one .wasm component file, not {file_name:?}"
            ));
        }
        // Compiling now fills the compiled-code cache: the first request does not compile.
        self.components
            .pre_instantiate(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn set_environments(&self, _environments: &[Environment]) {}

    async fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gust_model::{BuiltinRuntime, Limits, Name, Namespace, Scaling};

    use super::*;

    const PROBE: &[u8] = include_bytes!("../../../tests/components/probe.wasm");

    /// A runtime and the spec of the probe deployed in `dir`.
    fn probe_runtime(dir: &Path) -> (WasmRuntime, InstanceSpec) {
        let code = dir.join("code");
        std::fs::create_dir(&code).unwrap();
        std::fs::write(code.join("main.wasm"), PROBE).unwrap();
        let runtime = WasmRuntime::new(
            &dir.join("cache"),
            Arc::new(FunctionLogs::new(10)),
            PoolSize::default(),
        )
        .unwrap();
        let spec = InstanceSpec {
            namespace: Namespace::default(),
            function: Name::parse("function", "probe").unwrap(),
            function_uid: String::new(),
            revision: 1,
            environment: Environment::builtin(BuiltinRuntime::Wasm, 0),
            code_dir: code.clone(),
            code_file: None,
            entrypoint: None,
            env_vars: BTreeMap::new(),
            limits: Limits::default(),
            allow_outbound: Vec::new(),
            network: Default::default(),
            scaling: Scaling::default(),
            mounted: Vec::new(),
            secret_env: Vec::new(),
        };
        (runtime, spec)
    }

    /// Mappings of this process's memory from the compiled-component cache under `dir`.
    fn mapped_from(dir: &Path) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let dir = dir.to_string_lossy();
        maps.lines().filter(|l| l.contains(&*dir)).count()
    }

    /// The engine's instance pool keeps a memory image mapped in each slot an instance used,
    /// and forgets it only when the component goes; a slot given back after that (a batched
    /// decommit) would keep the compiled file mapped for good.
    #[tokio::test]
    async fn a_retired_component_leaves_no_mapping_behind_after_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, spec) = probe_runtime(dir.path());
        let cache = dir.path().join("cache");
        // Compiled into the cache first, as at upload; then loaded from the cache's file.
        drop(runtime.prepare(&spec).await.unwrap());
        let prepared = runtime.prepare(&spec).await.unwrap();
        assert!(mapped_from(&cache) > 0, "the component is loaded");
        let mut instance = prepared.start(&RequestId::new("r1")).await.unwrap();
        let response = instance
            .handle(
                &RequestId::new("r1"),
                http::Request::get("/")
                    .body(gust_executor::RequestBody::full(bytes::Bytes::new()))
                    .unwrap(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(mapped_from(&cache) > 0, "the component is in use");
        gust_executor::body::read_response(response, "probe", 1 << 20)
            .await
            .unwrap();
        instance.stop().await;
        drop(prepared);
        // Stores are dropped on a task of their own once their response went out.
        for _ in 0..100 {
            if mapped_from(&cache) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} mappings left", mapped_from(&cache));
    }

    #[tokio::test]
    async fn a_request_waits_for_a_free_pool_slot_within_the_start_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, spec) = probe_runtime(dir.path());
        let runtime = runtime.with_start_timeout(Duration::from_millis(300));
        let id = RequestId::new("r1");
        let request = || {
            http::Request::get("/")
                .body(gust_executor::RequestBody::full(bytes::Bytes::new()))
                .unwrap()
        };

        // Every slot held (as by stores not yet dropped): refused once the start bound passes.
        let held = runtime
            .slots
            .clone()
            .acquire_many_owned(runtime.pool.slots)
            .await
            .unwrap();
        let prepared = runtime.prepare(&spec).await.unwrap();
        let mut instance = prepared.start(&id).await.unwrap();
        let refused = instance
            .handle(&id, request(), Duration::from_secs(30))
            .await;
        assert!(
            matches!(refused, Err(InvokeError::OverCapacity { .. })),
            "{refused:?}"
        );

        // A slot given back while a request waits lets it through.
        let waiting = tokio::spawn(async move {
            instance
                .handle(&id, request(), Duration::from_secs(30))
                .await
                .map(|response| response.status())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "no slot is free yet");
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), 200);
    }
}
