//! Pay-per-use metering and metrics: what every invocation attempt cost, and what the
//! platform is doing now.
//!
//! Key types:
//! - [`Meter`]: the executor's [`InvocationObserver`]: turns each attempt report into a
//!   [`UsageRecord`] (queued for the [`UsageWriter`]) and into [`Metrics`].
//! - [`UsageWriter`]: group commit of usage records to the store, flushed at least every
//!   [`FLUSH_INTERVAL`].
//! - [`Metrics`]: the Prometheus registry behind `/metrics`.
//! - [`PriceSheet`] and [`report::build`]: hourly totals rolled up into usage reports with
//!   cost.
//!
//! Not here: measuring (the executor and runtimes do), storage (`gust-store`).

mod metrics;
mod prices;
pub mod report;
mod writer;

pub use metrics::Metrics;
pub use prices::{PriceSheet, PriceSheetError};
pub use writer::{FLUSH_INTERVAL, UsageWriter};

use std::time::UNIX_EPOCH;

use gust_executor::{AttemptReport, InvocationObserver, TriggerKind};
use gust_model::{Name, Namespace, UsageRecord, billed_ms, gb_seconds};

pub struct Meter {
    metrics: Metrics,
    usage: UsageWriter,
}

impl Meter {
    pub fn new(metrics: Metrics, usage: UsageWriter) -> Self {
        Self { metrics, usage }
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
        self.usage.record(record);
    }

    fn throttled(&self, namespace: &Namespace, function: &Name, trigger: TriggerKind) {
        self.metrics.throttled(namespace, function, trigger);
    }
}
