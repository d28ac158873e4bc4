//! The dashboard reads and writes through the API itself, in-process, with the signed-in
//! token: every rule the API applies to a token applies to the browser, and the dashboard
//! adds no way in of its own.

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gust_api_types::ErrorBody;
use http::{Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// Characters encoded in a path segment or query value: all but letters, digits, `-` and
/// `_` (dots too, so that no segment is ever `..`).
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// Largest API answer the dashboard reads (a day of a function's minutes is about 300 KB).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// An API path with its segments and query values encoded.
pub(crate) struct ApiPath(String);

impl ApiPath {
    pub fn new<'a>(segments: impl IntoIterator<Item = &'a str>) -> Self {
        let mut path = String::new();
        for segment in segments {
            path.push('/');
            path.extend(utf8_percent_encode(segment, ENCODED));
        }
        Self(path)
    }

    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.0.push(if self.0.contains('?') { '&' } else { '?' });
        self.0.push_str(name);
        self.0.push('=');
        self.0.extend(utf8_percent_encode(value, ENCODED));
        self
    }

    pub fn namespace(self, namespace: &str) -> Self {
        self.query("namespace", namespace)
    }
}

/// What a call answered, when it is not what the page needed.
#[derive(Debug)]
pub(crate) enum ApiFailure {
    /// The token is no longer accepted (revoked, expired): the session is over.
    SignedOut,
    /// The API refused or failed, with its reason and message (`403 forbidden: ...`).
    Refused {
        status: StatusCode,
        reason: String,
        message: String,
    },
}

impl ApiFailure {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::SignedOut => StatusCode::UNAUTHORIZED,
            Self::Refused { status, .. } => *status,
        }
    }

    /// The API's own words, for the page.
    pub fn message(&self) -> String {
        match self {
            Self::SignedOut => {
                "the token this session signed in with is no longer accepted; sign in again"
                    .to_owned()
            }
            Self::Refused {
                reason, message, ..
            } => format!("{message} ({reason})"),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status(), self.message()).into_response()
    }
}

/// The API router, called in-process.
#[derive(Clone)]
pub(crate) struct Api {
    router: Router,
}

/// A raw answer: status, headers and body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Api {
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    /// Sends one request as `token` and reads the whole answer.
    pub async fn send(
        &self,
        token: &str,
        method: Method,
        path: &ApiPath,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, ApiFailure> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("/v1{}", path.0))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body)).map_err(|e| internal(&e))?;
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| internal(&e))?;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| internal(&e))?;
        if parts.status == StatusCode::UNAUTHORIZED {
            return Err(ApiFailure::SignedOut);
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A JSON call whose success is a JSON value of type `T`.
    pub async fn json<T: DeserializeOwned>(
        &self,
        token: &str,
        method: Method,
        path: &ApiPath,
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiFailure> {
        let body = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).map_err(|e| internal(&e))?),
            None => Bytes::new(),
        };
        let answer = self
            .send(token, method, path, Some("application/json"), body)
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| internal(&e))
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        token: &str,
        path: &ApiPath,
    ) -> Result<T, ApiFailure> {
        self.json(token, Method::GET, path, None::<&()>).await
    }
}

/// An API error answer as a failure, in the API's own words.
pub(crate) fn refused(answer: &Answer) -> ApiFailure {
    match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(error) => ApiFailure::Refused {
            status: answer.status,
            reason: error.reason,
            message: error.message,
        },
        Err(_) => ApiFailure::Refused {
            status: answer.status,
            reason: "error".to_owned(),
            message: String::from_utf8_lossy(&answer.body).into_owned(),
        },
    }
}

fn internal(error: &dyn std::fmt::Display) -> ApiFailure {
    ApiFailure::Refused {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        reason: "internal".to_owned(),
        message: format!("the dashboard's call to the API failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_and_query_values_are_encoded() {
        let path = ApiPath::new(["functions", "a/../b?c"])
            .namespace("team a")
            .query("since", "1h");
        assert_eq!(
            path.0,
            "/functions/a%2F%2E%2E%2Fb%3Fc?namespace=team%20a&since=1h"
        );
        assert_eq!(ApiPath::new([".."]).0, "/%2E%2E");
    }
}
