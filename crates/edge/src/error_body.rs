use axum::Json;
use axum::response::{IntoResponse, Response};
use gust_executor::InvokeError;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// The JSON error every Gust listener answers with. `reason` is a stable code; `message` is
/// for people and never carries a function's exception text or Gust's internals.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub component: &'static str,
    pub reason: &'static str,
    pub request_id: Option<String>,
    pub message: String,
}

impl ErrorBody {
    pub fn into_response_with(self, status: StatusCode) -> Response {
        let request_id = self.request_id.clone();
        let reason = HeaderValue::from_static(self.reason);
        let mut response = (status, Json(self)).into_response();
        // Tells a Gust error apart from a function's own response without parsing the body.
        response.headers_mut().insert("x-gust-error", reason);
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            response.headers_mut().insert("x-gust-request-id", id);
        }
        response
    }
}

/// The response for an invocation that produced no function answer.
pub fn invoke_error_response(error: &InvokeError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = ErrorBody {
        component: error.component(),
        reason: error.reason(),
        request_id: Some(request_id.to_owned()),
        message: error.to_string(),
    }
    .into_response_with(status);
    if let Some(after) = error.retry_after() {
        let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
