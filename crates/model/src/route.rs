use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ModelError, Name, Namespace};

/// Paths the worker protocol owns; no route may claim them and no request under them reaches
/// a function.
pub const RESERVED_PREFIXES: [&str; 3] = ["/healthz", "/v2/", "/_gust/"];

/// Whether a request path falls under a reserved prefix (`/v2` itself counts), as written or
/// in any spelling a server might resolve to one: percent-escapes (also doubled), `\\` for
/// `/`, repeated slashes, `.` and `..` segments, `;` parameters.
pub fn is_reserved_path(path: &str) -> bool {
    under_reserved_prefix(path) || under_reserved_prefix(&resolved_path(path))
}

fn under_reserved_prefix(path: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| {
        let bare = prefix.trim_end_matches('/');
        path.strip_prefix(bare)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The path a lenient server would serve for `path`: percent-decoded until nothing changes (a
/// few rounds at most), backslashes as slashes, each segment's `;` parameters dropped, empty
/// and `.` segments removed, `..` applied. Never used to route, only to refuse.
fn resolved_path(path: &str) -> String {
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..4 {
        let decoded = percent_decode(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

/// The HTTP methods a route can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    const ALL: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Options,
    ];

    pub fn parse(value: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(value.trim()))
            .ok_or_else(|| ModelError::InvalidMethod {
                value: value.to_owned(),
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The methods a route answers; empty means every method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "Vec<Method>", from = "Vec<Method>")]
pub struct MethodSet(u8);

impl MethodSet {
    /// Parses `GET,POST` lists; each item may itself be comma separated, any case.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ModelError> {
        let mut set = 0;
        for item in items {
            for part in item.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
                set |= Method::parse(part)?.bit();
            }
        }
        Ok(Self(set))
    }

    pub fn is_any(self) -> bool {
        self.0 == 0
    }

    /// Whether this set answers `method` (an HTTP method name).
    pub fn allows(self, method: &str) -> bool {
        self.is_any() || Method::parse(method).is_ok_and(|m| self.0 & m.bit() != 0)
    }

    fn overlaps(self, other: MethodSet) -> bool {
        self.is_any() || other.is_any() || self.0 & other.0 != 0
    }
}

impl From<MethodSet> for Vec<Method> {
    fn from(set: MethodSet) -> Self {
        Method::ALL
            .into_iter()
            .filter(|m| set.0 & m.bit() != 0)
            .collect()
    }
}

/// `GET,POST`, or `*` for every method: how `route list` and the dashboard show it.
impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("*");
        }
        let methods: Vec<Method> = (*self).into();
        let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

impl From<Vec<Method>> for MethodSet {
    fn from(methods: Vec<Method>) -> Self {
        Self(methods.into_iter().fold(0, |set, m| set | m.bit()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`, or `{name:regex}` (gorilla/mux's form, as Fission writes routes): the
    /// parameter matches a segment only when the regex matches its whole decoded value.
    Param {
        name: String,
        constraint: Option<Constraint>,
    },
}

/// A parameter's regex, compared by its source.
#[derive(Debug, Clone)]
struct Constraint {
    source: String,
    regex: regex::Regex,
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Constraint {}

impl Constraint {
    /// At most this long, and compiled within a small size limit: a route table is matched on
    /// every request.
    const MAX_SOURCE: usize = 256;

    fn parse(source: &str) -> Result<Self, String> {
        if source.is_empty() || source.len() > Self::MAX_SOURCE {
            return Err(format!(
                "a parameter's pattern is 1 to {} characters",
                Self::MAX_SOURCE
            ));
        }
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(256 * 1024)
            .build()
            .map_err(|err| format!("pattern {source:?} is not a valid regex: {err}"))?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }
}

/// A validated route path such as `/users/{id}` or `/users/{id:[0-9]+}`: literal segments of
/// URL-safe characters and whole-segment parameters. No `.`/`..` segments, no percent escapes, no reserved
/// prefix, so that what a route means never depends on how a path is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    pub fn parse(path: &str) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidPath {
            path: path.to_owned(),
            reason,
        };
        if !path.starts_with('/') {
            return Err(invalid("a path starts with '/'".into()));
        }
        if path.len() > 1024 {
            return Err(invalid("a path is at most 1024 characters".into()));
        }
        if is_reserved_path(path) {
            return Err(invalid(format!(
                "paths under {} are reserved",
                RESERVED_PREFIXES.join(", ")
            )));
        }
        let mut segments = Vec::new();
        let body = &path[1..];
        if !body.is_empty() {
            for segment in body.split('/') {
                segments.push(parse_segment(segment).map_err(invalid)?);
            }
        }
        let mut names: Vec<&str> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param { name, .. } => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(invalid(format!("parameter {{{}}} appears twice", pair[0])));
        }
        Ok(Self {
            raw: path.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The first segment when it is a literal: a request path must begin with it to match.
    fn first_literal(&self) -> Option<&str> {
        match self.segments.first()? {
            Segment::Literal(literal) => Some(literal),
            Segment::Param { .. } => None,
        }
    }

    /// Same segments with parameters in the same places, whatever their names, with the same
    /// pattern or none. (Two different patterns that both match a value are not detected:
    /// the route listed first serves it.)
    fn same_shape(&self, other: &PathPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (
                        Segment::Param { constraint: a, .. },
                        Segment::Param { constraint: b, .. },
                    ) => a == b,
                    _ => false,
                })
    }

    /// Matches the whole of `path` (exact) or its leading segments (prefix), returning the
    /// parameters (percent-decoded, as query values are) and how specific the match was.
    fn matches(
        &self,
        path_segments: &[&str],
        prefix: bool,
    ) -> Option<(Vec<(String, String)>, Specificity)> {
        if path_segments.len() < self.segments.len()
            || (!prefix && path_segments.len() != self.segments.len())
        {
            return None;
        }
        let mut params = Vec::new();
        let mut kinds = Vec::with_capacity(self.segments.len());
        for (segment, actual) in self.segments.iter().zip(path_segments) {
            match segment {
                Segment::Literal(literal) if literal == actual => kinds.push(SegmentKind::Literal),
                Segment::Literal(_) => return None,
                Segment::Param { .. } if actual.is_empty() => return None,
                Segment::Param { name, constraint } => {
                    let value =
                        String::from_utf8_lossy(&percent_decode(actual.as_bytes())).into_owned();
                    match constraint {
                        Some(constraint) if !constraint.regex.is_match(&value) => return None,
                        Some(_) => kinds.push(SegmentKind::Constrained),
                        None => kinds.push(SegmentKind::Param),
                    }
                    params.push((name.clone(), value));
                }
            }
        }
        Some((
            params,
            Specificity {
                exact: !prefix,
                depth: self.segments.len(),
                segments: kinds,
            },
        ))
    }
}

/// Orders competing matches: exact routes beat prefix routes, deeper prefixes beat shallower
/// ones, and at the first place they differ a literal segment beats a parameter with a
/// pattern, which beats one without.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    exact: bool,
    depth: usize,
    segments: Vec<SegmentKind>,
}

/// How a request's segment was matched, least specific first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SegmentKind {
    Param,
    Constrained,
    Literal,
}

fn parse_segment(segment: &str) -> Result<Segment, String> {
    if segment.is_empty() {
        return Err("empty segment ('//' or a trailing '/')".into());
    }
    if segment == "." || segment == ".." {
        return Err("'.' and '..' segments are not allowed".into());
    }
    if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        let (name, constraint) = match inner.split_once(':') {
            Some((name, pattern)) => (name, Some(Constraint::parse(pattern)?)),
            None => (inner, None),
        };
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        return if ok && name.len() <= 64 {
            Ok(Segment::Param {
                name: name.to_owned(),
                constraint,
            })
        } else {
            Err(format!("parameter name {name:?} is not an identifier"))
        };
    }
    if let Some(bad) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
    {
        return Err(format!(
            "character {bad:?} is not allowed (use letters, digits, '-', '.', '_', '~' and whole-segment {{params}})"
        ));
    }
    Ok(Segment::Literal(segment.to_owned()))
}

impl TryFrom<String> for PathPattern {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PathPattern> for String {
    fn from(pattern: PathPattern) -> Self {
        pattern.raw
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// What a user writes to create an HTTP route.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub function: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix: bool,
    /// Every request is invoked asynchronously (`202` with the invocation id).
    #[serde(default, rename = "async", skip_serializing_if = "std::ops::Not::not")]
    pub async_only: bool,
    /// A request with `X-Gust-Invoke: async` is invoked asynchronously.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_async: bool,
    /// The app (`gust apply`) this belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Who may call it [default: anyone]
    #[serde(default, skip_serializing_if = "RouteAuth::is_public")]
    pub auth: RouteAuth,
    /// Serve only requests for this host name (the `Host` header without its port); the
    /// first route on a host claims it for the route's namespace [default: every host]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// How a route invokes its function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteMode {
    /// The caller waits for the function's answer.
    #[default]
    Sync,
    /// The caller gets `202` and an invocation id once the request is stored.
    Async,
    /// Sync, unless the request says `X-Gust-Invoke: async`.
    CallerChooses,
}

impl RouteConfig {
    /// Validates everything but the name, which the caller generates when absent.
    pub fn validate(
        &self,
        namespace: Namespace,
        generated_name: Name,
    ) -> Result<Route, ModelError> {
        let name = match &self.name {
            Some(name) => Name::parse("route", name)?,
            None => generated_name,
        };
        let mode = match (self.async_only, self.allow_async) {
            (false, false) => RouteMode::Sync,
            (true, false) => RouteMode::Async,
            (false, true) => RouteMode::CallerChooses,
            (true, true) => {
                return Err(ModelError::OutOfRange {
                    field: "async",
                    reason: "a route is either async or allows async, not both".into(),
                });
            }
        };
        Ok(Route {
            namespace,
            name,
            function: Name::parse("function", &self.function)?,
            path: PathPattern::parse(&self.url)?,
            methods: MethodSet::parse(&self.methods)?,
            prefix: self.prefix,
            mode,
            app: Name::parse_app(self.app.as_deref())?,
            auth: self.auth.clone(),
            host: self.host.as_deref().map(RouteHost::parse).transpose()?,
        })
    }
}

/// A host name a route serves: lowercase DNS labels (letters, digits, `-`), as the `Host`
/// header names it without its port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String)]
pub struct RouteHost(String);

impl RouteHost {
    pub fn parse(host: &str) -> Result<Self, ModelError> {
        let invalid = |reason: &str| ModelError::InvalidHost {
            host: host.to_owned(),
            reason: reason.to_owned(),
        };
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 {
            return Err(invalid("a host name is 1 to 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(invalid("each dot-separated label is 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid(
                    "a host name has letters, digits, '-' and '.' only, and no port",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a label neither starts nor ends with '-'"));
            }
        }
        // A numeric last label is an IPv4 address: every client can name one, so no team
        // may own it.
        if name
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid(
                "an IP address is not a host name a route can claim",
            ));
        }
        Ok(Self(name))
    }

    /// Whether this name is `parent` or below it (`a.b.example` is below `b.example`).
    fn is_within(&self, parent: &RouteHost) -> bool {
        self.0
            .strip_suffix(parent.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    }

    /// The host a request names in its `Host` header (or its URI's authority), without the
    /// port; `None` when it names none or one no route could claim (an IP address in
    /// brackets, a malformed name).
    pub fn of_request(authority: &str) -> Option<Self> {
        let name = match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => authority,
        };
        Self::parse(name).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The hosts a namespace may claim routes on, granted by an admin of every namespace: a name
/// (`api.team-a.example`), or `*.` and a name for every name below it (`*.team-a.example`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    below: bool,
    host: RouteHost,
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, ModelError> {
        match pattern.strip_prefix("*.") {
            Some(parent) => Ok(Self {
                below: true,
                host: RouteHost::parse(parent)?,
            }),
            None => Ok(Self {
                below: false,
                host: RouteHost::parse(pattern)?,
            }),
        }
    }

    pub fn matches(&self, host: &RouteHost) -> bool {
        if self.below {
            host != &self.host && host.is_within(&self.host)
        } else {
            host == &self.host
        }
    }

    /// Whether some host matches both.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        match (self.below, other.below) {
            (false, false) => self.host == other.host,
            (true, false) => self.matches(&other.host),
            (false, true) => other.matches(&self.host),
            (true, true) => self.host.is_within(&other.host) || other.host.is_within(&self.host),
        }
    }
}

impl TryFrom<String> for HostPattern {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> Self {
        pattern.to_string()
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.below {
            f.write_str("*.")?;
        }
        f.write_str(self.host.as_str())
    }
}

impl TryFrom<String> for RouteHost {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RouteHost> for String {
    fn from(host: RouteHost) -> Self {
        host.0
    }
}

impl fmt::Display for RouteHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated HTTP trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Route {
    pub namespace: Namespace,
    pub name: Name,
    pub function: Name,
    pub path: PathPattern,
    pub methods: MethodSet,
    pub prefix: bool,
    #[serde(default)]
    pub mode: RouteMode,
    /// The app (`gust apply`) this belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Name>,
    /// Who may call it; public by default.
    #[serde(default, skip_serializing_if = "RouteAuth::is_public")]
    pub auth: RouteAuth,
    /// The only host it serves; every host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<RouteHost>,
}

/// Who may call a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RouteAuth {
    /// Anyone.
    #[default]
    Public,
    /// A Gust token with the invoker role (or more) in the route's namespace, in
    /// `Authorization: Bearer`; the function does not see it.
    Token,
    /// A JSON Web Token in `Authorization: Bearer`, signed (RS256 or ES256) by a key of
    /// `jwks`, from `issuer` for `audience`, within its validity; its claims reach the function
    /// in `X-Gust-Jwt-Claims`.
    Jwt {
        /// The JSON Web Key Set document itself.
        jwks: String,
        issuer: String,
        audience: String,
    },
}

impl RouteAuth {
    pub fn is_public(&self) -> bool {
        *self == RouteAuth::Public
    }

    /// `public`, `token` or `jwt`.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteAuth::Public => "public",
            RouteAuth::Token => "token",
            RouteAuth::Jwt { .. } => "jwt",
        }
    }
}

/// Why a route cannot join a table that holds another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteClash {
    /// Some request could match both equally well.
    SameRequests,
    /// The other route's namespace has claimed the host.
    HostOwned {
        host: RouteHost,
        namespace: Namespace,
    },
}

impl Route {
    /// Two routes conflict when some request could match both equally well, or when they
    /// name the same host from two namespaces (a host belongs to one team).
    pub fn conflicts_with(&self, other: &Route) -> bool {
        self.clash_with(other).is_some()
    }

    pub fn clash_with(&self, other: &Route) -> Option<RouteClash> {
        if let (Some(host), Some(theirs)) = (&self.host, &other.host)
            && host == theirs
            && self.namespace != other.namespace
        {
            return Some(RouteClash::HostOwned {
                host: host.clone(),
                namespace: other.namespace.clone(),
            });
        }
        let same_requests = self.host == other.host
            && self.prefix == other.prefix
            && self.path.same_shape(&other.path)
            && self.methods.overlaps(other.methods);
        same_requests.then_some(RouteClash::SameRequests)
    }
}

/// The result of matching a request against the table.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    pub params: Vec<(String, String)>,
}

/// Every route of every namespace; the public listener's one view of what it serves.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Each claimed host's namespace, built with the table: a request's host is looked up,
    /// not searched for among the routes.
    owners: std::collections::HashMap<RouteHost, Namespace>,
    /// The routes (their places in `routes`) whose path begins with each literal segment: a
    /// request is compared with those of its first segment and with `any_first`, not with
    /// every route (a node with 10,000 routes spent 0.2 ms a request scanning them).
    by_first: std::collections::HashMap<String, Vec<usize>>,
    /// Routes whose path has no segment or begins with a parameter: any request may match.
    any_first: Vec<usize>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let owners = routes
            .iter()
            .filter_map(|route| Some((route.host.clone()?, route.namespace.clone())))
            .collect();
        let mut by_first: std::collections::HashMap<String, Vec<usize>> = Default::default();
        let mut any_first = Vec::new();
        for (place, route) in routes.iter().enumerate() {
            match route.path.first_literal() {
                Some(first) => by_first.entry(first.to_owned()).or_default().push(place),
                None => any_first.push(place),
            }
        }
        Self {
            routes,
            owners,
            by_first,
            any_first,
        }
    }

    /// The routes that may match a request with these segments (a superset), with their
    /// places in the table.
    fn candidates<'a>(&'a self, segments: &[&str]) -> impl Iterator<Item = (usize, &'a Route)> {
        let keyed = segments
            .first()
            .and_then(|first| self.by_first.get(*first))
            .map_or(&[][..], Vec::as_slice);
        keyed
            .iter()
            .chain(&self.any_first)
            .map(|&place| (place, &self.routes[place]))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route for `method`, the request's host (see
    /// [`RouteHost::of_request`]) and its raw (undecoded) `path`: among the host's own routes
    /// first, then among the routes of every host: on a host some namespace has routes on,
    /// only that namespace's. `HEAD` finds a `GET` route when no route names `HEAD` itself, as
    /// HTTP servers serve it.
    pub fn find(
        &self,
        method: &str,
        host: Option<&RouteHost>,
        path: &str,
    ) -> Option<RouteMatch<'_>> {
        let segments = request_segments(path)?;
        let owner = self.owner(host);
        // A host no route claims has no routes of its own to try first.
        let own_tier = owner.map(|_| (host, None));
        [own_tier, Some((None, owner))]
            .into_iter()
            .flatten()
            .find_map(|(host, namespace)| {
                self.find_exactly(method, host, namespace, &segments)
                    .or_else(|| {
                        (method == "HEAD")
                            .then(|| self.find_exactly("GET", host, namespace, &segments))
                            .flatten()
                    })
            })
    }

    /// The namespace whose routes claim `host`, if any does.
    fn owner(&self, host: Option<&RouteHost>) -> Option<&Namespace> {
        self.owners.get(host?)
    }

    /// The methods the routes for `host` and `path` answer (a `405`'s `Allow`, asked when
    /// none answers the request's method); empty when no route has the path.
    pub fn allowed_methods(&self, host: Option<&RouteHost>, path: &str) -> Vec<Method> {
        let Some(segments) = request_segments(path) else {
            return Vec::new();
        };
        let owner = self.owner(host);
        let mut allowed = MethodSet::default();
        for (_, route) in self.candidates(&segments) {
            let serves_host = match &route.host {
                Some(theirs) => Some(theirs) == host,
                None => owner.is_none_or(|owner| *owner == route.namespace),
            };
            if serves_host && route.path.matches(&segments, route.prefix).is_some() {
                allowed.0 |= route.methods.0;
            }
        }
        if allowed.0 & Method::Get.bit() != 0 {
            allowed.0 |= Method::Head.bit();
        }
        allowed.into()
    }

    /// The best match among the routes claiming exactly `host` (`None`: those of every host),
    /// of `namespace` if given.
    fn find_exactly(
        &self,
        method: &str,
        host: Option<&RouteHost>,
        namespace: Option<&Namespace>,
        segments: &[&str],
    ) -> Option<RouteMatch<'_>> {
        // The most specific match; of equally specific ones, the route listed first.
        let mut best: Option<(Specificity, usize, RouteMatch<'_>)> = None;
        for (place, route) in self.candidates(segments) {
            if route.host.as_ref() != host
                || namespace.is_some_and(|ns| *ns != route.namespace)
                || !route.methods.allows(method)
            {
                continue;
            }
            // A prefix route treats a trailing slash as the end of its prefix: `/api` serves
            // `/api/` and `/api/x`.
            let Some((params, specificity)) = route.path.matches(segments, route.prefix) else {
                continue;
            };
            let better = best
                .as_ref()
                .is_none_or(|(s, p, _)| specificity > *s || (specificity == *s && place < *p));
            if better {
                best = Some((specificity, place, RouteMatch { route, params }));
            }
        }
        best.map(|(_, _, m)| m)
    }
}

/// A request path's segments, `None` for a path no route may serve.
fn request_segments(path: &str) -> Option<Vec<&str>> {
    if !path.starts_with('/') || is_reserved_path(path) {
        return None;
    }
    let body = &path[1..];
    Some(if body.is_empty() {
        Vec::new()
    } else {
        body.split('/').collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, url: &str, methods: &[&str], prefix: bool) -> Route {
        route_on(None, "default", name, url, methods, prefix)
    }

    fn route_on(
        host: Option<&str>,
        namespace: &str,
        name: &str,
        url: &str,
        methods: &[&str],
        prefix: bool,
    ) -> Route {
        RouteConfig {
            name: Some(name.into()),
            function: "f".into(),
            url: url.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            prefix,
            async_only: false,
            allow_async: false,
            app: None,
            auth: RouteAuth::Public,
            host: host.map(str::to_owned),
        }
        .validate(
            Namespace::parse(namespace).unwrap(),
            Name::parse("route", "unused").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn refuses_unsafe_paths() {
        for bad in [
            "",
            "hello",
            "/a//b",
            "/a/",
            "/../x",
            "/a/./b",
            "/%2e%2e/x",
            "/a%2Fb",
            "/healthz",
            "/v2/specialize",
            "/v2",
            "/_gust/x",
            "/{1a}",
            "/{a}/{a}",
            "/a{b}",
            "/a b",
            "/a?x=1",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in [
            "/",
            "/hello",
            "/users/{id}",
            "/a.b/c-d/_e~",
            "/v2x",
            "/healthzz",
        ] {
            assert!(PathPattern::parse(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn methods_parse_any_case_and_lists() {
        let set = MethodSet::parse(&["get,Post", "put"]).unwrap();
        assert!(set.allows("GET") && set.allows("POST") && set.allows("PUT"));
        assert!(!set.allows("DELETE"));
        assert!(MethodSet::parse(&["FETCH"]).is_err());
        assert!(MethodSet::parse::<&str>(&[]).unwrap().allows("DELETE"));
        assert_eq!(set.to_string(), "GET,POST,PUT");
        assert_eq!(MethodSet::parse::<&str>(&[]).unwrap().to_string(), "*");
    }

    #[test]
    fn the_index_finds_what_comparing_every_route_finds() {
        let shapes = [
            ("/", false),
            ("/", true),
            ("/{any}", false),
            ("/{any}", true),
            ("/{n:[0-9]+}", false),
            ("/users", false),
            ("/users", true),
            ("/users/{id}", false),
            ("/users/me", false),
            ("/users/{id:[0-9]+}", false),
            ("/{kind}/me", false),
            ("/api", true),
            ("/api/v1/{x}", false),
        ];
        let mut routes = Vec::new();
        for (i, (url, prefix)) in shapes.iter().enumerate() {
            // Each shape twice, the copy answering POST only: ties go to the first listed.
            routes.push(route(&format!("r{i}"), url, &[], *prefix));
            routes.push(route(&format!("r{i}-post"), url, &["POST"], *prefix));
        }
        let table = RouteTable::new(routes.clone());
        let scan = |method: &str, path: &str| -> Option<String> {
            let segments = request_segments(path)?;
            let mut best: Option<(Specificity, &Route)> = None;
            for route in &routes {
                if !route.methods.allows(method) {
                    continue;
                }
                if let Some((_, specificity)) = route.path.matches(&segments, route.prefix)
                    && best.as_ref().is_none_or(|(s, _)| specificity > *s)
                {
                    best = Some((specificity, route));
                }
            }
            best.map(|(_, route)| route.name.to_string())
        };
        for path in [
            "/",
            "/users",
            "/users/",
            "/users/7",
            "/users/me",
            "/users/x",
            "/x/me",
            "/42",
            "/api",
            "/api/v1/z",
            "/api/v2",
            "/a%20b",
            "/a b",
            "/nothing/here",
            "/users/7/8",
        ] {
            for method in ["GET", "POST", "DELETE"] {
                let found = table
                    .find(method, None, path)
                    .map(|m| m.route.name.to_string());
                assert_eq!(found, scan(method, path), "{method} {path}");
            }
        }
    }

    #[test]
    fn finds_params_and_prefers_literals() {
        let table = RouteTable::new(vec![
            route("by-id", "/users/{id}", &[], false),
            route("me", "/users/me", &[], false),
            route("api", "/api", &[], true),
            route("root", "/", &["GET"], false),
        ]);
        let m = table.find("GET", None, "/users/42").unwrap();
        assert_eq!(m.route.name.as_str(), "by-id");
        assert_eq!(m.params, vec![("id".into(), "42".into())]);
        assert_eq!(
            table
                .find("GET", None, "/users/me")
                .unwrap()
                .route
                .name
                .as_str(),
            "me"
        );
        assert_eq!(
            table
                .find("GET", None, "/api/x/y")
                .unwrap()
                .route
                .name
                .as_str(),
            "api"
        );
        assert_eq!(
            table.find("GET", None, "/api").unwrap().route.name.as_str(),
            "api"
        );
        assert!(table.find("GET", None, "/apix").is_none());
        assert!(table.find("GET", None, "/users/42/extra").is_none());
        assert!(table.find("GET", None, "/users/").is_none());
        assert_eq!(
            table.find("GET", None, "/").unwrap().route.name.as_str(),
            "root"
        );
        assert!(table.find("POST", None, "/").is_none());
    }

    #[test]
    fn params_are_decoded_and_patterns_constrain_them() {
        let table = RouteTable::new(vec![
            route("by-id", "/items/{id:[0-9]+}", &["GET"], false),
            route("by-name", "/items/{name}", &["GET"], false),
            route("latest", "/items/latest", &["GET"], false),
            route("echo", "/echo/{text}", &["POST"], false),
        ]);
        let m = table.find("GET", None, "/items/42").unwrap();
        assert_eq!(m.route.name.as_str(), "by-id");
        assert_eq!(m.params, vec![("id".into(), "42".into())]);
        let m = table.find("GET", None, "/items/4x2").unwrap();
        assert_eq!(m.route.name.as_str(), "by-name");
        assert_eq!(
            table
                .find("GET", None, "/items/latest")
                .unwrap()
                .route
                .name
                .as_str(),
            "latest"
        );
        // The pattern matches the decoded value, whole.
        assert_eq!(
            table
                .find("GET", None, "/items/%34%32")
                .unwrap()
                .route
                .name
                .as_str(),
            "by-id"
        );
        let m = table.find("POST", None, "/echo/a%20b%2Fc").unwrap();
        assert_eq!(m.params, vec![("text".into(), "a b/c".into())]);
        assert_eq!(
            PathPattern::parse("/items/{id:[0-9]+}").unwrap().as_str(),
            "/items/{id:[0-9]+}"
        );
        for bad in ["/x/{id:[0-9}", "/x/{id:}", "/x/{:[0-9]+}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn head_finds_get_routes_and_other_methods_are_listed() {
        let table = RouteTable::new(vec![
            route("read", "/doc", &["GET"], false),
            route("write", "/doc", &["PUT"], false),
            route("ping", "/ping", &["HEAD"], false),
        ]);
        assert_eq!(
            table
                .find("HEAD", None, "/doc")
                .unwrap()
                .route
                .name
                .as_str(),
            "read"
        );
        assert_eq!(
            table
                .find("HEAD", None, "/ping")
                .unwrap()
                .route
                .name
                .as_str(),
            "ping"
        );
        assert!(table.find("POST", None, "/doc").is_none());
        assert_eq!(
            table.allowed_methods(None, "/doc"),
            vec![Method::Get, Method::Head, Method::Put]
        );
        assert!(table.allowed_methods(None, "/nothing").is_empty());
    }

    #[test]
    fn reserved_paths_never_match_even_under_a_root_prefix() {
        let table = RouteTable::new(vec![route("all", "/", &[], true)]);
        assert!(table.find("GET", None, "/anything").is_some());
        for reserved in ["/healthz", "/v2/specialize", "/v2", "/_gust/x"] {
            assert!(table.find("GET", None, reserved).is_none(), "{reserved}");
        }
    }

    #[test]
    fn reserved_paths_are_refused_in_every_spelling() {
        let table = RouteTable::new(vec![route("all", "/", &[], true)]);
        for spelling in [
            "//v2/specialize",
            "///healthz",
            "/x/../v2/specialize",
            "/x/%2e%2e/v2/specialize",
            "/x/%2E%2E/v2/specialize",
            "/%2e%2e/_gust/warmup",
            "/x/.%2e/v2/specialize",
            "/x/%252e%252e/v2/specialize",
            "/v2%2fspecialize",
            "/v2%2Fspecialize",
            "/%76%32/specialize",
            "/./v2/specialize",
            "/x/..\\v2/specialize",
            "/\\v2/specialize",
            "/x/..;/v2/specialize",
            "/v2;x/specialize",
            "/healthz;x",
            "/x/%2e%2e%2fv2%2fspecialize",
        ] {
            assert!(is_reserved_path(spelling), "{spelling}");
            assert!(table.find("POST", None, spelling).is_none(), "{spelling}");
        }
        for ordinary in [
            "/v3/x",
            "/healthzz",
            "/x/v2/specialize",
            "/a%20b",
            "/x/../y",
        ] {
            assert!(!is_reserved_path(ordinary), "{ordinary}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_resolved_path_is_rooted_and_free_of_dot_segments(path in "[/a-z.%2eE;\\\\]{0,24}") {
            let resolved = resolved_path(&path);
            proptest::prop_assert!(resolved.starts_with('/'));
            proptest::prop_assert!(!resolved.contains("//"));
            proptest::prop_assert!(!resolved.split('/').any(|s| s == "." || s == ".."));
        }
    }

    #[test]
    fn conflicts_need_same_shape_and_overlapping_methods() {
        let a = route("a", "/users/{id}", &["GET"], false);
        assert!(a.conflicts_with(&route("b", "/users/{uid}", &["GET", "POST"], false)));
        assert!(a.conflicts_with(&route("b", "/users/{uid}", &[], false)));
        assert!(!a.conflicts_with(&route("b", "/users/{uid}", &["POST"], false)));
        assert!(!a.conflicts_with(&route("b", "/users/me", &["GET"], false)));
        assert!(!a.conflicts_with(&route("b", "/users/{id}", &["GET"], true)));
        let digits = route("d", "/users/{id:[0-9]+}", &["GET"], false);
        assert!(!a.conflicts_with(&digits));
        assert!(digits.conflicts_with(&route("e", "/users/{n:[0-9]+}", &[], false)));
    }

    #[test]
    fn hosts_are_names_without_ports_in_any_case() {
        let host = RouteHost::parse("API.Team-A.example.").unwrap();
        assert_eq!(host.as_str(), "api.team-a.example");
        for bad in [
            "",
            "a..b",
            "-a.example",
            "a-.example",
            "a.example:8080",
            "a_b.example",
            "*.example",
            "[::1]",
            "a/b",
            "127.0.0.1",
            "10.1",
        ] {
            assert!(RouteHost::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let name = |h: &str| RouteHost::parse(h).unwrap();
        let pattern = |p: &str| HostPattern::parse(p).unwrap();
        assert!(pattern("*.a.example").matches(&name("x.a.example")));
        assert!(pattern("*.a.example").matches(&name("y.x.a.example")));
        assert!(!pattern("*.a.example").matches(&name("a.example")));
        assert!(!pattern("*.a.example").matches(&name("xa.example")));
        assert!(pattern("a.example").matches(&name("A.example.")));
        assert!(pattern("*.a.example").overlaps(&pattern("x.a.example")));
        assert!(pattern("*.a.example").overlaps(&pattern("*.x.a.example")));
        assert!(!pattern("*.a.example").overlaps(&pattern("a.example")));
        assert!(!pattern("*.a.example").overlaps(&pattern("*.b.example")));
        assert_eq!(pattern("*.A.example").to_string(), "*.a.example");
        assert!(HostPattern::parse("*.*.a").is_err() && HostPattern::parse("a.*").is_err());
        assert_eq!(
            RouteHost::of_request("API.team-a.example:8080"),
            Some(host.clone())
        );
        assert_eq!(RouteHost::of_request("api.team-a.example"), Some(host));
        assert_eq!(RouteHost::of_request("[::1]:8080"), None);
        assert_eq!(RouteHost::of_request("a.example:x"), None);
    }

    #[test]
    fn a_hosts_own_routes_come_first_then_its_owner_s_of_every_host() {
        let a = RouteHost::parse("a.example").unwrap();
        let b = RouteHost::parse("b.example").unwrap();
        let table = RouteTable::new(vec![
            route_on(None, "default", "any-root", "/", &[], true),
            route_on(None, "team-a", "any-hello", "/hello", &["GET"], false),
            route_on(None, "default", "login", "/login", &["GET"], false),
            route_on(Some("a.example"), "team-a", "a-api", "/api", &[], true),
            route_on(
                Some("a.example"),
                "team-a",
                "a-put",
                "/doc",
                &["PUT"],
                false,
            ),
        ]);
        let name = |host: Option<&RouteHost>, method: &str, path: &str| {
            table
                .find(method, host, path)
                .map(|m| m.route.name.to_string())
        };
        assert_eq!(name(Some(&a), "GET", "/api/x").as_deref(), Some("a-api"));
        // Then the owner's routes of every host; another namespace's never serve its host.
        assert_eq!(
            name(Some(&a), "GET", "/hello").as_deref(),
            Some("any-hello")
        );
        assert_eq!(name(Some(&a), "GET", "/login"), None);
        assert_eq!(name(Some(&b), "GET", "/login").as_deref(), Some("login"));
        assert_eq!(name(Some(&b), "GET", "/api/x").as_deref(), Some("any-root"));
        assert_eq!(name(None, "GET", "/api/x").as_deref(), Some("any-root"));
        assert_eq!(name(Some(&a), "HEAD", "/api").as_deref(), Some("a-api"));
        // A 405's Allow lists what the host's routes and its owner's of every host answer.
        let table = RouteTable::new(vec![
            route_on(None, "team-a", "read", "/doc", &["GET"], false),
            route_on(None, "default", "other", "/doc", &["DELETE"], false),
            route_on(
                Some("a.example"),
                "team-a",
                "write",
                "/doc",
                &["PUT"],
                false,
            ),
        ]);
        assert_eq!(
            table.allowed_methods(Some(&a), "/doc"),
            vec![Method::Get, Method::Head, Method::Put]
        );
        assert_eq!(
            table.allowed_methods(Some(&b), "/doc"),
            vec![Method::Get, Method::Head, Method::Delete]
        );
    }

    #[test]
    fn a_host_belongs_to_the_namespace_of_its_routes() {
        let a = route_on(Some("a.example"), "team-a", "x", "/x", &[], false);
        let same_team = route_on(Some("a.example"), "team-a", "y", "/y", &[], false);
        let other_team = route_on(Some("a.example"), "team-b", "y", "/y", &[], false);
        let everywhere = route_on(None, "team-b", "x", "/x", &[], false);
        assert_eq!(a.clash_with(&same_team), None);
        assert_eq!(
            other_team.clash_with(&a),
            Some(RouteClash::HostOwned {
                host: RouteHost::parse("a.example").unwrap(),
                namespace: Namespace::parse("team-a").unwrap(),
            })
        );
        // A route of every host and one of a host never match the same request equally well.
        assert_eq!(everywhere.clash_with(&a), None);
        assert_eq!(
            route_on(Some("a.example"), "team-a", "z", "/x", &["GET"], false).clash_with(&a),
            Some(RouteClash::SameRequests)
        );
    }
}
