use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// A resource name: `^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`, the DNS label rule Kubernetes uses,
/// so names are safe in paths, metric labels and file names.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Quoted like a string, so messages read `function "hello"`.
impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Name {
    /// Validates `value` as the name of a `what` ("function", "route", ...).
    pub fn parse(what: &'static str, value: &str) -> Result<Self, ModelError> {
        if is_valid_name(value) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ModelError::InvalidName {
                what,
                value: value.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The app a resource belongs to: none when absent or empty, else a valid name.
    pub fn parse_app(value: Option<&str>) -> Result<Option<Self>, ModelError> {
        match value {
            None | Some("") => Ok(None),
            Some(app) => Self::parse("app", app).map(Some),
        }
    }
}

fn is_valid_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(allowed)
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
}

impl TryFrom<String> for Name {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("resource", &value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant. Every function, route and environment belongs to one; `default` always exists.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Namespace(Name);

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Namespace {
    pub fn parse(value: &str) -> Result<Self, ModelError> {
        Name::parse("namespace", value).map(Self)
    }

    pub fn default_namespace() -> Self {
        Self(Name("default".to_owned()))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::default_namespace()
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "hello", "hello-world", "f1", "0abc", &"a".repeat(63)] {
            assert!(Name::parse("function", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "-a",
            "a-",
            "Hello",
            "a_b",
            "a.b",
            "../x",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            let err = Name::parse("function", bad).unwrap_err();
            assert!(err.to_string().contains("invalid function name"), "{err}");
        }
    }
}
