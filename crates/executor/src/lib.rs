//! The executor: turns "invoke function F with this request" into a response, whoever asks
//! (the public router, the API's invoke endpoint, later timers and queues).
//!
//! Key types:
//! - [`Invoker`]: the one call every trigger makes. Triggers depend on this trait only.
//! - [`Enqueue`]: where an asynchronous invocation is handed over, beside `Invoker`.
//! - [`Runtime`] / [`PreparedRevision`] / [`Instance`]: what a runtime tier (processes, wasm)
//!   provides: a revision prepared once, from which ready instances start, each handling one
//!   request at a time.
//! - [`Executor`]: the concrete [`Invoker`]: keeps each function's warm instances, bounds how
//!   many run at once with a wait queue (429 past it), stops idle ones, and replaces them when a
//!   function changes.
//! - [`FunctionLogs`]: captured stdout/stderr lines, capped per function.
//!
//! Not here: starting processes or sandboxes (runtime crates), HTTP listeners, storage.

pub mod body;
mod enqueue;
mod error;
mod executor;
mod log_journal;
mod logs;
mod memory_dir;
mod observer;
mod quota;
mod request_body;
mod runtime;

pub use body::ResponseBody;
pub use enqueue::{Clock, Enqueue, EnqueueError, SystemClock, retry_after, store_request};
pub use error::InvokeError;
pub use executor::{
    DeploymentError, DeploymentSource, EffectiveScaling, Executor, ExecutorConfig,
    FunctionInstances, InstanceCounts,
};
pub use logs::{
    Admission, FunctionLogs, LogLine, LogQuery, LogStream, MAX_LINE_BYTES,
    MAX_LOG_BYTES_PER_SECOND, escape_line, function_key,
};
pub use memory_dir::private_memory_dir;
pub use observer::{AttemptReport, ColdStart, InvocationObserver, NoObserver, StartPhases};
pub use quota::{NamespaceQuotas, RunQuota};
pub use request_body::{BodyHold, BodyWatch, IncomingBody, Payload, RequestBody, RequestBodyError};
pub use runtime::{Instance, InstanceSpec, PreparedRevision, Runtime, cores};

use async_trait::async_trait;
use gust_model::{Name, Namespace};

/// An invocation's id: the same value in the `X-Gust-Request-Id` header, logs and errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(std::sync::Arc<str>);

impl RequestId {
    pub fn new(id: impl Into<std::sync::Arc<str>>) -> Self {
        Self(id.into())
    }

    /// A fresh id (UUIDv7: sortable by time).
    pub fn generate() -> Self {
        Self::new(uuid::Uuid::now_v7().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What invoked a function: a metrics label and a field of usage records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerKind {
    Http,
    Api,
    /// An asynchronous invocation's attempt (async route, `fn invoke --async`, redrive).
    Async,
    /// A timer's tick.
    Timer,
    /// A queue trigger's message.
    Mq,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 5] = [
        TriggerKind::Http,
        TriggerKind::Api,
        TriggerKind::Async,
        TriggerKind::Timer,
        TriggerKind::Mq,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Api => "api",
            Self::Async => "async",
            Self::Timer => "timer",
            Self::Mq => "mq",
        }
    }
}

/// One call of a function. The request's headers already carry `X-Gust-Request-Id` and any
/// `X-Gust-Param-*` values; the runtime passes them through.
#[derive(Debug)]
pub struct Invocation {
    pub id: RequestId,
    pub namespace: Namespace,
    pub function: Name,
    pub trigger: TriggerKind,
    /// 1 for the first delivery; retries count up.
    pub attempt: u32,
    pub request: http::Request<Payload>,
}

/// Invokes functions. Called once per request, concurrently from any task; the future
/// resolves when the function has answered (its status and headers; the body streams after),
/// failed, or been refused for capacity. Dropping the future or the response's body abandons
/// the request and stops the instance that was serving it.
#[async_trait]
pub trait Invoker: Send + Sync {
    async fn invoke(
        &self,
        invocation: Invocation,
    ) -> Result<http::Response<ResponseBody>, InvokeError>;
}
