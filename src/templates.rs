//! `gust new`: starting points written from templates built into the binary, each an app
//! with its `gust.yaml` and a README. `{{app}}` in a template is the new app's name.

use std::path::Path;

use anyhow::{Context, bail};

macro_rules! files {
    ($template:literal: $($path:literal),+ $(,)?) => {
        &[$(($path, include_str!(concat!("../templates/", $template, "/", $path)))),+]
    };
}

/// One template: its name, what it is, and its files (path, content).
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    pub files: &'static [(&'static str, &'static str)],
    /// Whether it also gets the `wasi:http` WIT ([`WASI_HTTP_WIT`]) in `wit/`.
    pub wasi_http_wit: bool,
}

/// The `wasi:http/proxy` WIT a component is built against: the one Gust's wasmtime links.
pub const WASI_HTTP_WIT: &[(&str, &str)] = files!("wasi-http":
    "wit/world.wit",
    "wit/deps/cli.wit",
    "wit/deps/clocks.wit",
    "wit/deps/filesystem.wit",
    "wit/deps/http.wit",
    "wit/deps/io.wit",
    "wit/deps/random.wit",
    "wit/deps/sockets.wit",
);

pub const TEMPLATES: &[Template] = &[
    Template {
        name: "python-http",
        description: "a Python function behind an HTTP route",
        wasi_http_wit: false,
        files: files!("python-http": "gust.yaml", "README.md", "main.py"),
    },
    Template {
        name: "node-http",
        description: "a Node.js function behind an HTTP route (Fission's signature)",
        wasi_http_wit: false,
        files: files!("node-http": "gust.yaml", "README.md", "index.js"),
    },
    Template {
        name: "python-ml",
        description: "a numpy model behind an HTTP route, dependencies from requirements.txt",
        wasi_http_wit: false,
        files: files!("python-ml": "gust.yaml", "README.md", "model/main.py", "model/requirements.txt"),
    },
    Template {
        name: "mqtt-python",
        description: "a Python function for MQTT messages, answers published on a response topic",
        wasi_http_wit: false,
        files: files!("mqtt-python": "gust.yaml", "README.md", "main.py"),
    },
    Template {
        name: "timer-python",
        description: "a Python function on a cron schedule",
        wasi_http_wit: false,
        files: files!("timer-python": "gust.yaml", "README.md", "main.py"),
    },
    Template {
        name: "wasm-python",
        description: "a WebAssembly component in Python (componentize-py) behind an HTTP route",
        wasi_http_wit: true,
        files: files!("wasm-python": "gust.yaml", "README.md", "app.py", "gitignore"),
    },
    Template {
        name: "wasm-js",
        description: "a WebAssembly component in JavaScript (componentize-js) behind an HTTP route",
        wasi_http_wit: true,
        files: files!("wasm-js": "gust.yaml", "README.md", "app.js", "build.mjs", "package.json", "gitignore"),
    },
];

pub fn find(name: &str) -> anyhow::Result<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name).with_context(|| {
        let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
        format!("no template {name:?}; there are {}", names.join(", "))
    })
}

/// The app name a directory gives: its last component, made a valid name.
pub fn app_name(dir: &Path) -> anyhow::Result<String> {
    let base = dir
        .canonicalize()
        .ok()
        .or_else(|| std::env::current_dir().ok().map(|cwd| cwd.join(dir)))
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut name: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').chars().take(40).collect();
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        bail!(
            "cannot make an app name of {:?}: name the directory with letters and digits",
            dir.display().to_string()
        );
    }
    Ok(name)
}

/// Writes `template` into `dir` (which must be missing or empty) for the app `app`.
pub fn write(template: &Template, dir: &Path, app: &str) -> anyhow::Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty: choose a new directory", dir.display());
    }
    let wit = if template.wasi_http_wit {
        WASI_HTTP_WIT
    } else {
        &[]
    };
    for (path, content) in template.files.iter().chain(wit) {
        // Kept without its dot in the repository, where it would apply to the templates.
        let path = if *path == "gitignore" {
            ".gitignore"
        } else {
            path
        };
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, content.replace("{{app}}", app))
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `templates/NAME/` is in the binary, and every template is listed.
    #[test]
    fn every_template_file_is_built_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut on_disk: Vec<String> = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    on_disk.push(path.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        on_disk.sort();
        let mut built_in: Vec<String> = TEMPLATES
            .iter()
            .flat_map(|t| {
                t.files
                    .iter()
                    .map(move |(path, _)| format!("{}/{path}", t.name))
            })
            .chain(
                WASI_HTTP_WIT
                    .iter()
                    .map(|(path, _)| format!("wasi-http/{path}")),
            )
            .collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
    }

    #[test]
    fn a_directory_names_the_app() {
        assert_eq!(
            app_name(Path::new("/tmp/My_Shop.v2")).unwrap(),
            "my-shop-v2"
        );
        assert!(app_name(Path::new("/tmp/__")).is_err());
    }
}
