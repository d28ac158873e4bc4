//! Where Gust keeps what must survive a restart: metadata (environments, functions with their
//! revisions, routes, timers, queue triggers), the asynchronous invocation queue, usage records in an embedded transactional database, and function code in a
//! content-addressed directory tree.
//!
//! Metadata goes through small traits ([`EnvironmentStore`], [`FunctionStore`],
//! [`RouteStore`], [`TimerStore`], [`MqTriggerStore`]) and the async queue through [`InvocationStore`], so the
//! control plane does not know which backend holds them; the embedded [`EmbeddedStore`] (redb, one file in the data directory) is the one that exists today.
//! Every write is one ACID transaction: a crash leaves the previous or the next state, never
//! half of one. [`CodeStore`] unpacks uploads (single files, zip and tar archives) under strict
//! limits and publishes each tree with an atomic rename.
//!
//! Not here: deciding what a valid function is (`gust-model`) or running code.

mod access;
mod code;
mod embedded;
mod error;
mod mq;
mod queue;
mod sealer;
mod values;

pub use access::{forget_namespace_in_tokens, with_default_first};
pub use queue::{decode_request, encode_request};
pub use values::{OpenedMounts, mounted_by, open_mounts};

pub use code::{CodeHold, CodeLimits, CodePin, CodeStore, CodeUpload, is_code_digest};
pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use sealer::{SEALING_KEY_ENV, Sealer};

use std::collections::HashMap;

use gust_model::{
    ApiToken, AsyncInvocation, AuditEntry, Environment, Function, HourlyUsage, MqTrigger, Name,
    Namespace, NamespaceRecord, Route, StoredRequest, Timer, TimerStatus, UsageRecord, ValueKind,
    ValueSet,
};

/// Environments are global: every namespace can use every environment.
pub trait EnvironmentStore: Send + Sync {
    /// Stores a new environment; fails with [`StoreError::AlreadyExists`] if the name is taken.
    fn create_environment(&self, env: &Environment) -> Result<(), StoreError>;
    /// Stores an environment, replacing one of the same name (used for the built-in ones).
    fn put_environment(&self, env: &Environment) -> Result<(), StoreError>;
    fn environment(&self, name: &Name) -> Result<Option<Environment>, StoreError>;
    fn environments(&self) -> Result<Vec<Environment>, StoreError>;
    /// Fails with [`StoreError::InUse`] while a function's current revision uses it.
    fn delete_environment(&self, name: &Name) -> Result<(), StoreError>;
}

pub trait FunctionStore: Send + Sync {
    /// Stores a new function; its environment must exist and its name must be free.
    fn create_function(&self, function: &Function) -> Result<(), StoreError>;
    /// Replaces a function with a newer version of itself, atomically, after `change` approves
    /// the stored one; the environment of the new current revision must exist.
    fn update_function(
        &self,
        namespace: &Namespace,
        name: &Name,
        change: &mut dyn FnMut(Function) -> Result<Function, StoreError>,
    ) -> Result<Function, StoreError>;
    fn function(&self, namespace: &Namespace, name: &Name) -> Result<Option<Function>, StoreError>;
    /// Every function, or those of one namespace.
    fn functions(&self, namespace: Option<&Namespace>) -> Result<Vec<Function>, StoreError>;
    fn delete_function(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError>;
}

pub trait RouteStore: Send + Sync {
    /// Stores a route whose function exists and which conflicts with no route in any namespace
    /// (the public listener serves them all).
    fn create_route(&self, route: &Route) -> Result<(), StoreError>;
    /// Every route, or those of one namespace.
    fn routes(&self, namespace: Option<&Namespace>) -> Result<Vec<Route>, StoreError>;
    fn delete_route(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError>;
}

/// Usage records and their hourly totals. Writes are batched by the caller (group commit):
/// one call is one transaction, one fsync.
pub trait UsageStore: Send + Sync {
    /// Stores the records not stored before (by invocation id and attempt) and adds each new
    /// one to its function's hourly totals, atomically. Returns how many were new.
    fn record_usage(&self, records: &[UsageRecord]) -> Result<usize, StoreError>;
    /// Hourly totals of a namespace (one function's, if given) for hours that end after
    /// `since_ms`, oldest first.
    fn usage_hours(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        since_ms: u64,
    ) -> Result<Vec<HourlyUsage>, StoreError>;
    /// Records of a namespace (one function's, if given) that started at or after `since_ms`,
    /// oldest first, at most `limit`.
    fn usage_records(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<UsageRecord>, StoreError>;
    /// Deletes, oldest first and at most `limit` of each, raw records that started before
    /// `records_before_ms` and hourly totals of hours that started before `hours_before_ms`.
    /// The totals already hold every record: deleting records changes no total. A record
    /// deleted here and then recorded again (impossible unless it arrives later than its
    /// retention) would be counted again.
    fn prune_usage(
        &self,
        records_before_ms: u64,
        hours_before_ms: u64,
        limit: usize,
    ) -> Result<UsagePruned, StoreError>;
}

/// What one [`UsageStore::prune_usage`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsagePruned {
    pub records: usize,
    pub hours: usize,
}

/// One change to the asynchronous invocation queue; many are applied together in one
/// transaction (group commit).
#[derive(Debug)]
pub enum QueueChange {
    /// Accepts a new invocation with its request. A timer tick (`<namespace>/<timer>`, tick
    /// time) at or before the last one enqueued for that timer is refused as a duplicate.
    Enqueue {
        invocation: AsyncInvocation,
        request: StoredRequest,
        timer_tick: Option<(String, u64)>,
        /// What the queue may hold; `None` for a dead letter stored from outside the queue (a
        /// queue trigger's failed message): refusing it would leave that message unsettled.
        bounds: Option<QueueBounds>,
    },
    /// Stores an invocation's new state (claimed for an attempt, retried, finished).
    Update { invocation: AsyncInvocation },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOutcome {
    Stored,
    /// The timer tick was enqueued before; nothing was stored.
    DuplicateTick,
    /// Storing it would pass a bound; nothing was stored.
    Full(QueueFull),
}

/// How much asynchronous work the queue holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// Invocations of one function pending or running at once.
    pub per_function: u64,
    /// Bytes of stored requests and invocation records (waiting work, finished invocations
    /// within their retention and dead letters together).
    pub stored_bytes: u64,
    /// Invocations of the whole namespace pending or running at once (its quota), if any.
    pub per_namespace: Option<u64>,
}

/// Which bound an enqueue would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    FunctionDepth { limit: u64 },
    NamespaceDepth { limit: u64 },
    StoreBudget { limit: u64 },
}

/// Dead letters deleted by one sweep, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadLetterSweep {
    /// Older than the retention.
    pub expired: usize,
    /// The oldest of a function that had more than the cap.
    pub over_cap: usize,
}

impl DeadLetterSweep {
    pub fn total(&self) -> usize {
        self.expired + self.over_cap
    }
}

/// A namespace's asynchronous invocations by state, as far as a store counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsyncCounts {
    /// Accepted and not ended: waiting for an attempt, or running one.
    pub open: u64,
    /// Of them, running an attempt now; `None` where the store does not tell (a cluster's).
    pub running: Option<u64>,
    /// Failed for good or expired, kept for re-drive.
    pub dead_letters: u64,
    /// Ended with success, and ended as a dead letter, since the store was created; `None`
    /// where the store does not count them (a cluster's).
    pub succeeded: Option<u64>,
    pub failed: Option<u64>,
}

/// The durable queue of asynchronous invocations and their dead letters.
pub trait InvocationStore: Send + Sync {
    /// Applies `changes` in one transaction, one fsync. A change that conflicts (an id that
    /// exists) fails alone; a storage failure fails the whole batch and stores nothing.
    fn apply_queue_changes(
        &self,
        changes: &[QueueChange],
    ) -> Result<Vec<Result<QueueOutcome, StoreError>>, StoreError>;
    /// Pending invocations due at or before `now_ms`, earliest first, with their requests.
    fn due_invocations(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(AsyncInvocation, StoredRequest)>, StoreError>;
    /// When the earliest pending invocation is due.
    fn next_due_ms(&self) -> Result<Option<u64>, StoreError>;
    /// Pending invocations (due or not).
    fn pending_count(&self) -> Result<u64, StoreError>;
    /// `namespace`'s invocations by state.
    fn async_counts(&self, namespace: &Namespace) -> Result<AsyncCounts, StoreError>;
    fn invocation(&self, id: &str) -> Result<Option<AsyncInvocation>, StoreError>;
    /// The request of an invocation that has not succeeded.
    fn invocation_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError>;
    /// Dead and expired invocations not yet re-driven, by function then id.
    fn dead_letters(
        &self,
        namespace: &Namespace,
        function: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<AsyncInvocation>, StoreError>;
    /// Deletes the given dead letters (other ids are skipped); returns how many went.
    fn purge_dead_letters(&self, ids: &[String]) -> Result<usize, StoreError>;
    /// Deletes up to `limit` ended invocations that are not dead letters (succeeded, or
    /// re-driven) and ended before `before_ms`, oldest first; returns how many.
    fn sweep_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError>;
    /// Deletes up to `limit` dead letters: those that died before `before_ms`, then the oldest
    /// of each function holding more than `per_function`.
    fn sweep_dead_letters(
        &self,
        before_ms: u64,
        per_function: u64,
        limit: usize,
    ) -> Result<DeadLetterSweep, StoreError>;
    /// The status of `namespace`'s timers that have fired, by timer name.
    fn timer_statuses(
        &self,
        namespace: &Namespace,
    ) -> Result<HashMap<String, TimerStatus>, StoreError>;
    /// Starts a timer's status afresh, counting ticks from `since_ms` (a timer just made);
    /// `None` forgets it (a timer deleted).
    fn reset_timer_status(
        &self,
        namespace: &Namespace,
        name: &Name,
        since_ms: Option<u64>,
    ) -> Result<(), StoreError>;
    /// Called once at start: attempts that were in flight when Gust stopped are lost, so
    /// their invocations become due now. Returns how many.
    fn recover_running(&self, now_ms: u64) -> Result<usize, StoreError>;
}

pub trait TimerStore: Send + Sync {
    /// Stores a timer whose function exists and whose name is free.
    fn create_timer(&self, timer: &Timer) -> Result<(), StoreError>;
    fn timers(&self, namespace: Option<&Namespace>) -> Result<Vec<Timer>, StoreError>;
    fn delete_timer(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError>;
}

pub trait MqTriggerStore: Send + Sync {
    /// Stores a queue trigger whose function exists and whose name is free.
    fn create_mq_trigger(&self, trigger: &MqTrigger) -> Result<(), StoreError>;
    fn mq_triggers(&self, namespace: Option<&Namespace>) -> Result<Vec<MqTrigger>, StoreError>;
    fn delete_mq_trigger(&self, namespace: &Namespace, name: &Name) -> Result<(), StoreError>;
}

/// Code trees other nodes may hold: a cluster's shared store. A single node has none; its
/// [`CodeStore`] holds every tree.
pub trait SharedCode: Send + Sync {
    /// Makes sure the local tree `digest` is in the shared store (before metadata refers to
    /// it).
    fn share(&self, digest: &str) -> Result<(), StoreError>;
    /// Makes sure the tree `digest` is in the local code store, fetching it if needed.
    fn fetch(&self, digest: &str) -> Result<(), StoreError>;
}

/// Namespaces and API tokens: who may reach what. `default` always exists and is never
/// stored.
pub trait AccessStore: Send + Sync {
    /// Fails with [`StoreError::AlreadyExists`] if the namespace exists (`default` always does).
    fn create_namespace(&self, record: &NamespaceRecord) -> Result<(), StoreError>;
    /// Replaces a namespace's record (its quotas); `default` is stored by its first update.
    fn update_namespace(&self, record: &NamespaceRecord) -> Result<(), StoreError>;
    fn namespace_record(
        &self,
        namespace: &Namespace,
    ) -> Result<Option<NamespaceRecord>, StoreError>;
    /// Every namespace, `default` first.
    fn namespace_records(&self) -> Result<Vec<NamespaceRecord>, StoreError>;
    /// Deletes an empty namespace (else [`StoreError::InUse`] naming what it holds) and
    /// forgets it in every token: one that reached only it is deleted with it.
    fn delete_namespace(&self, namespace: &Namespace) -> Result<(), StoreError>;
    /// Fails with [`StoreError::AlreadyExists`] if a token has its id or its name.
    fn create_token(&self, token: &ApiToken) -> Result<(), StoreError>;
    fn token(&self, id: &str) -> Result<Option<ApiToken>, StoreError>;
    fn tokens(&self) -> Result<Vec<ApiToken>, StoreError>;
    fn delete_token(&self, id: &str) -> Result<(), StoreError>;
}

/// Secrets and configs of each namespace. A secret's values arrive sealed (see [`Sealer`]).
pub trait ValueStore: Send + Sync {
    /// Stores a new set; [`StoreError::AlreadyExists`] if its name is taken in its namespace.
    fn create_values(&self, set: &ValueSet) -> Result<(), StoreError>;
    /// Replaces a set whose stored version is `set.version - 1`; [`StoreError::Changed`] if
    /// another update came first, [`StoreError::NotFound`] if there is none.
    fn update_values(&self, set: &ValueSet) -> Result<(), StoreError>;
    fn values(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
        name: &Name,
    ) -> Result<Option<ValueSet>, StoreError>;
    /// Every set of a kind in a namespace, by name.
    fn value_sets(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
    ) -> Result<Vec<ValueSet>, StoreError>;
    /// Deletes a set no function's current revision mounts ([`StoreError::InUse`] names one).
    fn delete_values(
        &self,
        kind: ValueKind,
        namespace: &Namespace,
        name: &Name,
    ) -> Result<(), StoreError>;
}

/// The audit log: control-plane writes, oldest first, kept for a retention.
pub trait AuditStore: Send + Sync {
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Entries at or after `since_ms` (of one namespace, if given), oldest first, at most
    /// `limit`.
    fn audit(
        &self,
        since_ms: u64,
        namespace: Option<&Namespace>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// Stores entries copied from a cluster's audit stream, each keyed by its stream sequence
    /// so that copying one twice stores it once.
    fn fold_audit(&self, entries: &[(u64, AuditEntry)]) -> Result<(), StoreError>;
    /// Deletes up to `limit` entries older than `before_ms`, oldest first; returns how many.
    fn prune_audit(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError>;
}

/// Everything the control plane needs from metadata storage.
pub trait MetadataStore:
    EnvironmentStore
    + FunctionStore
    + RouteStore
    + TimerStore
    + MqTriggerStore
    + AccessStore
    + ValueStore
{
}
impl<
    T: EnvironmentStore
        + FunctionStore
        + RouteStore
        + TimerStore
        + MqTriggerStore
        + AccessStore
        + ValueStore,
> MetadataStore for T
{
}
