//! What the executor tells the rest of Gust about each invocation attempt: the facts that
//! metering bills and metrics count. The executor measures; observers decide what to keep.

use std::time::{Duration, SystemTime};

use gust_model::{Name, Namespace, RevisionNumber, Tier};

use crate::{RequestId, TriggerKind};

/// The parts of starting an instance that a cold start spent time in.
#[derive(Debug, Clone, Copy)]
pub struct ColdStart {
    /// Getting a ready instance: specializing a pooled worker (process tier) or loading and
    /// instantiating the component (wasm tier).
    pub start: Duration,
    pub tier: Tier,
    /// Where `start` went, as far as it was measured; `None` when the instance was a
    /// connection to a worker already running (`--concurrency` above 1).
    pub phases: Option<StartPhases>,
}

/// The phases of starting an instance, in order; a phase a tier does not have is zero. Their
/// sum is at most the start's time: the rest is handing the instance to the request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StartPhases {
    /// Preparing the revision, once per revision and node: loading the compiled component
    /// and linking it (wasm tier).
    pub prepare: Duration,
    /// Taking a pooled worker, or starting a fresh one when the pool had none (process tier).
    pub worker: Duration,
    /// Applying the function's limits to the worker: its memory cgroup and network.
    pub limits: Duration,
    /// Placing the code (and mounted secrets and configs) in the worker's view.
    pub place: Duration,
    /// The specialize round trip: the worker imports the code.
    pub load: Duration,
}

impl StartPhases {
    /// The phases in order: prepare, worker, limits, place, load.
    pub fn in_order(&self) -> [Duration; 5] {
        [
            self.prepare,
            self.worker,
            self.limits,
            self.place,
            self.load,
        ]
    }
}

/// One invocation attempt that reached a function (an instance was asked to serve it, or
/// starting one failed).
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub id: RequestId,
    pub attempt: u32,
    pub namespace: Namespace,
    pub function: Name,
    pub revision: RevisionNumber,
    pub trigger: TriggerKind,
    pub started_at: SystemTime,
    /// Waiting for capacity before anything ran.
    pub queue_wait: Duration,
    pub cold_start: Option<ColdStart>,
    /// From dispatch to the instance until its whole response was read; zero when no
    /// instance could be started.
    pub run: Duration,
    /// CPU the instance used for this request, where the runtime measures it.
    pub cpu: Option<Duration>,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// The function's HTTP status, or the status of the error Gust answered with.
    pub status: u16,
}

/// Receives what the executor measured. Called on the request path after the response is
/// known: implementations must not block.
pub trait InvocationObserver: Send + Sync {
    fn attempt_finished(&self, report: AttemptReport);

    /// A request was refused for capacity (429) before reaching any instance.
    fn throttled(&self, namespace: &Namespace, function: &Name, trigger: TriggerKind);

    /// No instance could be started for a request (503, no code ran): counted, never billed.
    fn start_failed(&self, _namespace: &Namespace, _function: &Name, _trigger: TriggerKind) {}

    /// A function's revision was prepared (on deploy, and for every function at startup), off
    /// the request path: an observer can set up what it keeps per function before the first
    /// request, which would otherwise pay for it.
    fn function_ready(&self, _namespace: &Namespace, _function: &Name, _tier: Tier) {}

    /// A function was deleted: an observer drops what it keeps per function (metric series).
    fn function_deleted(&self, _namespace: &Namespace, _function: &Name) {}
}

/// Observes nothing (for tests and tools that need no metering).
pub struct NoObserver;

impl InvocationObserver for NoObserver {
    fn attempt_finished(&self, _report: AttemptReport) {}
    fn throttled(&self, _namespace: &Namespace, _function: &Name, _trigger: TriggerKind) {}
}
