//! Pay-per-use: one usage record per invocation attempt, and the rules that turn run time
//! into billed time and GB-seconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Name, Namespace, RevisionNumber};

/// One invocation attempt as billed, keyed by (`invocation_id`, `attempt`): stored twice, it
/// still counts once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecord {
    pub invocation_id: String,
    pub attempt: u32,
    pub namespace: Namespace,
    pub function: Name,
    pub revision: RevisionNumber,
    /// `http`, `api`, later `timer`, `mq`, `async`.
    pub trigger: String,
    /// Unix time in milliseconds when the invocation arrived.
    pub started_at_ms: u64,
    /// Arrival to the end of the response, queue and cold start included.
    pub wall_ms: u64,
    /// Dispatch to the instance until the last byte of its response, rounded up to 1 ms and
    /// capped at the timeout.
    pub billed_ms: u64,
    /// The function's configured memory.
    pub memory_mb: u32,
    /// `memory_mb / 1024 × billed_ms / 1000`.
    pub gb_seconds: f64,
    /// CPU the instance used for this attempt; 0 where the runtime cannot measure it.
    pub cpu_ms: f64,
    /// Recorded, not billed.
    pub queue_ms: u64,
    /// Recorded, not billed; 0 when a warm instance served.
    pub cold_start_ms: u64,
    /// The HTTP status the caller got.
    pub status: u16,
}

impl UsageRecord {
    /// The storage key that makes a record count once.
    pub fn key(&self) -> String {
        format!("{}#{}", self.invocation_id, self.attempt)
    }

    /// A failed invocation: the function failed, timed out or could not start.
    pub fn is_error(&self) -> bool {
        self.status >= 500
    }
}

/// Billed milliseconds for a run: rounded up to the next millisecond and capped at the
/// function's timeout.
pub fn billed_ms(run: Duration, timeout: Duration) -> u64 {
    let micros = run.min(timeout).as_micros() as u64;
    micros.div_ceil(1000)
}

/// GB-seconds for `billed_ms` at `memory_mb`.
pub fn gb_seconds(memory_mb: u32, billed_ms: u64) -> f64 {
    memory_mb as f64 / 1024.0 * billed_ms as f64 / 1000.0
}

/// What a function used in one hour (the unit usage is aggregated in).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub invocations: u64,
    pub errors: u64,
    pub billed_ms: u64,
    pub gb_seconds: f64,
    pub cpu_ms: f64,
}

impl UsageTotals {
    pub fn add(&mut self, record: &UsageRecord) {
        self.invocations += 1;
        self.errors += u64::from(record.is_error());
        self.billed_ms += record.billed_ms;
        self.gb_seconds += record.gb_seconds;
        self.cpu_ms += record.cpu_ms;
    }

    pub fn merge(&mut self, other: &UsageTotals) {
        self.invocations += other.invocations;
        self.errors += other.errors;
        self.billed_ms += other.billed_ms;
        self.gb_seconds += other.gb_seconds;
        self.cpu_ms += other.cpu_ms;
    }
}

/// One function's usage in one hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HourlyUsage {
    pub namespace: Namespace,
    pub function: Name,
    /// Unix time in milliseconds of the hour's start.
    pub hour_start_ms: u64,
    pub totals: UsageTotals,
}

pub const HOUR_MS: u64 = 3_600_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billed_time_rounds_up_to_a_millisecond_and_stops_at_the_timeout() {
        let timeout = Duration::from_secs(2);
        assert_eq!(billed_ms(Duration::from_micros(1), timeout), 1);
        assert_eq!(billed_ms(Duration::from_micros(1000), timeout), 1);
        assert_eq!(billed_ms(Duration::from_micros(1001), timeout), 2);
        assert_eq!(billed_ms(Duration::ZERO, timeout), 0);
        assert_eq!(billed_ms(Duration::from_secs(5), timeout), 2000);
    }

    #[test]
    fn gb_seconds_is_memory_in_gb_times_billed_seconds() {
        assert_eq!(gb_seconds(1024, 1000), 1.0);
        assert_eq!(gb_seconds(128, 250), 0.03125);
    }
}
