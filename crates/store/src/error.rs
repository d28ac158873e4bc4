use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} is in use by {user}")]
    InUse {
        kind: &'static str,
        name: String,
        user: String,
    },
    #[error("route {path:?} conflicts with route {existing:?} ({existing_path:?})")]
    RouteConflict {
        path: String,
        existing: String,
        existing_path: String,
    },
    #[error(
        "host {host:?} belongs to namespace {namespace:?}; a host's routes are one namespace's"
    )]
    HostClaimed { host: String, namespace: String },
    /// A revision-checked write found the record changed since it was read (another node
    /// wrote it first); nothing was stored.
    #[error(
        "{kind} {name:?} was changed by another request at the same time; read it again and retry"
    )]
    Changed { kind: &'static str, name: String },
    /// The shared store (a cluster's NATS) cannot be reached or did not answer in time;
    /// nothing was stored.
    #[error("the cluster store is unavailable: {0}")]
    Unavailable(String),
    #[error("invalid code upload: {reason}")]
    InvalidCode { reason: String },
    #[error("database error: {0}")]
    Database(String),
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored record {key:?} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Why `route` cannot be created beside `existing` (named `existing_name` in the message),
    /// if it cannot.
    pub fn route_clash(
        route: &gust_model::Route,
        existing: &gust_model::Route,
        existing_name: String,
    ) -> Option<StoreError> {
        Some(match route.clash_with(existing)? {
            gust_model::RouteClash::SameRequests => StoreError::RouteConflict {
                path: route.path.to_string(),
                existing: existing_name,
                existing_path: existing.path.to_string(),
            },
            gust_model::RouteClash::HostOwned { host, namespace } => StoreError::HostClaimed {
                host: host.to_string(),
                namespace: namespace.to_string(),
            },
        })
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    pub fn invalid_code(reason: impl Into<String>) -> StoreError {
        StoreError::InvalidCode {
            reason: reason.into(),
        }
    }
}

macro_rules! database_error {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                StoreError::Database(err.to_string())
            }
        }
    )*};
}

database_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::UpgradeError
);
