//! `gust.yaml`: an app's environments, functions, routes, timers and queue triggers, as a
//! team keeps them in its repository. Entries are keyed by name; a function's fields are the
//! flags of `gust fn create`, routes, timers, queue triggers and environments take the fields
//! of their API bodies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gust_model::{
    EnvironmentConfig, FunctionSettings, HumanDuration, MqTriggerConfig, RequestBodyMode,
    RouteConfig, TimerConfig,
};
use serde::{Deserialize, Serialize};

/// The file `gust apply` reads when given a directory or nothing.
pub const FILE_NAME: &str = "gust.yaml";

/// A whole app.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    /// The app's name. Every resource the file creates carries it, and `gust apply --prune`
    /// deletes only resources of this app.
    pub app: String,
    /// The namespace of its resources [default: the CLI's -n]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Custom environments (the built-in python, node and wasm need no entry), keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// Functions keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub functions: BTreeMap<String, FunctionEntry>,
    /// HTTP routes on the public listener, keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Functions on a schedule, keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timers: BTreeMap<String, TimerConfig>,
    /// Queue triggers (NATS JetStream, MQTT, AMQP, Redis Streams), keyed by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queue_triggers: BTreeMap<String, MqTriggerConfig>,
}

/// One function: the flags of `gust fn create`, by the same names. A setting left out is its
/// default (not what the function had before): the file is the whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionEntry {
    /// A source file, a directory, or a .zip/.tar.gz archive, relative to this file
    pub code: String,
    /// Environment: python, node, wasm, or a custom one
    pub env: String,
    /// module.function (Python) or file.export (Node.js) [default: the runtime's]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Request timeout, e.g. 500ms, 30s [default: 60s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Memory in MB [default: 128]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Environment variables
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Origins the function may call
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<String>,
    /// Process functions: `outbound` or `none` [default: outbound]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `buffer` or `stream` [default: buffer]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<RequestBodyMode>,
    /// Requests one process instance serves at once [default: 1]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Instances kept running with no traffic [default: 0]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    /// Most instances at once [default: 10 for process environments, 1000 for wasm]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Stop an instance unused this long [default: gust up's, 120s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// Requests that may wait when every instance is busy [default: 1000]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// How long a request may wait for an instance [default: 10s]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<HumanDuration>,
    /// Requests one wasm instance serves before a fresh one replaces it [default: 1]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<u32>,
    /// Attempts of an asynchronous invocation [default: 3]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// An asynchronous invocation not done this long after it was accepted expires [default: 6h]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// Revisions the function keeps [default: 10]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_revisions: Option<u32>,
    /// A shell command run in this file's directory before the code is deployed (by
    /// `gust apply` and `gust dev`), such as a component's build; `code` is what it makes
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// Secrets of the namespace mounted at /secrets/<namespace>/<name>/<key> (made with
    /// `gust secret create`; their values never go in this file)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Configs of the namespace mounted at /configs/<namespace>/<name>/<key>
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<String>,
    /// Also give each secret key that is a valid variable name as an environment variable
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret_env: bool,
}

impl FunctionEntry {
    /// The API's settings for this entry, owned by `app`. Lists are always given, so that an
    /// update with `replace` empties what the file leaves empty.
    pub fn settings(&self, app: &str) -> FunctionSettings {
        FunctionSettings {
            env: Some(self.env.clone()),
            entrypoint: self.entrypoint.clone(),
            timeout: self.timeout,
            memory_mb: self.memory,
            env_vars: Some(
                self.env_vars
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect(),
            ),
            allow_outbound: Some(self.allow_outbound.clone()),
            network: self.network.clone(),
            request_body: self.request_body,
            concurrency: self.concurrency,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            idle_timeout: self.idle_timeout,
            queue_depth: self.queue_depth,
            queue_timeout: self.queue_timeout,
            reuse: self.reuse,
            max_attempts: self.max_attempts,
            max_age: self.max_age,
            keep_revisions: self.keep_revisions,
            app: Some(app.to_owned()),
            secrets: Some(self.secrets.clone()),
            configs: Some(self.configs.clone()),
            secret_env: Some(self.secret_env),
        }
    }
}

/// Where a file given as `-f` is: the file itself, or `gust.yaml` in a directory.
pub fn resolve_file(given: &Path) -> PathBuf {
    if given.is_dir() {
        given.join(FILE_NAME)
    } else {
        given.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every setting of the API has its field in `gust.yaml` (under its flag's name): a
    /// setting added to the API and forgotten here fails this test.
    #[test]
    fn every_function_setting_has_its_field() {
        let entry = FunctionEntry {
            code: "f.py".into(),
            env: "python".into(),
            entrypoint: Some("f.main".into()),
            timeout: Some("5s".parse().unwrap()),
            memory: Some(256),
            env_vars: BTreeMap::from([("A".into(), "1".into())]),
            allow_outbound: vec!["https://example.com".into()],
            network: Some("none".into()),
            request_body: Some(RequestBodyMode::Stream),
            concurrency: Some(2),
            min_instances: Some(1),
            max_instances: Some(3),
            idle_timeout: Some("1m".parse().unwrap()),
            queue_depth: Some(5),
            queue_timeout: Some("2s".parse().unwrap()),
            reuse: Some(4),
            max_attempts: Some(6),
            max_age: Some("1h".parse().unwrap()),
            keep_revisions: Some(7),
            build: None,
            secrets: vec!["db".into()],
            configs: vec!["flags".into()],
            secret_env: true,
        };
        let settings = serde_json::to_value(entry.settings("shop")).unwrap();
        let given: Vec<&String> = settings.as_object().unwrap().keys().collect();
        let all = serde_json::to_value(FunctionSettings::default()).unwrap();
        assert!(all.as_object().unwrap().is_empty());
        // The API's fields, read from its schema: each must be set by a full entry.
        let schema =
            serde_json::to_value(<FunctionSettings as utoipa::PartialSchema>::schema()).unwrap();
        let fields: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(
            given, fields,
            "a FunctionSettings field has no gust.yaml field"
        );
    }
}
