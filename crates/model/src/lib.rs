//! Gust's vocabulary: environments, functions, revisions, HTTP routes, asynchronous
//! invocations, timers and queue triggers, and the rules that make each valid.
//!
//! Pure data and validation: no I/O, no async runtime. Every `*Config` type is what a user
//! wrote (deserialized with `deny_unknown_fields`); the matching validated type cannot hold an
//! invalid value. Route matching lives here too ([`RouteTable`]) so that the router, the API
//! and the CLI agree on what a path means.

mod access;
mod build;
mod delivery;
mod duration;
mod environment;
mod error;
mod function;
mod invocation;
mod mq;
mod name;
mod network;
mod outbound;
mod route;
mod scaling;
mod schema;
mod timer;
mod usage;
mod values;

pub use access::{
    Action, ApiToken, AuditEntry, NamespaceQuotas, NamespaceRecord, Role, TOKEN_ID_HEX,
    TOKEN_PREFIX, TOKEN_SECRET_HEX, split_token,
};
pub use build::{Build, BuildState, DependencyKind};
pub use delivery::{
    BACKOFF_BASE, BACKOFF_CAP, DEFAULT_MAX_AGE, DEFAULT_MAX_ATTEMPTS, Delivery, Verdict, backoff,
    classify_status, retry_wait,
};
pub use duration::HumanDuration;
pub use environment::{
    BuiltinRuntime, DEFAULT_POOL_SIZE, Environment, EnvironmentConfig, EnvironmentKind,
    FISSION_PORT, Tier, USR_ALIASES, WorkerProtocol, validate_mount,
};
pub use error::ModelError;
pub use function::{
    CodeRef, DEFAULT_KEEP_REVISIONS, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, EnvVar, Function,
    FunctionSettings, Limits, RequestBodyMode, Revision, RevisionFields, RevisionNumber,
    parse_duration,
};
pub use invocation::{
    AsyncInvocation, AsyncSource, DeadReason, InvocationState, MAX_STORED_RESPONSE_BYTES,
    StoredRequest, StoredResponse, TimerStatus,
};
pub use mq::{
    BrokerUrl, DEFAULT_MAX_RETRIES, MAX_CONCURRENCY, MAX_RETRIES_LIMIT, MqKind, MqTrigger,
    MqTriggerConfig,
};
pub use name::{Name, Namespace};
pub use network::{NON_PUBLIC_IPV4, NetworkPolicy, is_non_public_ipv4};
pub use outbound::{OutboundRule, RuleHost};
pub use route::{
    HostPattern, Method, MethodSet, PathPattern, RESERVED_PREFIXES, Route, RouteAuth, RouteClash,
    RouteConfig, RouteHost, RouteMatch, RouteMode, RouteTable, is_reserved_path,
};
pub use scaling::{MAX_REUSE, Scaling};
pub use timer::{Schedule, ScheduleConfig, Timer, TimerConfig};
pub use usage::{HOUR_MS, HourlyUsage, UsageRecord, UsageTotals, billed_ms, gb_seconds};
pub use values::{
    MAX_VALUE_KEYS, MAX_VALUE_SET_BYTES, MountedValue, SecretValue, ValueKind, ValueMounts,
    ValueSet, is_env_name, validate_value_key,
};
