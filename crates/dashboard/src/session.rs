//! Sign-in sessions: the token stays on the server, the browser holds only a random session id
//! in an HttpOnly, SameSite=Strict cookie, and every write carries the session's CSRF token.
//!
//! Bounded per token and per node: one token's sign-ins (or its log streams) never push
//! another user's session out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Redirect, Response};
use gust_edge::DASHBOARD_COOKIE_PREFIX;
use gust_model::Role;
use http::header::{COOKIE, HOST, ORIGIN};
use http::request::Parts;
use rand::RngExt;

use crate::Dashboard;

/// A session unused for this long is ended.
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 60 * 60);
/// A session ends this long after sign-in, however much it is used (an open overview
/// refreshes itself every 5 s).
const AGE_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);
/// Sessions kept at once on this node; past it, sign-ins wait for sessions to end.
const MAX_SESSIONS: usize = 4096;
/// Sessions of one token; its next sign-in ends its least recently used.
const MAX_SESSIONS_PER_TOKEN: usize = 16;
/// Log streams one token holds open at once.
const MAX_STREAMS_PER_TOKEN: usize = 8;

struct Session {
    token: String,
    csrf: String,
    /// The namespace pages show when none is named: `default`, or the first the token
    /// reaches when it does not reach `default`.
    home: String,
    /// The token's role when it signed in: pages offer only what it allows (the API checks
    /// every call anyway).
    role: Role,
    started: Instant,
    last_used: Instant,
}

impl Session {
    fn expired(&self) -> bool {
        self.last_used.elapsed() >= IDLE_LIMIT || self.started.elapsed() >= AGE_LIMIT
    }
}

/// The signed-in sessions of this node (in memory: a restart signs everyone out).
pub struct Sessions {
    /// `gust_session_` and 16 random hex digits, new at each start: a page another listener
    /// of this host serves cannot name it to plant a cookie of its own.
    cookie_name: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_id: HashMap<String, Session>,
    /// Log streams open, by token.
    streams: HashMap<String, usize>,
}

/// Why a sign-in did not start a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NodeFull;

impl Default for Sessions {
    fn default() -> Self {
        let suffix: [u8; 8] = rand::rng().random();
        Self {
            cookie_name: format!("{DASHBOARD_COOKIE_PREFIX}_{}", hex::encode(suffix)),
            state: Mutex::default(),
        }
    }
}

impl Sessions {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session for `token` (already checked) and returns its id.
    pub(crate) fn start(
        &self,
        token: String,
        home: String,
        role: Role,
    ) -> Result<String, NodeFull> {
        let mut state = self.state();
        let sessions = &mut state.by_id;
        sessions.retain(|_, s| !s.expired());
        let mine: Vec<(&String, Instant)> = sessions
            .iter()
            .filter(|(_, s)| s.token == token)
            .map(|(id, s)| (id, s.last_used))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_TOKEN {
            let oldest = mine
                .iter()
                .min_by_key(|(_, used)| *used)
                .map(|(id, _)| (*id).clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        } else if sessions.len() >= MAX_SESSIONS {
            return Err(NodeFull);
        }
        let id = random_hex();
        let now = Instant::now();
        sessions.insert(
            id.clone(),
            Session {
                token,
                csrf: random_hex(),
                home,
                role,
                started: now,
                last_used: now,
            },
        );
        Ok(id)
    }

    /// The session `id` names, if it is live; using it keeps it live.
    fn touch(&self, id: &str) -> Option<Signed> {
        let mut state = self.state();
        let session = state.by_id.get_mut(id)?;
        if session.expired() {
            state.by_id.remove(id);
            return None;
        }
        session.last_used = Instant::now();
        Some(Signed {
            id: id.to_owned(),
            token: session.token.clone(),
            csrf: session.csrf.clone(),
            home: session.home.clone(),
            role: session.role,
        })
    }

    /// Whether `id` is still signed in (a log stream ends when its session does).
    pub(crate) fn is_live(&self, id: &str) -> bool {
        self.state().by_id.get(id).is_some_and(|s| !s.expired())
    }

    pub(crate) fn end(&self, id: &str) {
        self.state().by_id.remove(id);
    }

    /// A place for one more log stream of `token`, held until the guard is dropped; `None`
    /// when the token holds as many as it may.
    pub(crate) fn open_stream(self: &Arc<Self>, token: &str) -> Option<StreamGuard> {
        let mut state = self.state();
        let open = state.streams.entry(token.to_owned()).or_insert(0);
        if *open >= MAX_STREAMS_PER_TOKEN {
            return None;
        }
        *open += 1;
        Some(StreamGuard {
            sessions: self.clone(),
            token: token.to_owned(),
        })
    }

    /// The `Set-Cookie` value that gives the browser its session, or ends it (`None`).
    /// `secure` when the browser reached the listener over HTTPS (through a proxy).
    pub(crate) fn cookie(&self, id: Option<&str>, secure: bool) -> String {
        let secure = if secure { "; Secure" } else { "" };
        match id {
            Some(id) => format!(
                "{}={id}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
                self.cookie_name
            ),
            None => format!(
                "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
                self.cookie_name
            ),
        }
    }

    /// The session id the request's cookie carries. A request with two (one planted by
    /// another page of this host, for another path) has none: which one the browser meant
    /// cannot be told.
    pub(crate) fn session_id(&self, parts: &Parts) -> Option<String> {
        let mut ids = parts
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value.to_owned());
        let id = ids.next()?;
        ids.next().is_none().then_some(id)
    }
}

/// One open log stream, counted against its token until dropped.
pub(crate) struct StreamGuard {
    sessions: Arc<Sessions>,
    token: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut state = self.sessions.state();
        if let Some(open) = state.streams.get_mut(&self.token) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.streams.remove(&self.token);
            }
        }
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
    pub home: String,
    pub role: Role,
}

impl Signed {
    /// Refuses a write whose form did not carry this session's CSRF token.
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

/// Whether the browser reached the listener over HTTPS, as a proxy in front of it says.
pub(crate) fn over_https(parts: &Parts) -> bool {
    parts
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
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
        dashboard
            .sessions
            .session_id(parts)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with_cookies(sessions: &Sessions, ids: &[&str]) -> Parts {
        let mut builder = http::Request::get("/ui");
        for id in ids {
            builder = builder.header(COOKIE, format!("a=1; {}={id}", sessions.cookie_name));
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends_when_told() {
        let sessions = Sessions::default();
        let id = sessions
            .start("token-a".to_owned(), "default".to_owned(), Role::Viewer)
            .unwrap();
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
    fn one_token_signing_in_again_and_again_never_ends_another_tokens_session() {
        let sessions = Sessions::default();
        let admin = sessions
            .start("admin".to_owned(), "default".to_owned(), Role::Viewer)
            .unwrap();
        let first = sessions
            .start("viewer".to_owned(), "default".to_owned(), Role::Viewer)
            .unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions
                .start("viewer".to_owned(), "default".to_owned(), Role::Viewer)
                .unwrap();
        }
        assert!(
            sessions.touch(&admin).is_some(),
            "the admin stays signed in"
        );
        assert!(sessions.touch(&first).is_none(), "the viewer's oldest went");
        assert_eq!(sessions.state().by_id.len(), 1 + MAX_SESSIONS_PER_TOKEN);
    }

    #[test]
    fn a_full_node_refuses_new_sign_ins_rather_than_ending_sessions() {
        let sessions = Sessions::default();
        let ids: Vec<String> = (0..MAX_SESSIONS)
            .map(|i| {
                sessions
                    .start(format!("token-{i}"), "default".to_owned(), Role::Viewer)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            sessions.start("one-more".to_owned(), "default".to_owned(), Role::Viewer),
            Err(NodeFull)
        );
        assert!(ids.iter().all(|id| sessions.is_live(id)));
    }

    #[test]
    fn two_session_cookies_are_no_session() {
        let sessions = Sessions::default();
        let id = sessions
            .start("t".to_owned(), "default".to_owned(), Role::Viewer)
            .unwrap();
        assert_eq!(
            sessions.session_id(&request_with_cookies(&sessions, &[&id])),
            Some(id.clone())
        );
        let planted = request_with_cookies(&sessions, &[&id, "planted"]);
        assert_eq!(sessions.session_id(&planted), None);
        assert!(sessions.cookie_name.starts_with("gust_session_"));
        assert_ne!(sessions.cookie_name, Sessions::default().cookie_name);
    }

    #[test]
    fn log_streams_are_bounded_per_token_and_given_back_when_they_end() {
        let sessions = Arc::new(Sessions::default());
        let held: Vec<StreamGuard> = (0..MAX_STREAMS_PER_TOKEN)
            .map(|_| sessions.open_stream("viewer").unwrap())
            .collect();
        assert!(sessions.open_stream("viewer").is_none());
        assert!(sessions.open_stream("admin").is_some());
        drop(held);
        assert!(sessions.open_stream("viewer").is_some());
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
