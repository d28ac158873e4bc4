//! What both listeners do to a request on its way to a function and to its answer on the way
//! back: which headers cross (never hop-by-hop ones, never a caller's `X-Gust-*`), the
//! parameters Gust adds, how a function's answer and an accepted asynchronous invocation are
//! written, and the body limits.

use axum::response::{IntoResponse, Response};
use gust_api_types::Accepted;
use gust_executor::{EnqueueError, RequestId, ResponseBody};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::ErrorBody;
use crate::body::streamed_response;

/// Largest request body a function receives by default (6 MB, as Lambda's synchronous
/// limit; `gust up --body-limit` sets another).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// Largest body of an asynchronous invocation (256 KB, as Lambda's): it is stored until it
/// has run.
pub const MAX_ASYNC_REQUEST_BYTES: usize = 256 * 1024;

/// The dashboard's session cookies are named with this prefix. Browsers send a host's cookies
/// to every port of it, so a function on the public listener of the same host would see
/// them: they are taken out of every request a function receives, and a function may not set
/// one.
pub const DASHBOARD_COOKIE_PREFIX: &str = "gust_session";

/// Headers that describe one hop, not the message; never forwarded either way.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A caller's headers minus hop-by-hop ones, every `X-Gust-*` and `X-Fission-*` (only Gust
/// sets those) and
/// credentials meant for Gust rather than the function (`strip_authorization`).
pub fn forwardable_headers(headers: &HeaderMap, strip_authorization: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    for (name, value) in headers {
        let lower = name.as_str();
        if lower.starts_with("x-gust-")
            || lower.starts_with("x-fission-")
            || HOP_BY_HOP.contains(&lower)
            || lower == "content-length"
            || (strip_authorization && lower == "authorization")
        {
            continue;
        }
        if name == header::COOKIE {
            if let Some(kept) = without_dashboard_cookies(value) {
                out.append(header::COOKIE, kept);
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// A `Cookie` header without the dashboard's session cookies; `None` when nothing is left.
/// Read as bytes: a value that is not ASCII text (another cookie's UTF-8) must not carry a
/// session cookie through.
fn without_dashboard_cookies(value: &HeaderValue) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = value
        .as_bytes()
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty() && !is_dashboard_cookie(pair))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

fn is_dashboard_cookie(pair: &[u8]) -> bool {
    pair.trim_ascii_start()
        .starts_with(DASHBOARD_COOKIE_PREFIX.as_bytes())
}

/// `501` for a request body in a transfer coding other than `chunked` (`gzip, chunked`): the
/// connection undoes only the chunking, so the function would get the bytes still coded with
/// nothing to say so.
pub fn unsupported_transfer_coding(headers: &HeaderMap, id: &RequestId) -> Option<Response> {
    let coding = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|coding| !coding.eq_ignore_ascii_case("chunked"))?;
    Some(
        ErrorBody {
            component: "router",
            reason: "unsupported_transfer_coding",
            request_id: Some(id.to_string()),
            message: format!("transfer coding {coding:?} is not supported; send the body chunked or with a Content-Length"),
        }
        .into_response_with(StatusCode::NOT_IMPLEMENTED),
    )
}

/// `202` with the invocation id once it is stored; `429` when the queue is full, `503` when
/// it could not be stored.
pub fn accepted_response(stored: Result<(), EnqueueError>, id: &RequestId) -> Response {
    let full = |reason, error: &EnqueueError| {
        let mut response = ErrorBody {
            component: "router",
            reason,
            request_id: Some(id.to_string()),
            message: format!("{error}; nothing was accepted, try again later"),
        }
        .into_response_with(StatusCode::TOO_MANY_REQUESTS);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        response
    };
    match stored {
        Ok(()) => {
            let mut response = (
                StatusCode::ACCEPTED,
                axum::Json(Accepted { id: id.to_string() }),
            )
                .into_response();
            put_header(response.headers_mut(), "x-gust-request-id", id.as_str());
            response
        }
        Err(error @ EnqueueError::FunctionFull { .. }) => full("async_queue_full", &error),
        Err(error @ EnqueueError::QueueFull { .. }) => full("async_store_full", &error),
        Err(error @ EnqueueError::NamespaceFull { .. }) => full("quota", &error),
        Err(error @ EnqueueError::Unavailable(_)) => {
            tracing::error!(%error, %id, "asynchronous invocation not accepted");
            let mut response = ErrorBody {
                component: "router",
                reason: "queue_unavailable",
                request_id: Some(id.to_string()),
                message: "the invocation could not be stored; nothing was accepted, try again"
                    .to_owned(),
            }
            .into_response_with(StatusCode::SERVICE_UNAVAILABLE);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// Path parameters (decoded) as `X-Gust-Param-<name>` headers and under Fission's name,
/// `X-Fission-Params-<name>`, and all of them, names in their original case, as JSON in
/// `X-Gust-Params`. The JSON is ASCII (`\uXXXX` escapes), so any value fits in a header; a
/// single-parameter header carries the value's UTF-8 bytes, and is left out when the value
/// holds a control character.
pub fn add_param_headers(headers: &mut HeaderMap, params: &[(String, String)]) {
    let mut all = serde_json::Map::new();
    for (name, value) in params {
        for prefix in ["x-gust-param-", "x-fission-params-"] {
            if let (Ok(header_name), Ok(value)) = (
                HeaderName::try_from(format!("{prefix}{name}")),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.insert(header_name, value);
            }
        }
        all.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    put_header(
        headers,
        "x-gust-params",
        &ascii_json(&serde_json::Value::Object(all)),
    );
}

/// JSON with every non-ASCII character escaped.
fn ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Sets a header Gust writes, skipping a value that is not valid in a header.
pub fn put_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    set_header(headers, HeaderName::from_static(name), value);
}

fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The function's response as the caller gets it: hop-by-hop headers dropped, the request id
/// added, its body streamed as the function writes it.
pub fn function_response(response: http::Response<ResponseBody>, id: &RequestId) -> Response {
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    // The connection sets the length from the body where the function's answer had one, and
    // streams it chunked where not.
    parts.headers.remove(header::CONTENT_LENGTH);
    // Only Gust speaks in X-Gust-* headers, in both directions.
    let forged: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-gust-"))
        .cloned()
        .collect();
    for name in forged {
        parts.headers.remove(name);
    }
    // Nor may a function plant a dashboard session in a caller's browser. (Rebuilt only when
    // it tries: most answers set no cookie, and this is every response's path.)
    let set_cookies = parts.headers.get_all(header::SET_COOKIE);
    if set_cookies
        .iter()
        .any(|value| is_dashboard_cookie(value.as_bytes()))
    {
        let kept: Vec<HeaderValue> = set_cookies
            .iter()
            .filter(|value| !is_dashboard_cookie(value.as_bytes()))
            .cloned()
            .collect();
        parts.headers.remove(header::SET_COOKIE);
        for cookie in kept {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
    }
    put_header(&mut parts.headers, "x-gust-request-id", id.as_str());
    Response::from_parts(parts, streamed_response(body, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_never_sees_or_sets_a_dashboard_session() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; gust_session_9f=secret;b=2"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("gust_session_9f=x"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"c=\xc3\xa9; gust_session_9f=y").unwrap(),
        );
        let forwarded = forwardable_headers(&headers, false);
        let cookies: Vec<&[u8]> = forwarded
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(cookies, [&b"a=1; b=2"[..], &b"c=\xc3\xa9"[..]]);

        let mut answer = http::Response::new(gust_executor::body::full(""));
        let set = answer.headers_mut();
        set.append(header::SET_COOKIE, HeaderValue::from_static("theme=dark"));
        set.append(
            header::SET_COOKIE,
            HeaderValue::from_static("gust_session_9f=attacker; Path=/ui"),
        );
        let id = RequestId::generate();
        let response = function_response(answer, &id);
        let set: Vec<_> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .collect();
        assert_eq!(set, [HeaderValue::from_static("theme=dark")]);
    }
}
