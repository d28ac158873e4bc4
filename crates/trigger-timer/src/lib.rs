//! Timers: turns each tick of every timer's schedule into an asynchronous invocation, so a
//! tick is stored, retried and dead-lettered like any async work.
//!
//! A tick is enqueued with its timer and tick time; the store refuses a tick at or before the
//! last one enqueued for that timer, so a tick never fires twice, whatever restarts happen.
//! After a restart the first tick is the first one after now: ticks missed while Gust was
//! down are skipped, not replayed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gust_executor::{Clock, Enqueue};
use gust_model::Timer;
use gust_store::TimerStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The longest the scheduler sleeps without looking at the clock again (it may jump).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Wait before trying a tick again that could not be stored.
const RETRY_AFTER: Duration = Duration::from_millis(500);

pub struct TimerScheduler {
    store: Arc<dyn TimerStore>,
    queue: Arc<dyn Enqueue>,
    clock: Arc<dyn Clock>,
    changed: Notify,
}

/// A timer and its next tick.
struct Scheduled {
    timer: Timer,
    next_ms: Option<u64>,
}

impl TimerScheduler {
    pub fn new(
        store: Arc<dyn TimerStore>,
        queue: Arc<dyn Enqueue>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            queue,
            clock,
            changed: Notify::new(),
        })
    }

    /// Tells the scheduler to read the timers again (one was created or deleted).
    pub fn timers_changed(&self) {
        self.changed.notify_one();
    }

    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut scheduled: HashMap<String, Scheduled> = HashMap::new();
        let mut reload = true;
        loop {
            if reload {
                self.reload(&mut scheduled).await;
                reload = false;
            }
            let now = self.clock.now_ms();
            let mut retry_soon = false;
            for entry in scheduled.values_mut() {
                let Some(tick) = entry.next_ms.filter(|tick| *tick <= now) else {
                    continue;
                };
                match self.queue.enqueue_tick(&entry.timer, tick).await {
                    Ok(_) => entry.next_ms = entry.timer.schedule.next_after(tick.max(now)),
                    Err(err) => {
                        tracing::error!(timer = %entry.timer.name, error = %err, "cannot enqueue a timer tick; retrying");
                        retry_soon = true;
                    }
                }
            }
            let now = self.clock.now_ms();
            let wait = if retry_soon {
                RETRY_AFTER
            } else {
                scheduled
                    .values()
                    .filter_map(|s| s.next_ms)
                    .min()
                    .map_or(MAX_SLEEP, |next| {
                        Duration::from_millis(next.saturating_sub(now)).min(MAX_SLEEP)
                    })
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => reload = true,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads the timers; existing ones keep their next tick, new ones start after now.
    async fn reload(&self, scheduled: &mut HashMap<String, Scheduled>) {
        let store = self.store.clone();
        let timers = match tokio::task::spawn_blocking(move || store.timers(None)).await {
            Ok(Ok(timers)) => timers,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read timers; keeping the ones known");
                return;
            }
            Err(err) => {
                tracing::error!(error = %err, "timer read task failed");
                return;
            }
        };
        let now = self.clock.now_ms();
        let mut next: HashMap<String, Scheduled> = HashMap::with_capacity(timers.len());
        for timer in timers {
            let key = format!("{}/{}", timer.namespace, timer.name);
            let entry = match scheduled.remove(&key) {
                Some(old) if old.timer.created_at_ms == timer.created_at_ms => old,
                _ => Scheduled {
                    next_ms: timer.schedule.next_after(now),
                    timer,
                },
            };
            next.insert(key, entry);
        }
        *scheduled = next;
    }

    /// The next tick of every timer, for `gust timer list`.
    pub fn next_tick(&self, timer: &Timer) -> Option<u64> {
        timer.schedule.next_after(self.clock.now_ms())
    }
}
