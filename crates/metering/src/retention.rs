//! Keeping what billing needs and no more. Every usage record is added to its function's hourly
//! totals in the transaction that stores it (see `gust_store::UsageStore::record_usage`), so
//! deleting old raw records changes no total: they are kept for a short retention (audit,
//! `gust usage --raw`), the hourly totals for a long one, and both are pruned in small batches
//! while Gust serves, so the store stops growing once the retentions are reached.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gust_store::UsageStore;
use tokio_util::sync::CancellationToken;

/// How often old usage is looked for, and how much one transaction deletes at most.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
const PRUNE_BATCH: usize = 10_000;

/// How long usage is kept.
#[derive(Debug, Clone, Copy)]
pub struct UsageRetention {
    /// Raw per-attempt records.
    pub records: Duration,
    /// Hourly totals (what usage reports and invoices are made from).
    pub hours: Duration,
}

impl Default for UsageRetention {
    fn default() -> Self {
        Self {
            records: Duration::from_secs(24 * 3600),
            hours: Duration::from_secs(400 * 24 * 3600),
        }
    }
}

/// Deletes usage past its retention until `stop`.
pub async fn prune_usage(
    store: Arc<dyn UsageStore>,
    retention: UsageRetention,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let records_before = now.saturating_sub(retention.records.as_millis() as u64);
        let hours_before = now.saturating_sub(retention.hours.as_millis() as u64);
        let store = store.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            store.prune_usage(records_before, hours_before, PRUNE_BATCH)
        })
        .await;
        match pruned {
            Ok(Ok(pruned)) if pruned.records + pruned.hours > 0 => {
                tracing::debug!(
                    records = pruned.records,
                    hours = pruned.hours,
                    "usage past its retention deleted"
                );
                if pruned.records + pruned.hours >= PRUNE_BATCH {
                    // More is waiting: go again without the pause.
                    tick.reset_immediately();
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "cannot delete old usage"),
            Err(err) => tracing::error!(error = %err, "usage pruning task failed"),
        }
    }
}
