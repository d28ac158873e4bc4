use axum::response::{IntoResponse, Response};
use gust_edge::ErrorBody;
use gust_model::ModelError;
use gust_store::StoreError;
use http::StatusCode;
use thiserror::Error;

/// Every way a control-plane request fails; one status and one stable reason each.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// A valid token that may not do this here; the message says what it lacks.
    #[error("{0}")]
    Forbidden(String),
    /// Over one of the namespace's quotas; the message names it.
    #[error("{0}")]
    Quota(String),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// A new revision's code did not load; nothing was stored.
    #[error("revision {revision} was not deployed: {error}{}", if output.is_empty() { String::new() } else { format!("\n{output}") })]
    CannotLoad {
        revision: u32,
        error: String,
        output: String,
    },
    /// A dependency (the cluster's store) cannot take the request now; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ModelError> for ApiError {
    fn from(err: ModelError) -> Self {
        ApiError::Invalid(err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { kind, name } => ApiError::NotFound { kind, name },
            StoreError::AlreadyExists { .. }
            | StoreError::InUse { .. }
            | StoreError::RouteConflict { .. }
            | StoreError::HostClaimed { .. }
            | StoreError::Changed { .. } => ApiError::Conflict(err.to_string()),
            StoreError::Unavailable(_) => ApiError::Unavailable(err.to_string()),
            StoreError::InvalidCode { .. } => ApiError::Invalid(err.to_string()),
            StoreError::Database(_) | StoreError::Io { .. } | StoreError::Corrupt { .. } => {
                ApiError::Internal(err.to_string())
            }
        }
    }
}

impl ApiError {
    fn status_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Quota(_) => (StatusCode::FORBIDDEN, "quota"),
            ApiError::NotFound {
                kind: "function", ..
            } => (StatusCode::NOT_FOUND, "function_not_found"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::CannotLoad { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "load_error"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, reason) = self.status_and_reason();
        let message = match &self {
            // The details stay in the log; the caller learns only that it was not their fault.
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "control-plane request failed");
                "internal error; see the server log".to_owned()
            }
            // What loading printed is the function's log (control characters escaped there
            // already): its lines stay lines, the last ones kept.
            ApiError::CannotLoad {
                revision,
                error,
                output,
            } => {
                let mut message =
                    printable(&format!("revision {revision} was not deployed: {error}"));
                let tail: Vec<&str> = output.lines().rev().take(MAX_OUTPUT_LINES).collect();
                for line in tail.into_iter().rev() {
                    message.push('\n');
                    message.push_str(line);
                }
                message
            }
            other => printable(&other.to_string()),
        };
        let mut response = ErrorBody {
            component: "api",
            reason,
            request_id: None,
            message,
        }
        .into_response_with(status);
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Lines of a function's output sent back with a load error (a traceback's end).
const MAX_OUTPUT_LINES: usize = 30;

/// Longest error message sent back; a message quotes the caller's input, which may be large.
const MAX_MESSAGE_CHARS: usize = 1024;

/// A message fit for a terminal and a log line: control characters escaped (a caller's
/// field name or value could hold newlines or escape sequences), at most
/// [`MAX_MESSAGE_CHARS`] characters.
pub(crate) fn printable(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS + 4));
    for (count, c) in message.chars().enumerate() {
        if count == MAX_MESSAGE_CHARS {
            out.push_str(" ...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn messages_are_one_bounded_line() {
        assert_eq!(
            printable("unknown field `a\nX: 1\u{1b}[31m`"),
            "unknown field `a\\nX: 1\\u{1b}[31m`"
        );
        let long = printable(&"\u{85}".repeat(1_000_000));
        assert!(long.chars().count() < 1_100 * 8, "{}", long.len());
        assert!(long.ends_with(" ..."));
    }
}
