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
    /// Storing it would pass the queue's bounds; nothing was stored.
    #[error("{}", full_message(.0))]
    Full(gust_store::QueueFull),
    /// The queue is stopping.
    #[error("the invocation queue is stopping")]
    Stopped,
}

impl From<gust_store::StoreError> for QueueError {
    fn from(err: gust_store::StoreError) -> Self {
        QueueError::Unavailable(err.to_string())
    }
}

fn full_message(full: &gust_store::QueueFull) -> String {
    match full {
        gust_store::QueueFull::FunctionDepth { limit } => {
            format!("the function already has {limit} asynchronous invocations waiting or running")
        }
        gust_store::QueueFull::NamespaceDepth { limit } => {
            format!(
                "the namespace already has {limit} asynchronous invocations waiting or running, its quota"
            )
        }
        gust_store::QueueFull::StoreBudget { limit } => {
            format!("the asynchronous queue holds its budget of {limit} bytes of requests")
        }
    }
}
