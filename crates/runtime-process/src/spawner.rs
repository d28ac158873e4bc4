use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gust_executor::FunctionLogs;

use crate::RuntimeError;
use crate::cgroup::Cgroups;
use crate::sandbox::Sandbox;
use crate::worker::{Worker, WorkerCommand};

/// Starts workers: one sandbox policy, one directory for their per-worker host directories.
pub struct Spawner {
    pub sandbox: Sandbox,
    /// Where workers' cgroups go; `None` runs them without kernel limits.
    pub cgroups: Option<Cgroups>,
    pub workers_dir: PathBuf,
    /// Where workers' mounted values go (memory-backed); `None` where workers get none.
    pub values_root: Option<PathBuf>,
    pub logs: Arc<FunctionLogs>,
    next_id: AtomicU64,
}

impl Spawner {
    pub fn new(
        sandbox: Sandbox,
        cgroups: Option<Cgroups>,
        workers_dir: PathBuf,
        values_root: Option<PathBuf>,
        logs: Arc<FunctionLogs>,
    ) -> Self {
        Self {
            sandbox,
            cgroups,
            workers_dir,
            values_root,
            logs,
            next_id: AtomicU64::new(1),
        }
    }

    pub async fn start_worker(&self, command: &WorkerCommand) -> Result<Worker, RuntimeError> {
        let mut attempt = 1;
        loop {
            let serial = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}-{serial}", command.environment);
            let started = Worker::start(
                id,
                (&self.workers_dir, self.values_root.as_deref()),
                &self.sandbox,
                self.cgroups.as_ref(),
                command,
                self.logs.clone(),
            )
            .await;
            match started {
                Err(err) if attempt < SETUP_ATTEMPTS && is_transient_setup_failure(&err) => {
                    tracing::debug!(error = %err, attempt, "sandbox set-up failed; starting again");
                    // Apart from the other starts it collided with, at a moment of its own.
                    let jitter = serial.wrapping_mul(7919) % 20;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt) + jitter))
                        .await;
                    attempt += 1;
                }
                started => return started,
            }
        }
    }
}

/// Starts of a worker whose sandbox set-up failed for a reason of the moment.
const SETUP_ATTEMPTS: u32 = 5;

/// bubblewrap configures the loopback interface of each new network namespace over netlink,
/// and with many namespaces created at once that occasionally fails (seen: `loopback: Failed
/// RTM_NEWADDR: No child processes`). Nothing of the function has run then; a new sandbox
/// succeeds.
fn is_transient_setup_failure(err: &RuntimeError) -> bool {
    matches!(err, RuntimeError::WorkerStart { detail, .. } if detail.contains("bwrap: loopback:"))
}
