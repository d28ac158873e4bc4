//! Kernel limits per worker: each worker runs in cgroups of its own, children of Gust's own
//! cgroups, with a memory limit (the function's `--memory`, set when it is specialized), a
//! pids limit (a fork bomb stays inside it) and one CPU's worth of time. The same cgroups
//! measure the CPU a worker used and tell an out-of-memory kill from another death.
//!
//! Both hierarchies are supported: cgroup v2 (one unified tree) and v1 (one tree per
//! controller, as on hosts where Gust already sits in a memory cgroup of its own). rlimits are
//! no substitute: they do not bound root's processes and do not cover a process tree.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Processes (threads included) a worker's sandbox may have at once.
pub const WORKER_PIDS_MAX: u32 = 256;
/// CPU per worker: one core (quota over period, in microseconds).
const CPU_PERIOD_US: u64 = 100_000;
const CPU_QUOTA_US: u64 = 100_000;

#[derive(Debug, Clone)]
enum Layout {
    /// One directory per controller, each Gust's base in that controller's tree.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
    },
    /// Gust's base in the unified tree; workers are its children.
    V2 { base: PathBuf },
}

impl Layout {
    /// Gust's own base directories: one per controller (v1), or one (v2).
    fn bases(&self) -> Vec<PathBuf> {
        match self {
            Layout::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
            } => [memory, pids, cpu, cpuacct]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            Layout::V2 { base } => vec![base.clone()],
        }
    }
}

/// Where worker cgroups are created.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
}

/// The cgroups of one worker.
#[derive(Debug)]
pub struct WorkerCgroup {
    layout: Layout,
    name: String,
}

/// The mount point of each cgroup hierarchy and the controllers it carries, from
/// `/proc/self/mounts`.
fn cgroup_mounts() -> Vec<(PathBuf, Vec<String>, bool)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (mount_point, fs_type, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            match *fs_type {
                "cgroup2" => Some((PathBuf::from(mount_point), Vec::new(), true)),
                "cgroup" => Some((
                    PathBuf::from(mount_point),
                    options.split(',').map(str::to_owned).collect(),
                    false,
                )),
                _ => None,
            }
        })
        .collect()
}

/// Gust's own cgroup path per hierarchy, from `/proc/self/cgroup`: (controllers, path).
fn own_cgroups() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some((controllers, path.to_owned()))
        })
        .collect()
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// Kills what is left in a cgroup directory and removes it (best effort: a process in the
/// middle of exiting keeps it busy for a moment).
fn clear(dir: &Path) {
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill with a pid listed in a cgroup Gust created for its workers.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(cgroup = %dir.display(), "cannot remove a worker cgroup");
}

/// Removes the cgroups a previous Gust left under `base` (it was killed before it could).
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            clear(&entry.path());
        }
    }
}

impl Cgroups {
    /// Finds Gust's own cgroups and creates `name` under each for its workers, removing what
    /// a previous run left there. Fails with the reason when this host gives Gust no cgroups
    /// it can write.
    pub fn create(name: &str) -> Result<Self, String> {
        let mounts = cgroup_mounts();
        let own = own_cgroups();
        let v1_mounts: Vec<_> = mounts.iter().filter(|(_, _, v2)| !v2).collect();
        let layout = if v1_mounts
            .iter()
            .any(|(_, opts, _)| opts.iter().any(|o| o == "memory"))
        {
            let base_of = |controller: &str| -> Option<PathBuf> {
                let (mount, _, _) = v1_mounts
                    .iter()
                    .find(|(_, opts, _)| opts.iter().any(|o| o == controller))?;
                let (_, path) = own
                    .iter()
                    .find(|(controllers, _)| controllers.iter().any(|c| c == controller))?;
                Some(mount.join(path.trim_start_matches('/')).join(name))
            };
            Layout::V1 {
                memory: base_of("memory"),
                pids: base_of("pids"),
                cpu: base_of("cpu"),
                cpuacct: base_of("cpuacct"),
            }
        } else {
            let (mount, _, _) = mounts
                .iter()
                .find(|(_, _, v2)| *v2)
                .ok_or("no cgroup filesystem is mounted")?;
            let (_, path) = own
                .iter()
                .find(|(controllers, _)| controllers.is_empty())
                .ok_or("this process is in no cgroup v2")?;
            Layout::V2 {
                base: mount.join(path.trim_start_matches('/')).join(name),
            }
        };
        let cgroups = Self { layout };
        for dir in cgroups.bases() {
            sweep(&dir);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        if let Layout::V2 { base } = &cgroups.layout {
            // Controllers must be handed down to reach the workers' cgroups.
            write(base, "cgroup.subtree_control", "+memory +pids +cpu")
                .map_err(|e| format!("cannot enable controllers: {e}"))?;
        }
        if let Layout::V1 { memory: None, .. } = &cgroups.layout {
            return Err("no memory cgroup".to_owned());
        }
        Ok(cgroups)
    }

    fn bases(&self) -> Vec<PathBuf> {
        self.layout.bases()
    }

    /// Creates a worker's cgroups with its pids and CPU limits; memory is limited when the
    /// worker learns its function ([`WorkerCgroup::limit_memory`]).
    pub fn worker(&self, name: &str) -> io::Result<WorkerCgroup> {
        let cgroup = WorkerCgroup {
            layout: self.layout.clone(),
            name: name.to_owned(),
        };
        for dir in cgroup.dirs() {
            std::fs::create_dir_all(&dir)?;
        }
        match &cgroup.layout {
            Layout::V1 { pids, cpu, .. } => {
                if let Some(pids) = pids {
                    write(&pids.join(name), "pids.max", &WORKER_PIDS_MAX.to_string())?;
                }
                if let Some(cpu) = cpu {
                    let dir = cpu.join(name);
                    write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write(&dir, "cpu.cfs_quota_us", &CPU_QUOTA_US.to_string())?;
                }
            }
            Layout::V2 { base } => {
                let dir = base.join(name);
                write(&dir, "pids.max", &WORKER_PIDS_MAX.to_string())?;
                write(&dir, "cpu.max", &format!("{CPU_QUOTA_US} {CPU_PERIOD_US}"))?;
            }
        }
        Ok(cgroup)
    }

    /// Removes Gust's base cgroups (at shutdown, once every worker has stopped).
    pub fn remove(&self) {
        for dir in self.bases() {
            sweep(&dir);
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl WorkerCgroup {
    fn dirs(&self) -> Vec<PathBuf> {
        self.layout
            .bases()
            .iter()
            .map(|base| base.join(&self.name))
            .collect()
    }

    fn memory_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1 { memory, .. } => memory.as_ref().map(|m| m.join(&self.name)),
            Layout::V2 { base } => Some(base.join(&self.name)),
        }
    }

    /// `cgroup.procs` of each of the worker's cgroups, opened now: the worker's process
    /// writes `0` (itself) to each before it starts the sandbox, so that everything it
    /// starts is inside from the first instruction.
    pub fn procs_files(&self) -> io::Result<Vec<File>> {
        self.dirs()
            .iter()
            .map(|dir| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
            })
            .collect()
    }

    /// Limits memory (and swap, so that the limit cannot be dodged) to `mb`.
    pub fn limit_memory(&self, mb: u32) -> io::Result<()> {
        let Some(dir) = self.memory_dir() else {
            return Ok(());
        };
        let bytes = (u64::from(mb) * 1024 * 1024).to_string();
        match self.layout {
            Layout::V1 { .. } => {
                // With swap accounting, memory+swap may not be below memory: raise the
                // combined limit first when growing, lower it last when shrinking.
                let memsw = dir.join("memory.memsw.limit_in_bytes").exists();
                if memsw {
                    let _ = write(&dir, "memory.memsw.limit_in_bytes", &bytes);
                }
                write(&dir, "memory.limit_in_bytes", &bytes)?;
                if memsw {
                    write(&dir, "memory.memsw.limit_in_bytes", &bytes)?;
                }
                Ok(())
            }
            Layout::V2 { .. } => {
                write(&dir, "memory.max", &bytes)?;
                let _ = write(&dir, "memory.swap.max", "0");
                Ok(())
            }
        }
    }

    /// Whether the kernel killed a process of this worker for exceeding its memory.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.memory_dir() else {
            return false;
        };
        let file = match self.layout {
            Layout::V1 { .. } => "memory.oom_control",
            Layout::V2 { .. } => "memory.events",
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .any(|count| count.trim().parse::<u64>().is_ok_and(|n| n > 0))
    }

    /// CPU time the worker's processes have used so far.
    pub fn cpu_usage(&self) -> Option<Duration> {
        match &self.layout {
            Layout::V1 { cpuacct, .. } => {
                let dir = cpuacct.as_ref()?.join(&self.name);
                let nanos: u64 = std::fs::read_to_string(dir.join("cpuacct.usage"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some(Duration::from_nanos(nanos))
            }
            Layout::V2 { base } => {
                let stat = std::fs::read_to_string(base.join(&self.name).join("cpu.stat")).ok()?;
                let micros: u64 = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(Duration::from_micros(micros))
            }
        }
    }

    /// Kills whatever is left in the worker's cgroups and removes them, off the caller's
    /// thread (processes take a moment to leave a cgroup after SIGKILL).
    pub fn remove(self) {
        let dirs = self.dirs();
        let work = move || dirs.iter().for_each(|dir| clear(dir));
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }
}
