//! Sign-in sessions: the token stays on the server, the browser holds only a random session id
//! in an HttpOnly, SameSite=Strict cookie, and every write carries the session's CSRF token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Redirect, Response};
use http::header::{COOKIE, HOST, ORIGIN};
use http::request::Parts;
use rand::RngExt;

use crate::Dashboard;

/// The cookie's name. Its path is `/ui`, so the API never sees it.
pub(crate) const COOKIE_NAME: &str = "gust_session";
/// A session unused for this long is ended.
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept at once on this node; signing in past it ends the least recently used.
const MAX_SESSIONS: usize = 4096;

struct Session {
    token: String,
    csrf: String,
    last_used: Instant,
}

/// The signed-in sessions of this node (in memory: a restart signs everyone out).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session for `token` (already checked) and returns its id.
    pub(crate) fn start(&self, token: String) -> String {
        let id = random_hex();
        let session = Session {
            token,
            csrf: random_hex(),
            last_used: Instant::now(),
        };
        let mut sessions = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.last_used.elapsed() < IDLE_LIMIT);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        id
    }

    /// The session `id` names, if it is live; using it keeps it live.
    fn touch(&self, id: &str) -> Option<Signed> {
        let mut sessions = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get_mut(id)?;
        if session.last_used.elapsed() >= IDLE_LIMIT {
            sessions.remove(id);
            return None;
        }
        session.last_used = Instant::now();
        Some(Signed {
            id: id.to_owned(),
            token: session.token.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Whether `id` is still signed in (a log stream ends when its session does).
    pub(crate) fn is_live(&self, id: &str) -> bool {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|s| s.last_used.elapsed() < IDLE_LIMIT)
    }

    pub(crate) fn end(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// 32 random bytes in hex: a session id or CSRF token nobody can guess.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// A request from a signed-in browser. Extracting it from a request without a live session
/// answers with a redirect to the sign-in page.
pub(crate) struct Signed {
    pub id: String,
    /// The API token the session signed in with: every call the dashboard makes for this
    /// browser carries it, so the API's rules decide what the browser may see and do.
    pub token: String,
    pub csrf: String,
}

impl Signed {
    /// Refuses a write whose form or header did not carry this session's CSRF token.
    pub fn check_csrf(&self, presented: &str) -> Result<(), CsrfRefused> {
        if constant_time_eq(presented.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(CsrfRefused)
        }
    }
}

/// A write without the session's CSRF token.
#[derive(Debug)]
pub(crate) struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        forbidden(
            "this form is stale or was not sent by the dashboard (CSRF token missing or wrong); reload the page",
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn forbidden(message: &str) -> Response {
    (http::StatusCode::FORBIDDEN, message.to_owned()).into_response()
}

/// The session id the request's cookie carries.
pub(crate) fn session_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

/// A write sent from another site's page is refused before anything else: browsers name the
/// page's origin on every POST, and it must be this listener's own.
pub(crate) fn same_origin(parts: &Parts) -> bool {
    let Some(origin) = parts.headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = parts.headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

impl FromRequestParts<Arc<Dashboard>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        dashboard: &Arc<Dashboard>,
    ) -> Result<Self, Response> {
        if parts.method != http::Method::GET && !same_origin(parts) {
            return Err(forbidden("a write from another site's page is refused"));
        }
        session_id(parts)
            .and_then(|id| dashboard.sessions.touch(&id))
            .ok_or_else(|| sign_in_again(parts))
    }
}

/// Where a request without a session goes: the sign-in page, which returns to where it was
/// for a page, or a plain 401 for what a script fetches.
pub(crate) fn sign_in_again(parts: &Parts) -> Response {
    let fetched = parts.headers.contains_key("hx-request")
        || parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| !a.contains("text/html"));
    if fetched || parts.method != http::Method::GET {
        return (http::StatusCode::UNAUTHORIZED, "sign in again").into_response();
    }
    Redirect::to("/ui/login").into_response()
}

/// The `Set-Cookie` value that gives the browser its session, or ends it (`None`).
pub(crate) fn cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{COOKIE_NAME}={id}; Path=/ui; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE_NAME}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends_when_told() {
        let sessions = Sessions::default();
        let id = sessions.start("token-a".to_owned());
        let signed = sessions.touch(&id).unwrap();
        assert_eq!(signed.token, "token-a");
        assert_eq!(signed.csrf.len(), 64);
        assert!(sessions.touch("0".repeat(64).as_str()).is_none());
        assert!(signed.check_csrf(&signed.csrf).is_ok());
        assert!(signed.check_csrf("").is_err());
        sessions.end(&id);
        assert!(sessions.touch(&id).is_none());
    }

    #[test]
    fn sessions_are_bounded_and_the_least_recently_used_goes_first() {
        let sessions = Sessions::default();
        let first = sessions.start("t".to_owned());
        let second = sessions.start("t".to_owned());
        for _ in 2..MAX_SESSIONS {
            sessions.start("t".to_owned());
        }
        // The first is used again, so the second is now the least recently used.
        assert!(sessions.touch(&first).is_some());
        sessions.start("t".to_owned());
        assert!(sessions.touch(&first).is_some());
        assert!(sessions.touch(&second).is_none());
        assert_eq!(sessions.by_id.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn a_cross_site_write_is_told_apart_by_its_origin() {
        let request = |origin: Option<&str>| {
            let mut builder = http::Request::post("/ui/logout").header(HOST, "127.0.0.1:8081");
            if let Some(origin) = origin {
                builder = builder.header(ORIGIN, origin);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(same_origin(&request(Some("http://127.0.0.1:8081"))));
        assert!(same_origin(&request(None)));
        assert!(!same_origin(&request(Some("http://evil.example"))));
        assert!(!same_origin(&request(Some("null"))));
    }
}
