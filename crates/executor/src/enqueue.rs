//! Accepting an invocation to run later (an asynchronous one), as the data plane sees it:
//! the public router and the API's invoke hand the request over and answer 202 once it is
//! stored. Which queue keeps it, and what runs it, are not theirs to know.

use async_trait::async_trait;
use bytes::Bytes;
use gust_model::{AsyncSource, Name, Namespace};
use thiserror::Error;

use crate::RequestId;

/// Why an asynchronous invocation was not accepted; nothing was stored.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    #[error("the function already has {limit} asynchronous invocations waiting or running")]
    FunctionFull { limit: u64 },
    #[error("the asynchronous queue holds its budget of {limit} bytes of requests")]
    QueueFull { limit: u64 },
    /// The store did not take the write (disk full, I/O error, stopping).
    #[error("the invocation could not be stored: {0}")]
    Unavailable(String),
}

/// Stores asynchronous invocations. `enqueue` resolves once the invocation is durable: the
/// moment its caller may answer 202 with `id`.
#[async_trait]
pub trait Enqueue: Send + Sync {
    async fn enqueue(
        &self,
        id: &RequestId,
        namespace: Namespace,
        function: Name,
        source: AsyncSource,
        request: &http::Request<Bytes>,
    ) -> Result<(), EnqueueError>;
}
