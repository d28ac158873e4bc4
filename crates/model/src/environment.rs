use serde::{Deserialize, Serialize};

use crate::{ModelError, Name};

/// Default number of pre-warmed generic workers an environment keeps ready.
pub const DEFAULT_POOL_SIZE: u32 = 3;
const MAX_POOL_SIZE: u32 = 64;

/// The language runtimes that ship with Gust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EnvironmentKind {
    /// A worker server shipped with Gust.
    Builtin { runtime: BuiltinRuntime },
    /// Any executable that speaks the worker protocol: program and arguments.
    Custom { command: Vec<String> },
}

/// A validated environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    pub name: String,
    /// Program and arguments as one shell-quoted string, e.g. `"/usr/bin/python3 /opt/srv.py"`.
    pub command: String,
    #[serde(default)]
    pub pool_size: Option<u32>,
}

impl EnvironmentConfig {
    pub fn validate(&self) -> Result<Environment, ModelError> {
        let name = Name::parse("environment", &self.name)?;
        let command = shlex::split(&self.command).ok_or_else(|| ModelError::InvalidCommand {
            reason: format!("unbalanced quotes in {:?}", self.command),
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
        let pool_size = self.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size > MAX_POOL_SIZE {
            return Err(ModelError::OutOfRange {
                field: "pool size",
                reason: format!("{pool_size} is more than {MAX_POOL_SIZE}"),
            });
        }
        Ok(Environment {
            name,
            kind: EnvironmentKind::Custom { command },
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
        }
    }

    #[test]
    fn splits_quoted_commands() {
        let env = config("/usr/bin/python3 '/opt/my server.py'")
            .validate()
            .unwrap();
        assert_eq!(
            env.kind,
            EnvironmentKind::Custom {
                command: vec!["/usr/bin/python3".into(), "/opt/my server.py".into()]
            }
        );
        assert_eq!(env.pool_size, DEFAULT_POOL_SIZE);
    }

    #[test]
    fn refuses_relative_programs_and_empty_commands() {
        assert!(config("python3 x.py").validate().is_err());
        assert!(config("  ").validate().is_err());
        assert!(config("/bin/sh 'unbalanced").validate().is_err());
    }
}
