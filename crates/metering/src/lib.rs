//! Pay-per-use metering and metrics: what every invocation attempt cost, and what the
//! platform is doing now.
//!
//! Key types:
//! - [`Meter`]: the executor's [`InvocationObserver`]: turns each attempt report into a
//!   [`UsageRecord`] (queued for the [`UsageWriter`]) and into [`Metrics`].
//! - [`UsageWriter`]: group commit of usage records to the store, flushed at least every
//!   [`FLUSH_INTERVAL`].
//! - [`Metrics`]: the Prometheus registry behind `/metrics`.
//! - [`Stats`]: each function's last day per minute, in bounded memory (`gust fn stats`).
//! - [`PriceSheet`] and [`report::build`]: hourly totals rolled up into usage reports with
//!   cost.
//! - [`prune_usage`] and [`UsageRetention`]: raw records kept briefly, hourly totals long.
//!
//! Not here: measuring (the executor and runtimes do), storage (`gust-store`).

mod metrics;
mod prices;
pub mod report;
mod retention;
pub mod stats;
mod writer;

pub use metrics::Metrics;
pub use prices::{PriceSheet, PriceSheetError};
pub use retention::{UsageRetention, prune_usage};
pub use stats::Stats;
pub use writer::{FLUSH_INTERVAL, UsageWriter};

use std::time::UNIX_EPOCH;

use gust_executor::{AttemptReport, InvocationObserver, TriggerKind};
use gust_model::{Name, Namespace, Tier, UsageRecord, billed_ms, gb_seconds};

pub struct Meter {
    metrics: Metrics,
    usage: UsageWriter,
    stats: Stats,
}

impl Meter {
    pub fn new(metrics: Metrics, usage: UsageWriter) -> Self {
        Self {
            metrics,
            usage,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn usage(&self) -> &UsageWriter {
        &self.usage
    }
}

/// The usage record of an attempt, by the rules of DESIGN's metering section.
pub fn usage_record(report: &AttemptReport) -> UsageRecord {
    let billed = billed_ms(report.run, report.timeout);
    let cold_start = report.cold_start.map(|c| c.start).unwrap_or_default();
    let wall = report.queue_wait + cold_start + report.run;
    UsageRecord {
        invocation_id: report.id.to_string(),
        attempt: report.attempt,
        namespace: report.namespace.clone(),
        function: report.function.clone(),
        revision: report.revision,
        trigger: report.trigger.as_str().to_owned(),
        started_at_ms: report
            .started_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        wall_ms: wall.as_millis() as u64,
        billed_ms: billed,
        memory_mb: report.memory_mb,
        gb_seconds: gb_seconds(report.memory_mb, billed),
        cpu_ms: report.cpu.map(|c| c.as_secs_f64() * 1e3).unwrap_or(0.0),
        queue_ms: report.queue_wait.as_millis() as u64,
        cold_start_ms: cold_start.as_millis() as u64,
        status: report.status,
    }
}

impl InvocationObserver for Meter {
    fn attempt_finished(&self, report: AttemptReport) {
        let record = usage_record(&report);
        self.metrics.attempt(&report, record.billed_ms);
        self.stats.attempt(&report);
        self.usage.record(record);
    }

    fn throttled(&self, namespace: &Namespace, function: &Name, trigger: TriggerKind) {
        self.metrics.throttled(namespace, function, trigger);
        self.stats.throttled(namespace, function);
    }

    fn start_failed(&self, namespace: &Namespace, function: &Name, trigger: TriggerKind) {
        self.metrics.start_failed(namespace, function, trigger);
        self.stats.start_failed(namespace, function);
    }

    fn function_ready(&self, namespace: &Namespace, function: &Name, tier: Tier) {
        self.metrics.function_ready(namespace, function, tier);
    }

    fn function_deleted(&self, namespace: &Namespace, function: &Name) {
        self.metrics.function_deleted(namespace, function);
        self.stats.function_deleted(namespace, function);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use gust_executor::{ColdStart, RequestId};

    use super::*;

    #[test]
    fn queue_and_cold_start_are_recorded_but_not_billed() {
        let report = AttemptReport {
            id: RequestId::new("r1"),
            attempt: 1,
            namespace: Namespace::default(),
            function: Name::parse("function", "f").unwrap(),
            revision: 3,
            trigger: TriggerKind::Http,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(5_000),
            queue_wait: Duration::from_millis(40),
            cold_start: Some(ColdStart {
                start: Duration::from_millis(3),
                tier: Tier::Process,
                phases: None,
            }),
            run: Duration::from_micros(100_200),
            cpu: Some(Duration::from_micros(1_500)),
            memory_mb: 256,
            timeout: Duration::from_secs(60),
            status: 200,
        };
        let record = usage_record(&report);
        assert_eq!(record.billed_ms, 101);
        assert_eq!(record.wall_ms, 143);
        assert_eq!((record.queue_ms, record.cold_start_ms), (40, 3));
        assert!((record.gb_seconds - 0.25 * 0.101).abs() < 1e-12);
        assert_eq!(record.cpu_ms, 1.5);
        assert_eq!(record.started_at_ms, 5_000);
        assert_eq!(record.key(), "r1#1");
    }
}
