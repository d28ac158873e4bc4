//! Apps as code: `gust.yaml` read and checked offline ([`load`]), compared with the server
//! ([`plan`]), applied step by step ([`apply`]), written back from the server ([`export`]),
//! and described as a JSON Schema for editors ([`schema`]).

pub mod apply;
pub mod dev;
pub mod export;
pub mod fission;
pub mod load;
pub mod plan;
pub mod schema;
pub mod spec;

use std::path::{Path, PathBuf};

/// Reads what `-f` names: a `gust.yaml` (or a directory holding one), or a directory of
/// Fission specs. `namespace` is the CLI's, for an app that names none.
pub fn read_app(given: &Path, namespace: &str) -> Result<load::LoadedApp, load::Problems> {
    if fission::is_spec_dir(given) {
        fission::load_specs(given, namespace)
    } else {
        load::load(&spec::resolve_file(given), namespace, &|name| {
            std::env::var(name).ok()
        })
    }
}

/// The directory whose files make up what `-f` names: the `gust.yaml`'s, or for Fission specs
/// the project's (their parent, where the archives' globs start).
pub fn watched_dir(given: &Path) -> PathBuf {
    let dir = if fission::is_spec_dir(given) {
        given.join("..")
    } else {
        spec::resolve_file(given)
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default()
    };
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}
