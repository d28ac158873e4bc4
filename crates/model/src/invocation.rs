//! Asynchronous invocations as stored: accepted once, attempted until they end in exactly one
//! terminal state.

use serde::{Deserialize, Serialize};

use crate::{Name, Namespace};

/// Where an invocation is in its life. `Succeeded`, `Dead` and `Expired` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvocationState {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt is being delivered.
    Running,
    Succeeded,
    /// Failed for good; kept as a dead letter.
    Dead,
    /// Not finished within the function's max age; kept as a dead letter.
    Expired,
}

impl InvocationState {
    /// As written in JSON (`pending`, `dead`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Expired => "expired",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Expired)
    }
}

/// Why an invocation became a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The function did not exist when an attempt was due.
    FunctionNotFound,
    /// The function answered with a status that another attempt would not change (4xx).
    FinalStatus,
    /// Every allowed attempt failed.
    AttemptsExhausted,
    /// Older than the function's max age.
    MaxAgeExceeded,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FunctionNotFound => "function_not_found",
            Self::FinalStatus => "final_status",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::MaxAgeExceeded => "max_age_exceeded",
        }
    }
}

/// What made an asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AsyncSource {
    /// `gust fn invoke --async` (the API).
    Api,
    /// A request to an HTTP route.
    Http { route: Name },
    /// One tick of a timer.
    Timer { timer: Name, tick_ms: u64 },
    /// A queue trigger's message whose attempts all failed (kept as a dead letter when the
    /// trigger has no error topic).
    Mq { trigger: Name, message_id: String },
}

/// The request an invocation delivers, kept until it ends. Header values are stored as
/// Latin-1 text so that any bytes survive the round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// The most response body kept with an invocation.
pub const MAX_STORED_RESPONSE_BYTES: usize = 16 * 1024;

/// A function's answer to the last attempt, cut to [`MAX_STORED_RESPONSE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredResponse {
    pub status: u16,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// The body was longer than what is kept.
    pub truncated: bool,
}

impl StoredResponse {
    pub fn new(status: u16, body: &[u8]) -> Self {
        let kept = &body[..body.len().min(MAX_STORED_RESPONSE_BYTES)];
        Self {
            status,
            body: String::from_utf8_lossy(kept).into_owned(),
            truncated: kept.len() < body.len(),
        }
    }
}

/// One asynchronous invocation: its request lives beside it in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AsyncInvocation {
    pub id: String,
    pub namespace: Namespace,
    pub function: Name,
    pub source: AsyncSource,
    pub state: InvocationState,
    /// Set when the state is `Dead` or `Expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeadReason>,
    /// Attempts started so far.
    pub attempts: u32,
    pub accepted_at_ms: u64,
    pub updated_at_ms: u64,
    /// When the next attempt is due (pending invocations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The function's status, or the status of Gust's error, of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// What went wrong in the last failed attempt (an error code and message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StoredResponse>,
    /// The dead letter this invocation re-drives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redriven_from: Option<String>,
    /// The invocation that re-drove this dead letter (it left the dead-letter list then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redriven_to: Option<String>,
}

impl AsyncInvocation {
    /// A newly accepted invocation, due now.
    pub fn accepted(
        id: String,
        namespace: Namespace,
        function: Name,
        source: AsyncSource,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            namespace,
            function,
            source,
            state: InvocationState::Pending,
            reason: None,
            attempts: 0,
            accepted_at_ms: now_ms,
            updated_at_ms: now_ms,
            next_attempt_at_ms: Some(now_ms),
            finished_at_ms: None,
            last_status: None,
            last_error: None,
            response: None,
            redriven_from: None,
            redriven_to: None,
        }
    }

    /// Whether it sits in the dead-letter list (dead or expired, not re-driven).
    pub fn is_dead_letter(&self) -> bool {
        matches!(self.state, InvocationState::Dead | InvocationState::Expired)
            && self.redriven_to.is_none()
    }
}

/// What a timer's ticks came to, kept by the queue as their invocations end. Only ticks of
/// this timer count: not those of a deleted timer of the same name (ticked before `since_ms`),
/// nor re-drives of a tick's dead letter (its failure counted already).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimerStatus {
    /// Unix milliseconds from which ticks count: the timer's creation (0 for a timer made
    /// before statuses were kept).
    #[serde(default)]
    pub since_ms: u64,
    /// Ticks enqueued.
    pub fired: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_ms: Option<u64>,
    /// Ticks whose invocation succeeded.
    pub succeeded: u64,
    /// Ticks whose invocation failed for good (a dead letter now).
    pub failed: u64,
    /// What went wrong in the last failed attempt of a tick, retried or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at_ms: Option<u64>,
}

impl TimerStatus {
    /// Counts a tick enqueued.
    pub fn fired(&mut self, tick_ms: u64) {
        self.fired += 1;
        self.last_fired_ms = Some(self.last_fired_ms.map_or(tick_ms, |last| last.max(tick_ms)));
    }

    /// A fresh status for a timer made at `since_ms`.
    pub fn since(since_ms: u64) -> Self {
        Self {
            since_ms,
            ..Self::default()
        }
    }

    /// Takes in one of the timer's invocations as it is stored now; `ended` when this change
    /// ends it. Returns whether anything changed.
    pub fn observe(&mut self, invocation: &AsyncInvocation, ended: bool) -> bool {
        let AsyncSource::Timer { tick_ms, .. } = &invocation.source else {
            return false;
        };
        if *tick_ms < self.since_ms || invocation.redriven_from.is_some() {
            return false;
        }
        let mut changed = false;
        if ended {
            match invocation.state {
                InvocationState::Succeeded => self.succeeded += 1,
                _ => self.failed += 1,
            }
            changed = true;
        }
        // A failed attempt leaves the invocation waiting for a retry, or dead.
        let failed_attempt = (ended && invocation.state != InvocationState::Succeeded)
            || (invocation.state == InvocationState::Pending && invocation.attempts > 0);
        if failed_attempt {
            let error = invocation.last_error.clone().or_else(|| {
                invocation
                    .reason
                    .map(|reason| reason.as_str().replace('_', " "))
            });
            if let Some(error) = error {
                self.last_error = Some(error);
                self.last_error_at_ms = Some(invocation.updated_at_ms);
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_states_name_is_its_json() {
        for state in [
            InvocationState::Pending,
            InvocationState::Running,
            InvocationState::Succeeded,
            InvocationState::Dead,
            InvocationState::Expired,
        ] {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(state.as_str())
            );
        }
    }
}
