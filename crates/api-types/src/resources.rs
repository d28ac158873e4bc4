//! Environments, timers, queue triggers and uploads as the API shows them.

use gust_model::{Environment, Timer, TimerStatus};
use serde::{Deserialize, Serialize};

/// `?namespace=` of every namespaced call; `default` when absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NamespaceQuery {
    /// The tenant the call acts in [default: default]
    pub namespace: Option<String>,
}

/// An environment with its pool as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentView {
    #[serde(flatten)]
    pub environment: Environment,
    /// Pre-warmed workers ready now (`pool_size` is the target); absent where the tier keeps
    /// no pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ready: Option<usize>,
    /// Why its workers fail to start, while they do: the last attempt's error and output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
}

/// A timer with its next tick.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimerView {
    #[serde(flatten)]
    pub timer: Timer,
    /// Unix milliseconds of the next tick; absent when the schedule has none left.
    pub next_fire_ms: Option<u64>,
    /// What its ticks came to so far.
    #[serde(default)]
    pub status: TimerStatus,
}

/// A queue trigger's connection and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerStatusView {
    /// `connecting`, `connected`, `reconnecting`, `waiting_for_function` or `stopped`
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at_ms: Option<u64>,
    /// Messages acknowledged after the function succeeded.
    pub succeeded: u64,
    /// Messages acknowledged after their failure went to the error topic or dead letters.
    pub failed: u64,
}

/// A queue trigger as shown to users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MqTriggerView {
    pub namespace: String,
    pub name: String,
    pub function: String,
    /// `nats`, `mqtt`, `amqp` or `redis`
    pub kind: String,
    /// The broker URL with any password or token replaced by `***`.
    pub url: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_topic: Option<String>,
    pub max_retries: u32,
    pub concurrency: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub created_at_ms: u64,
    pub status: TriggerStatusView,
    /// The app (`gust apply`) the trigger belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// An upload received by `POST /v1/uploads`, to be named by a function's `code.upload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadView {
    pub upload: String,
    pub size_bytes: u64,
}
