//! What `gust mqt list` shows about a running trigger: its connection and its last error.

use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerState {
    Connecting,
    Connected,
    /// The connection failed or broke; the trigger tries again after a backoff.
    Reconnecting,
    /// Its function does not exist; messages stay unacknowledged until it does.
    WaitingForFunction,
    Stopped,
}

impl TriggerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::WaitingForFunction => "waiting_for_function",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TriggerStatus {
    pub state: TriggerState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at_ms: Option<u64>,
    /// Messages acknowledged after the function succeeded.
    pub succeeded: u64,
    /// Messages acknowledged after their failure went to the error topic or dead letters.
    pub failed: u64,
}

impl TriggerStatus {
    /// A trigger that has not connected yet (also what a just-created one shows).
    pub fn connecting() -> Self {
        Self {
            state: TriggerState::Connecting,
            last_error: None,
            last_error_at_ms: None,
            succeeded: 0,
            failed: 0,
        }
    }
}

/// A trigger's status, updated by its task and read by the API.
pub(crate) struct StatusCell(Mutex<TriggerStatus>);

impl StatusCell {
    pub fn new() -> Self {
        Self(Mutex::new(TriggerStatus::connecting()))
    }

    pub fn get(&self) -> TriggerStatus {
        self.lock().clone()
    }

    pub fn set_state(&self, state: TriggerState) {
        self.lock().state = state;
    }

    pub fn error(&self, error: &str, now_ms: u64) {
        let mut status = self.lock();
        status.last_error = Some(error.to_owned());
        status.last_error_at_ms = Some(now_ms);
    }

    pub fn count(&self, succeeded: bool) {
        let mut status = self.lock();
        if succeeded {
            status.succeeded += 1;
        } else {
            status.failed += 1;
        }
    }

    /// Marks the trigger as waiting for its function; `true` if it was not waiting yet.
    pub fn enter_waiting(&self) -> bool {
        let mut status = self.lock();
        let was_waiting = status.state == TriggerState::WaitingForFunction;
        status.state = TriggerState::WaitingForFunction;
        !was_waiting
    }

    pub fn leave_waiting(&self) {
        let mut status = self.lock();
        if status.state == TriggerState::WaitingForFunction {
            status.state = TriggerState::Connected;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TriggerStatus> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
