use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use gust_model::{Name, Namespace, RequestBodyMode, Scaling, Tier};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    AttemptReport, BodyHold, BodyWatch, ColdStart, Instance, InstanceSpec, Invocation,
    InvocationObserver, InvokeError, Invoker, Payload, PreparedRevision, RequestBody, RequestId,
    ResponseBody, Runtime, StartPhases, TriggerKind,
};

/// The defaults of settings a function does not set itself (`gust up` flags).
#[derive(Debug, Clone, Copy)]
pub struct ExecutorConfig {
    /// Instances per function in the process tier (each serves one request at a time).
    pub max_instances: usize,
    /// Requests per function served at once in the wasm tier, each in a fresh instance.
    pub max_wasm_instances: usize,
    pub queue_depth: usize,
    pub queue_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest a request waits for an instance to be prepared for it (a cold start), apart
    /// from the function's timeout, which starts when the request reaches the instance.
    pub start_timeout: Duration,
    /// How long a function with no instance stays loaded (its prepared revision: a wasm
    /// function's compiled code) after its last request; its next request loads it again.
    pub unload_after: Duration,
    /// Functions kept loaded with no instance (within `unload_after`); beyond it, the least
    /// recently used are unloaded first.
    pub max_idle_loaded: usize,
}

/// A function's scaling settings with every default filled in: what the executor applies and
/// `gust fn get` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EffectiveScaling {
    /// Requests in flight per instance.
    pub concurrency: usize,
    pub min_instances: usize,
    pub max_instances: usize,
    #[serde(rename = "idle_timeout_ms", serialize_with = "as_ms")]
    pub idle_timeout: Duration,
    pub queue_depth: usize,
    #[serde(rename = "queue_timeout_ms", serialize_with = "as_ms")]
    pub queue_timeout: Duration,
    /// Requests a wasm instance serves before it is replaced.
    pub reuse: u32,
}

impl EffectiveScaling {
    /// Requests that may run at once: every instance full. The executor counts one
    /// [`Instance`] per request it can serve at a time, so a process worker serving
    /// `concurrency` requests appears as that many instances of one process.
    pub fn requests_in_flight(&self) -> usize {
        self.max_instances * self.concurrency
    }
}

fn as_ms<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(value.as_millis() as u64)
}

impl ExecutorConfig {
    /// `scaling` with this configuration's defaults for `tier` where it sets nothing.
    pub fn effective(&self, scaling: &Scaling, tier: Tier) -> EffectiveScaling {
        let tier_max = match tier {
            Tier::Process => self.max_instances,
            Tier::Wasm => self.max_wasm_instances,
        };
        let max_instances = scaling.max_instances.map_or(tier_max, |m| m as usize);
        EffectiveScaling {
            concurrency: scaling.concurrency.unwrap_or(1) as usize,
            min_instances: (scaling.min_instances as usize).min(max_instances),
            max_instances,
            idle_timeout: scaling.idle_timeout.unwrap_or(self.idle_timeout),
            queue_depth: scaling.queue_depth.map_or(self.queue_depth, |d| d as usize),
            queue_timeout: scaling.queue_timeout.unwrap_or(self.queue_timeout),
            reuse: scaling.reuse,
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_instances: 10,
            max_wasm_instances: 1_000,
            queue_depth: 1_000,
            queue_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            start_timeout: Duration::from_secs(10),
            unload_after: Duration::from_secs(600),
            max_idle_loaded: 1_000,
        }
    }
}

/// Where the executor learns what a function currently is. Called on the first request to a
/// function and again after [`Executor::function_changed`], on a blocking thread: it may read
/// storage, and it is not on the warm path.
pub trait DeploymentSource: Send + Sync {
    /// The current revision of a function ready to instantiate, `None` if it does not exist.
    fn deployment(
        &self,
        namespace: &Namespace,
        function: &Name,
    ) -> Result<Option<InstanceSpec>, DeploymentError>;
}

/// Why a function that exists cannot be instantiated.
#[derive(Debug)]
pub enum DeploymentError {
    /// It has no revision that can serve yet (its first one is still building, or its build
    /// failed); the text says which.
    NotReady(String),
    /// Its deployment could not be read.
    Unreadable(String),
}

impl From<String> for DeploymentError {
    fn from(detail: String) -> Self {
        DeploymentError::Unreadable(detail)
    }
}

/// Instances of one function revision.
struct FunctionSlot {
    spec: InstanceSpec,
    /// The runtime's prepared form of the revision, built once (on deploy or first start) and
    /// dropped with the slot when the revision stops serving.
    prepared: tokio::sync::OnceCell<Arc<dyn PreparedRevision>>,
    /// Fission's headers naming the function, added to each of its requests.
    function_headers: http::HeaderMap,
    scaling: EffectiveScaling,
    idle: Mutex<Vec<(Box<dyn Instance>, Instant)>>,
    /// One permit per request in flight (and per instance still starting for a request that
    /// gave up on it); instances serve one request at a time, so this also caps the number of
    /// instances.
    in_flight: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Instances being started to reach the minimum, not yet idle.
    warming: AtomicUsize,
    /// Set when the function changed or was deleted: instances are stopped instead of reused.
    retired: AtomicBool,
    /// When a request last reached the slot: the reaper unloads a slot unused for
    /// [`ExecutorConfig::unload_after`].
    last_used: Mutex<Instant>,
    /// Told whenever an instance goes idle: a request waiting for the instance it started
    /// takes a released one instead when that comes first.
    released: tokio::sync::Notify,
}

/// An instance started for the request that takes it (a cold start): where its start went.
struct Started {
    phases: Option<StartPhases>,
}

impl FunctionSlot {
    /// The revision's prepared form, built on first use.
    async fn prepared(
        &self,
        runtime: &dyn Runtime,
    ) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
        self.prepared
            .get_or_try_init(|| runtime.prepare(&self.spec))
            .await
            .cloned()
    }

    /// Starts an instance of the revision; with where its start went.
    async fn start(
        &self,
        runtime: &dyn Runtime,
        first_request: &RequestId,
    ) -> Result<(Box<dyn Instance>, Option<StartPhases>), InvokeError> {
        let preparing = Instant::now();
        let prepared = self.prepared(runtime).await?;
        let prepare = preparing.elapsed();
        let instance = prepared.start(first_request).await?;
        let phases = instance
            .start_phases()
            .map(|phases| StartPhases { prepare, ..phases });
        Ok((instance, phases))
    }

    fn take_idle(&self) -> Option<Box<dyn Instance>> {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned");
        // Most recently used first: it is the warmest, and the others may reach idle timeout.
        idle.pop().map(|(instance, _)| instance)
    }

    /// Removes idle instances unused for `older_than` (all of them with `None`), keeping
    /// the most recently used `keep`.
    fn drain_idle(&self, older_than: Option<Duration>, keep: usize) -> Vec<Box<dyn Instance>> {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned");
        let now = Instant::now();
        // Oldest first: the list is pushed in order of release.
        let removable = idle.len().saturating_sub(keep);
        let expired = idle
            .iter()
            .take(removable)
            .take_while(|(_, since)| older_than.is_none_or(|limit| now - *since >= limit))
            .count();
        idle.drain(..expired)
            .map(|(instance, _)| instance)
            .collect()
    }

    fn busy(&self) -> usize {
        self.scaling.requests_in_flight() - self.in_flight.available_permits()
    }

    /// Instances serving, idle, or starting to reach the minimum.
    fn held(&self) -> usize {
        self.busy() + self.idle_count() + self.warming.load(Ordering::Acquire)
    }

    fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .expect("idle list lock is never poisoned")
            .len()
    }

    /// Keeps the instance a deploy loaded the code in, idle as if for all but
    /// [`LOADED_KEPT_WARM`] of the idle timeout: it serves the first requests after a deploy,
    /// and a deploy of many functions at once does not leave a worker each for the whole
    /// idle timeout.
    fn release_loaded(&self, instance: Box<dyn Instance>) {
        let now = Instant::now();
        let aged = self.scaling.idle_timeout.saturating_sub(LOADED_KEPT_WARM);
        // The list is kept oldest first.
        self.keep_idle(vec![(instance, now.checked_sub(aged).unwrap_or(now))], true);
    }

    fn release(&self, instance: Box<dyn Instance>) {
        self.keep_idle(vec![(instance, Instant::now())], false);
    }

    /// Adds `instances` (oldest first) to the idle list, before the others when `oldest`, or
    /// stops them when the slot retired: checked under the list's lock, so that no instance
    /// is left in a retired slot.
    fn keep_idle(&self, instances: Vec<(Box<dyn Instance>, Instant)>, oldest: bool) {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned");
        if self.retired.load(Ordering::Acquire) {
            drop(idle);
            stop_all(
                instances
                    .into_iter()
                    .map(|(instance, _)| instance)
                    .collect(),
            );
            return;
        }
        let added = instances.len();
        let at = if oldest { 0 } else { idle.len() };
        idle.splice(at..at, instances);
        drop(idle);
        // One waiter per instance (a dropped, notified waiter passes it on).
        for _ in 0..added {
            self.released.notify_one();
        }
    }

    /// An idle instance with a permit to use it, when both are free now. A request queued
    /// for a permit comes first: the semaphore gives a released permit to its queue.
    fn take_released(&self) -> Option<(Box<dyn Instance>, OwnedSemaphorePermit)> {
        let permit = self.in_flight.clone().try_acquire_owned().ok()?;
        self.take_idle().map(|instance| (instance, permit))
    }

    /// Dates the last use back so that the slot is unloaded [`LOADED_KEPT_WARM`] from now if
    /// no request comes after this (one that came while it was being prepared is not counted).
    fn aged_to_unload(&self, unload_after: Duration) {
        let now = Instant::now();
        let aged = unload_after.saturating_sub(LOADED_KEPT_WARM);
        if let Some(aged) = now.checked_sub(aged) {
            let mut last_used = self
                .last_used
                .lock()
                .expect("last use lock is never poisoned");
            *last_used = (*last_used).min(aged);
        }
    }

    fn touch(&self) {
        *self
            .last_used
            .lock()
            .expect("last use lock is never poisoned") = Instant::now();
    }

    /// When the slot was last used, if it holds no instance and serves no request: nothing
    /// but its prepared revision would be lost by forgetting it. The caller also checks that
    /// nothing else holds the slot.
    fn unused_since(&self) -> Option<Instant> {
        let unused = self.scaling.min_instances == 0
            && self.held() == 0
            && self.waiting.load(Ordering::Acquire) == 0;
        unused.then(|| {
            *self
                .last_used
                .lock()
                .expect("last use lock is never poisoned")
        })
    }

    /// Marks the slot retired and takes its idle instances (each with when it went idle),
    /// under the idle list's lock.
    fn retire(&self) -> Vec<(Box<dyn Instance>, Instant)> {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned");
        self.retired.store(true, Ordering::Release);
        std::mem::take(&mut *idle)
    }
}

/// An instance kept across a change of its function's secrets or configs: it serves with what
/// it started with until `retire_at`, and is then replaced once its request ends (it reports
/// itself unhealthy), so that old values do not outlive the change by more than that.
struct Superseded {
    inner: Box<dyn Instance>,
    retire_at: Instant,
}

#[async_trait]
impl Instance for Superseded {
    async fn handle(
        &mut self,
        id: &RequestId,
        request: http::Request<RequestBody>,
        timeout: Duration,
    ) -> Result<http::Response<ResponseBody>, InvokeError> {
        self.inner.handle(id, request, timeout).await
    }

    fn is_healthy(&mut self) -> bool {
        Instant::now() < self.retire_at && self.inner.is_healthy()
    }

    fn cpu_time(&mut self) -> Option<Duration> {
        self.inner.cpu_time()
    }

    async fn stop(self: Box<Self>) {
        self.inner.stop().await
    }
}

/// Instances of a function right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    pub busy: usize,
    pub idle: usize,
}

/// Instances of one function, for metrics.
#[derive(Debug, Clone)]
pub struct FunctionInstances {
    pub namespace: Namespace,
    pub function: Name,
    pub counts: InstanceCounts,
}

/// How long the instance a deploy loaded the code in stays idle before it is stopped (at most
/// the function's idle timeout; never below its minimum instances).
const LOADED_KEPT_WARM: Duration = Duration::from_secs(10);
/// How often a request waiting for its start looks for a released instance besides being
/// told of one.
const RELEASED_RECHECK: Duration = Duration::from_millis(50);

/// Deployment reads of one slot lookup while other changes keep coming (see
/// [`Executor::slot`]).
const MAX_DEPLOYMENT_READS: usize = 5;

/// How long a deploy waits for a new revision's code to load (see [`Executor::trial`]).
const LOAD_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// The process-wide [`Invoker`].
pub struct Executor {
    config: ExecutorConfig,
    /// Namespaces' quotas on what runs at once.
    quotas: crate::NamespaceQuotas,
    source: Arc<dyn DeploymentSource>,
    runtime: Arc<dyn Runtime>,
    observer: Arc<dyn InvocationObserver>,
    slots: Mutex<HashMap<(Namespace, Name), Arc<FunctionSlot>>>,
    /// Counts changes to any function (a deploy, a delete, new values), under the slot map's
    /// lock: a request that read a deployment while one happened reads it again rather than
    /// bring back what the change replaced (see [`Executor::slot`]).
    changes: AtomicU64,
    /// Instances [`Executor::trial`] started, waiting for their revision to go live.
    staged: Mutex<HashMap<(Namespace, Name), Staged>>,
}

/// A revision loaded before it went live: what it was loaded as, its prepared form and its
/// first instance. It serves only a slot of exactly that spec.
struct Staged {
    spec: InstanceSpec,
    prepared: Arc<dyn PreparedRevision>,
    instance: Box<dyn Instance>,
}

/// Counts a request waiting for capacity for as long as it waits, even if it is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Executor {
    pub fn new(
        config: ExecutorConfig,
        source: Arc<dyn DeploymentSource>,
        runtime: Arc<dyn Runtime>,
        observer: Arc<dyn InvocationObserver>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            quotas: crate::NamespaceQuotas::default(),
            source,
            runtime,
            observer,
            slots: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            staged: Mutex::new(HashMap::new()),
        })
    }

    /// Loads a revision in a new instance before it goes live, so that code that cannot load
    /// is refused at deploy with the error, while the previous revision keeps serving. The
    /// instance is kept as the revision's first warm one once it is current. `id` is what
    /// loading prints is attributed to.
    pub async fn trial(&self, spec: InstanceSpec, id: &RequestId) -> Result<(), InvokeError> {
        let key = (spec.namespace.clone(), spec.function.clone());
        let prepared = self.runtime.prepare(&spec).await?;
        // A deploy waits for a heavy import (a model, numpy) that a request's start bound
        // would cut short.
        let bound = self.config.start_timeout.max(LOAD_CHECK_TIMEOUT);
        let instance = match tokio::time::timeout(bound, prepared.start(id)).await {
            Ok(started) => started?,
            Err(_) => {
                return Err(InvokeError::StartFailed {
                    function: spec.function.to_string(),
                    detail: format!("loading the code did not finish within {bound:?}"),
                });
            }
        };
        let replaced = self
            .staged
            .lock()
            .expect("staged map lock is never poisoned")
            .insert(
                key,
                Staged {
                    spec,
                    prepared,
                    instance,
                },
            );
        if let Some(replaced) = replaced {
            stop_all(vec![replaced.instance]);
        }
        Ok(())
    }

    /// Stops what [`Executor::trial`] started for a revision that will not go live.
    pub fn discard_trial(&self, namespace: &Namespace, function: &Name) {
        let staged = self
            .staged
            .lock()
            .expect("staged map lock is never poisoned")
            .remove(&(namespace.clone(), function.clone()));
        if let Some(staged) = staged {
            stop_all(vec![staged.instance]);
        }
    }

    /// Namespaces' quotas on instances and memory in use: set whenever namespaces change.
    pub fn quotas(&self) -> &crate::NamespaceQuotas {
        &self.quotas
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// Forgets a function's deployment: idle instances stop now, busy ones when their request
    /// ends, and the next request loads the new revision.
    pub fn function_changed(&self, namespace: &Namespace, function: &Name) {
        if let Some(slot) = self.forget(namespace, function) {
            // Its prepared form goes with the last request still holding the slot.
            stop_all(slot.retire().into_iter().map(|(i, _)| i).collect());
        }
    }

    /// Takes a function's slot out of the map after a change, counting the change.
    fn forget(&self, namespace: &Namespace, function: &Name) -> Option<Arc<FunctionSlot>> {
        let mut slots = self.slots.lock().expect("slot map lock is never poisoned");
        self.changes.fetch_add(1, Ordering::AcqRel);
        slots.remove(&(namespace.clone(), function.clone()))
    }

    /// A secret or config the function mounts changed. With `restart`, as after a deploy;
    /// otherwise new instances start with the new values and the idle ones carry over to the
    /// new slot as they are (what they read at start stays theirs), within the function's
    /// capacity, for one idle timeout at most: a busy one is replaced when its request ends
    /// after that, so the old values are gone from every instance within it. Those serving a
    /// request now stop when it ends.
    pub fn function_values_changed(
        self: &Arc<Self>,
        namespace: &Namespace,
        function: &Name,
        restart: bool,
    ) {
        if restart {
            return self.function_deployed(namespace, function);
        }
        let Some(old) = self.forget(namespace, function) else {
            // Not loaded here: its next request loads the new values.
            return;
        };
        let executor = self.clone();
        let (namespace, function) = (namespace.clone(), function.clone());
        tokio::spawn(async move {
            let mut carried = old.retire();
            match executor.slot(&namespace, &function).await {
                Ok(new) => {
                    // Requests may have started instances of the new slot meanwhile: the
                    // carried ones fill what room is left, the oldest stopped first.
                    let room = new.scaling.requests_in_flight().saturating_sub(new.held());
                    let surplus = carried.len().saturating_sub(room);
                    stop_all(carried.drain(..surplus).map(|(i, _)| i).collect());
                    let retire_at = Instant::now() + new.scaling.idle_timeout;
                    let carried = carried
                        .into_iter()
                        .map(|(inner, since)| {
                            let kept: Box<dyn Instance> = Box::new(Superseded { inner, retire_at });
                            (kept, since)
                        })
                        .collect();
                    new.keep_idle(carried, true);
                }
                Err(err) => {
                    tracing::debug!(%function, error = %err, "not reloaded");
                    stop_all(carried.into_iter().map(|(i, _)| i).collect());
                }
            }
        });
    }

    /// A function was deleted: its instances retire as in [`Self::function_changed`] and its
    /// observer forgets it.
    pub fn function_deleted(&self, namespace: &Namespace, function: &Name) {
        self.discard_trial(namespace, function);
        self.function_changed(namespace, function);
        self.observer.function_deleted(namespace, function);
    }

    /// A new revision of a function is current: its old instances retire as in
    /// [`Self::function_changed`], and the new one is loaded and prepared in the background
    /// so that its first request does not wait for that.
    pub fn function_deployed(self: &Arc<Self>, namespace: &Namespace, function: &Name) {
        self.function_changed(namespace, function);
        let executor = self.clone();
        let (namespace, function) = (namespace.clone(), function.clone());
        tokio::spawn(async move {
            match executor.slot(&namespace, &function).await {
                Ok(slot) => {
                    if let Err(err) = slot.prepared(executor.runtime.as_ref()).await {
                        // The first request meets the same error and reports it.
                        tracing::warn!(%function, error = %err, "cannot prepare the revision");
                    }
                    // Deleted or replaced while it was being prepared: what was loaded for it
                    // goes with the slot, and its series must not come back after the delete
                    // removed them.
                    if slot.retired.load(Ordering::Acquire) {
                        return;
                    }
                    // Loaded for requests that may never come (a deploy of thousands of
                    // functions): unloaded as its deploy's instance is stopped, unless used.
                    slot.aged_to_unload(executor.config.unload_after);
                    executor.observer.function_ready(
                        &namespace,
                        &function,
                        slot.spec.environment.tier(),
                    );
                    executor.warm_to_minimum(&slot);
                }
                Err(err) => tracing::debug!(%function, error = %err, "not prepared"),
            }
        });
    }

    /// Starts instances in the background until the function has its minimum.
    fn warm_to_minimum(self: &Arc<Self>, slot: &Arc<FunctionSlot>) {
        let missing = slot.scaling.min_instances.saturating_sub(slot.held());
        for _ in 0..missing {
            slot.warming.fetch_add(1, Ordering::AcqRel);
            let (executor, slot) = (self.clone(), slot.clone());
            tokio::spawn(async move {
                let id = RequestId::new(format!("warm-{}", slot.spec.function));
                match slot.start(executor.runtime.as_ref(), &id).await {
                    Ok((instance, _)) if !slot.retired.load(Ordering::Acquire) => {
                        slot.release(instance)
                    }
                    Ok((instance, _)) => stop_all(vec![instance]),
                    Err(err) => {
                        tracing::warn!(function = %slot.spec.function, error = %err, "cannot start a minimum instance")
                    }
                }
                slot.warming.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }

    pub fn instance_counts(&self, namespace: &Namespace, function: &Name) -> InstanceCounts {
        let slots = self.slots.lock().expect("slot map lock is never poisoned");
        let Some(slot) = slots.get(&(namespace.clone(), function.clone())) else {
            return InstanceCounts::default();
        };
        InstanceCounts {
            busy: slot.busy(),
            idle: slot.idle_count(),
        }
    }

    /// Instances of every function that has any, for metrics.
    pub fn all_instances(&self) -> Vec<FunctionInstances> {
        let slots = self.slots.lock().expect("slot map lock is never poisoned");
        slots
            .values()
            .map(|slot| FunctionInstances {
                namespace: slot.spec.namespace.clone(),
                function: slot.spec.function.clone(),
                counts: InstanceCounts {
                    busy: slot.busy(),
                    idle: slot.idle_count(),
                },
            })
            .collect()
    }

    /// Once a second until `shutdown`: stops instances idle longer than their function's idle
    /// timeout (down to its minimum) and starts instances a function is missing to reach its
    /// minimum.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let slots: Vec<_> = self
                .slots
                .lock()
                .expect("slot map lock is never poisoned")
                .values()
                .cloned()
                .collect();
            for slot in slots {
                let keep = slot.scaling.min_instances.saturating_sub(slot.busy());
                let expired = slot.drain_idle(Some(slot.scaling.idle_timeout), keep);
                if !expired.is_empty() {
                    tracing::debug!(function = %slot.spec.function, count = expired.len(), "stopping idle instances");
                }
                stop_all(expired);
                self.warm_to_minimum(&slot);
            }
            self.unload_unused();
        }
    }

    /// Forgets the slots unused for [`ExecutorConfig::unload_after`], and the least recently
    /// used beyond [`ExecutorConfig::max_idle_loaded`], so that thousands of functions
    /// deployed and rarely called do not each hold their loaded code. Only a slot that
    /// nothing but the map holds goes: a request that has it, or is starting an instance for
    /// it, keeps it, and a request after this finds no slot and loads a new one.
    fn unload_unused(&self) {
        let now = Instant::now();
        let unused: Vec<Arc<FunctionSlot>> = {
            let mut slots = self.slots.lock().expect("slot map lock is never poisoned");
            let mut idle: Vec<_> = slots
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .filter_map(|(key, slot)| Some((slot.unused_since()?, key.clone())))
                .collect();
            // Least recently used first: past the unload time, or beyond the cap.
            idle.sort_unstable_by_key(|(last_used, _)| *last_used);
            let over_cap = idle.len().saturating_sub(self.config.max_idle_loaded);
            idle.iter()
                .enumerate()
                .take_while(|(at, (last_used, _))| {
                    *at < over_cap
                        || now.saturating_duration_since(*last_used) >= self.config.unload_after
                })
                .filter_map(|(_, (_, key))| slots.remove(key))
                .collect()
        };
        if !unused.is_empty() {
            tracing::debug!(count = unused.len(), "unloading unused functions");
        }
        // Dropped outside the map's lock: a prepared revision may take a moment to release.
        drop(unused);
    }

    /// Stops every idle instance and the runtime's pools. Requests still in flight finish
    /// with their instance stopped afterwards.
    pub async fn shutdown(&self) {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("slot map lock is never poisoned")
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            for (instance, _) in slot.retire() {
                instance.stop().await;
            }
        }
        self.runtime.shutdown().await;
    }

    /// The function's slot; on a miss its deployment is read from the source on a blocking
    /// thread (it may read storage), never on the runtime thread serving requests.
    async fn slot(
        &self,
        namespace: &Namespace,
        function: &Name,
    ) -> Result<Arc<FunctionSlot>, InvokeError> {
        let key = (namespace.clone(), function.clone());
        if let Some(slot) = self
            .slots
            .lock()
            .expect("slot map lock is never poisoned")
            .get(&key)
        {
            return Ok(slot.clone());
        }
        let mut reads = 0;
        loop {
            let seen = self.changes.load(Ordering::Acquire);
            // The revision is prepared on the reading thread too, unless a trial already did.
            let trial_waiting = self
                .staged
                .lock()
                .expect("staged map lock is never poisoned")
                .contains_key(&key);
            let (spec, read_prepared) = self
                .read_deployment(namespace, function, !trial_waiting)
                .await?;
            reads += 1;
            let mut slots = self.slots.lock().expect("slot map lock is never poisoned");
            // A function changed while this was read: what was read may be what the change
            // replaced (a request after an unload, racing an update or a delete). Read again
            // (a few times at most: changes to other functions count too).
            if self.changes.load(Ordering::Acquire) != seen && reads < MAX_DEPLOYMENT_READS {
                continue;
            }
            let scaling = self
                .config
                .effective(&spec.scaling, spec.environment.tier());
            // The instance a trial started for this very spec, if any, is the slot's first.
            let staged = self
                .staged
                .lock()
                .expect("staged map lock is never poisoned")
                .remove(&key);
            let mut prepared = staged
                .as_ref()
                .filter(|staged| staged.spec == spec)
                .map(|staged| staged.prepared.clone())
                .or(read_prepared);
            let function_headers = function_headers(&spec);
            // Another request may have loaded it meanwhile; keep the first so instances are
            // shared.
            let slot = slots.entry(key.clone()).or_insert_with(|| {
                Arc::new(FunctionSlot {
                    spec,
                    prepared: tokio::sync::OnceCell::new_with(prepared.take()),
                    function_headers,
                    scaling,
                    idle: Mutex::new(Vec::new()),
                    in_flight: Arc::new(Semaphore::new(scaling.requests_in_flight())),
                    waiting: AtomicUsize::new(0),
                    warming: AtomicUsize::new(0),
                    retired: AtomicBool::new(false),
                    last_used: Mutex::new(Instant::now()),
                    released: tokio::sync::Notify::new(),
                })
            });
            let slot = slot.clone();
            drop(slots);
            if let Some(staged) = staged {
                if staged.spec == slot.spec {
                    slot.release_loaded(staged.instance);
                } else {
                    stop_all(vec![staged.instance]);
                }
            }
            return Ok(slot);
        }
    }

    /// A function's current deployment, read from the source on a blocking thread (it may
    /// read storage), never on the runtime thread serving requests; with its revision
    /// prepared on that same thread when `prepare` and the tier prepares by blocking work (a
    /// failed preparation is left to the first start, which tries again and reports it).
    async fn read_deployment(
        &self,
        namespace: &Namespace,
        function: &Name,
        prepare: bool,
    ) -> Result<(InstanceSpec, Option<Arc<dyn PreparedRevision>>), InvokeError> {
        let not_found = || InvokeError::FunctionNotFound {
            namespace: namespace.to_string(),
            function: function.to_string(),
        };
        let (source, ns, name) = (self.source.clone(), namespace.clone(), function.clone());
        let runtime = self.runtime.clone();
        let asked = Instant::now();
        let (loaded, read, prepared, on_thread) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let loaded = source.deployment(&ns, &name);
            let read = started.elapsed();
            let prepared = match &loaded {
                Ok(Some(spec)) if prepare => runtime.prepare_blocking(spec).and_then(Result::ok),
                _ => None,
            };
            (loaded, read, prepared, started.elapsed())
        })
        .await
        .unwrap_or_else(|_| {
            let panicked = Err("the deployment read panicked".to_owned().into());
            (panicked, Duration::ZERO, None, Duration::ZERO)
        });
        tracing::debug!(
            %function,
            read_ms = read.as_secs_f64() * 1e3,
            prepared = prepared.is_some(),
            handoff_ms = (asked.elapsed() - on_thread).as_secs_f64() * 1e3,
            "deployment read"
        );
        let spec = loaded
            .map_err(|err| match err {
                DeploymentError::NotReady(detail) => InvokeError::NotReady {
                    function: function.to_string(),
                    detail,
                },
                DeploymentError::Unreadable(detail) => {
                    tracing::error!(%function, %detail, "cannot load the function's deployment");
                    InvokeError::StartFailed {
                        function: function.to_string(),
                        detail: "its deployment could not be read".to_owned(),
                    }
                }
            })?
            .ok_or_else(not_found)?;
        Ok((spec, prepared))
    }

    async fn admit(&self, slot: &FunctionSlot) -> Result<OwnedSemaphorePermit, InvokeError> {
        if let Ok(permit) = slot.in_flight.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let over_capacity = |retry_after| InvokeError::OverCapacity {
            function: slot.spec.function.to_string(),
            retry_after,
        };
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= slot.scaling.queue_depth {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(over_capacity(Duration::from_secs(1)));
        }
        let _waiting = Waiting(&slot.waiting);
        let queue_timeout = slot.scaling.queue_timeout;
        match tokio::time::timeout(queue_timeout, slot.in_flight.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(over_capacity(queue_timeout.max(Duration::from_secs(1)))),
        }
    }

    /// Starts an instance for a request and waits, within the start bound, for whichever
    /// comes first: the started instance, or one another request released meanwhile (a
    /// function that answers in milliseconds but starts in seconds then serves a burst from
    /// its warm instances while new ones start). The start goes on in the background with
    /// the request's permit either way (so starts stay within the function's capacity), and
    /// an instance the request did not take waits idle for the next one. The result has a
    /// [`Started`] when the instance is the one started for the request (a cold start).
    async fn start_or_take_released(
        &self,
        slot: &Arc<FunctionSlot>,
        (id, trigger): (&RequestId, TriggerKind),
        permit: OwnedSemaphorePermit,
    ) -> Result<(Box<dyn Instance>, OwnedSemaphorePermit, Option<Started>), InvokeError> {
        let bound = self.config.start_timeout;
        let (started_tx, mut started_rx) = oneshot::channel();
        let (runtime, start_slot, id) = (self.runtime.clone(), slot.clone(), id.clone());
        let observer = self.observer.clone();
        tokio::spawn(async move {
            let started = start_slot.start(runtime.as_ref(), &id).await;
            match started_tx.send((started, permit)) {
                Ok(()) => {}
                Err((Ok((instance, _)), permit)) => {
                    // keep_idle stops it if the slot retired meanwhile.
                    start_slot.release(instance);
                    drop(permit);
                    start_slot.released.notify_one();
                }
                // Nobody waited for it: its request took another instance or gave up.
                Err((Err(err), _permit)) => {
                    let spec = &start_slot.spec;
                    tracing::warn!(function = %spec.function, error = %err, "an instance started for a request that no longer waited for it failed");
                    observer.start_failed(&spec.namespace, &spec.function, trigger);
                }
            }
        });
        // The request no longer waits for its start: one that finished just then serves the
        // next request.
        let let_go = |mut started_rx: oneshot::Receiver<_>| {
            started_rx.close();
            if let Ok((Ok((instance, _)), _permit)) = started_rx.try_recv() {
                slot.release(instance);
            }
        };
        let deadline = tokio::time::sleep(bound);
        tokio::pin!(deadline);
        loop {
            let released = slot.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some((instance, permit)) = slot.take_released() {
                let_go(started_rx);
                return Ok((instance, permit, None));
            }
            tokio::select! {
                biased;
                started = &mut started_rx => {
                    return match started {
                        Ok((started, permit)) => started
                            .map(|(instance, phases)| (instance, permit, Some(Started { phases }))),
                        Err(_) => Err(InvokeError::StartFailed {
                            function: slot.spec.function.to_string(),
                            detail: "the start was interrupted".to_owned(),
                        }),
                    };
                }
                () = &mut released => {}
                // A permit given back without a word (a failed start, a quota refusal) is
                // found at the next look.
                () = tokio::time::sleep(RELEASED_RECHECK) => {}
                () = &mut deadline => {
                    let_go(started_rx);
                    return Err(InvokeError::StartTimeout {
                        function: slot.spec.function.to_string(),
                        bound,
                    });
                }
            }
        }
    }
}

fn stop_all(instances: Vec<Box<dyn Instance>>) {
    if instances.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for instance in instances {
            instance.stop().await;
        }
    });
}

#[async_trait]
impl Invoker for Executor {
    async fn invoke(
        &self,
        invocation: Invocation,
    ) -> Result<http::Response<ResponseBody>, InvokeError> {
        let slot = self
            .slot(&invocation.namespace, &invocation.function)
            .await?;
        slot.touch();
        let (mut parts, payload) = invocation.request.into_parts();
        parts.headers.extend(slot.function_headers.clone());
        // A body the function takes whole is read before an instance is taken for it, so a
        // slow client holds memory (bounded by the listener) and never an instance.
        let (body, held, body_watch) = match payload {
            Payload::Ready(bytes) => (RequestBody::full(bytes), None, None),
            Payload::Arriving(incoming) => match slot.spec.limits.request_body {
                RequestBodyMode::Buffer => {
                    let (bytes, held) = incoming
                        .read_whole()
                        .await
                        .map_err(InvokeError::RequestBody)?;
                    (RequestBody::full(bytes), Some(held), None)
                }
                RequestBodyMode::Stream => {
                    let (body, watch) = RequestBody::streaming(incoming.stream());
                    (body, None, Some(watch))
                }
            },
        };
        let request = http::Request::from_parts(parts, body);
        let started_at = SystemTime::now();
        let arrived = Instant::now();
        let permit = match self.admit(&slot).await {
            Ok(permit) => permit,
            Err(err) => {
                self.observer.throttled(
                    &invocation.namespace,
                    &invocation.function,
                    invocation.trigger,
                );
                return Err(err);
            }
        };
        // The namespace's share, held with the permit until the attempt ends.
        let quota = match self
            .quotas
            .take(&invocation.namespace, slot.spec.limits.memory_mb)
        {
            Ok(hold) => hold,
            Err(err) => {
                self.observer.throttled(
                    &invocation.namespace,
                    &invocation.function,
                    invocation.trigger,
                );
                return Err(err);
            }
        };
        let mut report = AttemptReport {
            id: invocation.id.clone(),
            attempt: invocation.attempt,
            namespace: invocation.namespace.clone(),
            function: invocation.function.clone(),
            revision: slot.spec.revision,
            trigger: invocation.trigger,
            started_at,
            queue_wait: arrived.elapsed(),
            cold_start: None,
            run: Duration::ZERO,
            cpu: None,
            memory_mb: slot.spec.limits.memory_mb,
            timeout: slot.spec.limits.timeout,
            status: 0,
        };

        let (instance, permit) = match slot.take_idle() {
            Some(instance) => (instance, permit),
            None => {
                let starting = Instant::now();
                match self
                    .start_or_take_released(&slot, (&invocation.id, invocation.trigger), permit)
                    .await
                {
                    Ok((instance, permit, Some(Started { phases }))) => {
                        report.cold_start = Some(ColdStart {
                            start: starting.elapsed(),
                            tier: slot.spec.environment.tier(),
                            phases,
                        });
                        (instance, permit)
                    }
                    Ok((instance, permit, None)) => {
                        // It waited for an instance as a queued request does.
                        report.queue_wait = arrived.elapsed();
                        (instance, permit)
                    }
                    Err(err) => {
                        if err.code_ran() {
                            report.status = err.status();
                            self.observer.attempt_finished(report);
                        } else {
                            // Usage records are for attempts that reached a function.
                            self.observer.start_failed(
                                &invocation.namespace,
                                &invocation.function,
                                invocation.trigger,
                            );
                        }
                        return Err(err);
                    }
                }
            }
        };
        // The function's timeout runs from here until the last byte of its response.
        let timeout = slot.spec.limits.timeout;
        let mut attempt = Attempt {
            cpu_before: None,
            dispatched: Instant::now(),
            instance: Some(instance),
            slot,
            permit: Some(permit),
            observer: self.observer.clone(),
            report,
            body_watch,
            _held: held,
            _quota: quota,
        };
        attempt.cpu_before = attempt.instance().cpu_time();
        let result = attempt
            .instance()
            .handle(&invocation.id, request, timeout)
            .await;
        // A streamed body that broke off explains whatever the function made of it.
        let result = match attempt.body_watch.as_ref().and_then(|watch| watch.fault()) {
            Some(fault) => Err(InvokeError::RequestBody(fault)),
            None => result,
        };
        let response = match result {
            // Informational and out-of-range statuses cannot be forwarded as a final answer.
            Ok(response) if !(200..=599).contains(&response.status().as_u16()) => {
                tracing::warn!(function = %invocation.function, status = %response.status(), "function answered a status outside 200-599");
                let err = InvokeError::FunctionError {
                    function: invocation.function.to_string(),
                };
                attempt.finish(err.status(), false);
                return Err(err);
            }
            Ok(response) => response,
            Err(err) => {
                // The instance decides whether it survived the error (a function's exception
                // leaves it usable; a timeout or a crash does not).
                attempt.finish(err.status(), true);
                return Err(err);
            }
        };
        let (parts, body) = response.into_parts();
        attempt.report.status = parts.status.as_u16();
        if http_body::Body::is_end_stream(&body) {
            // Nothing to stream (an empty body, an answer to HEAD).
            attempt.finish(parts.status.as_u16(), true);
            let streams = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
                && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
            if streams {
                return Ok(http::Response::from_parts(
                    parts,
                    crate::body::empty_of_unknown_length(),
                ));
            }
            return Ok(http::Response::from_parts(parts, body));
        }
        let body = Metered::new(body, attempt, timeout);
        Ok(http::Response::from_parts(parts, crate::body::stream(body)))
    }
}

/// The function a request reaches, under the names Fission's environments read:
/// `X-Fission-Function-Name`, `-Namespace`, `-ResourceVersion` (the revision) and `-Uid`.
/// Made once per slot; every request to it gets a copy.
fn function_headers(spec: &InstanceSpec) -> http::HeaderMap {
    let mut headers = http::HeaderMap::with_capacity(4);
    let values = [
        ("x-fission-function-name", spec.function.to_string()),
        ("x-fission-function-namespace", spec.namespace.to_string()),
        (
            "x-fission-function-resourceversion",
            spec.revision.to_string(),
        ),
        ("x-fission-function-uid", spec.function_uid.clone()),
    ];
    for (name, value) in values {
        if let Ok(value) = http::HeaderValue::try_from(value)
            && !value.is_empty()
        {
            headers.insert(name, value);
        }
    }
    headers
}

/// One request being served by an instance, until its response's last byte: then the instance
/// goes back to its function (or is stopped), the request's capacity is given back, and the
/// attempt is reported, so billing runs until the last byte.
struct Attempt {
    /// `None` once the attempt has ended.
    instance: Option<Box<dyn Instance>>,
    slot: Arc<FunctionSlot>,
    permit: Option<OwnedSemaphorePermit>,
    observer: Arc<dyn InvocationObserver>,
    report: AttemptReport,
    cpu_before: Option<Duration>,
    dispatched: Instant,
    /// A streamed request body's progress: an instance that did not get all of it is not
    /// reused.
    body_watch: Option<Arc<BodyWatch>>,
    /// The buffered request body's share of the listener's body budget.
    _held: Option<BodyHold>,
    /// Its namespace's share of instances and memory, while the attempt lasts.
    _quota: Option<crate::quota::QuotaHold>,
}

/// What an attempt whose caller left before the response's end is reported with (the
/// status nginx logs for a client that closed its request): the function ran, so it is billed
/// until the moment it was stopped.
const CLIENT_CLOSED: u16 = 499;

impl Attempt {
    fn instance(&mut self) -> &mut Box<dyn Instance> {
        self.instance
            .as_mut()
            .expect("an attempt has its instance until it ends")
    }

    /// `reusable`: whether the instance may serve again if it is still healthy (not when its
    /// response was left unread or it ran out of time).
    fn finish(mut self, status: u16, reusable: bool) {
        self.end(status, reusable);
    }

    fn end(&mut self, status: u16, reusable: bool) {
        let (Some(mut instance), Some(permit)) = (self.instance.take(), self.permit.take()) else {
            return;
        };
        let mut report = self.report.clone();
        report.run = self.dispatched.elapsed();
        report.cpu = self
            .cpu_before
            .zip(instance.cpu_time())
            .map(|(before, after)| after.saturating_sub(before));
        report.status = status;
        let body_delivered = self
            .body_watch
            .as_ref()
            .is_none_or(|watch| watch.complete());
        if reusable
            && body_delivered
            && !self.slot.retired.load(Ordering::Acquire)
            && instance.is_healthy()
        {
            self.slot.release(instance);
        } else {
            stop_all(vec![instance]);
        }
        drop(permit);
        // A request waiting for its start may take the instance now that a permit is free
        // too (released first, so that a queued request finds the instance with its permit).
        self.slot.released.notify_one();
        self.observer.attempt_finished(report);
    }
}

/// An attempt dropped before it ended (its caller went away while the function had not
/// answered yet) still stops its instance and is reported: the function ran, so it is billed.
impl Drop for Attempt {
    fn drop(&mut self) {
        self.end(CLIENT_CLOSED, false);
    }
}

/// A response body that ends its [`Attempt`] with its last byte, fails with a timeout when
/// the function's time runs out part-way (the instance is stopped), and stops an instance
/// whose response was abandoned (its client left) rather than reuse a connection with unread
/// bytes in it. The deadline holds even while nobody polls the body (a client that stops
/// reading fills the connection's buffers, and the connection stops asking for more): once a
/// response is streaming, a watchdog task ends its attempt at the deadline.
struct Metered {
    inner: ResponseBody,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    function: String,
    /// Taken by whichever ends the attempt first: the body, or its watchdog.
    attempt: Arc<Mutex<Option<Attempt>>>,
    ended: bool,
    watchdog: Option<tokio::task::AbortHandle>,
}

impl Metered {
    fn new(inner: ResponseBody, attempt: Attempt, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(attempt.dispatched + timeout)),
            timeout,
            function: attempt.report.function.to_string(),
            attempt: Arc::new(Mutex::new(Some(attempt))),
            ended: false,
            watchdog: None,
        }
    }

    fn take(&self) -> Option<Attempt> {
        self.attempt
            .lock()
            .expect("attempt lock is never poisoned")
            .take()
    }

    fn timed_out(&mut self) -> InvokeError {
        self.ended = true;
        let err = InvokeError::Timeout {
            function: self.function.clone(),
            timeout: self.timeout,
        };
        if let Some(attempt) = self.take() {
            attempt.finish(err.status(), false);
        }
        err
    }

    /// The whole body was read: the instance may serve again.
    fn finish_complete(&mut self) {
        self.ended = true;
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        if let Some(attempt) = self.take() {
            let status = attempt.report.status;
            attempt.finish(status, true);
        }
    }

    /// From the first chunk of a response that goes on: its attempt ends at the deadline
    /// whether or not the body is polled then.
    fn arm_watchdog(&mut self) {
        if self.watchdog.is_some() {
            return;
        }
        let (attempt, deadline, function) = (
            self.attempt.clone(),
            self.deadline.deadline(),
            self.function.clone(),
        );
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let expired = attempt
                .lock()
                .expect("attempt lock is never poisoned")
                .take();
            if let Some(attempt) = expired {
                tracing::warn!(%function, "response still unsent at the timeout; instance stopped");
                attempt.finish(504, false);
            }
        });
        self.watchdog = Some(watchdog.abort_handle());
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = InvokeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, InvokeError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            // Every byte was sent and only the instance's own ending was awaited (a wasm
            // handler running on after its response): the response stands.
            if this.inner.is_end_stream() {
                this.finish_complete();
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Err(this.timed_out())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                // The last bytes of a body of known length: the attempt ends with them, even
                // if the connection never asks for the end (a client may close as soon as it
                // has every byte).
                if this.inner.is_end_stream() {
                    this.finish_complete();
                } else {
                    this.arm_watchdog();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.ended = true;
                if let Some(attempt) = this.take() {
                    attempt.finish(err.status(), false);
                }
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.finish_complete();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not before its end was polled: that is when the attempt finishes.
        self.ended
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        let Some(attempt) = self.take() else {
            return;
        };
        let status = attempt.report.status;
        // A client that leaves before the last few bytes (one that only wanted the status)
        // should not cost a warm instance: a small rest of known length is read in the
        // background, within the function's time, and the instance serves again. A response
        // cut short is reported as one whose client left, not with the status it began with.
        let rest = http_body::Body::size_hint(&self.inner).exact();
        if rest.is_none_or(|rest| rest > DRAIN_ON_DROP_BYTES) {
            attempt.finish(CLIENT_CLOSED, false);
            return;
        }
        let mut inner = std::mem::replace(&mut self.inner, crate::body::full(Bytes::new()));
        let deadline = self.deadline.deadline();
        tokio::spawn(async move {
            let drained = tokio::time::timeout_at(deadline, async {
                use http_body_util::BodyExt;
                while let Some(frame) = inner.frame().await {
                    frame?;
                }
                Ok::<_, InvokeError>(())
            })
            .await;
            let complete = matches!(drained, Ok(Ok(())));
            attempt.finish(if complete { status } else { CLIENT_CLOSED }, complete);
        });
    }
}

/// Most of an abandoned response read to keep its instance (see `Metered`'s `Drop`).
const DRAIN_ON_DROP_BYTES: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    use gust_model::{BuiltinRuntime, Environment, Limits};

    use super::*;
    use crate::RequestId;

    /// A runtime whose instances take `hold` to answer and count starts and stops.
    #[derive(Clone)]
    struct TimedRuntime {
        hold: Duration,
        /// How long starting an instance takes.
        start: Duration,
        started: Arc<AtomicUsize>,
        stopped: Arc<AtomicUsize>,
        /// Revisions prepared (loaded).
        prepared: Arc<AtomicUsize>,
    }

    struct TimedInstance {
        hold: Duration,
        stopped: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Instance for TimedInstance {
        async fn handle(
            &mut self,
            _id: &RequestId,
            _request: http::Request<RequestBody>,
            _timeout: Duration,
        ) -> Result<http::Response<ResponseBody>, InvokeError> {
            tokio::time::sleep(self.hold).await;
            Ok(http::Response::new(crate::body::full("ok")))
        }
        fn is_healthy(&mut self) -> bool {
            true
        }
        async fn stop(self: Box<Self>) {
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl PreparedRevision for TimedRuntime {
        async fn start(
            &self,
            _first_request: &RequestId,
        ) -> Result<Box<dyn Instance>, InvokeError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.start).await;
            Ok(Box::new(TimedInstance {
                hold: self.hold,
                stopped: self.stopped.clone(),
            }))
        }
    }

    #[async_trait]
    impl Runtime for TimedRuntime {
        async fn prepare(
            &self,
            _spec: &InstanceSpec,
        ) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
            self.prepared.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(self.clone()))
        }
        fn set_environments(&self, _environments: &[Environment]) {}
        async fn shutdown(&self) {}
    }

    struct OneFunction;

    impl DeploymentSource for OneFunction {
        fn deployment(
            &self,
            namespace: &Namespace,
            function: &Name,
        ) -> Result<Option<InstanceSpec>, DeploymentError> {
            let (runtime, timeout) = match function.as_str() {
                "f" => (BuiltinRuntime::Python, Limits::default().timeout),
                "w" => (BuiltinRuntime::Wasm, Limits::default().timeout),
                "t" => (BuiltinRuntime::Python, Duration::from_secs(1)),
                _ => return Ok(None),
            };
            Ok(Some(InstanceSpec {
                namespace: namespace.clone(),
                function: function.clone(),
                function_uid: String::new(),
                revision: 1,
                environment: Environment::builtin(runtime, 0),
                code_dir: "/nonexistent".into(),
                code_file: None,
                entrypoint: None,
                env_vars: BTreeMap::new(),
                limits: Limits {
                    timeout,
                    ..Limits::default()
                },
                allow_outbound: Vec::new(),
                network: Default::default(),
                scaling: Default::default(),
                mounted: Vec::new(),
                secret_env: Vec::new(),
            }))
        }
    }

    fn executor(config: ExecutorConfig, hold: Duration) -> (Arc<Executor>, Arc<TimedRuntime>) {
        slow_starting_executor(config, hold, Duration::ZERO)
    }

    fn slow_starting_executor(
        config: ExecutorConfig,
        hold: Duration,
        start: Duration,
    ) -> (Arc<Executor>, Arc<TimedRuntime>) {
        let runtime = Arc::new(TimedRuntime {
            hold,
            start,
            started: Arc::new(AtomicUsize::new(0)),
            stopped: Arc::new(AtomicUsize::new(0)),
            prepared: Arc::new(AtomicUsize::new(0)),
        });
        (
            Executor::new(
                config,
                Arc::new(OneFunction),
                runtime.clone(),
                Arc::new(crate::NoObserver),
            ),
            runtime,
        )
    }

    /// Invokes and reads the whole response, as a client does before the instance is free.
    async fn call_and_read(
        executor: &Executor,
        name: &str,
    ) -> Result<http::Response<Bytes>, InvokeError> {
        let response = executor.invoke(call(name)).await?;
        crate::body::read_response(response, name, 1024).await
    }

    fn call(name: &str) -> Invocation {
        Invocation {
            id: RequestId::new("r"),
            namespace: Namespace::default(),
            function: Name::parse("function", name).unwrap(),
            trigger: TriggerKind::Http,
            attempt: 1,
            request: http::Request::new(Payload::Ready(Bytes::new())),
        }
    }

    /// Starts fail: with no code run for function `nostart`, while loading for the others.
    struct FailingRuntime;

    #[async_trait]
    impl PreparedRevision for FailingRuntime {
        async fn start(&self, first: &RequestId) -> Result<Box<dyn Instance>, InvokeError> {
            Err(if first.as_str() == "nostart" {
                InvokeError::StartFailed {
                    function: "f".into(),
                    detail: "no worker".into(),
                }
            } else {
                InvokeError::LoadFailed {
                    function: "f".into(),
                    cause: "SyntaxError".into(),
                }
            })
        }
    }

    #[async_trait]
    impl Runtime for FailingRuntime {
        async fn prepare(
            &self,
            _spec: &InstanceSpec,
        ) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
            Ok(Arc::new(FailingRuntime))
        }
        fn set_environments(&self, _environments: &[Environment]) {}
        async fn shutdown(&self) {}
    }

    #[derive(Default)]
    struct Counted {
        attempts: AtomicUsize,
        start_failures: AtomicUsize,
    }

    impl InvocationObserver for Counted {
        fn attempt_finished(&self, _report: AttemptReport) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
        }
        fn throttled(&self, _: &Namespace, _: &Name, _: TriggerKind) {}
        fn start_failed(&self, _: &Namespace, _: &Name, _: TriggerKind) {
            self.start_failures.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn after_a_values_change_warm_instances_serve_for_one_idle_timeout_at_most() {
        let config = ExecutorConfig {
            max_instances: 2,
            idle_timeout: Duration::from_millis(400),
            ..ExecutorConfig::default()
        };
        let (executor, runtime) = executor(config, Duration::from_millis(30));
        let both = || async {
            let (a, b) = tokio::join!(call_and_read(&executor, "f"), call_and_read(&executor, "f"));
            a.unwrap();
            b.unwrap();
        };
        both().await;
        assert_eq!(runtime.started.load(Ordering::SeqCst), 2);
        let (namespace, function) = (Namespace::default(), Name::parse("function", "f").unwrap());
        executor.function_values_changed(&namespace, &function, false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The two warm instances carried over: no cold start.
        both().await;
        assert_eq!(runtime.started.load(Ordering::SeqCst), 2);
        // Busy all along, so never idle for the timeout; still replaced once it passed.
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            both().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(runtime.started.load(Ordering::SeqCst) >= 4);
        // With --restart they go at once.
        let started = runtime.started.load(Ordering::SeqCst);
        executor.function_values_changed(&namespace, &function, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        both().await;
        assert_eq!(runtime.started.load(Ordering::SeqCst), started + 2);
    }

    #[tokio::test]
    async fn a_function_unused_for_the_unload_time_is_unloaded_and_loads_again() {
        let config = ExecutorConfig {
            idle_timeout: Duration::from_millis(100),
            unload_after: Duration::from_millis(600),
            ..ExecutorConfig::default()
        };
        let (executor, runtime) = executor(config, Duration::from_millis(1_500));
        let shutdown = CancellationToken::new();
        tokio::spawn(executor.clone().run_reaper(shutdown.clone()));
        let loaded = || executor.slots.lock().unwrap().len();

        // A request running longer than the unload time keeps its function loaded.
        call_and_read(&executor, "f").await.unwrap();
        assert_eq!(runtime.prepared.load(Ordering::SeqCst), 1);
        assert_eq!(loaded(), 1, "just used");
        // Its instance is stopped at the idle timeout, and the function unloaded once unused
        // for the unload time.
        let until = Instant::now() + Duration::from_secs(5);
        while loaded() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(loaded(), 0, "not unloaded");
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 1);
        // The next request loads it again.
        call_and_read(&executor, "f").await.unwrap();
        assert_eq!(runtime.prepared.load(Ordering::SeqCst), 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn beyond_the_cap_the_least_recently_used_idle_function_is_unloaded_first() {
        let config = ExecutorConfig {
            idle_timeout: Duration::from_millis(100),
            max_idle_loaded: 1,
            ..ExecutorConfig::default()
        };
        let (executor, runtime) = executor(config, Duration::ZERO);
        let shutdown = CancellationToken::new();
        tokio::spawn(executor.clone().run_reaper(shutdown.clone()));
        let loaded = || {
            let slots = executor.slots.lock().unwrap();
            let mut names: Vec<_> = slots.keys().map(|(_, f)| f.to_string()).collect();
            names.sort();
            names
        };
        call_and_read(&executor, "f").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        call_and_read(&executor, "w").await.unwrap();
        assert_eq!(loaded(), ["f", "w"], "both in use");
        // Once their instances are stopped, one idle function stays loaded: the last used.
        let until = Instant::now() + Duration::from_secs(5);
        while loaded().len() > 1 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(loaded(), ["w"]);
        assert_eq!(runtime.prepared.load(Ordering::SeqCst), 2);
        shutdown.cancel();
    }

    /// Function `f` at the revision in `revision`; its first read waits for `go` after
    /// saying so on `reading`.
    struct SlowFirstRead {
        revision: Arc<AtomicUsize>,
        reading: Mutex<Option<std::sync::mpsc::Sender<()>>>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl DeploymentSource for SlowFirstRead {
        fn deployment(
            &self,
            namespace: &Namespace,
            function: &Name,
        ) -> Result<Option<InstanceSpec>, DeploymentError> {
            let mut spec = OneFunction.deployment(namespace, function)?;
            if let Some(spec) = spec.as_mut() {
                spec.revision = self.revision.load(Ordering::SeqCst) as u32;
            }
            if let Some(reading) = self.reading.lock().unwrap().take() {
                reading.send(()).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
            Ok(spec)
        }
    }

    /// A request that reads a function's deployment while it is updated (common once
    /// unloading leaves functions without a slot) must not bring the old revision back.
    #[tokio::test]
    async fn a_deployment_read_during_an_update_does_not_bring_the_old_revision_back() {
        let (reading_tx, reading) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let revision = Arc::new(AtomicUsize::new(1));
        let runtime = Arc::new(TimedRuntime {
            hold: Duration::ZERO,
            start: Duration::ZERO,
            started: Arc::new(AtomicUsize::new(0)),
            stopped: Arc::new(AtomicUsize::new(0)),
            prepared: Arc::new(AtomicUsize::new(0)),
        });
        let source = SlowFirstRead {
            revision: revision.clone(),
            reading: Mutex::new(Some(reading_tx)),
            go: Mutex::new(go_rx),
        };
        let executor = Executor::new(
            ExecutorConfig::default(),
            Arc::new(source),
            runtime,
            Arc::new(crate::NoObserver),
        );
        let request = tokio::spawn({
            let executor = executor.clone();
            async move { call_and_read(&executor, "f").await.map(|_| ()) }
        });
        tokio::task::spawn_blocking(move || reading.recv().unwrap())
            .await
            .unwrap();
        // Revision 2 is stored and the executor told, while revision 1 is being read.
        revision.store(2, Ordering::SeqCst);
        executor.function_changed(
            &Namespace::default(),
            &Name::parse("function", "f").unwrap(),
        );
        go.send(()).unwrap();
        request.await.unwrap().unwrap();
        let slots = executor.slots.lock().unwrap();
        let slot = slots.values().next().expect("the request's slot");
        assert_eq!(slot.spec.revision, 2);
    }

    #[tokio::test]
    async fn a_start_that_ran_no_code_is_counted_but_not_an_attempt() {
        let observer = Arc::new(Counted::default());
        let executor = Executor::new(
            ExecutorConfig::default(),
            Arc::new(OneFunction),
            Arc::new(FailingRuntime),
            observer.clone(),
        );
        let mut invocation = call("f");
        invocation.id = RequestId::new("nostart");
        let err = executor.invoke(invocation).await.unwrap_err();
        assert_eq!(err.reason(), "start_failed");
        assert_eq!(observer.start_failures.load(Ordering::SeqCst), 1);
        assert_eq!(observer.attempts.load(Ordering::SeqCst), 0);
        // Loading the code ran it: that is an attempt, billed and recorded.
        let err = executor.invoke(call("f")).await.unwrap_err();
        assert_eq!(err.reason(), "load_error");
        assert_eq!(observer.attempts.load(Ordering::SeqCst), 1);
        assert_eq!(observer.start_failures.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_trial_instance_serves_its_revision_first_and_no_other() {
        let (executor, runtime) = executor(ExecutorConfig::default(), Duration::ZERO);
        let spec = OneFunction
            .deployment(
                &Namespace::default(),
                &Name::parse("function", "f").unwrap(),
            )
            .unwrap()
            .unwrap();
        executor
            .trial(spec.clone(), &RequestId::new("t"))
            .await
            .unwrap();
        assert_eq!(runtime.started.load(Ordering::SeqCst), 1);
        // The revision goes live: its first request takes the loaded instance.
        call_and_read(&executor, "f").await.unwrap();
        assert_eq!(runtime.started.load(Ordering::SeqCst), 1);
        // Instances are stopped in the background.
        let stopped = |count: usize| {
            let stops = runtime.stopped.clone();
            async move {
                for _ in 0..100 {
                    if stops.load(Ordering::SeqCst) == count {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                stops.load(Ordering::SeqCst)
            }
        };
        // A trial of a revision that never goes live is stopped when it is discarded.
        let (namespace, name) = (Namespace::default(), Name::parse("function", "f").unwrap());
        let mut other = spec.clone();
        other.revision += 1;
        executor.trial(other, &RequestId::new("t2")).await.unwrap();
        executor.discard_trial(&namespace, &name);
        assert_eq!(stopped(1).await, 1);
        // One loaded as another spec under the same number (an update that lost a race for
        // it) never serves that number: it is stopped and a fresh instance serves. (The change
        // also stops the idle instance the first trial left.)
        let mut raced = spec;
        raced.env_vars.insert("RACED".into(), "yes".into());
        executor.trial(raced, &RequestId::new("t3")).await.unwrap();
        executor.function_changed(&namespace, &name);
        call_and_read(&executor, "f").await.unwrap();
        assert_eq!(runtime.started.load(Ordering::SeqCst), 4);
        assert_eq!(stopped(3).await, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn excess_requests_wait_in_a_bounded_queue_then_get_429() {
        let config = ExecutorConfig {
            max_instances: 1,
            max_wasm_instances: 1,
            queue_depth: 2,
            queue_timeout: Duration::from_millis(500),
            ..ExecutorConfig::default()
        };
        let (executor, runtime) = executor(config, Duration::from_secs(1));
        let mut calls = Vec::new();
        for _ in 0..5 {
            let executor = executor.clone();
            calls.push(tokio::spawn(
                async move { call_and_read(&executor, "f").await },
            ));
            tokio::task::yield_now().await;
        }
        let mut ok = 0;
        let mut retry_afters = Vec::new();
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => ok += 1,
                Err(err) => {
                    assert_eq!(err.status(), 429);
                    retry_afters.push(err.retry_after().unwrap());
                }
            }
        }
        // One runs; two wait past the queue timeout; two find the queue full.
        assert_eq!(ok, 1);
        assert_eq!(retry_afters.len(), 4);
        assert_eq!(
            runtime.started.load(Ordering::SeqCst),
            1,
            "never more than max instances"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_start_has_its_own_bound_and_a_late_instance_serves_the_next_request() {
        let config = ExecutorConfig {
            start_timeout: Duration::from_secs(2),
            ..ExecutorConfig::default()
        };
        let (executor, runtime) =
            slow_starting_executor(config, Duration::from_millis(10), Duration::from_secs(3));
        let asked = Instant::now();
        let err = call_and_read(&executor, "t").await.unwrap_err();
        assert_eq!(err.reason(), "start_timeout", "{err}");
        assert!(err.to_string().contains("2s"), "{err}");
        assert!(asked.elapsed() < Duration::from_millis(2100));
        // The start goes on, within the function's capacity, and then waits idle.
        let function = Name::parse("function", "t").unwrap();
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!(counts.busy, 1, "the start holds its capacity");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!((counts.busy, counts.idle), (0, 1));
        let asked = Instant::now();
        assert!(call_and_read(&executor, "t").await.is_ok());
        assert!(asked.elapsed() < Duration::from_millis(100), "served warm");
        assert_eq!(runtime.started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_served_by_the_warm_instance_while_new_ones_start() {
        // Starting takes 3 s, answering 10 ms: a burst of 8 against one warm instance.
        let (executor, runtime) = slow_starting_executor(
            ExecutorConfig::default(),
            Duration::from_millis(10),
            Duration::from_secs(3),
        );
        call_and_read(&executor, "f").await.unwrap();
        let asked = Instant::now();
        let burst = (0..8).map(|_| call_and_read(&executor, "f"));
        let answers = futures_util::future::join_all(burst).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        // One after another on the warm instance: 80 ms, not a 3 s start each.
        assert!(
            asked.elapsed() < Duration::from_millis(200),
            "{:?}",
            asked.elapsed()
        );
        // The starts the burst asked for go on, and their instances wait idle after.
        assert_eq!(runtime.started.load(Ordering::SeqCst), 1 + 7);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let function = Name::parse("function", "f").unwrap();
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!((counts.busy, counts.idle), (0, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_start_does_not_count_in_the_function_timeout() {
        // "t" has a 1 s timeout; its instance takes 3 s to start and 10 ms to answer.
        let (executor, _) = slow_starting_executor(
            ExecutorConfig::default(),
            Duration::from_millis(10),
            Duration::from_secs(3),
        );
        let response = call_and_read(&executor, "t").await.unwrap();
        assert_eq!(response.body().as_ref(), b"ok");
    }

    /// A body that sends "first", then after `pause` sends "last" and ends.
    struct Drip {
        pause: Pin<Box<tokio::time::Sleep>>,
        sent: usize,
    }

    impl http_body::Body for Drip {
        type Data = Bytes;
        type Error = InvokeError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, InvokeError>>> {
            let this = &mut *self;
            let chunk = match this.sent {
                0 => "first",
                1 if this.pause.as_mut().poll(cx).is_pending() => return Poll::Pending,
                1 => "last",
                _ => return Poll::Ready(None),
            };
            this.sent += 1;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
        }
    }

    /// Instances of `t` (1 s timeout) whose responses drip, pausing `pause` part-way.
    #[derive(Clone)]
    struct DripRuntime {
        pause: Duration,
        started: Arc<AtomicUsize>,
        stopped: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl PreparedRevision for DripRuntime {
        async fn start(
            &self,
            _first_request: &RequestId,
        ) -> Result<Box<dyn Instance>, InvokeError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(DripInstance {
                pause: self.pause,
                stopped: self.stopped.clone(),
            }))
        }
    }

    #[async_trait]
    impl Runtime for DripRuntime {
        async fn prepare(
            &self,
            _spec: &InstanceSpec,
        ) -> Result<Arc<dyn PreparedRevision>, InvokeError> {
            Ok(Arc::new(self.clone()))
        }
        fn set_environments(&self, _environments: &[Environment]) {}
        async fn shutdown(&self) {}
    }

    struct DripInstance {
        pause: Duration,
        stopped: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Instance for DripInstance {
        async fn handle(
            &mut self,
            _id: &RequestId,
            _request: http::Request<RequestBody>,
            _timeout: Duration,
        ) -> Result<http::Response<ResponseBody>, InvokeError> {
            let body = Drip {
                pause: Box::pin(tokio::time::sleep(self.pause)),
                sent: 0,
            };
            Ok(http::Response::new(crate::body::stream(body)))
        }
        fn is_healthy(&mut self) -> bool {
            true
        }
        async fn stop(self: Box<Self>) {
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn dripping_executor(pause: Duration) -> (Arc<Executor>, Arc<DripRuntime>) {
        let runtime = Arc::new(DripRuntime {
            pause,
            started: Arc::new(AtomicUsize::new(0)),
            stopped: Arc::new(AtomicUsize::new(0)),
        });
        let executor = Executor::new(
            ExecutorConfig::default(),
            Arc::new(OneFunction),
            runtime.clone(),
            Arc::new(crate::NoObserver),
        );
        (executor, runtime)
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_body_arrives_as_written_and_frees_its_instance_at_its_end() {
        use http_body_util::BodyExt;
        let (executor, runtime) = dripping_executor(Duration::from_millis(500));
        let function = Name::parse("function", "t").unwrap();
        let asked = Instant::now();
        let mut body = executor.invoke(call("t")).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.as_ref(), b"first");
        assert_eq!(
            asked.elapsed(),
            Duration::ZERO,
            "the first chunk does not wait"
        );
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!(counts.busy, 1, "the instance is busy until the last byte");
        let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(last.as_ref(), b"last");
        assert!(body.frame().await.is_none());
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!((counts.busy, counts.idle), (0, 1));
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_streaming_at_the_timeout_fails_and_its_instance_stops() {
        use http_body_util::BodyExt;
        let (executor, runtime) = dripping_executor(Duration::from_secs(5));
        let mut body = executor.invoke(call("t")).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        let asked = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.reason(), "timeout");
        assert_eq!(
            asked.elapsed(),
            Duration::from_secs(1),
            "the function's 1 s timeout"
        );
        tokio::task::yield_now().await;
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_its_client_stops_reading_still_ends_at_the_timeout() {
        use http_body_util::BodyExt;
        let (executor, runtime) = dripping_executor(Duration::from_secs(5));
        let mut body = executor.invoke(call("t")).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        // Nobody polls the body now (a connection whose client reads nothing); the function's
        // 1 s timeout still stops its instance and frees its capacity.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 1);
        let function = Name::parse("function", "t").unwrap();
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!((counts.busy, counts.idle), (0, 0));
        // When the connection asks again, the response fails rather than ending as if whole.
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.reason(), "timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_body_stops_its_instance() {
        use http_body_util::BodyExt;
        let (executor, runtime) = dripping_executor(Duration::from_millis(500));
        let mut body = executor.invoke(call("t")).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        tokio::task::yield_now().await;
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 1);
        let function = Name::parse("function", "t").unwrap();
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!((counts.busy, counts.idle), (0, 0));
        call_and_read(&executor, "t").await.unwrap();
        assert_eq!(runtime.started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_leaving_before_a_short_body_of_known_length_costs_no_instance() {
        let (executor, runtime) = executor(ExecutorConfig::default(), Duration::ZERO);
        let response = executor.invoke(call("f")).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let function = Name::parse("function", "f").unwrap();
        let counts = executor.instance_counts(&Namespace::default(), &function);
        assert_eq!(
            (counts.busy, counts.idle),
            (0, 1),
            "read to its end and kept"
        );
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_are_served_when_capacity_frees_up() {
        let config = ExecutorConfig {
            max_instances: 2,
            max_wasm_instances: 2,
            queue_depth: 10,
            queue_timeout: Duration::from_secs(10),
            ..ExecutorConfig::default()
        };
        let (executor, runtime) = executor(config, Duration::from_millis(100));
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let executor = executor.clone();
                tokio::spawn(async move { call_and_read(&executor, "f").await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().is_ok());
        }
        assert_eq!(
            runtime.started.load(Ordering::SeqCst),
            2,
            "instances are reused"
        );
        assert_eq!(
            executor
                .instance_counts(
                    &Namespace::default(),
                    &Name::parse("function", "f").unwrap()
                )
                .idle,
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_wasm_tier_serves_many_requests_at_once() {
        let (executor, runtime) = executor(ExecutorConfig::default(), Duration::from_millis(100));
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let executor = executor.clone();
                tokio::spawn(async move { call_and_read(&executor, "w").await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().is_ok());
        }
        // Fifty at once, not ten at a time: no request waited for another.
        assert_eq!(runtime.started.load(Ordering::SeqCst), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instances_stop_after_the_idle_timeout_and_changes_retire_them() {
        let config = ExecutorConfig {
            idle_timeout: Duration::from_secs(5),
            ..ExecutorConfig::default()
        };
        let (executor, runtime) = executor(config, Duration::from_millis(1));
        let shutdown = CancellationToken::new();
        tokio::spawn(executor.clone().run_reaper(shutdown.clone()));
        call_and_read(&executor, "f").await.unwrap();
        let f = Name::parse("function", "f").unwrap();
        assert_eq!(executor.instance_counts(&Namespace::default(), &f).idle, 1);
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(executor.instance_counts(&Namespace::default(), &f).idle, 0);
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 1);

        call_and_read(&executor, "f").await.unwrap();
        executor.function_changed(&Namespace::default(), &f);
        tokio::task::yield_now().await;
        assert_eq!(
            runtime.stopped.load(Ordering::SeqCst),
            2,
            "a change stops idle instances"
        );
        call_and_read(&executor, "f").await.unwrap();
        assert_eq!(
            runtime.started.load(Ordering::SeqCst),
            3,
            "the next request starts afresh"
        );
        shutdown.cancel();

        let missing = call_and_read(&executor, "g").await.unwrap_err();
        assert_eq!(missing.reason(), "function_not_found");
    }

    #[tokio::test(start_paused = true)]
    async fn the_instance_a_deploy_loaded_stays_warm_briefly_not_for_the_idle_timeout() {
        let (executor, runtime) = executor(ExecutorConfig::default(), Duration::ZERO);
        let shutdown = CancellationToken::new();
        tokio::spawn(executor.clone().run_reaper(shutdown.clone()));
        let (namespace, f) = (Namespace::default(), Name::parse("function", "f").unwrap());
        let spec = OneFunction.deployment(&namespace, &f).unwrap().unwrap();
        executor.trial(spec, &RequestId::new("t")).await.unwrap();
        executor.function_deployed(&namespace, &f);
        // Its slot is made in the background (the deployment is read on a blocking thread).
        for _ in 0..100 {
            if executor.instance_counts(&namespace, &f).idle == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(executor.instance_counts(&namespace, &f).idle, 1);
        // Well within the default two-minute idle timeout, past the deploy's warm spell.
        tokio::time::sleep(LOADED_KEPT_WARM + Duration::from_secs(2)).await;
        assert_eq!(executor.instance_counts(&namespace, &f).idle, 0);
        assert_eq!(runtime.stopped.load(Ordering::SeqCst), 1);
        shutdown.cancel();
    }
}
