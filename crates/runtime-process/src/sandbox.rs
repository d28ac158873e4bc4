//! How a worker process is confined. With bubblewrap the worker sees a mount view built from an
//! allow-list (system directories read-only, its own code, a private size-limited tmp), runs in
//! its own user, pid, ipc and uts namespaces, as an unprivileged uid even when Gust is root,
//! with a clean environment and no way to outlive Gust.
//!
//! A seccomp filter ([`SeccompProgram`]) refuses the system calls a function has no use for.
//! Each sandbox has a network namespace of its own, connected to the outside by
//! [`Uplinks`](crate::network::Uplinks) for functions whose policy allows it.
//!
//! The worker's connection point is a listening Unix socket that Gust binds in a directory of
//! its own and hands to the worker as an inherited descriptor (`GUST_LISTEN_FD`). Nothing the
//! worker can write is on the path Gust connects through, so a worker cannot redirect Gust's
//! later connections (a second lane, a health probe) to any other socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use gust_model::{USR_ALIASES, WorkerProtocol};
use tokio::process::Command;

use crate::RuntimeError;
use crate::network::{SANDBOX_RESOLV_CONF, Uplinks};
use crate::seccomp::SeccompProgram;
use crate::worker::WorkerCommand;

/// How much lower than Gust's own threads function code runs (a nice value): the same for
/// workers and for WebAssembly guests, so that neither tier starves the other.
pub const FUNCTION_NICENESS: i32 = 10;

/// The uid and gid workers run as when Gust runs as root (`nobody` on Debian).
const UNPRIVILEGED_ID: u32 = 65534;

/// System paths bound read-only when they exist; everything else on the host is absent.
const SYSTEM_PATHS: [&str; 9] = [
    "/usr",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
];
/// Where things are as the worker sees them.
pub const WORKER_CODE_DIR: &str = "/code";
/// The hostname inside every sandbox; also how a leftover worker is recognised.
pub const WORKER_HOSTNAME: &str = "gust-worker";
const WORKER_ENV_DIR: &str = "/gust-env";
/// Where Fission's environment servers find a function's code.
const FISSION_USERFUNC_DIR: &str = "/userfunc";
const FISSION_CODE_DIR: &str = "/userfunc/deployarchive";
const FISSION_V1_CODE: &str = "/code/user";
/// The descriptor number of the worker's listening socket, in the worker (`GUST_LISTEN_FD`).
pub const LISTEN_FD: i32 = 3;
// Descriptor numbers the bind sources get in bwrap; above anything a fresh process holds.
const CODE_FD: i32 = 200;
const ENV_FD: i32 = 202;
const SECCOMP_FD: i32 = 203;
const INFO_FD: i32 = 204;
const RESOLV_FD: i32 = 205;
const SECRETS_FD: i32 = 206;
const CONFIGS_FD: i32 = 207;
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Size of a worker's private `/tmp`. A backstop only: its pages are charged to the worker's
/// memory cgroup, so the function's memory limit is what bounds it where cgroups exist.
const TMP_SIZE_BYTES: u64 = 1024 * 1024 * 1024;
/// Where sources are parked while being moved to the numbers above.
const LIFTED_FD_FLOOR: i32 = 1024;

#[derive(Debug, Clone)]
pub enum Sandbox {
    Bubblewrap {
        bwrap: PathBuf,
        seccomp: Arc<SeccompProgram>,
        /// How sandboxes get a way out; `None` (slirp4netns missing): loopback only.
        uplinks: Option<Uplinks>,
    },
    /// `--no-sandbox`: workers run as Gust's own user and see the whole host.
    Disabled,
}

/// A worker's host directory, writable by Gust alone: `code/` receives the function's files at
/// specialization (mounted read-only), `worker.sock` is the listening socket Gust bound for it.
/// Its mounted values (secrets, configs) are in a directory of their own in memory-backed
/// storage, never on disk: `secrets/` and `configs/` there are the worker's `/secrets` and
/// `/configs`, read-only.
pub struct WorkerPaths {
    pub code_dir: PathBuf,
    pub socket: PathBuf,
    pub values_dir: Option<PathBuf>,
}

impl WorkerPaths {
    pub fn new(worker_dir: &Path) -> Self {
        Self {
            code_dir: worker_dir.join("code"),
            socket: worker_dir.join("worker.sock"),
            values_dir: None,
        }
    }

    /// With its mounted values in `values_dir` (a fresh directory of an unguessable name).
    pub fn with_values(mut self, values_dir: PathBuf) -> Self {
        self.values_dir = Some(values_dir);
        self
    }
}

/// Where the worker finds its secrets and configs, by kind (Fission's paths).
pub const WORKER_SECRETS_DIR: &str = "/secrets";
pub const WORKER_CONFIGS_DIR: &str = "/configs";

/// What a worker's sandbox is given at start: open directories to mount and its listening
/// socket. Dropped by the caller once the worker is spawned, so that the worker holds the
/// only copy of the listener and a dead worker refuses connections at once.
pub struct BindSources<'a> {
    pub paths: &'a WorkerPaths,
    code: File,
    listener: UnixListener,
    env_dir: Option<(PathBuf, File)>,
    /// The worker's `secrets/` and `configs/` directories.
    values: Option<(File, File)>,
    /// The seccomp program for bwrap to read (sandboxed workers only).
    seccomp: Option<File>,
    /// Where bwrap says its sandbox's pid, for connecting the sandbox's network.
    info: Option<(std::io::PipeReader, std::io::PipeWriter)>,
    /// The resolver configuration of a connected sandbox, for bwrap to read.
    resolv_conf: Option<std::io::PipeReader>,
}

impl<'a> BindSources<'a> {
    /// Opens the directories and binds the worker's listening socket at `paths.socket`.
    /// `listens_on_port`: the worker is reached in its network namespace, so bwrap must say
    /// its sandbox's pid.
    pub fn open(
        paths: &'a WorkerPaths,
        env_dir: Option<&Path>,
        sandbox: &Sandbox,
        listens_on_port: bool,
    ) -> Result<Self, RuntimeError> {
        let open = |path: &Path| File::open(path).map_err(RuntimeError::io(path));
        let listener =
            UnixListener::bind(&paths.socket).map_err(RuntimeError::io(&paths.socket))?;
        // Only Gust connects to it; no other local user may talk to a worker.
        std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(RuntimeError::io(&paths.socket))?;
        Ok(Self {
            paths,
            code: open(&paths.code_dir)?,
            values: paths
                .values_dir
                .as_ref()
                .map(|dir| {
                    Ok::<_, RuntimeError>((
                        open(&dir.join("secrets"))?,
                        open(&dir.join("configs"))?,
                    ))
                })
                .transpose()?,
            listener,
            env_dir: env_dir
                .map(|dir| Ok::<_, RuntimeError>((dir.to_owned(), open(dir)?)))
                .transpose()?,
            seccomp: match sandbox {
                Sandbox::Bubblewrap { seccomp, .. } => Some(
                    seccomp
                        .file()
                        .map_err(RuntimeError::io("seccomp program (memfd)"))?,
                ),
                Sandbox::Disabled => None,
            },
            info: match sandbox {
                Sandbox::Bubblewrap { uplinks, .. } if uplinks.is_some() || listens_on_port => {
                    Some(std::io::pipe().map_err(RuntimeError::io("bwrap info pipe"))?)
                }
                _ => None,
            },
            resolv_conf: match sandbox {
                Sandbox::Bubblewrap {
                    uplinks: Some(_), ..
                } => {
                    let (reader, mut writer) =
                        std::io::pipe().map_err(RuntimeError::io("resolv.conf pipe"))?;
                    std::io::Write::write_all(&mut writer, SANDBOX_RESOLV_CONF.as_bytes())
                        .map_err(RuntimeError::io("resolv.conf pipe"))?;
                    Some(reader)
                }
                _ => None,
            },
        })
    }

    /// Where bwrap will say its sandbox's pid (once spawned); `None` when the sandbox's
    /// network is not to be connected.
    pub fn take_info(&mut self) -> Option<std::io::PipeReader> {
        self.info.take().map(|(reader, _writer)| reader)
    }
}

impl Sandbox {
    /// Finds bubblewrap and checks that it can create namespaces here.
    pub async fn detect() -> Result<Self, RuntimeError> {
        let bwrap = ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| RuntimeError::SandboxUnavailable {
                reason: "bubblewrap (bwrap) is not installed; install the `bubblewrap` package"
                    .into(),
            })?;
        let sandbox = Sandbox::Bubblewrap {
            bwrap,
            seccomp: Arc::new(SeccompProgram::compile()?),
            uplinks: Uplinks::detect(),
        };
        let probe_dir = probe_dir()?;
        let paths = WorkerPaths::new(probe_dir.path());
        prepare_dirs(&paths)?;
        let binds = BindSources::open(&paths, None, &sandbox, false)?;
        let probe = WorkerCommand {
            environment: "probe".to_owned(),
            program: vec!["/usr/bin/true".to_owned()],
            env_dir: None,
            extra_ro: Vec::new(),
            heap_sized_for: None,
            port: None,
            protocol: WorkerProtocol::Gust,
        };
        let output = sandbox
            .command(&binds, &probe, &[])
            .output()
            .await
            .map_err(|e| RuntimeError::SandboxUnavailable {
                reason: format!("cannot run bwrap: {e}"),
            })?;
        if !output.status.success() {
            return Err(RuntimeError::SandboxUnavailable {
                reason: format!(
                    "bwrap cannot create namespaces here: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(sandbox)
    }

    /// What the network policies can mean here, for the start-up summary.
    pub fn network_summary(&self) -> &'static str {
        match self {
            Sandbox::Bubblewrap {
                uplinks: Some(_), ..
            } => "a namespace per worker; outbound: public addresses via slirp4netns",
            Sandbox::Bubblewrap { uplinks: None, .. } => {
                "a namespace per worker, loopback only (install slirp4netns, iproute2, nftables and procps for outbound)"
            }
            Sandbox::Disabled => "the host's (no sandbox): --network is not enforced",
        }
    }

    /// The function's code as the worker sees it: Fission's servers find it under
    /// `/userfunc`.
    pub fn code_path(&self, paths: &WorkerPaths, protocol: WorkerProtocol) -> PathBuf {
        match self {
            Sandbox::Bubblewrap { .. } if protocol.is_fission() => PathBuf::from(FISSION_CODE_DIR),
            Sandbox::Bubblewrap { .. } => PathBuf::from(WORKER_CODE_DIR),
            Sandbox::Disabled => paths.code_dir.clone(),
        }
    }

    /// The command that starts `program` confined, with `binds` open for the child to mount.
    /// `{env}` in the program's arguments names the built-in environment's server directory.
    /// `cgroups` are open `cgroup.procs` files the child joins before anything else. The
    /// caller keeps `binds` and `cgroups` alive until the command has been spawned.
    pub fn command(
        &self,
        binds: &BindSources,
        worker: &WorkerCommand,
        cgroups: &[std::fs::File],
    ) -> Command {
        let (program, extra_ro) = (&worker.program, &worker.extra_ro);
        // A worker that listens on a port finds it here, under Gust's name and Fission's.
        let port_env: Vec<(&str, String)> = worker
            .port
            .map(|port| {
                vec![
                    ("GUST_PORT", port.to_string()),
                    ("RUNTIME_PORT", port.to_string()),
                ]
            })
            .unwrap_or_default();
        let cgroup_fds: Vec<RawFd> = cgroups.iter().map(|f| f.as_raw_fd()).collect();
        let mut command = match self {
            Sandbox::Disabled => {
                let env_dir = binds
                    .env_dir
                    .as_ref()
                    .map(|(path, _)| path.to_string_lossy().into_owned());
                let program: Vec<String> = program
                    .iter()
                    .map(|arg| arg.replace("{env}", env_dir.as_deref().unwrap_or("")))
                    .collect();
                let mut command = Command::new(&program[0]);
                join_cgroups_first(&mut command, cgroup_fds);
                let code_dir = &binds.paths.code_dir;
                command
                    .args(&program[1..])
                    .env_clear()
                    .current_dir(code_dir);
                for (key, value) in base_env().into_iter().chain(port_env) {
                    command.env(key, value);
                }
                place_descriptors(&mut command, vec![(binds.listener.as_raw_fd(), LISTEN_FD)]);
                command
            }
            Sandbox::Bubblewrap { bwrap, .. } => {
                let mut args = confined_view(binds.resolv_conf.is_some());
                let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
                // The only writable places: /tmp and /dev/shm, both memory-backed (charged to
                // the worker's memory cgroup) and size-limited. The root and /dev, tmpfs
                // mounts bwrap builds the view on, are made read-only below.
                let tmp_size = TMP_SIZE_BYTES.to_string();
                push(&["--proc", "/proc", "--dev", "/dev"]);
                push(&["--size", &tmp_size, "--tmpfs", "/dev/shm"]);
                push(&["--size", &tmp_size, "--tmpfs", "/tmp"]);
                // Directories go in as open descriptors: the unprivileged uid bwrap runs as
                // could not even traverse Gust's private data directory by path.
                push(&["--ro-bind-fd", &CODE_FD.to_string(), WORKER_CODE_DIR]);
                if worker.protocol.is_fission() {
                    // Fission's layout: a writable /userfunc (its Node.js server links its
                    // node_modules there) with the code at /userfunc/deployarchive and, for
                    // its first protocol, the one file at /userfunc/user.
                    push(&["--size", &tmp_size, "--tmpfs", FISSION_USERFUNC_DIR]);
                    push(&["--symlink", WORKER_CODE_DIR, FISSION_CODE_DIR]);
                    push(&[
                        "--symlink",
                        FISSION_V1_CODE,
                        &format!("{FISSION_USERFUNC_DIR}/user"),
                    ]);
                }
                if binds.env_dir.is_some() {
                    push(&["--ro-bind-fd", &ENV_FD.to_string(), WORKER_ENV_DIR]);
                }
                if binds.values.is_some() {
                    push(&["--ro-bind-fd", &SECRETS_FD.to_string(), WORKER_SECRETS_DIR]);
                    push(&["--ro-bind-fd", &CONFIGS_FD.to_string(), WORKER_CONFIGS_DIR]);
                }
                for (host, inside) in extra_ro {
                    let (host, inside) = (host.to_string_lossy(), inside.to_string_lossy());
                    push(&["--ro-bind", &host, &inside]);
                }
                push(&["--remount-ro", "/dev", "--remount-ro", "/"]);
                if binds.seccomp.is_some() {
                    push(&["--seccomp", &SECCOMP_FD.to_string()]);
                }
                if binds.info.is_some() {
                    push(&["--info-fd", &INFO_FD.to_string()]);
                }
                push(&["--chdir", "/tmp", "--clearenv"]);
                for (key, value) in base_env().into_iter().chain(port_env) {
                    push(&["--setenv", key, &value]);
                }
                push(&["--"]);
                args.extend(
                    program
                        .iter()
                        .map(|arg| OsString::from(arg.replace("{env}", WORKER_ENV_DIR))),
                );
                let mut command = bwrap_command(bwrap, args, cgroup_fds);
                let fds = [
                    Some((binds.code.as_raw_fd(), CODE_FD)),
                    Some((binds.listener.as_raw_fd(), LISTEN_FD)),
                    binds
                        .env_dir
                        .as_ref()
                        .map(|(_, fd)| (fd.as_raw_fd(), ENV_FD)),
                    binds.seccomp.as_ref().map(|f| (f.as_raw_fd(), SECCOMP_FD)),
                    binds
                        .info
                        .as_ref()
                        .map(|(_, writer)| (writer.as_raw_fd(), INFO_FD)),
                    binds
                        .resolv_conf
                        .as_ref()
                        .map(|reader| (reader.as_raw_fd(), RESOLV_FD)),
                    binds
                        .values
                        .as_ref()
                        .map(|(secrets, _)| (secrets.as_raw_fd(), SECRETS_FD)),
                    binds
                        .values
                        .as_ref()
                        .map(|(_, configs)| (configs.as_raw_fd(), CONFIGS_FD)),
                ];
                place_descriptors(&mut command, fds.into_iter().flatten().collect());
                command
            }
        };
        tie_to_gust(&mut command);
        command
    }
}

/// Where a build's sources and output are, as the build sees them (`SRC_PKG`, `DEPLOY_PKG`
/// in Fission's names).
pub const BUILD_SOURCE_DIR: &str = "/src";
pub const BUILD_OUTPUT_DIR: &str = "/deploy";
/// Descriptor numbers of a build's bind sources.
const BUILD_SOURCE_FD: i32 = 210;
const BUILD_FILES_FD: i32 = 211;
/// The build starts once a byte arrives here (after its network is connected).
const BUILD_BLOCK_FD: i32 = 206;
/// The most bytes one file given to a build may have (it passes through a pipe).
pub const BUILD_FILE_MAX_BYTES: usize = 48 * 1024;

/// What a dependency build is given: its sources read-only, files placed for it (package
/// clients' configuration), its environment, and the size of its writable places.
pub struct BuildBinds {
    source_path: PathBuf,
    source: File,
    files: Vec<(String, std::io::PipeReader)>,
    env: Vec<(String, String)>,
    /// Host paths bound read-only at the same place (a custom environment's `--mount`s).
    mounts: Vec<PathBuf>,
    scratch_bytes: u64,
    seccomp: Option<File>,
    /// With a way out (slirp4netns present): where bwrap says the sandbox's pid, what holds
    /// the build until its network is connected, and the resolver configuration.
    network: Option<BuildNetwork>,
}

struct BuildNetwork {
    info: (std::io::PipeReader, std::io::PipeWriter),
    block: (std::io::PipeReader, std::io::PipeWriter),
    resolv_conf: std::io::PipeReader,
    uplinks: Uplinks,
}

/// A build's connection to the outside; the link goes when this is dropped.
pub struct BuildUplink(#[allow(dead_code)] crate::network::Uplink);

impl BuildBinds {
    /// `files` are `(path inside, content)`; each at most [`BUILD_FILE_MAX_BYTES`].
    pub fn open(
        sandbox: &Sandbox,
        source: &Path,
        files: Vec<(String, Vec<u8>)>,
        env: Vec<(String, String)>,
        mounts: Vec<PathBuf>,
        scratch_bytes: u64,
    ) -> Result<Self, RuntimeError> {
        let mut readers = Vec::new();
        for (inside, content) in files {
            if content.len() > BUILD_FILE_MAX_BYTES {
                return Err(RuntimeError::io(&inside)(std::io::Error::other(
                    "too large to give to a build",
                )));
            }
            let (reader, mut writer) =
                std::io::pipe().map_err(RuntimeError::io("build file pipe"))?;
            std::io::Write::write_all(&mut writer, &content)
                .map_err(RuntimeError::io("build file pipe"))?;
            readers.push((inside, reader));
        }
        Ok(Self {
            source_path: source.to_owned(),
            source: File::open(source).map_err(RuntimeError::io(source))?,
            files: readers,
            env,
            mounts,
            scratch_bytes,
            network: match sandbox {
                Sandbox::Bubblewrap {
                    uplinks: Some(uplinks),
                    ..
                } => {
                    let pipe = || std::io::pipe().map_err(RuntimeError::io("build network pipe"));
                    let (resolv_conf, mut writer) = pipe()?;
                    std::io::Write::write_all(&mut writer, SANDBOX_RESOLV_CONF.as_bytes())
                        .map_err(RuntimeError::io("resolv.conf pipe"))?;
                    Some(BuildNetwork {
                        info: pipe()?,
                        block: pipe()?,
                        resolv_conf,
                        uplinks: uplinks.clone(),
                    })
                }
                _ => None,
            },
            seccomp: match sandbox {
                Sandbox::Bubblewrap { seccomp, .. } => Some(
                    seccomp
                        .file()
                        .map_err(RuntimeError::io("seccomp program (memfd)"))?,
                ),
                Sandbox::Disabled => None,
            },
        })
    }
}

impl Sandbox {
    /// The command that runs a dependency build: `sh -c script` with its sources read-only at
    /// `$SRC_PKG` and an empty, size-limited `$DEPLOY_PKG` (and `/tmp`), as the unprivileged
    /// uid, in its own user, pid, ipc, uts and network namespaces, under the workers' seccomp
    /// filter. Its network is connected by [`BuildBinds::connect`] after spawning; the script
    /// starts only then (without slirp4netns the build has only its loopback). Without a
    /// sandbox `$DEPLOY_PKG` is `output_dir` and `$HOME` and `$TMPDIR` are `scratch_dir`. The
    /// caller keeps `binds` and `cgroups` alive until the command has been spawned.
    pub fn build_command(
        &self,
        binds: &BuildBinds,
        script: &str,
        (output_dir, scratch_dir): (&Path, &Path),
        cgroups: &[File],
    ) -> Command {
        let cgroup_fds: Vec<RawFd> = cgroups.iter().map(|f| f.as_raw_fd()).collect();
        let mut command = match self {
            Sandbox::Disabled => {
                let mut command = Command::new("/bin/sh");
                join_cgroups_first(&mut command, cgroup_fds);
                command
                    .args(["-c", script])
                    .env_clear()
                    .current_dir(output_dir)
                    .envs(build_env(&binds.env))
                    .env("SRC_PKG", &binds.source_path)
                    .env("DEPLOY_PKG", output_dir)
                    .env("HOME", scratch_dir)
                    .env("TMPDIR", scratch_dir)
                    .process_group(0);
                command
            }
            Sandbox::Bubblewrap { bwrap, .. } => {
                let mut args = confined_view(binds.network.is_some());
                let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
                if binds.network.is_some() {
                    push(&["--info-fd", &INFO_FD.to_string()]);
                    push(&["--block-fd", &BUILD_BLOCK_FD.to_string()]);
                }
                let scratch = binds.scratch_bytes.to_string();
                push(&["--proc", "/proc", "--dev", "/dev"]);
                push(&["--size", &scratch, "--tmpfs", "/tmp"]);
                push(&["--size", &scratch, "--tmpfs", BUILD_OUTPUT_DIR]);
                push(&[
                    "--ro-bind-fd",
                    &BUILD_SOURCE_FD.to_string(),
                    BUILD_SOURCE_DIR,
                ]);
                for mount in &binds.mounts {
                    let mount = mount.to_string_lossy();
                    push(&["--ro-bind", &mount, &mount]);
                }
                for (index, (inside, _)) in binds.files.iter().enumerate() {
                    let fd = BUILD_FILES_FD + index as i32;
                    push(&["--ro-bind-data", &fd.to_string(), inside]);
                }
                push(&["--remount-ro", "/dev", "--remount-ro", "/"]);
                if binds.seccomp.is_some() {
                    push(&["--seccomp", &SECCOMP_FD.to_string()]);
                }
                push(&["--chdir", BUILD_OUTPUT_DIR, "--clearenv"]);
                for (key, value) in build_env(&binds.env) {
                    push(&["--setenv", &key, &value]);
                }
                push(&["--setenv", "SRC_PKG", BUILD_SOURCE_DIR]);
                push(&["--setenv", "DEPLOY_PKG", BUILD_OUTPUT_DIR]);
                push(&["--setenv", "HOME", "/tmp"]);
                push(&["--", "/bin/sh", "-c", script]);
                let mut command = bwrap_command(bwrap, args, cgroup_fds);
                let mut fds = vec![(binds.source.as_raw_fd(), BUILD_SOURCE_FD)];
                fds.extend(binds.files.iter().enumerate().map(|(index, (_, reader))| {
                    (reader.as_raw_fd(), BUILD_FILES_FD + index as i32)
                }));
                if let Some(seccomp) = &binds.seccomp {
                    fds.push((seccomp.as_raw_fd(), SECCOMP_FD));
                }
                if let Some(network) = &binds.network {
                    fds.push((network.info.1.as_raw_fd(), INFO_FD));
                    fds.push((network.block.0.as_raw_fd(), BUILD_BLOCK_FD));
                    fds.push((network.resolv_conf.as_raw_fd(), RESOLV_FD));
                }
                place_descriptors(&mut command, fds);
                command
            }
        };
        tie_to_gust(&mut command);
        command
    }
}

impl BuildBinds {
    /// Once the build's sandbox is spawned: connects its network namespace (public addresses
    /// and the origins in `allow`, as a worker's allow-list would: a listed private or
    /// loopback address becomes reachable), then lets the build start. `None` without a way
    /// out (no slirp4netns, or no sandbox). Dropping the binds before this leaves the build
    /// blocked until it is killed.
    pub async fn connect(
        &mut self,
        allow: &[gust_model::OutboundRule],
    ) -> Result<Option<BuildUplink>, String> {
        let Some(network) = self.network.take() else {
            return Ok(None);
        };
        let BuildNetwork {
            info,
            block,
            uplinks,
            ..
        } = network;
        drop(info.1);
        let pid = crate::network::sandbox_pid(info.0).await?;
        let uplink = uplinks.connect(pid).await?.confine(allow).await?;
        let (_, mut go) = block;
        std::io::Write::write_all(&mut go, b"1")
            .map_err(|e| format!("cannot start the build: {e}"))?;
        Ok(Some(BuildUplink(uplink)))
    }
}

/// A build's environment: the workers' basics and what the build adds (its package clients'
/// settings).
fn build_env(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("TMPDIR".to_owned(), "/tmp".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

/// bwrap with `args`, joining the cgroups of `cgroup_fds` first, in a clean environment, as
/// the unprivileged uid when Gust is root.
fn bwrap_command(bwrap: &Path, args: Vec<OsString>, cgroup_fds: Vec<RawFd>) -> Command {
    let mut command = Command::new(bwrap);
    join_cgroups_first(&mut command, cgroup_fds);
    // Its own process group: killing the group also takes a sandbox child that has not armed
    // its parent-death signal yet (see `Worker::kill`).
    command
        .args(args)
        .env_clear()
        .current_dir("/")
        .process_group(0);
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        // Root inside a user namespace still owns root's files on the host; an unprivileged
        // uid does not. std drops supplementary groups with it.
        command.uid(UNPRIVILEGED_ID).gid(UNPRIVILEGED_ID);
    }
    command
}

/// What every sandbox starts from: its own user, pid, ipc, uts, cgroup and network
/// namespaces, no user namespaces inside, and a view of the system directories read-only
/// (with `resolv_conf_from_fd`, `/etc/resolv.conf` comes from [`RESOLV_FD`]).
fn confined_view(resolv_conf_from_fd: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&[
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--unshare-net",
        // Sandboxed code has no use for user namespaces of its own, and each one reopens
        // kernel attack surface the sandbox closed.
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        WORKER_HOSTNAME,
    ]);
    for path in SYSTEM_PATHS {
        // A connected sandbox asks slirp4netns's resolver, not the host's (which may sit on
        // the host's loopback, out of the sandbox's reach).
        if path == RESOLV_CONF && resolv_conf_from_fd {
            push(&["--ro-bind-data", &RESOLV_FD.to_string(), RESOLV_CONF]);
            continue;
        }
        push(&["--ro-bind-try", path, path]);
    }
    for alias in USR_ALIASES {
        match std::fs::read_link(alias) {
            Ok(target) => {
                let target = target.to_string_lossy().into_owned();
                push(&["--symlink", &target, alias]);
            }
            Err(_) => push(&["--ro-bind-try", alias, alias]),
        }
    }
    args
}

/// Registers, for the child: killed when Gust dies, yielding the CPU to Gust's own threads,
/// and never started as an orphan.
fn tie_to_gust(command: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let gust = unsafe { libc::getpid() };
    // SAFETY: prctl, setpriority and getppid are async-signal-safe and touch only this
    // (child) process.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Function code yields the CPU to Gust's own threads (routing, timeouts, the
            // API) when both want it; the sandbox and all it starts inherit this.
            if libc::setpriority(libc::PRIO_PROCESS, 0, FUNCTION_NICENESS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Gust may have died between the fork and the line above, and then the signal
            // never comes: do not start an orphan.
            if libc::getppid() != gust {
                return Err(std::io::Error::other(
                    "gust exited while starting the sandbox",
                ));
            }
            Ok(())
        });
    }
}

/// The whole environment a worker starts with; the function's own variables come with
/// specialization.
fn base_env() -> Vec<(&'static str, String)> {
    vec![
        ("GUST_LISTEN_FD", LISTEN_FD.to_string()),
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", "/tmp".to_owned()),
        ("TMPDIR", "/tmp".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("PYTHONUNBUFFERED", "1".to_owned()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
    ]
}

pub fn prepare_dirs(paths: &WorkerPaths) -> Result<(), RuntimeError> {
    if let Some(worker_dir) = paths.code_dir.parent() {
        std::fs::create_dir_all(worker_dir).map_err(RuntimeError::io(worker_dir))?;
        std::fs::set_permissions(worker_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(RuntimeError::io(worker_dir))?;
    }
    let dir = &paths.code_dir;
    std::fs::create_dir_all(dir).map_err(RuntimeError::io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(RuntimeError::io(dir))?;
    if let Some(values) = &paths.values_dir {
        // Traversable, not listable: its name is what keeps other local users out.
        std::fs::create_dir(values).map_err(RuntimeError::io(values))?;
        std::fs::set_permissions(values, std::fs::Permissions::from_mode(0o711))
            .map_err(RuntimeError::io(values))?;
        for kind in ["secrets", "configs"] {
            let dir = values.join(kind);
            std::fs::create_dir(&dir).map_err(RuntimeError::io(&dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(RuntimeError::io(&dir))?;
        }
    }
    Ok(())
}

/// A fresh directory for the startup probe, traversable by the workers' uid.
fn probe_dir() -> Result<tempfile::TempDir, RuntimeError> {
    let dir = tempfile::Builder::new()
        .prefix("gust-probe-")
        .tempdir()
        .map_err(RuntimeError::io(std::env::temp_dir()))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(RuntimeError::io(dir.path()))?;
    Ok(dir)
}

/// Registers, as the child's first step before exec, joining the cgroups whose `cgroup.procs`
/// files are open as `fds` (writing `0` moves the writer). Registered before any step that
/// renumbers descriptors.
fn join_cgroups_first(command: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: write is async-signal-safe; the descriptors stay open in the parent until spawn
    // returns.
    unsafe {
        command.pre_exec(move || {
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Registers moving each `(from, to)` descriptor to number `to` in the child, inheritable
/// (bwrap's `--*-fd` sources, the worker's listening socket).
fn place_descriptors(command: &mut Command, fds: Vec<(RawFd, i32)>) {
    const MOST: usize = 9;
    assert!(
        fds.len() <= MOST,
        "a worker is given at most {MOST} descriptors"
    );
    // SAFETY: only async-signal-safe calls on descriptors the parent keeps open until spawn
    // returns; the vector is allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // A source may already sit on another's target number (a busy Gust has hundreds
            // of descriptors), so first lift every source above all targets, then place them.
            let mut lifted = [(-1, -1); MOST];
            for (slot, &(from, to)) in lifted.iter_mut().zip(fds.iter()) {
                let high = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, LIFTED_FD_FLOOR);
                if high < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *slot = (high, to);
            }
            for (high, to) in lifted.into_iter().filter(|(high, _)| *high >= 0) {
                // dup2 leaves the target without close-on-exec: the child inherits it.
                if libc::dup2(high, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high);
            }
            Ok(())
        });
    }
}
