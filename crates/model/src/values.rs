//! Secrets and configs: named sets of keys and values of one namespace that functions mount as
//! files at Fission's paths (`/secrets/<namespace>/<name>/<key>`,
//! `/configs/<namespace>/<name>/<key>`) and, for secrets, optionally as environment variables.
//! A secret's values are stored sealed (see the store); a config's as given.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ModelError, Name, Namespace};

/// Which of the two a set is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    Secret,
    Config,
}

impl ValueKind {
    /// What it is called, in messages and paths of the API (`secret`, `config`).
    pub fn noun(self) -> &'static str {
        match self {
            ValueKind::Secret => "secret",
            ValueKind::Config => "config",
        }
    }

    /// The directory its sets are mounted under in a function's view (`/secrets`).
    pub fn mount_root(self) -> &'static str {
        match self {
            ValueKind::Secret => "secrets",
            ValueKind::Config => "configs",
        }
    }
}

/// A secret or a config as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueSet {
    pub kind: ValueKind,
    pub namespace: Namespace,
    pub name: Name,
    /// 1 when created, one more on every update.
    pub version: u32,
    /// Each key's value in base64: for a secret, sealed (never the value itself).
    pub data: BTreeMap<String, String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Whether its last update restarted the warm instances of the functions mounting it
    /// (every node of a cluster does as the node that took the update did).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restarted: bool,
}

/// Bytes of values one set holds at most (as Kubernetes allows a Secret).
pub const MAX_VALUE_SET_BYTES: usize = 1024 * 1024;
/// Keys one set holds at most.
pub const MAX_VALUE_KEYS: usize = 256;

/// A key is a file name in the function's view: letters, digits, `-`, `_` and `.`, at most 253
/// of them, and not `.` or `..` (Kubernetes' rule for Secret and ConfigMap keys).
pub fn validate_value_key(key: &str) -> Result<(), ModelError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::OutOfRange {
            field: "key",
            reason: format!(
                "{:?} is not 1-253 letters, digits, '-', '_' or '.' (and not . or ..)",
                key.chars().take(64).collect::<String>()
            ),
        })
    }
}

/// Whether a key can also be an environment variable's name.
pub fn is_env_name(key: &str) -> bool {
    key.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A value opened for a function: its bytes never show in `Debug` output (`***`), so an
/// instance's spec can be logged without it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub Vec<u8>);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One key of a secret or config as an instance gets it: a file at
/// `/<kind's root>/<namespace>/<name>/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedValue {
    pub kind: ValueKind,
    pub name: Name,
    pub key: String,
    pub value: SecretValue,
}

/// The secrets and configs a revision mounts, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ValueMounts {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Name>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<Name>,
    /// Each key of its secrets that is a valid variable name is also an environment variable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret_env: bool,
}

impl ValueMounts {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The names of `kind` it mounts.
    pub fn of(&self, kind: ValueKind) -> &[Name] {
        match kind {
            ValueKind::Secret => &self.secrets,
            ValueKind::Config => &self.configs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_file_names() {
        for good in ["password", "tls.crt", "a-b_c.D9", &"k".repeat(253)] {
            assert!(validate_value_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", &"k".repeat(254)] {
            assert!(validate_value_key(bad).is_err(), "{bad}");
        }
        assert!(is_env_name("DB_PASSWORD") && is_env_name("_x1"));
        assert!(!is_env_name("tls.crt") && !is_env_name("1A") && !is_env_name(""));
    }
}
