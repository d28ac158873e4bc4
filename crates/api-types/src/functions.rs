//! Functions: their create and update body, what `fn get` shows, invocation and logs.

use std::collections::BTreeMap;

use gust_model::{
    BuildState, Delivery, FunctionSettings, HumanDuration, Name, Namespace, NetworkPolicy,
    OutboundRule, RequestBodyMode, RevisionNumber,
};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// Code as uploaded: a file name (its suffix tells an archive from a source file) and either
/// the bytes in base64 or the id of an upload received by `POST /v1/uploads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeSource {
    /// `hello.py`, `app.zip`, `site.tar.gz`, `handler.wasm`, ...
    pub filename: String,
    /// The code itself, for small code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// An upload received by `POST /v1/uploads`, for code of any size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
}

/// The body of create (`name`, `env` and `code` required) and update (everything optional;
/// only the given settings change). Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FunctionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeSource>,
    #[serde(flatten)]
    pub settings: FunctionSettings,
}

/// Read in two steps so that a bad setting is named: serde's `flatten` buffers the settings
/// and its errors lose the field (`expected u32` instead of `memory_mb: expected u32`).
impl<'de> Deserialize<'de> for FunctionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            code: Option<CodeSource>,
            #[serde(flatten)]
            settings: serde_json::Map<String, serde_json::Value>,
        }
        let wire = Wire::deserialize(deserializer)?;
        let settings: FunctionSettings = serde_path_to_error::deserialize(
            serde_json::Value::Object(wire.settings),
        )
        .map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." {
                D::Error::custom(inner)
            } else {
                D::Error::custom(format!("{path}: {inner}"))
            }
        })?;
        Ok(Self {
            name: wire.name,
            code: wire.code,
            settings,
        })
    }
}

/// The body of `POST /v1/functions/{name}/rollback`; empty means the revision before the
/// current one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<RevisionNumber>,
}

/// A function's scaling settings with every default filled in: what the executor applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScalingView {
    /// Requests in flight per instance.
    pub concurrency: usize,
    pub min_instances: usize,
    pub max_instances: usize,
    #[schema(value_type = String, example = "2m")]
    pub idle_timeout: HumanDuration,
    pub queue_depth: usize,
    #[schema(value_type = String, example = "10s")]
    pub queue_timeout: HumanDuration,
    /// Requests a wasm instance serves before it is replaced.
    pub reuse: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstancesView {
    pub busy: usize,
    pub idle: usize,
}

/// What `fn get` shows: the function with its current revision spelled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionView {
    pub namespace: Namespace,
    pub name: Name,
    pub revision: RevisionNumber,
    pub revisions: usize,
    pub keep_revisions: u32,
    pub env: Name,
    pub entrypoint: Option<String>,
    /// Written as the `--timeout` flag takes it (`5s`).
    #[schema(value_type = String, example = "30s")]
    pub timeout: HumanDuration,
    pub memory_mb: u32,
    /// How request bodies reach the function.
    pub request_body: RequestBodyMode,
    pub env_vars: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<OutboundRule>,
    /// Process functions only: what their workers may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    /// The scaling settings in force, tier and `gust up` defaults filled in.
    pub scaling: ScalingView,
    /// Retry budget of asynchronous invocations.
    pub delivery: Delivery,
    pub code_digest: String,
    /// The code as uploaded (before any dependency build): what `gust apply` compares with a
    /// local tree's digest to tell whether the code changed.
    pub source_digest: String,
    pub code_file: Option<String>,
    pub code_bytes: u64,
    pub updated_at_ms: u64,
    pub instances: InstancesView,
    /// The newest revision: the current one, or one still building (or failed to build)
    /// after it.
    pub latest_revision: RevisionNumber,
    /// The builds of the revisions kept, oldest first; empty when no revision declared
    /// dependencies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<BuildView>,
    /// The app (`gust apply`) the function belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Name>,
    /// The secrets and configs it mounts, by name (never their values).
    #[serde(default, skip_serializing_if = "gust_model::ValueMounts::is_empty")]
    pub mounts: gust_model::ValueMounts,
}

/// `?replace=` of `PUT /v1/functions/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UpdateQuery {
    /// The body is the whole configuration: settings it leaves out go back to their defaults
    /// instead of staying as they are (what `gust apply` sends). Code left out stays.
    #[serde(default)]
    pub replace: bool,
}

/// One revision's dependency build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildView {
    pub revision: RevisionNumber,
    pub state: BuildState,
    /// Whether this revision serves now.
    pub current: bool,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// How long it took, or has taken so far.
    pub duration_ms: u64,
    /// Whether the dependencies came from an earlier build.
    pub cached: bool,
    /// The built package's size (sources and dependencies), once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_bytes: Option<u64>,
    /// The build's latest output line, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_line: Option<String>,
    /// Why it failed, with the end of the tool's own output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `?revision=&offset=` of `/v1/functions/{name}/build` and `/build/log`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildQuery {
    /// The revision whose build to show; the newest revision with a build by default.
    pub revision: Option<RevisionNumber>,
    /// For the log: bytes of it to skip (a previous answer's `next_offset`).
    pub offset: Option<u64>,
}

/// A piece of a build's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildLogChunk {
    pub revision: RevisionNumber,
    pub text: String,
    /// Where the next piece starts.
    pub next_offset: u64,
    /// The build has ended: no more will come.
    pub finished: bool,
}

/// `?method=&path=&async=` of `/v1/functions/{name}/invoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    /// The method the function sees; the API call itself may use any.
    pub method: Option<String>,
    /// The path and query the function sees; `/` by default.
    pub path: Option<String>,
    /// Store the invocation and answer `202` with its id instead of waiting for the function.
    #[serde(rename = "async", default)]
    #[param(rename = "async")]
    pub asynchronous: bool,
}

/// `?after=&cursor=&request_id=&limit=&local=` of `/v1/functions/{name}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Lines after this sequence number (a previous answer's last `seq`).
    pub after: Option<u64>,
    /// In a cluster, where each node's lines resume: `node=seq` pairs, comma-separated (the
    /// last `seq` a previous answer held of each `node`). Replaces `after`.
    pub cursor: Option<String>,
    /// Only the lines of this request.
    pub request_id: Option<String>,
    pub limit: Option<usize>,
    /// This node's lines only, not merged with the other nodes' (what nodes ask each other).
    #[serde(default)]
    pub local: bool,
}

/// Parses a [`LogsQuery::cursor`]: `node=seq` pairs, comma-separated.
pub fn parse_log_cursor(cursor: &str) -> Result<Vec<(String, u64)>, String> {
    cursor
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (node, seq) = pair
                .split_once('=')
                .ok_or_else(|| format!("cursor entry {pair:?} is not node=seq"))?;
            let seq = seq
                .parse()
                .map_err(|_| format!("cursor entry {pair:?}: {seq:?} is not a sequence number"))?;
            Ok((node.to_owned(), seq))
        })
        .collect()
}

/// One line a function's instance printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Increases across all functions; `after` in a query resumes from it.
    pub seq: u64,
    pub time_ms: u64,
    /// `stdout` or `stderr`
    pub stream: String,
    pub instance: String,
    pub request_id: Option<String>,
    /// The line with control characters escaped (`\x1b`), so it is safe on a terminal.
    pub text: String,
    /// The node whose instance printed it; set in a cluster, where `seq` counts per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_refuses_unknown_fields_and_types_its_durations() {
        let spec: FunctionSpec = serde_json::from_str(
            r#"{"name":"f","env":"python","timeout":"500ms","max_instances":3}"#,
        )
        .unwrap();
        assert_eq!(
            spec.settings.timeout.unwrap().get(),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(spec.settings.max_instances, Some(3));
        let unknown = serde_json::from_str::<FunctionSpec>(r#"{"name":"f","memory":5}"#);
        assert!(unknown.unwrap_err().to_string().contains("memory"));
        let bad = serde_json::from_str::<FunctionSpec>(r#"{"timeout":"soon"}"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("invalid duration \"soon\"")
        );
        let round = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&round).unwrap(), spec);
    }
}
