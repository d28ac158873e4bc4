use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use gust_model::{Name, Namespace};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::{Instance, InstanceSpec, Invocation, InvokeError, Invoker, Runtime};

/// How many instances a function may run and how long requests may wait for one.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorConfig {
    pub max_instances: usize,
    pub queue_depth: usize,
    pub queue_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_instances: 10,
            queue_depth: 1_000,
            queue_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Where the executor learns what a function currently is. Called on the first request to a
/// function and again after [`Executor::function_changed`]; may read storage, so it is not on
/// the warm path.
pub trait DeploymentSource: Send + Sync {
    /// The current revision of a function ready to instantiate, `None` if it does not exist.
    fn deployment(
        &self,
        namespace: &Namespace,
        function: &Name,
    ) -> Result<Option<InstanceSpec>, String>;
}

/// Instances of one function revision.
struct FunctionSlot {
    spec: InstanceSpec,
    idle: Mutex<Vec<(Box<dyn Instance>, Instant)>>,
    /// One permit per request in flight; instances serve one request at a time, so this also
    /// caps the number of instances.
    in_flight: Semaphore,
    waiting: AtomicUsize,
    /// Set when the function changed or was deleted: instances are stopped instead of reused.
    retired: AtomicBool,
}

impl FunctionSlot {
    fn take_idle(&self) -> Option<Box<dyn Instance>> {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned");
        // Most recently used first: it is the warmest, and the others may reach idle timeout.
        idle.pop().map(|(instance, _)| instance)
    }

    fn drain_idle(&self, older_than: Option<Duration>) -> Vec<Box<dyn Instance>> {
        let mut idle = self.idle.lock().expect("idle list lock is never poisoned");
        let now = Instant::now();
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut *idle)
            .into_iter()
            .partition(|(_, since)| older_than.is_none_or(|limit| now - *since >= limit));
        *idle = kept;
        expired.into_iter().map(|(instance, _)| instance).collect()
    }
}

/// Instances of a function right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    pub busy: usize,
    pub idle: usize,
}

/// The process-wide [`Invoker`].
pub struct Executor {
    config: ExecutorConfig,
    source: Arc<dyn DeploymentSource>,
    runtime: Arc<dyn Runtime>,
    slots: Mutex<HashMap<(Namespace, Name), Arc<FunctionSlot>>>,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            source,
            runtime,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// Forgets a function's deployment: idle instances stop now, busy ones when their request
    /// ends, and the next request loads the new revision.
    pub fn function_changed(&self, namespace: &Namespace, function: &Name) {
        let removed = self
            .slots
            .lock()
            .expect("slot map lock is never poisoned")
            .remove(&(namespace.clone(), function.clone()));
        if let Some(slot) = removed {
            slot.retired.store(true, Ordering::Release);
            stop_all(slot.drain_idle(None));
        }
    }

    pub fn instance_counts(&self, namespace: &Namespace, function: &Name) -> InstanceCounts {
        let slots = self.slots.lock().expect("slot map lock is never poisoned");
        let Some(slot) = slots.get(&(namespace.clone(), function.clone())) else {
            return InstanceCounts::default();
        };
        InstanceCounts {
            busy: self.config.max_instances - slot.in_flight.available_permits(),
            idle: slot
                .idle
                .lock()
                .expect("idle list lock is never poisoned")
                .len(),
        }
    }

    /// Stops instances idle longer than the idle timeout, once a second, until `shutdown`.
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
                let expired = slot.drain_idle(Some(self.config.idle_timeout));
                if !expired.is_empty() {
                    tracing::debug!(function = %slot.spec.function, count = expired.len(), "stopping idle instances");
                }
                stop_all(expired);
            }
        }
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
            slot.retired.store(true, Ordering::Release);
            for instance in slot.drain_idle(None) {
                instance.stop().await;
            }
        }
        self.runtime.shutdown().await;
    }

    fn slot(
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
        let not_found = || InvokeError::FunctionNotFound {
            namespace: namespace.to_string(),
            function: function.to_string(),
        };
        let spec = self
            .source
            .deployment(namespace, function)
            .map_err(|detail| {
                tracing::error!(%function, %detail, "cannot load the function's deployment");
                InvokeError::StartFailed {
                    function: function.to_string(),
                    detail: "its deployment could not be read".to_owned(),
                }
            })?
            .ok_or_else(not_found)?;
        let mut slots = self.slots.lock().expect("slot map lock is never poisoned");
        // Another request may have loaded it meanwhile; keep the first so instances are shared.
        let slot = slots.entry(key).or_insert_with(|| {
            Arc::new(FunctionSlot {
                spec,
                idle: Mutex::new(Vec::new()),
                in_flight: Semaphore::new(self.config.max_instances),
                waiting: AtomicUsize::new(0),
                retired: AtomicBool::new(false),
            })
        });
        Ok(slot.clone())
    }

    async fn admit<'a>(&self, slot: &'a FunctionSlot) -> Result<SemaphorePermit<'a>, InvokeError> {
        if let Ok(permit) = slot.in_flight.try_acquire() {
            return Ok(permit);
        }
        let over_capacity = |retry_after| InvokeError::OverCapacity {
            function: slot.spec.function.to_string(),
            retry_after,
        };
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.queue_depth {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(over_capacity(Duration::from_secs(1)));
        }
        let _waiting = Waiting(&slot.waiting);
        match tokio::time::timeout(self.config.queue_timeout, slot.in_flight.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(over_capacity(
                self.config.queue_timeout.max(Duration::from_secs(1)),
            )),
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
    async fn invoke(&self, invocation: Invocation) -> Result<http::Response<Bytes>, InvokeError> {
        let slot = self.slot(&invocation.namespace, &invocation.function)?;
        let permit = self.admit(&slot).await?;
        let mut instance = match slot.take_idle() {
            Some(instance) => instance,
            None => {
                self.runtime
                    .start_instance(&slot.spec, &invocation.id)
                    .await?
            }
        };
        let result = instance
            .handle(&invocation.id, invocation.request, slot.spec.limits.timeout)
            .await;
        if !slot.retired.load(Ordering::Acquire) && instance.is_healthy() {
            slot.idle
                .lock()
                .expect("idle list lock is never poisoned")
                .push((instance, Instant::now()));
        } else {
            stop_all(vec![instance]);
        }
        drop(permit);
        result
    }
}
