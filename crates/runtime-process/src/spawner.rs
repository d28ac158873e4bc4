use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_executor::FunctionLogs;
use tokio::sync::Semaphore;

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
    /// Per environment, its sandboxes being set up and interpreters starting at once, at
    /// most [`concurrent_starts`]: a start takes tens of milliseconds of CPU, and a burst
    /// that asks for fifty at once would otherwise take the cores from the instances serving
    /// it (the warm instance answers the burst while the new ones start, a few at a time).
    /// Per environment, so that one whose server never gets ready holds up only its own.
    starting: Mutex<HashMap<String, Arc<Semaphore>>>,
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
            starting: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the start limits of environments that no longer exist.
    pub fn retain_environments(&self, exists: impl Fn(&str) -> bool) {
        self.starting
            .lock()
            .expect("start limit map lock is never poisoned")
            .retain(|name, _| exists(name));
    }

    pub async fn start_worker(&self, command: &WorkerCommand) -> Result<Worker, RuntimeError> {
        let turns = self
            .starting
            .lock()
            .expect("start limit map lock is never poisoned")
            .entry(command.environment.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(concurrent_starts())))
            .clone();
        let _turn = turns
            .acquire_owned()
            .await
            .expect("a start limit is never closed");
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

/// Two starts per core: enough to keep the cores busy while a start waits on the kernel.
fn concurrent_starts() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
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
