use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ModelError, Name};

/// Default number of pre-warmed generic workers an environment keeps ready.
pub const DEFAULT_POOL_SIZE: u32 = 3;
const MAX_POOL_SIZE: u32 = 64;
const MAX_MOUNTS: usize = 16;
/// Top-level directories that are symlinks into `/usr` on merged-usr systems, or real
/// directories on older ones; a sandbox shows them as the host has them.
pub const USR_ALIASES: [&str; 4] = ["/bin", "/sbin", "/lib", "/lib64"];
/// Host paths no environment may mount: the kernel's and the devices' views, and `/run`, where
/// daemons keep their sockets (and Gust its workers' directories).
const UNMOUNTABLE: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];

/// The language runtimes that ship with Gust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinRuntime {
    Python,
    Node,
    /// `wasi:http/proxy` components, run in-process by wasmtime.
    Wasm,
}

impl BuiltinRuntime {
    pub const ALL: [BuiltinRuntime; 3] = [
        BuiltinRuntime::Python,
        BuiltinRuntime::Node,
        BuiltinRuntime::Wasm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinRuntime::Python => "python",
            BuiltinRuntime::Node => "node",
            BuiltinRuntime::Wasm => "wasm",
        }
    }
}

/// Which runtime tier runs an environment's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Worker processes speaking the worker protocol.
    Process,
    /// WebAssembly components in the Gust process.
    Wasm,
}

/// How an environment's workers are started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EnvironmentKind {
    /// A worker server shipped with Gust.
    Builtin { runtime: BuiltinRuntime },
    /// Any executable that speaks the worker protocol: program and arguments, and the host
    /// directories (or files) its workers see read-only besides the system ones.
    Custom {
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schema(value_type = Vec<String>)]
        mounts: Vec<PathBuf>,
        /// Program and arguments that build every upload (`--build-cmd`), with Fission's
        /// `SRC_PKG` (the sources) and `DEPLOY_PKG` (where the package goes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_command: Option<Vec<String>>,
        /// The loopback TCP port its workers listen on (`--port`), each in its own network
        /// namespace, instead of the socket Gust hands them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// The protocol its workers speak (`--protocol`).
        #[serde(default, skip_serializing_if = "WorkerProtocol::is_gust")]
        protocol: WorkerProtocol,
    },
}

/// How Gust talks to an environment's workers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerProtocol {
    /// Gust's worker protocol (docs/worker-protocol.md).
    #[default]
    Gust,
    /// Fission's environment servers: `POST /v2/specialize` with `filepath` and
    /// `functionName` under `/userfunc`, and every request sent to `/`.
    Fission,
    /// Fission's first protocol: `POST /specialize` with the code at `/userfunc/user`.
    FissionV1,
}

impl WorkerProtocol {
    pub fn is_gust(&self) -> bool {
        *self == WorkerProtocol::Gust
    }

    pub fn is_fission(&self) -> bool {
        !self.is_gust()
    }

    pub fn parse(value: &str) -> Result<Self, ModelError> {
        match value {
            "gust" => Ok(Self::Gust),
            "fission" | "fission-v2" => Ok(Self::Fission),
            "fission-v1" => Ok(Self::FissionV1),
            other => Err(ModelError::OutOfRange {
                field: "protocol",
                reason: format!("{other:?} is not gust, fission or fission-v1"),
            }),
        }
    }
}

/// The port Fission's environment servers listen on.
pub const FISSION_PORT: u16 = 8888;

/// A validated environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Environment {
    pub name: Name,
    pub kind: EnvironmentKind,
    /// Generic workers kept started ahead of need.
    pub pool_size: u32,
}

impl Environment {
    pub fn tier(&self) -> Tier {
        match self.kind {
            EnvironmentKind::Builtin {
                runtime: BuiltinRuntime::Wasm,
            } => Tier::Wasm,
            _ => Tier::Process,
        }
    }

    pub fn builtin(runtime: BuiltinRuntime, pool_size: u32) -> Self {
        Self {
            name: Name::parse("environment", runtime.name())
                .expect("built-in runtime names are valid names"),
            kind: EnvironmentKind::Builtin { runtime },
            pool_size,
        }
    }
}

/// What a user writes to create a custom environment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// In `gust.yaml`, the entry's key instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Program and arguments as one shell-quoted string, e.g. `"/usr/bin/python3 /opt/srv.py"`.
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    /// Host paths the workers see read-only at the same place (`--mount`), for the program's
    /// own files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// A command that builds each upload into the package the workers load, as a Fission
    /// builder does: it reads `$SRC_PKG` and writes `$DEPLOY_PKG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_cmd: Option<String>,
    /// The loopback TCP port the workers listen on, each in its own network namespace, as
    /// Fission's environment servers do (8888 for the `fission` protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `gust` (default), `fission` (Fission's environment servers, `/v2/specialize`) or
    /// `fission-v1` (`/specialize`, the code at `/userfunc/user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Splits a command line and checks that its program is an absolute path the sandbox shows
/// (under `/usr` and its aliases, or under one of `mounts`).
fn sandboxed_command(line: &str, mounts: &[PathBuf]) -> Result<Vec<String>, ModelError> {
    let command = shlex::split(line).ok_or_else(|| ModelError::InvalidCommand {
        reason: format!("unbalanced quotes in {line:?}"),
    })?;
    let Some(program) = command.first() else {
        return Err(ModelError::InvalidCommand {
            reason: "the command is empty".to_owned(),
        });
    };
    if !program.starts_with('/') {
        return Err(ModelError::InvalidCommand {
            reason: format!(
                "the program {program:?} must be an absolute path (workers start with an empty PATH)"
            ),
        });
    }
    // Where a sandbox already sees the host's files (read-only): `/usr` and its aliases.
    let visible = std::iter::once("/usr")
        .chain(USR_ALIASES)
        .map(Path::new)
        .chain(mounts.iter().map(PathBuf::as_path))
        .any(|dir| Path::new(program).starts_with(dir));
    if !visible {
        let dir = Path::new(program)
            .parent()
            .map_or_else(|| program.clone(), |d| d.display().to_string());
        return Err(ModelError::InvalidCommand {
            reason: format!(
                "the program {program:?} is not visible in the sandbox: mount its directory with --mount {dir}"
            ),
        });
    }
    Ok(command)
}

/// Checks a `--mount` path: absolute, plain (no `.` or `..`), not `/` and not under a path no
/// environment may mount.
pub fn validate_mount(path: &str) -> Result<PathBuf, ModelError> {
    let invalid = |reason: &str| ModelError::InvalidCommand {
        reason: format!("cannot mount {path:?}: {reason}"),
    };
    let mount = Path::new(path);
    if !mount.is_absolute() {
        return Err(invalid("give an absolute path"));
    }
    if mount
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
    {
        return Err(invalid("give a path without . or .."));
    }
    let mount: PathBuf = mount.components().collect();
    if mount == Path::new("/") {
        return Err(invalid("the whole host is not mountable"));
    }
    if let Some(refused) = UNMOUNTABLE.iter().find(|dir| mount.starts_with(dir)) {
        return Err(invalid(&format!("nothing under {refused} is mountable")));
    }
    Ok(mount)
}

impl EnvironmentConfig {
    pub fn validate(&self) -> Result<Environment, ModelError> {
        let name = Name::parse("environment", &self.name)?;
        if self.mounts.len() > MAX_MOUNTS {
            return Err(ModelError::OutOfRange {
                field: "mounts",
                reason: format!("more than {MAX_MOUNTS}"),
            });
        }
        let mounts = self
            .mounts
            .iter()
            .map(|m| validate_mount(m))
            .collect::<Result<Vec<_>, _>>()?;
        let command = sandboxed_command(&self.command, &mounts)?;
        let build_command = self
            .build_cmd
            .as_deref()
            .map(|cmd| sandboxed_command(cmd, &mounts))
            .transpose()
            .map_err(|err| match err {
                ModelError::InvalidCommand { reason } => ModelError::InvalidCommand {
                    reason: format!("--build-cmd: {reason}"),
                },
                other => other,
            })?;
        let protocol = self
            .protocol
            .as_deref()
            .map(WorkerProtocol::parse)
            .transpose()?
            .unwrap_or_default();
        // Fission's servers listen on 8888 unless told otherwise.
        let port = match (self.port, protocol) {
            (Some(0), _) => {
                return Err(ModelError::OutOfRange {
                    field: "port",
                    reason: "0 is not a port to connect to".into(),
                });
            }
            (None, protocol) if protocol.is_fission() => Some(FISSION_PORT),
            (port, _) => port,
        };
        let pool_size = self.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size > MAX_POOL_SIZE {
            return Err(ModelError::OutOfRange {
                field: "pool size",
                reason: format!("{pool_size} is more than {MAX_POOL_SIZE}"),
            });
        }
        Ok(Environment {
            name,
            kind: EnvironmentKind::Custom {
                command,
                mounts,
                build_command,
                port,
                protocol,
            },
            pool_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(command: &str) -> EnvironmentConfig {
        EnvironmentConfig {
            name: "bin".into(),
            command: command.into(),
            pool_size: None,
            mounts: Vec::new(),
            build_cmd: None,
            port: None,
            protocol: None,
        }
    }

    #[test]
    fn fission_servers_listen_on_8888_unless_told_otherwise() {
        let with = |port: Option<u16>, protocol: Option<&str>| {
            EnvironmentConfig {
                port,
                protocol: protocol.map(str::to_owned),
                ..config("/usr/bin/python3 /usr/lib/srv.py")
            }
            .validate()
        };
        let ports = |env: Environment| match env.kind {
            EnvironmentKind::Custom { port, protocol, .. } => (port, protocol),
            EnvironmentKind::Builtin { .. } => unreachable!(),
        };
        assert_eq!(
            ports(with(None, Some("fission")).unwrap()),
            (Some(8888), WorkerProtocol::Fission)
        );
        assert_eq!(
            ports(with(Some(9000), Some("fission-v1")).unwrap()),
            (Some(9000), WorkerProtocol::FissionV1)
        );
        assert_eq!(
            ports(with(Some(9000), None).unwrap()),
            (Some(9000), WorkerProtocol::Gust)
        );
        assert_eq!(
            ports(with(None, None).unwrap()),
            (None, WorkerProtocol::Gust)
        );
        assert!(with(Some(0), None).is_err());
        let err = with(None, Some("openfaas")).unwrap_err();
        assert!(
            err.to_string().contains("not gust, fission or fission-v1"),
            "{err}"
        );
    }

    #[test]
    fn splits_quoted_commands() {
        let env = config("/usr/bin/python3 '/opt/my server.py'")
            .validate()
            .unwrap();
        assert_eq!(
            env.kind,
            EnvironmentKind::Custom {
                command: vec!["/usr/bin/python3".into(), "/opt/my server.py".into()],
                mounts: Vec::new(),
                build_command: None,
                port: None,
                protocol: WorkerProtocol::Gust,
            }
        );
        assert_eq!(env.pool_size, DEFAULT_POOL_SIZE);
    }

    #[test]
    fn a_build_command_is_checked_like_the_command() {
        let with = |build: &str| EnvironmentConfig {
            build_cmd: Some(build.into()),
            ..config("/usr/bin/python3 /usr/lib/srv.py")
        };
        let env = with("/usr/bin/sh -c 'cp -r $SRC_PKG $DEPLOY_PKG'")
            .validate()
            .unwrap();
        assert!(matches!(
            env.kind,
            EnvironmentKind::Custom { build_command: Some(b), .. } if b[2] == "cp -r $SRC_PKG $DEPLOY_PKG"
        ));
        let err = with("build.sh").validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("--build-cmd: the program \"build.sh\" must be an absolute path"),
            "{err}"
        );
        let err = with("/opt/b/build.sh").validate().unwrap_err();
        assert!(err.to_string().contains("--mount /opt/b"), "{err}");
    }

    #[test]
    fn a_program_outside_the_system_directories_needs_a_mount() {
        let err = config("/opt/srv/server --flag").validate().unwrap_err();
        assert!(err.to_string().contains("--mount /opt/srv"), "{err}");
        let env = EnvironmentConfig {
            mounts: vec!["/opt/srv/".into()],
            ..config("/opt/srv/server --flag")
        }
        .validate()
        .unwrap();
        assert!(
            matches!(env.kind, EnvironmentKind::Custom { mounts, .. } if mounts == [PathBuf::from("/opt/srv")])
        );
    }

    #[test]
    fn refuses_the_root_relative_paths_and_the_kernels_views() {
        for bad in [
            "/",
            "opt",
            "/opt/../etc",
            "/proc",
            "/proc/1",
            "/sys/fs",
            "/dev",
            "/run",
            "/run/docker.sock",
        ] {
            assert!(validate_mount(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_mount("/srv/app").unwrap(),
            PathBuf::from("/srv/app")
        );
    }

    #[test]
    fn refuses_relative_programs_and_empty_commands() {
        assert!(config("python3 x.py").validate().is_err());
        assert!(config("  ").validate().is_err());
        assert!(config("/bin/sh 'unbalanced").validate().is_err());
    }
}
