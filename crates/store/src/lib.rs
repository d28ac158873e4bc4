//! Where Gust keeps what must survive a restart: metadata (environments, functions with their
//! revisions, routes) in an embedded transactional database, and function code in a
//! content-addressed directory tree.
//!
//! Metadata goes through small traits ([`EnvironmentStore`], [`FunctionStore`],
//! [`RouteStore`]) so the control plane does not know which backend holds it; the embedded
//! [`EmbeddedStore`] (redb, one file in the data directory) is the one that exists today.
//! Every write is one ACID transaction: a crash leaves the previous or the next state, never
//! half of one. [`CodeStore`] unpacks uploads (single files, zip and tar archives) under strict
//! limits and publishes each tree with an atomic rename.
//!
//! Not here: deciding what a valid function is (`gust-model`) or running code.

mod code;
mod embedded;
mod error;

pub use code::{CodeLimits, CodeStore, CodeUpload};
pub use embedded::EmbeddedStore;
pub use error::StoreError;

use gust_model::{Environment, Function, HourlyUsage, Name, Namespace, Route, UsageRecord};

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
}

/// Everything the control plane needs from metadata storage.
pub trait MetadataStore: EnvironmentStore + FunctionStore + RouteStore {}
impl<T: EnvironmentStore + FunctionStore + RouteStore> MetadataStore for T {}
