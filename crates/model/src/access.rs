//! Who may do what: namespaces as tenants, API tokens that carry a role and the namespaces
//! they reach, and the audit log of control-plane writes.
//!
//! A token's secret is never stored: its record holds a SHA-256 of the secret, and the API
//! compares hashes. The admin token `gust up` makes at first start is not a record: it reaches
//! every namespace with the admin role.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{HostPattern, Name, Namespace};

/// A tenant: its functions, triggers, tokens, usage and logs are its own. `default` always
/// exists; every other namespace is created before anything is put in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NamespaceRecord {
    pub name: Namespace,
    pub created_at_ms: u64,
    #[serde(default)]
    pub quotas: NamespaceQuotas,
    /// The hosts its routes may claim (`gust route create --host`); none unless an admin of
    /// every namespace grants some, and no host is granted to two namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub hosts: Vec<HostPattern>,
}

impl NamespaceRecord {
    /// `default`, which exists whether or not it was ever stored, without quotas until given
    /// some.
    pub fn default_namespace() -> Self {
        Self {
            name: Namespace::default(),
            created_at_ms: 0,
            quotas: NamespaceQuotas::default(),
            hosts: Vec::new(),
        }
    }
}

/// What a namespace may hold and use; none of them when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct NamespaceQuotas {
    /// Functions the namespace holds at most
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_functions: Option<u32>,
    /// Requests per second its public routes take together; more are answered 429 (reason
    /// quota) with Retry-After
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "max-rps"))]
    pub max_requests_per_second: Option<u32>,
    /// Instances serving requests at once across its functions (idle ones do not count);
    /// more are answered 429 (reason quota)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_instances: Option<u32>,
    /// Memory (MB) of the instances serving requests at once, each counted at its function's
    /// --memory; more are answered 429 (reason quota)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "max-memory", value_name = "MB"))]
    pub max_memory_mb: Option<u64>,
    /// Asynchronous invocations (async routes, timers, `--async` invokes) waiting or running
    /// at once across its functions; more are answered 429 (reason quota)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "max-async-queue"))]
    pub max_async_queue: Option<u64>,
    /// Code (MB, as unpacked) its functions' kept revisions hold together; an upload past it
    /// is refused (403, reason quota)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "max-code", value_name = "MB"))]
    pub max_code_mb: Option<u64>,
}

/// What a token may do in the namespaces it reaches, each role all that the one before may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Role {
    /// Reads: functions, logs, routes, triggers, usage, dead letters.
    Viewer,
    /// Reads, and invokes functions through the API (and private routes).
    Invoker,
    /// Also creates, changes and deletes functions, routes, triggers and dead letters.
    Deployer,
    /// Also manages the namespace's tokens and reads its audit log.
    Admin,
}

/// The kind of thing an API call does, for [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Invoke,
    Deploy,
    Administer,
}

impl Role {
    pub fn allows(self, action: Action) -> bool {
        let needed = match action {
            Action::Read => Role::Viewer,
            Action::Invoke => Role::Invoker,
            Action::Deploy => Role::Deployer,
            Action::Administer => Role::Admin,
        };
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Invoker => "invoker",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as stored: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// The public part of the token (it is in the token's text), by which it is found and
    /// revoked.
    pub id: String,
    pub name: Name,
    pub role: Role,
    /// The namespaces it reaches; `None` for every namespace (made by a cluster-wide admin).
    pub namespaces: Option<Vec<Namespace>>,
    /// SHA-256 of the secret part, in hex.
    pub secret_sha256: String,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// The name of the token that created it.
    pub created_by: String,
}

impl ApiToken {
    pub fn reaches(&self, namespace: &Namespace) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|reached| reached.contains(namespace))
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// Prefix of every token `gust token create` makes: `gust_<id>_<secret>`.
pub const TOKEN_PREFIX: &str = "gust_";

/// The id and secret of a token's text, if it has the form of a created token.
pub fn split_token(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, TOKEN_ID_HEX) && hex(secret, TOKEN_SECRET_HEX)).then_some((id, secret))
}

/// Hex digits of a token's id (64 bits) and of its secret (256 bits).
pub const TOKEN_ID_HEX: usize = 16;
pub const TOKEN_SECRET_HEX: usize = 64;

/// One control-plane write, allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// The name of the token that made the call.
    pub token: String,
    pub role: Role,
    /// The namespace the call was about; none for cluster-wide resources (environments,
    /// namespaces).
    pub namespace: Option<Namespace>,
    /// The method and the API path's pattern: `PUT /v1/functions/{name}`.
    pub action: String,
    /// The path called: `/v1/functions/hello`.
    pub resource: String,
    /// The HTTP status of the answer.
    pub status: u16,
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_what_the_one_before_does_and_more() {
        use Action::*;
        let allowed = |role: Role| {
            [Read, Invoke, Deploy, Administer]
                .into_iter()
                .filter(|action| role.allows(*action))
                .count()
        };
        assert_eq!(allowed(Role::Viewer), 1);
        assert_eq!(allowed(Role::Invoker), 2);
        assert_eq!(allowed(Role::Deployer), 3);
        assert_eq!(allowed(Role::Admin), 4);
        assert!(!Role::Viewer.allows(Invoke));
        assert!(!Role::Invoker.allows(Deploy));
        assert!(!Role::Deployer.allows(Administer));
    }

    #[test]
    fn only_a_created_token_s_shape_splits() {
        let id = "0123456789abcdef";
        let secret = "a".repeat(64);
        let token = format!("gust_{id}_{secret}");
        assert_eq!(split_token(&token), Some((id, secret.as_str())));
        assert_eq!(split_token(&format!("gust_{id}_{secret}x")), None);
        assert_eq!(split_token(&format!("gust_{id}x_{secret}")), None);
        assert_eq!(split_token(&secret), None);
        assert_eq!(split_token("gust__"), None);
        assert_eq!(split_token(&format!("gust_{id}_{}", "g".repeat(64))), None);
    }

    #[test]
    fn a_token_reaches_its_namespaces_until_it_expires() {
        let ns = |s: &str| Namespace::parse(s).unwrap();
        let mut token = ApiToken {
            id: "0".repeat(16),
            name: Name::parse("token", "ci").unwrap(),
            role: Role::Deployer,
            namespaces: Some(vec![ns("team-a")]),
            secret_sha256: String::new(),
            created_at_ms: 0,
            expires_at_ms: Some(1_000),
            created_by: "admin".into(),
        };
        assert!(token.reaches(&ns("team-a")));
        assert!(!token.reaches(&ns("team-b")));
        assert!(!token.expired(999));
        assert!(token.expired(1_000));
        token.namespaces = None;
        assert!(token.reaches(&ns("team-b")));
    }
}
