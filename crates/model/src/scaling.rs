use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The most requests one wasm instance may serve with `--reuse`.
pub const MAX_REUSE: u32 = 10_000;

/// How a revision's instances are used: how many requests one instance serves before it is
/// replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scaling {
    /// Requests a wasm instance serves, one after another, before a fresh one replaces it.
    /// 1 (the default) is a fresh instance per request: nothing a request leaves in memory
    /// reaches the next. Larger values trade that isolation for skipping the instantiation of
    /// big components (componentize-py's initialise a whole interpreter).
    pub reuse: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self { reuse: 1 }
    }
}

impl Scaling {
    pub(crate) fn set_reuse(&mut self, reuse: u32) -> Result<(), ModelError> {
        if !(1..=MAX_REUSE).contains(&reuse) {
            return Err(ModelError::OutOfRange {
                field: "reuse",
                reason: format!("{reuse} is not between 1 and {MAX_REUSE}"),
            });
        }
        self.reuse = reuse;
        Ok(())
    }
}
