use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    pub logs: Arc<FunctionLogs>,
    next_id: AtomicU64,
}

impl Spawner {
    pub fn new(
        sandbox: Sandbox,
        cgroups: Option<Cgroups>,
        workers_dir: PathBuf,
        logs: Arc<FunctionLogs>,
    ) -> Self {
        Self {
            sandbox,
            cgroups,
            workers_dir,
            logs,
            next_id: AtomicU64::new(1),
        }
    }

    pub async fn start_worker(&self, command: &WorkerCommand) -> Result<Worker, RuntimeError> {
        let id = format!(
            "{}-{}",
            command.environment,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        Worker::start(
            id,
            &self.workers_dir,
            &self.sandbox,
            self.cgroups.as_ref(),
            command,
            self.logs.clone(),
        )
        .await
    }
}
