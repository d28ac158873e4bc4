//! Dependency builds: a revision whose code declares dependencies (`requirements.txt` for
//! Python, `package.json` for Node.js) is built before it serves. Its package is its sources
//! with the built dependencies beside them; it goes live only when the build succeeded.

use serde::{Deserialize, Serialize};

use crate::{BuiltinRuntime, CodeRef};

/// Where a revision's build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Building,
    Ready,
    BuildFailed,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Building => "building",
            BuildState::Ready => "ready",
            BuildState::BuildFailed => "build_failed",
        }
    }
}

/// How a revision's package was (or is being) built. A revision without one was deployed
/// as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Build {
    /// Names this build among all others, so that a build's end is recorded only on the
    /// revision it was started for (not on a function deleted and created again).
    #[serde(default)]
    pub id: String,
    pub state: BuildState,
    /// The sources as uploaded; the revision's `code` is the built package once `Ready`.
    pub source: CodeRef,
    /// What the built dependencies depend on (environment, interpreter, requirements or
    /// lockfile): builds with the same key share one dependency tree.
    pub cache_key: String,
    /// The dependency tree in the code store, once built or found in the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<String>,
    /// Whether the dependencies came from an earlier build.
    #[serde(default)]
    pub cached: bool,
    /// Unix time in milliseconds.
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Why it failed: the reason and the tail of the tool's own output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The dependency file of each language, and how a build installs what it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyKind {
    /// `requirements.txt`, installed with `pip install -r ... --target`.
    Pip,
    /// `package.json`, installed with `npm ci --omit=dev` (`npm install --omit=dev` without
    /// a `package-lock.json`).
    Npm,
}

impl DependencyKind {
    /// The file that asks for a build in code of `runtime`.
    pub fn of(runtime: BuiltinRuntime) -> Option<Self> {
        match runtime {
            BuiltinRuntime::Python => Some(DependencyKind::Pip),
            BuiltinRuntime::Node => Some(DependencyKind::Npm),
            BuiltinRuntime::Wasm => None,
        }
    }

    pub fn manifest(self) -> &'static str {
        match self {
            DependencyKind::Pip => "requirements.txt",
            DependencyKind::Npm => "package.json",
        }
    }

    /// Files whose content decides what the build installs (the cache key's input).
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            DependencyKind::Pip => &["requirements.txt"],
            DependencyKind::Npm => &["package.json", "package-lock.json", ".npmrc"],
        }
    }
}
