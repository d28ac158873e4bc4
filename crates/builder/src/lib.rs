//! Dependency builds. Code that declares dependencies (`requirements.txt` in a Python
//! function, `package.json` in a Node.js one) has them installed by the language's own
//! package client (`pip install --target`, `npm ci --omit=dev`) in a sandbox like a worker's:
//! the unprivileged uid, an allow-list mount view holding only its own sources, cgroup limits
//! on memory, processes and CPU, a size-limited scratch space and a time limit. The build
//! hands back what it installed as a tar stream, which Gust unpacks with the same checks as
//! an upload into a content-addressed dependency tree.
//!
//! Dependency trees are shared by every build with the same [`BuildPlan::cache_key`] (the
//! environment, its interpreter's version and the content of the files that decide what is
//! installed), so a code-only change, or a second function with the same requirements, needs
//! no build: the package is its sources with the tree laid over them, assembled from hard
//! links ([`CodeStore::assemble`]).
//!
//! Not here: which revision a build belongs to and when it goes live (the API decides).

mod log;

pub use log::BuildLog;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_model::{
    BuiltinRuntime, CodeRef, DependencyKind, Environment, EnvironmentKind, Namespace, OutboundRule,
};
use gust_runtime_process::{BUILD_FILE_MAX_BYTES, BuildBinds, Cgroups, Sandbox};
use gust_store::{CodeLimits, CodePin, CodeStore, StoreError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Starts of a build whose sandbox set-up failed for a reason of the moment.
const SANDBOX_ATTEMPTS: u32 = 5;
/// The largest dependency manifest read (`requirements.txt`, `package.json`, the lockfile).
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// The longest a build may run (`gust up --build-timeout`).
    pub timeout: Duration,
    /// Memory of a build's processes, its scratch space included.
    pub memory_mb: u32,
    /// Size of a build's scratch space and of its output directory (each a tmpfs).
    pub scratch_bytes: u64,
    /// What a build may install: files and bytes.
    pub output: CodeLimits,
    /// Bytes of a build's log kept in its file.
    pub log_bytes: u64,
    /// Builds at once; more wait for a turn.
    pub concurrent: usize,
    /// Where builds get their scratch directories: a directory the sandbox's uid can
    /// traverse but no one else can list (`<run dir>/builds`).
    pub scratch_root: PathBuf,
    /// `gust up --pip-index-url` and `--npm-registry`: override the host's configuration.
    pub pip_index_url: Option<String>,
    pub npm_registry: Option<String>,
    pub python: PathBuf,
    pub npm: PathBuf,
    pub node: PathBuf,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
            memory_mb: 2048,
            scratch_bytes: 4 << 30,
            output: CodeLimits {
                max_files: 100_000,
                max_total_bytes: 2 << 30,
            },
            log_bytes: 4 << 20,
            concurrent: 2,
            scratch_root: std::env::temp_dir().join("gust-builds"),
            pip_index_url: None,
            npm_registry: None,
            python: PathBuf::from("/usr/bin/python3"),
            npm: PathBuf::from("/usr/bin/npm"),
            node: PathBuf::from("/usr/bin/node"),
        }
    }
}

/// What a revision's code needs built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub kind: BuildKind,
    pub cache_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildKind {
    /// A language's dependencies, laid over the sources.
    Dependencies(DependencyKind),
    /// A custom environment's `--build-cmd`: what it writes to `$DEPLOY_PKG` is the whole
    /// package.
    Command {
        argv: Vec<String>,
        /// The environment's `--mount`s, where the command may live.
        mounts: Vec<PathBuf>,
    },
}

/// Why a build did not produce dependencies. Each message is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum BuildFailure {
    #[error("{tool} failed (exit status {status}):\n{tail}")]
    Failed {
        tool: &'static str,
        status: String,
        tail: String,
    },
    #[error("the build ran longer than its {0:?} limit and was stopped")]
    TimedOut(Duration),
    #[error("the build ran out of its {0} MB of memory and was stopped")]
    OutOfMemory(u32),
    #[error("what the build installed was refused: {0}")]
    Output(String),
    #[error("superseded by a newer revision")]
    Cancelled,
    #[error("the build could not run: {0}")]
    Internal(String),
    #[error("the build's sandbox could not be set up: {0}")]
    SandboxSetup(String),
}

/// What a build made: dependencies to lay over the sources, or (a build command) the
/// package itself.
pub struct BuiltDependencies {
    /// The tree in the code store, kept from garbage collection until this is dropped
    /// (after the revision that refers to it is stored).
    pub tree: CodePin,
    /// Whether an earlier build made them.
    pub cached: bool,
    /// The tree is the whole package, not dependencies beside the sources.
    pub is_package: bool,
}

pub struct Builder {
    config: BuilderConfig,
    sandbox: Sandbox,
    cgroups: Option<Cgroups>,
    code: Arc<CodeStore>,
    turns: tokio::sync::Semaphore,
    /// One build per cache key at a time: a second build of the same dependencies waits for
    /// the first and then uses what it made.
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Numbers builds (their cgroups).
    count: std::sync::atomic::AtomicU64,
    /// Interpreter versions, part of every cache key.
    python_version: String,
    node_version: String,
    /// The host's package-client configuration, given to every build.
    client_files: Vec<BuildFile>,
    client_env: Vec<(String, String)>,
    /// The registries the package clients are set up for: a build's network reaches them
    /// besides public addresses (see [`registry_rules`]).
    registries: Vec<(String, u16)>,
}

impl Builder {
    pub fn new(
        config: BuilderConfig,
        sandbox: Sandbox,
        cgroups: Option<Cgroups>,
        code: Arc<CodeStore>,
    ) -> Self {
        let version = |program: &PathBuf| {
            std::process::Command::new(program)
                .arg("--version")
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| {
                    let text = [out.stdout, out.stderr].concat();
                    String::from_utf8_lossy(&text).trim().to_owned()
                })
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let (client_files, client_env) = client_configuration(&config);
        let registries = registries(&client_files, &client_env);
        Self {
            registries,
            python_version: version(&config.python),
            node_version: version(&config.node),
            turns: tokio::sync::Semaphore::new(config.concurrent.max(1)),
            count: std::sync::atomic::AtomicU64::new(0),
            keys: Mutex::new(HashMap::new()),
            client_files,
            client_env,
            config,
            sandbox,
            cgroups,
            code,
        }
    }

    /// Removes the builds' cgroups (at shutdown, once no build runs): a stopped Gust leaves
    /// none behind.
    pub fn remove_cgroups(&self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove();
        }
    }

    /// Whether `source` needs a build in `environment`, and what it would depend on. Bad
    /// manifests are refused here, before anything is stored for them.
    /// Builds are cached per namespace: a tenant never gets what another tenant's build made.
    pub fn plan(
        &self,
        namespace: &Namespace,
        environment: &Environment,
        source: &CodeRef,
    ) -> Result<Option<BuildPlan>, StoreError> {
        let runtime = match &environment.kind {
            EnvironmentKind::Builtin { runtime } => *runtime,
            EnvironmentKind::Custom {
                build_command: Some(argv),
                mounts,
                ..
            } => {
                let mut key = Sha256::new();
                key.update(b"gust build command v1\0");
                key.update(namespace.as_str().as_bytes());
                key.update([0]);
                key.update(environment.name.as_str().as_bytes());
                for arg in argv {
                    key.update([0]);
                    key.update(arg.as_bytes());
                }
                key.update(b"\0source\0");
                key.update(source.digest.as_bytes());
                return Ok(Some(BuildPlan {
                    kind: BuildKind::Command {
                        argv: argv.clone(),
                        mounts: mounts.clone(),
                    },
                    cache_key: hex::encode(key.finalize()),
                }));
            }
            EnvironmentKind::Custom { .. } => return Ok(None),
        };
        let Some(kind) = DependencyKind::of(runtime) else {
            return Ok(None);
        };
        if source.file.is_some() {
            return Ok(None);
        }
        let read = |name: &str| {
            self.code
                .read_file(&source.digest, name, MAX_MANIFEST_BYTES)
        };
        let Some(manifest) = read(kind.manifest())? else {
            return Ok(None);
        };
        check_manifest(kind, &manifest)?;
        let mut key = Sha256::new();
        key.update(b"gust dependencies v1\0");
        key.update(namespace.as_str().as_bytes());
        key.update([0]);
        key.update(environment.name.as_str().as_bytes());
        key.update([0]);
        key.update(match runtime {
            BuiltinRuntime::Python => self.python_version.as_bytes(),
            _ => self.node_version.as_bytes(),
        });
        key.update([0]);
        for name in kind.inputs() {
            key.update(name.as_bytes());
            match read(name)? {
                Some(content) => {
                    key.update((content.len() as u64).to_le_bytes());
                    key.update(&content);
                }
                None => key.update(b"\0absent"),
            }
        }
        Ok(Some(BuildPlan {
            kind: BuildKind::Dependencies(kind),
            cache_key: hex::encode(key.finalize()),
        }))
    }

    /// Builds the dependencies `plan` names from `source`, unless `cached` finds a tree an
    /// earlier build made (asked again after waiting for a build of the same key).
    pub async fn build(
        &self,
        plan: &BuildPlan,
        source: &CodeRef,
        log: &BuildLog,
        cached: impl Fn() -> Option<String>,
        cancel: &CancellationToken,
    ) -> Result<BuiltDependencies, BuildFailure> {
        let is_package = matches!(plan.kind, BuildKind::Command { .. });
        let from_cache = || {
            let digest = cached()?;
            // Pinned, then checked: collection cannot take it between the two.
            let pin = self.code.pin(&digest);
            self.code
                .tree(&digest)
                .is_dir()
                .then_some(BuiltDependencies {
                    tree: pin,
                    cached: true,
                    is_package,
                })
        };
        if let Some(found) = from_cache() {
            log.line("found in the build cache");
            return Ok(found);
        }
        let key_lock = self
            .keys
            .lock()
            .expect("build key lock is never poisoned")
            .entry(plan.cache_key.clone())
            .or_default()
            .clone();
        let _same_key = tokio::select! {
            held = key_lock.lock() => held,
            _ = cancel.cancelled() => return Err(BuildFailure::Cancelled),
        };
        if let Some(found) = from_cache() {
            log.line("found in the build cache (built meanwhile)");
            return Ok(found);
        }
        let _turn = tokio::select! {
            turn = self.turns.acquire() => turn.map_err(|e| BuildFailure::Internal(e.to_string()))?,
            _ = cancel.cancelled() => return Err(BuildFailure::Cancelled),
        };
        let mut attempt = 1;
        let built = loop {
            let built = self.run(plan, source, log, cancel).await;
            // bubblewrap configures each new network namespace's loopback over netlink, which
            // now and then fails when many namespaces are made at once (as for workers, see
            // the process tier's spawner), and connecting a namespace that died of it fails
            // too. Nothing of the build has run then.
            let transient = match &built {
                Err(BuildFailure::SandboxSetup(_)) => true,
                Err(BuildFailure::Failed { .. }) => log
                    .tail()
                    .lines()
                    .any(|l| l.starts_with("bwrap: loopback:")),
                _ => false,
            };
            if !transient || attempt == SANDBOX_ATTEMPTS {
                break built;
            }
            attempt += 1;
            log.line("(the sandbox's network could not be set up; starting it again)");
        };
        self.keys
            .lock()
            .expect("build key lock is never poisoned")
            .retain(|_, lock| Arc::strong_count(lock) > 1);
        built
    }

    async fn run(
        &self,
        plan: &BuildPlan,
        source: &CodeRef,
        log: &BuildLog,
        cancel: &CancellationToken,
    ) -> Result<BuiltDependencies, BuildFailure> {
        let internal = |e: &dyn std::fmt::Display| BuildFailure::Internal(e.to_string());
        let (tool, script) = self.script(&plan.kind);
        log.line(&format!("$ {tool}"));
        // Under a directory no other user can list (the build's own is 0711 too).
        std::fs::create_dir_all(&self.config.scratch_root).map_err(|e| internal(&e))?;
        std::fs::set_permissions(
            &self.config.scratch_root,
            std::fs::Permissions::from_mode(0o711),
        )
        .map_err(|e| internal(&e))?;
        let scratch = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&self.config.scratch_root)
            .map_err(|e| internal(&e))?;
        // The sandbox's uid must be able to resolve the sources' path (bwrap does), which it
        // cannot inside Gust's private data directory: they are linked (or copied) here.
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711))
            .map_err(|e| internal(&e))?;
        let (source_dir, output_dir, home_dir) = (
            scratch.path().join("src"),
            scratch.path().join("deploy"),
            scratch.path().join("home"),
        );
        for dir in [&output_dir, &home_dir] {
            std::fs::create_dir(dir).map_err(|e| internal(&e))?;
        }
        // A dependency build sees only the files its cache key covers: anything else it could
        // read (a local package, a module shadowing the tool) would make what it installs
        // depend on more than the key says, and the result is shared with every build of
        // the same key. A build command's key covers all the sources.
        let visible: &[&str] = match &plan.kind {
            BuildKind::Dependencies(kind) => kind.inputs(),
            BuildKind::Command { .. } => &[],
        };
        link_or_copy_tree(&self.code.tree(&source.digest), &source_dir, visible)
            .map_err(|e| internal(&e))?;
        // Named per build (a cgroup being removed in the background must not be another
        // build's), and removed on every way out of here.
        let cgroup = CgroupGuard(match &self.cgroups {
            Some(cgroups) => {
                let number = self
                    .count
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(
                    cgroups
                        .worker(&format!("build-{number}"))
                        .map_err(|e| internal(&e))?,
                )
            }
            None => None,
        });
        if let Some(cgroup) = &cgroup.0 {
            cgroup
                .limit_memory(self.config.memory_mb)
                .map_err(|e| internal(&e))?;
        }
        let procs = match &cgroup.0 {
            Some(cgroup) => cgroup.procs_files().map_err(|e| internal(&e))?,
            None => Vec::new(),
        };
        let mut binds = BuildBinds::open(
            &self.sandbox,
            &source_dir,
            self.client_files.clone(),
            self.client_env.clone(),
            match &plan.kind {
                BuildKind::Command { mounts, .. } => mounts.clone(),
                BuildKind::Dependencies(_) => Vec::new(),
            },
            self.config.scratch_bytes,
        )
        .map_err(|e| internal(&e))?;
        let mut command =
            self.sandbox
                .build_command(&binds, &script, (&output_dir, &home_dir), &procs);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| internal(&e))?;
        drop(procs);
        let pid = child.id();
        // The build waits in its sandbox until its network is connected: public addresses and
        // the registries the package clients are set up for.
        let allow = registry_rules(&self.registries, log).await;
        let connected = tokio::time::timeout(self.config.timeout, binds.connect(&allow))
            .await
            .unwrap_or_else(|_| Err("not connected within the build's timeout".to_owned()));
        let _uplink = match connected {
            Ok(uplink) => uplink,
            Err(reason) => {
                if let Some(pid) = pid {
                    // SAFETY: kill has no memory preconditions; the group is the sandbox's.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                let _ = child.wait().await;
                return Err(BuildFailure::SandboxSetup(format!(
                    "its network could not be connected: {reason}"
                )));
            }
        };
        drop(binds);
        // What the build installed arrives as a tar stream on its stdout; everything it says
        // goes to stderr (the script sends the tools' stdout there).
        let stdout: OwnedFd = child
            .stdout
            .take()
            .expect("stdout is piped")
            .into_owned_fd()
            .map_err(|e| internal(&e))?;
        let (code, limits) = (self.code.clone(), self.config.output);
        let ingest = tokio::task::spawn_blocking(move || {
            ingest_build_output(&code, std::fs::File::from(stdout), limits)
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let said = log_lines(stderr, log);
        let kill = || {
            if let Some(pid) = pid {
                // SAFETY: kill has no memory preconditions; the group is the sandbox's.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        };
        let waited = tokio::select! {
            (status, ()) = async { tokio::join!(child.wait(), said) } => Ok(status),
            _ = tokio::time::sleep(self.config.timeout) => Err(BuildFailure::TimedOut(self.config.timeout)),
            _ = cancel.cancelled() => Err(BuildFailure::Cancelled),
        };
        if waited.is_err() {
            kill();
            let _ = child.wait().await;
        }
        let out_of_memory = cgroup.0.as_ref().is_some_and(|c| c.oom_killed());
        drop(cgroup);
        let ingested = ingest.await.map_err(|e| internal(&e))?;
        let status = waited?.map_err(|e| internal(&e))?;
        if out_of_memory {
            return Err(BuildFailure::OutOfMemory(self.config.memory_mb));
        }
        // A refused output stops the stream (the build then dies of SIGPIPE): the refusal is
        // the reason, not the exit status.
        match &ingested {
            Err(StoreError::InvalidCode { reason }) => {
                return Err(BuildFailure::Output(reason.clone()));
            }
            Err(other) => return Err(internal(other)),
            Ok(_) => {}
        }
        if !status.success() {
            return Err(BuildFailure::Failed {
                tool,
                status: status
                    .code()
                    .map_or_else(|| "killed by a signal".to_owned(), |c| c.to_string()),
                tail: log.tail(),
            });
        }
        let (tree, bytes) = ingested.map_err(|e| BuildFailure::Output(e.to_string()))?;
        log.line(&format!("built: {bytes} bytes"));
        Ok(BuiltDependencies {
            tree,
            cached: false,
            is_package: matches!(plan.kind, BuildKind::Command { .. }),
        })
    }

    /// The tool (as the user would name it) and the script a build of `kind` runs. The
    /// tools' own output goes to stderr, stdout carries the result.
    fn script(&self, kind: &BuildKind) -> (&'static str, String) {
        let quote = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
        let kind = match kind {
            BuildKind::Dependencies(kind) => kind,
            BuildKind::Command { argv, .. } => {
                let command: Vec<String> = argv.iter().map(|arg| quote(arg)).collect();
                // Fission's builders write into $SRC_PKG and copy it to a $DEPLOY_PKG that
                // does not exist yet: both hold here too.
                return (
                    "the build command",
                    format!(
                        r#"set -e
mkdir "$HOME/src"
cp -R "$SRC_PKG/." "$HOME/src/"
export SRC_PKG="$HOME/src" DEPLOY_PKG="$DEPLOY_PKG/package"
cd "$SRC_PKG"
{command} 1>&2
if [ ! -d "$DEPLOY_PKG" ]; then
  echo "the build command left nothing in \$DEPLOY_PKG" 1>&2
  exit 1
fi
cd "$DEPLOY_PKG"
exec tar --hard-dereference -cf - ."#,
                        command = command.join(" ")
                    ),
                );
            }
        };
        match kind {
            DependencyKind::Pip => (
                "pip install -r requirements.txt",
                format!(
                    r#"set -e
cd "$SRC_PKG"
{python} -I -m pip install --no-input --disable-pip-version-check --progress-bar off --no-warn-script-location --no-cache-dir --target "$DEPLOY_PKG" -r requirements.txt 1>&2
cd "$DEPLOY_PKG"
exec tar --hard-dereference -cf - ."#,
                    python = quote(&self.config.python.to_string_lossy())
                ),
            ),
            DependencyKind::Npm => (
                "npm ci --omit=dev",
                format!(
                    r#"set -e
for file in package.json package-lock.json .npmrc; do
  if [ -f "$SRC_PKG/$file" ]; then cp "$SRC_PKG/$file" "$DEPLOY_PKG/"; fi
done
cd "$DEPLOY_PKG"
if [ -f package-lock.json ]; then
  {npm} ci --omit=dev --no-audit --no-fund 1>&2
else
  echo "no package-lock.json: npm install --omit=dev" 1>&2
  {npm} install --omit=dev --no-audit --no-fund 1>&2
fi
mkdir -p node_modules
exec tar --hard-dereference -cf - node_modules"#,
                    npm = quote(&self.config.npm.to_string_lossy())
                ),
            ),
        }
    }
}

/// A build's cgroups, killed and removed when dropped.
struct CgroupGuard(Option<gust_runtime_process::WorkerCgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.take() {
            cgroup.remove();
        }
    }
}

/// What may follow the end of a build's tar archive and is read away: GNU tar pads its last
/// record (10 KiB unless told otherwise).
const TRAILER_MAX_BYTES: u64 = 4 << 20;

/// Unpacks a build's tar stream into the store, then reads what follows the archive's end.
/// The unpacker stops at the end-of-archive blocks, but tar is still writing its last record's
/// padding; closing the pipe there would kill it with SIGPIPE whenever the pipe happened to be
/// full, failing a build that succeeded (exit status 141).
fn ingest_build_output(
    code: &Arc<CodeStore>,
    mut output: std::fs::File,
    limits: CodeLimits,
) -> Result<(CodePin, u64), StoreError> {
    let ingested = code.ingest_tar_stream(&mut output, limits)?;
    let _ = std::io::copy(
        &mut std::io::Read::take(output, TRAILER_MAX_BYTES),
        &mut std::io::sink(),
    );
    Ok(ingested)
}

/// Passes what a build says to its log, line by line, holding at most one line's worth of
/// it: a line without end (however long) is cut, not gathered.
async fn log_lines(mut said: impl tokio::io::AsyncRead + Unpin, log: &BuildLog) {
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(read) = said.read(&mut chunk).await {
        if read == 0 {
            break;
        }
        for piece in chunk[..read].split_inclusive(|b| *b == b'\n') {
            let room = log::MAX_LINE_BYTES + 1 - line.len().min(log::MAX_LINE_BYTES + 1);
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.ends_with(b"\n") {
                log.line(&String::from_utf8_lossy(&line));
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        log.line(&String::from_utf8_lossy(&line));
    }
}

/// Places a stored tree at `to` (only the top-level regular files named in `only`, unless
/// it is empty): hard links where the filesystem allows, copies otherwise; directories
/// readable by all.
fn link_or_copy_tree(from: &Path, to: &Path, only: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let wanted =
            only.is_empty() || (kind.is_file() && only.iter().any(|n| entry.file_name() == **n));
        if !wanted {
            continue;
        }
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_dir() {
            link_or_copy_tree(&source, &target, &[])?;
        } else if std::fs::hard_link(&source, &target).is_err() {
            std::fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

/// Refuses a manifest that is not what its tool reads: `package.json` must be a JSON object,
/// `requirements.txt` UTF-8 text of requirement and option lines.
fn check_manifest(kind: DependencyKind, content: &[u8]) -> Result<(), StoreError> {
    match kind {
        DependencyKind::Npm => {
            let parsed: serde_json::Value = serde_json::from_slice(content).map_err(|e| {
                StoreError::invalid_code(format!("package.json is not valid JSON: {e}"))
            })?;
            if !parsed.is_object() {
                return Err(StoreError::invalid_code(
                    "package.json must hold a JSON object",
                ));
            }
        }
        DependencyKind::Pip => {
            let text = std::str::from_utf8(content)
                .map_err(|_| StoreError::invalid_code("requirements.txt is not UTF-8 text"))?;
            for (number, line) in text.lines().enumerate() {
                let line = line.split(" #").next().unwrap_or_default().trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('-') {
                    continue;
                }
                let starts_well = line
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/');
                if !starts_well || line.contains('\0') {
                    return Err(StoreError::invalid_code(format!(
                        "requirements.txt line {}: {line:?} is not a requirement (a package name, a URL, a path or an option)",
                        number + 1
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The registries a build's package clients are set up for, as (host, port): the clients'
/// defaults (PyPI and its file host, npm's registry) and every `index-url`, `extra-index-url`,
/// `find-links` and `registry` URL in the settings the build gets (`PIP_*` and
/// `npm_config_*` variables, pip.conf, .npmrc). Only URLs: a bare host (pip's
/// `trusted-host`) names no port, and no rule opens every port of a host.
fn registries(files: &[BuildFile], env: &[(String, String)]) -> Vec<(String, u16)> {
    const KEYS: [&str; 4] = ["index-url", "extra-index-url", "find-links", "registry"];
    let mut values: Vec<String> = [
        "https://pypi.org",
        "https://files.pythonhosted.org",
        "https://registry.npmjs.org",
    ]
    .map(str::to_owned)
    .to_vec();
    for (key, value) in env {
        let key = key.to_ascii_lowercase().replace('_', "-");
        if KEYS.iter().any(|k| key.ends_with(k)) {
            values.extend(value.split_whitespace().map(str::to_owned));
        }
    }
    for (_, content) in files {
        for line in String::from_utf8_lossy(content).lines() {
            let line = line.trim();
            if line.starts_with(['#', ';']) {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim().to_ascii_lowercase().replace('_', "-");
            if KEYS.iter().any(|k| key.ends_with(k)) {
                values.extend(value.split_whitespace().map(str::to_owned));
            }
        }
    }
    let mut origins: Vec<(String, u16)> = values.iter().filter_map(|v| origin(v)).collect();
    origins.sort();
    origins.dedup();
    origins
}

/// `http[s]://[user@]host[:port]/...` as (host, port); `None` for anything else.
fn origin(value: &str) -> Option<(String, u16)> {
    let (scheme, rest) = value.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (host_port, default_port),
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// What a build's network reaches: any public address, and each registry's addresses on its
/// port, resolved now through the host's resolver. These come from the operator's own
/// settings, so a registry at a private or loopback address (a mirror) is reachable too, on
/// that port only. A name that does not resolve is left out (and said in the build's log).
async fn registry_rules(registries: &[(String, u16)], log: &BuildLog) -> Vec<OutboundRule> {
    let mut rules = vec![OutboundRule::parse("*://*:*").expect("the any-public rule parses")];
    for (host, port) in registries {
        let addresses: Vec<std::net::Ipv4Addr> = match host.parse::<std::net::Ipv4Addr>() {
            Ok(address) => vec![address],
            Err(_) => {
                let lookup = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::lookup_host((host.as_str(), *port)),
                )
                .await;
                match lookup {
                    Ok(Ok(found)) => found
                        .filter_map(|a| match a.ip() {
                            std::net::IpAddr::V4(v4) => Some(v4),
                            std::net::IpAddr::V6(_) => None,
                        })
                        .collect(),
                    _ => {
                        log.line(&format!("(registry {host} does not resolve; left out)"));
                        Vec::new()
                    }
                }
            }
        };
        for address in addresses {
            if let Ok(rule) = OutboundRule::parse(&format!("*://{address}:{port}"))
                && !rules.contains(&rule)
            {
                rules.push(rule);
            }
        }
    }
    rules
}

/// A file placed in a build's sandbox: its path there and its content.
type BuildFile = (String, Vec<u8>);

/// The host's package-client configuration, as a build gets it: pip's and npm's settings in
/// the environment (`PIP_*`, `npm_config_*`), their configuration files placed where the
/// tools look inside the sandbox, and `gust up`'s overrides.
fn client_configuration(config: &BuilderConfig) -> (Vec<BuildFile>, Vec<(String, String)>) {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| {
            key.starts_with("PIP_")
                || key.to_ascii_lowercase().starts_with("npm_config_")
                || matches!(
                    key.as_str(),
                    "SSL_CERT_FILE" | "SSL_CERT_DIR" | "REQUESTS_CA_BUNDLE" | "NODE_EXTRA_CA_CERTS"
                )
        })
        .collect();
    if let Some(url) = &config.pip_index_url {
        env.retain(|(key, _)| key != "PIP_INDEX_URL" && key != "PIP_EXTRA_INDEX_URL");
        env.push(("PIP_INDEX_URL".to_owned(), url.clone()));
    }
    if let Some(registry) = &config.npm_registry {
        env.retain(|(key, _)| !key.eq_ignore_ascii_case("npm_config_registry"));
        env.push(("npm_config_registry".to_owned(), registry.clone()));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut files = Vec::new();
    let mut give = |host: PathBuf, inside: &str| {
        if let Ok(content) = std::fs::read(&host)
            && content.len() <= BUILD_FILE_MAX_BYTES
        {
            files.push((inside.to_owned(), content));
        }
    };
    give(PathBuf::from("/etc/pip.conf"), "/etc/pip.conf");
    if let Some(home) = &home {
        let user_pip = [
            home.join(".config/pip/pip.conf"),
            home.join(".pip/pip.conf"),
        ]
        .into_iter()
        .find(|p| p.is_file());
        if let Some(user_pip) = user_pip {
            give(user_pip, "/tmp/.config/pip/pip.conf");
        }
        give(home.join(".npmrc"), "/tmp/.npmrc");
    }
    (files, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_stream_is_read_to_its_end_so_tar_is_not_killed_by_sigpipe() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("module.py"), "x = 1\n").unwrap();
        let limits = CodeLimits {
            max_files: 10,
            max_total_bytes: 1 << 20,
        };
        let code = Arc::new(CodeStore::open(&dir.path().join("code"), limits).unwrap());
        // Records of 1 MiB: after the end-of-archive blocks comes far more padding than a
        // pipe holds, so tar is blocked writing it when the unpacker has seen the end.
        let mut tar = std::process::Command::new("tar")
            .args(["--blocking-factor=2048", "-cf", "-", "-C"])
            .arg(&source)
            .arg(".")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let output = OwnedFd::from(tar.stdout.take().unwrap());
        let (pin, bytes) = ingest_build_output(&code, output.into(), limits).unwrap();
        assert_eq!(bytes, 6);
        assert!(code.tree(pin.digest()).join("module.py").is_file());
        let status = tar.wait().unwrap();
        assert!(status.success(), "tar ended with {status}");
    }

    #[test]
    fn a_build_reaches_the_registries_its_clients_are_set_up_for() {
        let env = vec![
            (
                "PIP_INDEX_URL".to_owned(),
                "https://user:secret@pypi.internal.example:8443/simple/".to_owned(),
            ),
            ("PIP_FIND_LINKS".to_owned(), "/opt/wheels".to_owned()),
            ("PIP_TRUSTED_HOST".to_owned(), "10.1.2.3".to_owned()),
        ];
        let files = vec![(
            "/tmp/.npmrc".to_owned(),
            b"@corp:registry=http://127.0.0.1:4873/\n# registry=http://10.9.9.9/\nfund=false\n"
                .to_vec(),
        )];
        let found = registries(&files, &env);
        let expected: Vec<(String, u16)> = [
            ("127.0.0.1", 4873),
            ("files.pythonhosted.org", 443),
            ("pypi.internal.example", 8443),
            ("pypi.org", 443),
            ("registry.npmjs.org", 443),
        ]
        .iter()
        .map(|(h, p)| (h.to_string(), *p))
        .collect();
        // No bare trusted host (it names no port), no commented line, no local path.
        assert_eq!(found, expected);
    }
}
