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
