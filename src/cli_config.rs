//! The CLI config (`$XDG_CONFIG_HOME/gust/config.toml`): server URLs mapped to tokens, and
//! which server is current. `gust up` writes its own entry so a local CLI needs no setup.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CliConfig {
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub servers: BTreeMap<String, ServerEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerEntry {
    pub token: String,
}

pub fn path() -> anyhow::Result<PathBuf> {
    let base = dirs::config_dir()
        .context("cannot find a config directory (set XDG_CONFIG_HOME or HOME)")?;
    Ok(base.join("gust").join("config.toml"))
}

impl CliConfig {
    pub fn load() -> anyhow::Result<Self> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("invalid CLI config {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file atomically (temp file + rename), readable by its owner only.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = path()?;
        let dir = path
            .parent()
            .expect("the config path has a parent directory");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let temp = dir.join(format!(".config.toml.{}", std::process::id()));
        let text = toml::to_string_pretty(self).context("cannot encode the CLI config")?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot write {}", temp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    /// Records `url`'s token and makes it the current server.
    pub fn remember(url: &str, token: &str) -> anyhow::Result<()> {
        let mut config = Self::load()?;
        config.servers.insert(
            url.to_owned(),
            ServerEntry {
                token: token.to_owned(),
            },
        );
        config.current = Some(url.to_owned());
        config.save()
    }
}
