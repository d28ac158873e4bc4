//! The handle every producer of asynchronous work uses: routes, the API, timers, redrives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_executor::RequestId;
use gust_model::{AsyncInvocation, AsyncSource, Name, Namespace, Timer};
use gust_store::{AsyncCounts, InvocationStore, QueueBounds, QueueChange, QueueFull, QueueOutcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::writer::QueueWriter;
use crate::{Clock, QueueError};
use gust_executor::store_request;

/// How much the queue holds: waiting work per function and in bytes, and dead letters.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Refuse (429) an enqueue past these.
    pub bounds: QueueBounds,
    /// Dead letters older than this are deleted.
    pub dead_letter_retention: Duration,
    /// A function's dead letters beyond this many are deleted, oldest first.
    pub dead_letters_per_function: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            bounds: QueueBounds {
                per_namespace: None,
                per_function: 1_000,
                stored_bytes: 1024 * 1024 * 1024,
            },
            dead_letter_retention: Duration::from_secs(14 * 24 * 3600),
            dead_letters_per_function: 1_000,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

pub(crate) struct Shared {
    pub store: Arc<dyn InvocationStore>,
    pub writer: QueueWriter,
    pub clock: Arc<dyn Clock>,
    pub limits: QueueLimits,
    /// Wakes the dispatcher when something may be due.
    pub wake: Notify,
    /// Pending invocations, as last counted.
    pub depth: Gauge,
    /// Enqueues refused for a bound (`function_depth`, `store_budget`).
    pub refused: Family<ReasonLabels, Counter>,
    /// Dead letters deleted (`retention`, `cap`).
    pub dead_letters_dropped: Family<ReasonLabels, Counter>,
    /// Namespaces' quotas on invocations pending or running at once.
    pub namespace_depths: arc_swap::ArcSwap<std::collections::HashMap<Namespace, u64>>,
}

/// The durable queue of asynchronous invocations. Cheap to clone.
#[derive(Clone)]
pub struct AsyncQueue {
    pub(crate) shared: Arc<Shared>,
}

impl AsyncQueue {
    pub fn new(
        store: Arc<dyn InvocationStore>,
        clock: Arc<dyn Clock>,
        limits: QueueLimits,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                writer: QueueWriter::start(store.clone()),
                store,
                clock,
                limits,
                wake: Notify::new(),
                depth: Gauge::default(),
                refused: Family::default(),
                dead_letters_dropped: Family::default(),
                namespace_depths: Default::default(),
            }),
        }
    }

    /// Sets every namespace's quota on invocations pending or running (those absent have
    /// none).
    pub fn set_namespace_depths(&self, depths: std::collections::HashMap<Namespace, u64>) {
        self.shared.namespace_depths.store(Arc::new(depths));
    }

    /// The bounds an enqueue to `namespace` is checked against.
    fn bounds_of(&self, namespace: &Namespace) -> QueueBounds {
        QueueBounds {
            per_namespace: self.shared.namespace_depths.load().get(namespace).copied(),
            ..self.shared.limits.bounds
        }
    }

    /// Invocations waiting for an attempt on this node (the `gust_async_queue_depth` gauge).
    pub fn depth(&self) -> u64 {
        u64::try_from(self.shared.depth.get()).unwrap_or(0)
    }

    /// Adds the queue's metrics to a registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "gust_async_queue_depth",
            "Asynchronous invocations waiting for an attempt",
            self.shared.depth.clone(),
        );
        registry.register(
            "gust_async_refused",
            "Asynchronous invocations refused because the queue was full (reason: function_depth, store_budget)",
            self.shared.refused.clone(),
        );
        registry.register(
            "gust_async_dead_letters_dropped",
            "Dead letters deleted by retention or by the per-function cap (reason: retention, cap)",
            self.shared.dead_letters_dropped.clone(),
        );
    }

    /// Stores an invocation of `function` with `request`; returns once it is on disk. The
    /// request's headers are kept as they are: the caller has already removed what the
    /// function must not see.
    pub async fn enqueue(
        &self,
        id: &RequestId,
        namespace: Namespace,
        function: Name,
        source: AsyncSource,
        request: &http::Request<Bytes>,
    ) -> Result<(), QueueError> {
        let bounds = self.bounds_of(&namespace);
        let invocation = AsyncInvocation::accepted(
            id.to_string(),
            namespace,
            function,
            source,
            self.shared.clock.now_ms(),
        );
        self.submit_one(QueueChange::Enqueue {
            invocation,
            request: store_request(request),
            timer_tick: None,
            bounds: Some(bounds),
        })
        .await
        .map(|_| ())
    }

    /// Enqueues one tick of `timer`; `false` when that tick was enqueued before.
    pub async fn enqueue_tick(&self, timer: &Timer, tick_ms: u64) -> Result<bool, QueueError> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("/")
            .body(Bytes::new())
            .expect("a POST to / is a valid request");
        let invocation = AsyncInvocation::accepted(
            RequestId::generate().to_string(),
            timer.namespace.clone(),
            timer.function.clone(),
            AsyncSource::Timer {
                timer: timer.name.clone(),
                tick_ms,
            },
            self.shared.clock.now_ms(),
        );
        let bounds = self.bounds_of(&timer.namespace);
        let outcome = self
            .submit_one(QueueChange::Enqueue {
                invocation,
                request: store_request(&request),
                timer_tick: Some((format!("{}/{}", timer.namespace, timer.name), tick_ms)),
                bounds: Some(bounds),
            })
            .await?;
        Ok(outcome == QueueOutcome::Stored)
    }

    /// Stores work that failed outside this queue (a queue trigger's message whose attempts
    /// all failed) as a dead letter, with the request that was delivered; returns once it is
    /// on disk, so the message it came from may be acknowledged.
    pub async fn store_dead_letter(
        &self,
        invocation: AsyncInvocation,
        request: gust_model::StoredRequest,
    ) -> Result<(), QueueError> {
        debug_assert!(invocation.is_dead_letter());
        self.submit_one(QueueChange::Enqueue {
            invocation,
            request,
            timer_tick: None,
            bounds: None,
        })
        .await
        .map(|_| ())
    }

    async fn submit_one(&self, change: QueueChange) -> Result<QueueOutcome, QueueError> {
        let outcome = self
            .shared
            .writer
            .submit(vec![change])
            .await?
            .pop()
            .expect("the writer answers every change of a submission");
        match outcome {
            Ok(QueueOutcome::Full(full)) => {
                let reason = match full {
                    QueueFull::FunctionDepth { .. } => "function_depth",
                    QueueFull::NamespaceDepth { .. } => "namespace_quota",
                    QueueFull::StoreBudget { .. } => "store_budget",
                };
                self.shared
                    .refused
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                Err(QueueError::Full(full))
            }
            outcome => {
                self.shared.wake.notify_one();
                outcome.map_err(QueueError::Unavailable)
            }
        }
    }

    pub async fn invocation(&self, id: &str) -> Result<Option<AsyncInvocation>, QueueError> {
        let (store, id) = (self.shared.store.clone(), id.to_owned());
        run_blocking(move || Ok(store.invocation(&id)?)).await
    }

    /// The stored request of an invocation that has not succeeded.
    pub async fn dead_letter_request(
        &self,
        id: &str,
    ) -> Result<Option<gust_model::StoredRequest>, QueueError> {
        let (store, id) = (self.shared.store.clone(), id.to_owned());
        run_blocking(move || Ok(store.invocation_request(&id)?)).await
    }

    /// The status of `namespace`'s timers that have fired, by timer name. Blocks: call it
    /// from a blocking thread.
    pub fn timer_statuses(
        &self,
        namespace: &Namespace,
    ) -> Result<std::collections::HashMap<String, gust_model::TimerStatus>, QueueError> {
        Ok(self.shared.store.timer_statuses(namespace)?)
    }

    /// Starts a timer's status afresh from `since_ms` (a timer just made), or forgets it
    /// (`None`: deleted). Blocks: call it from a blocking thread.
    pub fn reset_timer(
        &self,
        namespace: &Namespace,
        timer: &Name,
        since_ms: Option<u64>,
    ) -> Result<(), QueueError> {
        Ok(self
            .shared
            .store
            .reset_timer_status(namespace, timer, since_ms)?)
    }

    /// `namespace`'s invocations by state.
    pub async fn counts(&self, namespace: &Namespace) -> Result<AsyncCounts, QueueError> {
        let store = self.shared.store.clone();
        let namespace = namespace.clone();
        run_blocking(move || Ok(store.async_counts(&namespace)?)).await
    }

    pub async fn dead_letters(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<AsyncInvocation>, QueueError> {
        let store = self.shared.store.clone();
        let (namespace, function) = (namespace.clone(), function.cloned());
        run_blocking(move || Ok(store.dead_letters(&namespace, function.as_ref(), limit)?)).await
    }

    /// Makes a new invocation of each dead letter in `ids` (same function and request,
    /// `redriven_from` set), and takes the dead letters off the list, in one transaction.
    /// Returns (dead letter id, new id) pairs.
    pub async fn redrive(
        &self,
        namespace: &Namespace,
        ids: Vec<String>,
    ) -> Result<Vec<(String, String)>, QueueError> {
        let store = self.shared.store.clone();
        let namespace = namespace.clone();
        let now = self.shared.clock.now_ms();
        let (changes, pairs) = run_blocking(move || {
            let mut changes = Vec::new();
            let mut pairs = Vec::new();
            for id in ids {
                let Some(mut dead) = store.invocation(&id)?.filter(|i| i.namespace == namespace)
                else {
                    return Err(QueueError::NotFound { id });
                };
                if !dead.is_dead_letter() {
                    return Err(QueueError::NotDeadLetter { id });
                }
                let Some(request) = store.invocation_request(&id)? else {
                    return Err(QueueError::NotFound { id });
                };
                let new_id = RequestId::generate().to_string();
                let mut again = AsyncInvocation::accepted(
                    new_id.clone(),
                    dead.namespace.clone(),
                    dead.function.clone(),
                    dead.source.clone(),
                    now,
                );
                again.redriven_from = Some(id.clone());
                dead.redriven_to = Some(new_id.clone());
                dead.updated_at_ms = now;
                // An operator's explicit redrive is not refused for the queue's depth.
                changes.push(QueueChange::Enqueue {
                    invocation: again,
                    request,
                    timer_tick: None,
                    bounds: None,
                });
                changes.push(QueueChange::Update { invocation: dead });
                pairs.push((id, new_id));
            }
            Ok((changes, pairs))
        })
        .await?;
        if changes.is_empty() {
            return Ok(pairs);
        }
        for outcome in self.shared.writer.submit(changes).await? {
            outcome.map_err(QueueError::Unavailable)?;
        }
        self.shared.wake.notify_one();
        Ok(pairs)
    }

    /// Deletes dead letters; returns how many there were among `ids`.
    pub async fn purge(&self, ids: Vec<String>) -> Result<usize, QueueError> {
        let store = self.shared.store.clone();
        run_blocking(move || Ok(store.purge_dead_letters(&ids)?)).await
    }
}

pub(crate) async fn run_blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| QueueError::Unavailable(format!("storage task failed: {e}")))?
}

/// What the data plane sees of a queue error: full, or unavailable.
fn enqueue_error(err: QueueError) -> gust_executor::EnqueueError {
    use gust_executor::EnqueueError;
    match err {
        QueueError::Full(QueueFull::FunctionDepth { limit }) => {
            EnqueueError::FunctionFull { limit }
        }
        QueueError::Full(QueueFull::StoreBudget { limit }) => EnqueueError::QueueFull { limit },
        QueueError::Full(QueueFull::NamespaceDepth { limit }) => {
            EnqueueError::NamespaceFull { limit }
        }
        other => EnqueueError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl gust_executor::Enqueue for AsyncQueue {
    async fn enqueue_tick(
        &self,
        timer: &Timer,
        tick_ms: u64,
    ) -> Result<bool, gust_executor::EnqueueError> {
        AsyncQueue::enqueue_tick(self, timer, tick_ms)
            .await
            .map_err(enqueue_error)
    }

    async fn store_dead_letter(
        &self,
        invocation: AsyncInvocation,
        request: gust_model::StoredRequest,
    ) -> Result<(), gust_executor::EnqueueError> {
        AsyncQueue::store_dead_letter(self, invocation, request)
            .await
            .map_err(enqueue_error)
    }

    async fn enqueue(
        &self,
        id: &RequestId,
        namespace: Namespace,
        function: Name,
        source: AsyncSource,
        request: &http::Request<Bytes>,
    ) -> Result<(), gust_executor::EnqueueError> {
        AsyncQueue::enqueue(self, id, namespace, function, source, request)
            .await
            .map_err(enqueue_error)
    }
}
