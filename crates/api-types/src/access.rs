//! Namespaces, tokens and the audit log as the API takes and shows them.

use gust_model::{
    ApiToken, AuditEntry, HostPattern, HumanDuration, Name, Namespace, NamespaceQuotas,
    NamespaceRecord, Role,
};
use serde::{Deserialize, Serialize};

/// `POST /v1/namespaces`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceCreate {
    pub name: Namespace,
    #[serde(default)]
    pub quotas: NamespaceQuotas,
    /// Hosts its routes may claim: `api.team-a.example`, `*.team-a.example`.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub hosts: Vec<HostPattern>,
}

/// `PUT /v1/namespaces/{name}`: the namespace's quotas, all of them (one left out is none).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceUpdate {
    pub quotas: NamespaceQuotas,
    /// Replaces the hosts its routes may claim; left out, they stay as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub hosts: Option<Vec<HostPattern>>,
}

/// A namespace with what it holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamespaceView {
    #[serde(flatten)]
    pub record: NamespaceRecord,
    pub functions: usize,
    pub routes: usize,
    pub timers: usize,
    pub mq_triggers: usize,
    /// Instances serving requests now, and their memory (MB), where it has such a quota.
    #[serde(default)]
    pub running_instances: u32,
    #[serde(default)]
    pub running_memory_mb: u64,
}

/// `POST /v1/tokens`: a new token for the namespaces given, or for the call's `?namespace=`
/// when none are.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// Unique among tokens; generated when absent.
    #[serde(default)]
    pub name: Option<Name>,
    pub role: Role,
    /// The namespaces it reaches; the call's namespace when empty.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Every namespace, present and future; only a token that itself reaches every namespace
    /// as admin may make one.
    #[serde(default)]
    pub all_namespaces: bool,
    /// How long it is valid; forever when absent.
    #[serde(default)]
    pub expires: Option<HumanDuration>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: Name,
    pub role: Role,
    /// The namespaces it reaches; absent for every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<Namespace>>,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub created_by: String,
}

/// `GET /v1/whoami`: the calling token, as far as permissions go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmIView {
    /// The token's name (`admin` for the token `gust up` made).
    pub name: String,
    pub role: Role,
    /// The namespaces it reaches; absent for every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<Namespace>>,
}

impl From<&ApiToken> for TokenView {
    fn from(token: &ApiToken) -> Self {
        Self {
            id: token.id.clone(),
            name: token.name.clone(),
            role: token.role,
            namespaces: token.namespaces.clone(),
            created_at_ms: token.created_at_ms,
            expires_at_ms: token.expires_at_ms,
            created_by: token.created_by.clone(),
        }
    }
}

/// The answer to `POST /v1/tokens`: the token's text, shown this once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// `?namespace=&since=&limit=` of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The namespace whose entries are listed [default: default]
    pub namespace: Option<String>,
    /// Entries of this long ago and newer, such as 1h or 7d [default: 24h]
    pub since: Option<HumanDuration>,
    /// At most this many, oldest first [default: 1000]
    pub limit: Option<usize>,
    /// Every namespace's entries and those of no namespace (environments, namespaces); for a
    /// token that reaches every namespace as admin
    pub all: Option<bool>,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// `POST /v1/secrets` and `POST /v1/configs`: a set's name and values, each value in base64
/// (any bytes).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValuesCreate {
    pub name: Name,
    pub data: std::collections::BTreeMap<String, String>,
}

/// `PUT /v1/secrets/{name}` and `PUT /v1/configs/{name}`: the set's new values, all of them.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValuesUpdate {
    pub data: std::collections::BTreeMap<String, String>,
    /// Also restart the warm instances of the functions that mount it; without, new
    /// instances get the new values and warm ones keep what they started with.
    #[serde(default)]
    pub restart: bool,
}

/// A secret or config as the API shows it: its keys and version, and for a config its values
/// (base64); never a secret's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValuesView {
    pub kind: gust_model::ValueKind,
    pub namespace: Namespace,
    pub name: Name,
    pub version: u32,
    pub keys: Vec<String>,
    /// A config's values by key, in base64; absent for a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<std::collections::BTreeMap<String, String>>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Functions whose current revision mounts it (they were rolled onto the new values by
    /// the update that answered this).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounted_by: Vec<Name>,
}

impl ValuesView {
    pub fn of(set: &gust_model::ValueSet, mounted_by: Vec<Name>) -> Self {
        Self {
            kind: set.kind,
            namespace: set.namespace.clone(),
            name: set.name.clone(),
            version: set.version,
            keys: set.data.keys().cloned().collect(),
            data: (set.kind == gust_model::ValueKind::Config).then(|| set.data.clone()),
            created_at_ms: set.created_at_ms,
            updated_at_ms: set.updated_at_ms,
            mounted_by,
        }
    }
}
