//! Pre-warmed generic workers per environment, so a cold function pays only the specialize
//! step, never an interpreter start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::spawner::Spawner;
use crate::worker::{Worker, WorkerCommand};

/// The longest wait between attempts to start a worker for an environment whose workers fail.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long a refill waits while the pool still has a ready worker (see `keep_filled`).
const REFILL_DELAY: Duration = Duration::from_millis(30);

pub struct WarmPool {
    command: WorkerCommand,
    size: usize,
    ready: Mutex<VecDeque<Worker>>,
    /// Why the last worker start failed (its output included), until one succeeds.
    last_failure: Mutex<Option<String>>,
    refill: Notify,
    stop: CancellationToken,
}

impl WarmPool {
    /// Creates the pool and starts filling it in the background.
    pub fn start(
        command: WorkerCommand,
        size: usize,
        spawner: Arc<Spawner>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            command,
            size,
            ready: Mutex::new(VecDeque::new()),
            last_failure: Mutex::new(None),
            refill: Notify::new(),
            stop,
        });
        tokio::spawn(pool.clone().keep_filled(spawner));
        pool
    }

    pub fn command(&self) -> &WorkerCommand {
        &self.command
    }

    /// A ready generic worker, if one is warm; asks for a replacement either way.
    pub fn take(&self) -> Option<Worker> {
        let mut ready = self.ready.lock().expect("pool lock is never poisoned");
        let worker =
            std::iter::from_fn(|| ready.pop_front()).find_map(|mut w| w.is_alive().then_some(w));
        drop(ready);
        self.refill.notify_one();
        worker
    }

    /// Why workers of this environment fail to start, while they do: the last start's error
    /// and what the worker printed.
    pub fn start_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .expect("pool lock is never poisoned")
            .clone()
    }

    fn starts_failed(&self, why: Option<String>) {
        *self
            .last_failure
            .lock()
            .expect("pool lock is never poisoned") = why;
    }

    pub fn ready_count(&self) -> usize {
        self.ready
            .lock()
            .expect("pool lock is never poisoned")
            .len()
    }

    /// Stops the pool's workers and its refill task.
    pub fn close(&self) {
        self.stop.cancel();
        self.ready
            .lock()
            .expect("pool lock is never poisoned")
            .clear();
    }

    async fn keep_filled(self: Arc<Self>, spawner: Arc<Spawner>) {
        let mut failures = 0u32;
        loop {
            let ready = self.ready_count();
            if ready > 0 && ready < self.size {
                // A worker was just taken for a cold start: starting its replacement (a
                // sandbox and an interpreter, tens of ms of CPU) right now would compete with
                // that start for the cores. The pool still has one for the next; once it has
                // none (a burst), the refill starts at once.
                let delay = tokio::time::sleep(REFILL_DELAY);
                tokio::pin!(delay);
                loop {
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = &mut delay => break,
                        _ = self.refill.notified() => {
                            if self.ready_count() == 0 {
                                break;
                            }
                        }
                    }
                }
            }
            let missing = self.size.saturating_sub(self.ready_count());
            if missing > 0 && !self.stop.is_cancelled() {
                // Start the missing workers side by side: after a burst of cold starts the
                // pool is whole again in one interpreter start, not one per worker.
                let mut starting = tokio::task::JoinSet::new();
                for _ in 0..missing {
                    let (spawner, command) = (spawner.clone(), self.command.clone());
                    starting.spawn(async move { spawner.start_worker(&command).await });
                }
                let mut failed = false;
                loop {
                    let next = tokio::select! {
                        _ = self.stop.cancelled() => return,
                        next = starting.join_next() => next,
                    };
                    match next {
                        None => break,
                        Some(Ok(Ok(worker))) => {
                            self.starts_failed(None);
                            self.ready
                                .lock()
                                .expect("pool lock is never poisoned")
                                .push_back(worker);
                        }
                        Some(Ok(Err(err))) => {
                            failed = true;
                            self.starts_failed(Some(err.to_string()));
                            tracing::warn!(environment = %self.command.environment, error = %err, "pool worker failed to start");
                        }
                        Some(Err(err)) => {
                            failed = true;
                            tracing::error!(environment = %self.command.environment, error = %err, "pool worker task failed");
                        }
                    }
                }
                if failed {
                    // A broken environment must not spin: back off (to a minute), keep trying.
                    failures += 1;
                    let delay =
                        Duration::from_millis(200 * 2u64.pow(failures.min(9))).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                } else {
                    failures = 0;
                }
                continue;
            }
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.ready.lock().expect("pool lock is never poisoned").clear();
                    return;
                }
                _ = self.refill.notified() => {}
                // Pooled workers can die (killed from outside); look again now and then.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    self.ready.lock().expect("pool lock is never poisoned").retain_mut(|w| w.is_alive());
                }
            }
        }
    }
}
