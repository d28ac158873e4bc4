use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::delivery::apply_delivery;
use crate::scaling::apply_scaling;
use crate::{
    Build, BuildState, Delivery, HumanDuration, ModelError, Name, Namespace, NetworkPolicy,
    OutboundRule, Scaling, ValueMounts,
};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MEMORY_MB: u32 = 128;
const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const MEMORY_RANGE_MB: std::ops::RangeInclusive<u32> = 16..=16_384;
const MAX_ENV_VARS: usize = 256;
const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

/// Revisions count from 1 and never repeat within a function.
pub type RevisionNumber = u32;

/// Parses a human duration such as `500ms`, `30s` or `6h`.
pub fn parse_duration(field: &'static str, value: &str) -> Result<Duration, ModelError> {
    humantime::parse_duration(value.trim()).map_err(|err| ModelError::InvalidDuration {
        field,
        value: value.to_owned(),
        reason: err.to_string(),
    })
}

/// Per-invocation limits of a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limits {
    #[serde(with = "duration_ms")]
    #[schema(value_type = u64)]
    pub timeout: Duration,
    pub memory_mb: u32,
    #[serde(default)]
    pub request_body: RequestBodyMode,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            memory_mb: DEFAULT_MEMORY_MB,
            request_body: RequestBodyMode::Buffer,
        }
    }
}

/// How a function receives a caller's request body.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum RequestBodyMode {
    /// Read whole before an instance is taken for it, up to `gust up --body-limit`: a slow
    /// client never holds an instance.
    #[default]
    Buffer,
    /// Passed on as it arrives, of any size: the function reads it while the client sends it,
    /// within the function's timeout (and billed for it).
    Stream,
}

/// Where a revision's code lives in the content-addressed code store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CodeRef {
    /// SHA-256 of the extracted code tree; names its directory in the code store.
    pub digest: String,
    /// For single-file code, the file's name inside the tree; `None` for a directory.
    pub file: Option<String>,
    pub size_bytes: u64,
}

/// One environment variable, `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl EnvVar {
    pub fn parse(pair: &str) -> Result<Self, ModelError> {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| ModelError::InvalidEnvVar {
                value: pair.to_owned(),
                reason: "expected KEY=VALUE".to_owned(),
            })?;
        validate_env_var(key, value)?;
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

fn validate_env_var(key: &str, value: &str) -> Result<(), ModelError> {
    let invalid = |reason: &str| ModelError::InvalidEnvVar {
        value: key.to_owned(),
        reason: reason.to_owned(),
    };
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(
            "a key is letters, digits and '_', not starting with a digit",
        ));
    }
    if key.starts_with("GUST_") {
        return Err(invalid(
            "keys starting with GUST_ are reserved for the platform",
        ));
    }
    if value.contains('\0') {
        return Err(invalid("a value cannot contain a NUL byte"));
    }
    if value.len() > MAX_ENV_VALUE_BYTES {
        return Err(invalid("the value is longer than 32 KiB"));
    }
    Ok(())
}

/// Revisions a function keeps unless its `--keep-revisions` says otherwise; older ones (and
/// code only they used) are deleted.
pub const DEFAULT_KEEP_REVISIONS: u32 = 10;
const KEEP_REVISIONS_RANGE: std::ops::RangeInclusive<u32> = 1..=100;

fn default_keep_revisions() -> u32 {
    DEFAULT_KEEP_REVISIONS
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revision {
    pub number: RevisionNumber,
    pub environment: Name,
    pub code: CodeRef,
    /// `module.func` (Python), `file.export` (Node.js), or `None` for the runtime's default.
    pub entrypoint: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub limits: Limits,
    /// Origins a wasm function may call; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<OutboundRule>,
    /// What a process function may reach; `None` is the tier's default (process: outbound;
    /// wasm: the origins in `allow_outbound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    #[serde(default)]
    pub scaling: Scaling,
    /// Retry budget of asynchronous invocations.
    #[serde(default)]
    pub delivery: Delivery,
    /// Unix time in milliseconds.
    pub created_at_ms: u64,
    /// The earlier revision a rollback copied this one from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<RevisionNumber>,
    /// How many revisions the function keeps while this one is current (itself included).
    #[serde(default = "default_keep_revisions")]
    pub keep_revisions: u32,
    /// Its dependency build, when its code declares dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The app (`gust apply`) this function belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Name>,
    /// The secrets and configs it mounts, by name (never their values).
    #[serde(default, skip_serializing_if = "ValueMounts::is_empty")]
    pub mounts: ValueMounts,
}

impl Revision {
    /// Whether this revision can serve: deployed as uploaded, or built.
    pub fn is_ready(&self) -> bool {
        self.build
            .as_ref()
            .is_none_or(|build| build.state == BuildState::Ready)
    }

    pub fn is_building(&self) -> bool {
        self.build
            .as_ref()
            .is_some_and(|build| build.state == BuildState::Building)
    }
}

/// A function and every revision it has had; `current` is the one that serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    pub namespace: Namespace,
    pub name: Name,
    /// Set at create: tells this function from an earlier one of the same name (Fission's
    /// `X-Fission-Function-Uid`). Empty for functions stored before it existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub current: RevisionNumber,
    pub revisions: Vec<Revision>,
}

impl Function {
    pub fn current_revision(&self) -> &Revision {
        self.revision(self.current)
            .expect("a function's current revision is always among its revisions")
    }

    pub fn revision(&self, number: RevisionNumber) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == number)
    }

    /// The number the next revision gets.
    pub fn next_number(&self) -> RevisionNumber {
        self.revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1
    }

    /// Appends `revision` (its number is assigned here) and makes it current unless it has a
    /// build to wait for; returns its number. Only the newest revisions stay, as many as the
    /// new revision's `keep_revisions`, besides the current one and any still building.
    pub fn push_revision(&mut self, mut revision: Revision) -> RevisionNumber {
        let number = self.next_number();
        revision.number = number;
        let keep = (revision.keep_revisions.max(1)) as usize;
        if revision.is_ready() {
            self.current = number;
        }
        self.revisions.push(revision);
        self.revisions.sort_by_key(|r| r.number);
        while self.revisions.len() > keep {
            let current = self.current;
            let Some(oldest) = self
                .revisions
                .iter()
                .position(|r| r.number != current && !r.is_building())
            else {
                break;
            };
            self.revisions.remove(oldest);
        }
        number
    }

    /// Records how revision `number`'s build ended; a built revision newer than the current
    /// one becomes current. `false` when the revision is gone (pruned or the function
    /// replaced).
    pub fn finish_build(&mut self, number: RevisionNumber, build: Build) -> bool {
        let Some(revision) = self.revisions.iter_mut().find(|r| r.number == number) else {
            return false;
        };
        revision.build = Some(build);
        if revision.is_ready() && number > self.current {
            self.current = number;
        }
        true
    }
}

/// The validated settings of the next revision (everything but its code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionFields {
    /// `None` only on create without an environment, which the caller refuses.
    pub environment: Option<Name>,
    pub entrypoint: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub limits: Limits,
    pub allow_outbound: Vec<OutboundRule>,
    pub network: Option<NetworkPolicy>,
    pub scaling: Scaling,
    pub delivery: Delivery,
    pub keep_revisions: u32,
    pub app: Option<Name>,
    pub mounts: ValueMounts,
}

/// The settable fields of a function as a user writes them: the API's JSON fields, the CLI's
/// flags (`--memory` for `memory_mb`, `--env-var` for `env_vars`, the others by their name)
/// and the OpenAPI schema all come from this one definition. On update every field is
/// optional and only the given ones change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct FunctionSettings {
    /// Environment (python, node, or a custom one)
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// module.function (Python) or file.export (Node.js); the runtime's default when omitted
    /// (an empty value goes back to it)
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Request timeout, from dispatch to the response's last byte, e.g. 500ms, 30s [default:
    /// 60s]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Memory in MB [default: 128]
    #[cfg_attr(feature = "cli", arg(long = "memory", value_name = "MB"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Environment variable KEY=VALUE (repeatable; on update the given set replaces the old one)
    #[cfg_attr(feature = "cli", arg(long = "env-var", value_name = "KEY=VALUE"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<Vec<String>>,
    /// Origin a function may call, e.g. https://api.example.com, *://10.0.0.5:6379 or (wasm)
    /// https://*.example.com (repeatable; on update the given list replaces the old one). A
    /// wasm function reaches nothing else; a process function with a list reaches only the
    /// listed hosts' addresses on the listed ports
    #[cfg_attr(feature = "cli", arg(long = "allow-outbound", value_name = "ORIGIN"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_outbound: Option<Vec<String>>,
    /// Process functions: `outbound` (public addresses only; the host's loopback, private and
    /// link-local ranges unreachable) or `none` (no network) [default: outbound]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// How request bodies reach the function: `buffer` (read whole first, up to gust up's
    /// --body-limit) or `stream` (as they arrive, of any size, within the function's timeout)
    /// [default: buffer]
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<RequestBodyMode>,
    /// Requests one process instance serves at once [default: 1]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Instances kept running with no traffic [default: 0, scale to zero]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    /// Most instances at once [default: 10 for process environments, 1000 for wasm]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Stop an instance unused this long, down to --min-instances [default: gust up's, 120s]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// Requests that may wait when every instance is busy [default: 1000]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// How long a request may wait for an instance before 429 [default: 10s]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<HumanDuration>,
    /// Requests one wasm instance serves before a fresh one replaces it [default: 1, a fresh
    /// instance per request]; see the docs for the isolation trade-off
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<u32>,
    /// Attempts of an asynchronous invocation, the first one included [default: 3]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// An asynchronous invocation not done this long after it was accepted expires [default: 6h]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// Revisions the function keeps, the current one included; older ones and code only they
    /// used are deleted [default: 10]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_revisions: Option<u32>,
    /// The app the function belongs to, as `gust apply` records it (an empty value clears it)
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Secret of the namespace mounted at /secrets/<namespace>/<name>/<key> (repeatable; on
    /// update the given list replaces the old one)
    #[cfg_attr(feature = "cli", arg(long = "secret", value_name = "NAME"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    /// Config of the namespace mounted at /configs/<namespace>/<name>/<key> (repeatable; on
    /// update the given list replaces the old one)
    #[cfg_attr(feature = "cli", arg(long = "config", value_name = "NAME"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configs: Option<Vec<String>>,
    /// Also give each key of its secrets that is a valid variable name as an environment
    /// variable [default: false]
    #[cfg_attr(
        feature = "cli",
        arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<bool>,
}

impl FunctionSettings {
    /// Applies this config over `base` (the previous revision, or defaults on create) and
    /// returns the validated fields of the next revision. Code is handled by the caller.
    pub fn apply(&self, base: Option<&Revision>) -> Result<RevisionFields, ModelError> {
        let environment = match &self.env {
            Some(env) => Some(Name::parse("environment", env)?),
            None => base.map(|r| r.environment.clone()),
        };
        let entrypoint = match &self.entrypoint {
            Some(e) if e.is_empty() => None,
            Some(e) => Some(validate_entrypoint(e)?),
            None => base.and_then(|r| r.entrypoint.clone()),
        };
        let env_vars = match &self.env_vars {
            Some(pairs) => {
                if pairs.len() > MAX_ENV_VARS {
                    return Err(ModelError::OutOfRange {
                        field: "environment variables",
                        reason: format!("more than {MAX_ENV_VARS}"),
                    });
                }
                let mut vars = BTreeMap::new();
                for pair in pairs {
                    let var = EnvVar::parse(pair)?;
                    vars.insert(var.key, var.value);
                }
                vars
            }
            None => base.map(|r| r.env_vars.clone()).unwrap_or_default(),
        };
        let mut limits = base.map(|r| r.limits).unwrap_or_default();
        if let Some(timeout) = self.timeout.map(HumanDuration::get) {
            if timeout < Duration::from_millis(1) || timeout > MAX_TIMEOUT {
                return Err(ModelError::OutOfRange {
                    field: "timeout",
                    reason: format!("{timeout:?} is not between 1ms and 15m"),
                });
            }
            limits.timeout = timeout;
        }
        if let Some(memory) = self.memory_mb {
            if !MEMORY_RANGE_MB.contains(&memory) {
                return Err(ModelError::OutOfRange {
                    field: "memory",
                    reason: format!(
                        "{memory} MB is not between {} and {} MB",
                        MEMORY_RANGE_MB.start(),
                        MEMORY_RANGE_MB.end()
                    ),
                });
            }
            limits.memory_mb = memory;
        }
        if let Some(mode) = self.request_body {
            limits.request_body = mode;
        }
        let allow_outbound = match &self.allow_outbound {
            Some(rules) => rules
                .iter()
                .map(|r| OutboundRule::parse(r))
                .collect::<Result<_, _>>()?,
            None => base.map(|r| r.allow_outbound.clone()).unwrap_or_default(),
        };
        let network = match self.network.as_deref() {
            Some("") => None,
            Some(policy) => Some(NetworkPolicy::parse(policy)?),
            None => base.and_then(|r| r.network),
        };
        let scaling = apply_scaling(self, base.map(|r| r.scaling).unwrap_or_default())?;
        let delivery = apply_delivery(self, base.map(|r| r.delivery).unwrap_or_default())?;
        let keep_revisions = match self.keep_revisions {
            Some(keep) if !KEEP_REVISIONS_RANGE.contains(&keep) => {
                return Err(ModelError::OutOfRange {
                    field: "keep-revisions",
                    reason: format!(
                        "{keep} is not between {} and {}",
                        KEEP_REVISIONS_RANGE.start(),
                        KEEP_REVISIONS_RANGE.end()
                    ),
                });
            }
            Some(keep) => keep,
            None => base.map_or(DEFAULT_KEEP_REVISIONS, |r| r.keep_revisions),
        };
        let app = match &self.app {
            Some(app) => Name::parse_app(Some(app))?,
            None => base.and_then(|r| r.app.clone()),
        };
        let base_mounts = base.map(|r| r.mounts.clone()).unwrap_or_default();
        let names = |given: &Option<Vec<String>>, kind: &'static str, base: &[Name]| match given {
            Some(names) => {
                let mut parsed = names
                    .iter()
                    .map(|n| Name::parse(kind, n))
                    .collect::<Result<Vec<_>, _>>()?;
                parsed.sort();
                parsed.dedup();
                Ok::<_, ModelError>(parsed)
            }
            None => Ok(base.to_vec()),
        };
        let mounts = ValueMounts {
            secrets: names(&self.secrets, "secret", &base_mounts.secrets)?,
            configs: names(&self.configs, "config", &base_mounts.configs)?,
            secret_env: self.secret_env.unwrap_or(base_mounts.secret_env),
        };
        Ok(RevisionFields {
            mounts,
            app,
            environment,
            entrypoint,
            env_vars,
            limits,
            allow_outbound,
            network,
            scaling,
            delivery,
            keep_revisions,
        })
    }
}

/// `module.function` or `function`; a Node.js module may name a file below the code's root
/// (`src/app.handler`), never above it.
fn validate_entrypoint(entrypoint: &str) -> Result<String, ModelError> {
    let word = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    };
    let (module, function) = entrypoint.rsplit_once('.').unwrap_or(("", entrypoint));
    let ok = entrypoint.len() <= 255
        && word(function)
        && (module.is_empty() && !entrypoint.contains('.')
            || module.split('.').all(|part| part.split('/').all(word)));
    if ok {
        Ok(entrypoint.to_owned())
    } else {
        Err(ModelError::OutOfRange {
            field: "entrypoint",
            reason: format!("{entrypoint:?} is not of the form `module.function` or `function`"),
        })
    }
}

pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(text: &str) -> HumanDuration {
        text.parse().unwrap()
    }

    fn revision() -> Revision {
        Revision {
            number: 1,
            environment: Name::parse("environment", "python").unwrap(),
            code: CodeRef {
                digest: "abc".into(),
                file: Some("hello.py".into()),
                size_bytes: 10,
            },
            entrypoint: None,
            env_vars: BTreeMap::from([("A".into(), "1".into())]),
            limits: Limits::default(),
            allow_outbound: Vec::new(),
            network: None,
            scaling: Scaling::default(),
            delivery: Delivery::default(),
            created_at_ms: 0,
            copied_from: None,
            keep_revisions: DEFAULT_KEEP_REVISIONS,
            build: None,
            app: None,
            mounts: ValueMounts::default(),
        }
    }

    fn building() -> Revision {
        Revision {
            build: Some(Build {
                id: "b1".into(),
                state: BuildState::Building,
                source: revision().code,
                cache_key: "k".into(),
                dependencies: None,
                cached: false,
                started_at_ms: 0,
                finished_at_ms: None,
                error: None,
            }),
            keep_revisions: 1,
            ..revision()
        }
    }

    #[test]
    fn a_revision_goes_live_only_when_its_build_succeeds() {
        let mut function = Function {
            namespace: Namespace::default(),
            name: Name::parse("function", "f").unwrap(),
            uid: String::new(),
            current: 1,
            revisions: vec![revision()],
        };
        // Building: pushed, not current, and the current one is kept despite keep = 1.
        assert_eq!(function.push_revision(building()), 2);
        assert_eq!(function.current, 1);
        assert_eq!(function.revisions.len(), 2);
        let mut failed = building().build.unwrap();
        failed.state = BuildState::BuildFailed;
        assert!(function.finish_build(2, failed));
        assert_eq!(function.current, 1, "a failed build never serves");
        assert_eq!(function.push_revision(building()), 3);
        assert_eq!(
            function
                .revisions
                .iter()
                .map(|r| r.number)
                .collect::<Vec<_>>(),
            vec![1, 3],
            "the failed one is pruned, the current and the building one stay"
        );
        let mut ready = building().build.unwrap();
        ready.state = BuildState::Ready;
        assert!(function.finish_build(3, ready.clone()));
        assert_eq!(function.current, 3);
        assert!(!function.finish_build(2, ready), "revision 2 is gone");
    }

    #[test]
    fn update_changes_only_given_fields() {
        let config = FunctionSettings {
            timeout: Some(duration("500ms")),
            ..Default::default()
        };
        let fields = config.apply(Some(&revision())).unwrap();
        assert_eq!(fields.environment.unwrap().as_str(), "python");
        assert_eq!(fields.entrypoint, None);
        assert_eq!(fields.env_vars["A"], "1");
        assert_eq!(fields.limits.timeout, Duration::from_millis(500));
        assert_eq!(fields.limits.memory_mb, DEFAULT_MEMORY_MB);
    }

    #[test]
    fn refuses_bad_limits_and_vars() {
        let bad = [
            FunctionSettings {
                timeout: Some(duration("0s")),
                ..Default::default()
            },
            FunctionSettings {
                timeout: Some(duration("999us")),
                ..Default::default()
            },
            FunctionSettings {
                memory_mb: Some(1),
                ..Default::default()
            },
            FunctionSettings {
                env_vars: Some(vec!["NOEQUALS".into()]),
                ..Default::default()
            },
            FunctionSettings {
                env_vars: Some(vec!["GUST_SOCKET=x".into()]),
                ..Default::default()
            },
            FunctionSettings {
                env_vars: Some(vec!["1A=x".into()]),
                ..Default::default()
            },
            FunctionSettings {
                entrypoint: Some("a..b".into()),
                ..Default::default()
            },
            FunctionSettings {
                reuse: Some(0),
                ..Default::default()
            },
            FunctionSettings {
                entrypoint: Some("../x".into()),
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.apply(None).is_err(), "{config:?}");
        }
    }

    #[test]
    fn revisions_number_upwards() {
        let mut function = Function {
            namespace: Namespace::default(),
            name: Name::parse("function", "f").unwrap(),
            uid: String::new(),
            current: 1,
            revisions: vec![revision()],
        };
        assert_eq!(function.push_revision(revision()), 2);
        assert_eq!(function.current_revision().number, 2);
        assert!(function.revision(1).is_some());
        for expected in 3..=15 {
            assert_eq!(function.push_revision(revision()), expected);
        }
        let kept: Vec<RevisionNumber> = function.revisions.iter().map(|r| r.number).collect();
        assert_eq!(kept, (6..=15).collect::<Vec<_>>(), "the newest ten");
        assert_eq!(function.current_revision().number, 15);
        assert!(function.revision(1).is_none());
        // A revision that keeps fewer prunes down to its number at once.
        function.push_revision(Revision {
            keep_revisions: 3,
            ..revision()
        });
        let kept: Vec<RevisionNumber> = function.revisions.iter().map(|r| r.number).collect();
        assert_eq!(kept, vec![14, 15, 16]);
    }

    #[test]
    fn keep_revisions_is_bounded_and_carried_over() {
        for keep in [0, 101] {
            let config = FunctionSettings {
                keep_revisions: Some(keep),
                ..Default::default()
            };
            assert!(config.apply(None).is_err(), "{keep}");
        }
        let base = Revision {
            keep_revisions: 4,
            ..revision()
        };
        let fields = FunctionSettings::default().apply(Some(&base)).unwrap();
        assert_eq!(fields.keep_revisions, 4);
        let fields = FunctionSettings::default().apply(None).unwrap();
        assert_eq!(fields.keep_revisions, DEFAULT_KEEP_REVISIONS);
    }

    #[test]
    fn entrypoints_name_a_module_below_the_code_root() {
        for good in [
            "main",
            "main.main",
            "pkg.mod.handler",
            "src/app.named",
            "a-b.c_d",
        ] {
            assert!(validate_entrypoint(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".main",
            "main.",
            "a..b",
            "../x.main",
            "src//app.f",
            "/abs.f",
            "a/b",
            "a.b/c",
        ] {
            assert!(validate_entrypoint(bad).is_err(), "{bad}");
        }
    }
}
