use std::time::Duration;

use thiserror::Error;

use crate::RequestBodyError;

/// Why an invocation produced no function response. Each maps to one HTTP status and one
/// stable `reason` code of the public error body.
#[derive(Debug, Error, Clone)]
pub enum InvokeError {
    #[error("function {function:?} not found in namespace {namespace:?}")]
    FunctionNotFound { namespace: String, function: String },
    #[error("function {function:?} is not ready: {detail}")]
    NotReady { function: String, detail: String },
    #[error("environment {environment:?} of function {function:?} is not available")]
    EnvironmentUnavailable {
        function: String,
        environment: String,
    },
    #[error("function {function:?} did not answer within {timeout:?}")]
    Timeout { function: String, timeout: Duration },
    #[error("no instance of function {function:?} was ready within {bound:?}")]
    StartTimeout { function: String, bound: Duration },
    #[error("function {function:?} raised an error; see its logs")]
    FunctionError { function: String },
    #[error("the code of function {function:?} failed to load ({cause}); see its logs")]
    LoadFailed { function: String, cause: String },
    #[error("the instance of function {function:?} exited while serving the request")]
    WorkerExited { function: String },
    #[error("function {function:?} answered with more than {limit} bytes")]
    ResponseTooLarge { function: String, limit: usize },
    #[error("function {function:?} is at capacity; retry after {retry_after:?}")]
    OverCapacity {
        function: String,
        retry_after: Duration,
    },
    /// The function's namespace is at one of its quotas (instances or memory in use).
    #[error("namespace {namespace:?} is at its quota of {what}; retry later")]
    OverQuota { namespace: String, what: String },
    #[error("could not start an instance of {function:?}: {detail}")]
    StartFailed { function: String, detail: String },
    #[error("function {function:?} trapped; see its logs")]
    Trap { function: String },
    #[error("function {function:?} ran out of its {limit_mb} MB of memory")]
    OutOfMemory { function: String, limit_mb: u32 },
    /// The caller's request body did not arrive whole.
    #[error("{0}")]
    RequestBody(RequestBodyError),
}

impl InvokeError {
    /// Whether the function's code ran before this error (loading it counts): what decides
    /// whether a failed start is an attempt, billed and recorded, or a refusal.
    pub fn code_ran(&self) -> bool {
        !matches!(
            self,
            InvokeError::EnvironmentUnavailable { .. }
                | InvokeError::StartFailed { .. }
                | InvokeError::NotReady { .. }
                | InvokeError::OverCapacity { .. }
                | InvokeError::OverQuota { .. }
        )
    }

    pub fn status(&self) -> u16 {
        match self {
            InvokeError::FunctionNotFound { .. } => 404,
            InvokeError::Timeout { .. } | InvokeError::StartTimeout { .. } => 504,
            InvokeError::OverCapacity { .. } | InvokeError::OverQuota { .. } => 429,
            InvokeError::RequestBody(body) => match body {
                RequestBodyError::TooLarge { .. } => 413,
                RequestBodyError::OverBudget => 503,
                RequestBodyError::TooSlow(_) => 408,
                RequestBodyError::Unreadable => 400,
            },
            InvokeError::EnvironmentUnavailable { .. }
            | InvokeError::StartFailed { .. }
            | InvokeError::NotReady { .. } => 503,
            InvokeError::FunctionError { .. }
            | InvokeError::LoadFailed { .. }
            | InvokeError::WorkerExited { .. }
            | InvokeError::ResponseTooLarge { .. }
            | InvokeError::Trap { .. }
            | InvokeError::OutOfMemory { .. } => 502,
        }
    }

    /// The stable code in the JSON error body.
    pub fn reason(&self) -> &'static str {
        match self {
            InvokeError::FunctionNotFound { .. } => "function_not_found",
            InvokeError::EnvironmentUnavailable { .. } => "environment_unavailable",
            InvokeError::NotReady { .. } => "not_ready",
            InvokeError::Timeout { .. } => "timeout",
            InvokeError::StartTimeout { .. } => "start_timeout",
            InvokeError::FunctionError { .. } => "function_error",
            InvokeError::LoadFailed { .. } => "load_error",
            InvokeError::WorkerExited { .. } => "worker_exited",
            InvokeError::ResponseTooLarge { .. } => "response_too_large",
            InvokeError::OverCapacity { .. } => "over_capacity",
            InvokeError::OverQuota { .. } => "quota",
            InvokeError::StartFailed { .. } => "start_failed",
            InvokeError::Trap { .. } => "trap",
            InvokeError::OutOfMemory { .. } => "out_of_memory",
            InvokeError::RequestBody(body) => match body {
                RequestBodyError::TooLarge { .. } => "body_too_large",
                RequestBodyError::OverBudget => "body_memory_exhausted",
                RequestBodyError::TooSlow(_) => "body_too_slow",
                RequestBodyError::Unreadable => "invalid_input",
            },
        }
    }

    /// Which part of Gust the error body names: the function's own failures say `function`,
    /// the platform's say `executor`.
    pub fn component(&self) -> &'static str {
        match self {
            InvokeError::FunctionError { .. }
            | InvokeError::LoadFailed { .. }
            | InvokeError::WorkerExited { .. }
            | InvokeError::ResponseTooLarge { .. }
            | InvokeError::Trap { .. }
            | InvokeError::OutOfMemory { .. }
            | InvokeError::Timeout { .. }
            | InvokeError::StartTimeout { .. } => "function",
            // The caller's connection: the listener that reads it is the router's.
            InvokeError::RequestBody(_) => "router",
            _ => "executor",
        }
    }

    /// Seconds for `Retry-After`, when the caller should come back.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InvokeError::OverCapacity { retry_after, .. } => Some(*retry_after),
            InvokeError::OverQuota { .. } => Some(Duration::from_secs(1)),
            InvokeError::RequestBody(RequestBodyError::OverBudget) => Some(Duration::from_secs(1)),
            // A first build takes seconds to minutes.
            InvokeError::NotReady { .. } => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}
