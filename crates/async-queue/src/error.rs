use thiserror::Error;

/// Why the queue could not do what was asked.
#[derive(Debug, Error, Clone)]
pub enum QueueError {
    /// The store did not take the write (disk full, I/O error): nothing was accepted.
    #[error("the invocation queue cannot store the invocation: {0}")]
    Unavailable(String),
    #[error("invocation {id:?} not found")]
    NotFound { id: String },
    #[error("invocation {id:?} is not a dead letter")]
    NotDeadLetter { id: String },
    /// The queue is stopping.
    #[error("the invocation queue is stopping")]
    Stopped,
}

impl From<gust_store::StoreError> for QueueError {
    fn from(err: gust_store::StoreError) -> Self {
        QueueError::Unavailable(err.to_string())
    }
}
