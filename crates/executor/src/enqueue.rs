//! Accepting an invocation to run later (an asynchronous one), as the data plane sees it:
//! the public router and the API's invoke hand the request over and answer 202 once it is
//! stored, a timer hands over its ticks, a queue trigger the messages whose attempts all
//! failed. Which queue keeps them, and what runs them, are not theirs to know.

use async_trait::async_trait;
use bytes::Bytes;
use gust_model::{AsyncInvocation, AsyncSource, Name, Namespace, StoredRequest, Timer};
use thiserror::Error;

use crate::RequestId;

/// Why an asynchronous invocation was not accepted; nothing was stored.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    #[error("the function already has {limit} asynchronous invocations waiting or running")]
    FunctionFull { limit: u64 },
    #[error("the asynchronous queue holds its budget of {limit} bytes of requests")]
    QueueFull { limit: u64 },
    #[error(
        "the namespace already has {limit} asynchronous invocations waiting or running, its quota"
    )]
    NamespaceFull { limit: u64 },
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

    /// Stores one tick of `timer` as an invocation of its function. A tick at or before the
    /// last one stored for the timer is refused (`Ok(false)`), so a tick never fires twice.
    async fn enqueue_tick(&self, timer: &Timer, tick_ms: u64) -> Result<bool, EnqueueError>;

    /// Stores work that failed elsewhere (a queue trigger's message whose attempts all
    /// failed) as a dead letter with the request that was delivered; resolves once it is
    /// durable, so the message it came from may be acknowledged.
    async fn store_dead_letter(
        &self,
        invocation: AsyncInvocation,
        request: StoredRequest,
    ) -> Result<(), EnqueueError>;
}

/// Where the asynchronous path reads the time: the system clock in Gust, a hand-driven one in
/// tests of backoff, max age and schedules.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The whole seconds a function's `Retry-After` asks for (zero when absent or not a number).
pub fn retry_after(response: &http::Response<Bytes>) -> std::time::Duration {
    response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(std::time::Duration::ZERO, std::time::Duration::from_secs)
}

/// A request as a queue keeps it. Header values are kept as Latin-1 text (one char per byte)
/// so that every byte a caller sent survives the round trip.
pub fn store_request(request: &http::Request<Bytes>) -> StoredRequest {
    StoredRequest {
        method: request.method().as_str().to_owned(),
        uri: request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                let latin1: String = value.as_bytes().iter().map(|&b| b as char).collect();
                (name.as_str().to_owned(), latin1)
            })
            .collect(),
        body: request.body().to_vec(),
    }
}
