//! `gust up --config FILE` (or `GUST_CONFIG`): a node's settings in a TOML file, keyed by the
//! names of `gust up`'s flags (`pool-size = 5`, or `pool_size = 5`). A value in the file takes
//! the place of the flag's built-in default, so an environment variable still overrides the
//! file and a flag overrides both. A key that is no flag of `gust up` is an error naming it.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// The subcommand whose settings a file holds.
const SUBCOMMAND: &str = "up";
/// The flag (and variable) naming the file.
const FLAG: &str = "config";
const VARIABLE: &str = "GUST_CONFIG";

/// `command` with the defaults of `gust up` taken from the file that `args` (or the
/// environment) names, when the command line runs `gust up`.
pub fn apply(command: clap::Command, args: &[OsString]) -> anyhow::Result<clap::Command> {
    let Some(path) = file_named(&command, args) else {
        return Ok(command);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the node config {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let up = command
        .find_subcommand(SUBCOMMAND)
        .expect("gust has an `up` command");
    let mut defaults = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let Some(arg) = up
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag.as_str()) && flag != FLAG)
        else {
            let known: Vec<&str> = up
                .get_arguments()
                .filter_map(clap::Arg::get_long)
                .filter(|long| *long != FLAG && *long != "help")
                .collect();
            bail!(
                "{}: unknown setting {key:?}; the settings are the flags of `gust up`: {}",
                path.display(),
                known.join(", ")
            );
        };
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            // A list setting (`roles = ["api", "executor"]`), as its flag takes it.
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
                .iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            other => bail!(
                "{}: {key} cannot be a TOML {}; give a string, a number, a boolean or a list of strings",
                path.display(),
                other.type_str()
            ),
        };
        // Parsed once per process; clap keeps defaults as static strings.
        defaults.push((arg.get_id().as_str().to_owned(), &*value.leak()));
    }
    Ok(command.mut_subcommand(SUBCOMMAND, |mut up| {
        for (id, value) in defaults {
            up = up.mut_arg(id, |arg| arg.default_value(value));
        }
        up
    }))
}

/// The file named by `--config` on a `gust up` command line, or by `GUST_CONFIG` for one.
fn file_named(command: &clap::Command, args: &[OsString]) -> Option<PathBuf> {
    // Global flags before the subcommand take values (`--url URL`); skip them to find it.
    let valued: Vec<String> = command
        .get_arguments()
        .filter(|arg| arg.get_action().takes_values())
        .flat_map(|arg| {
            let long = arg.get_long().map(|l| format!("--{l}"));
            let short = arg.get_short().map(|s| format!("-{s}"));
            long.into_iter().chain(short)
        })
        .collect();
    let mut rest = args.iter().skip(1);
    loop {
        let arg = rest.next()?.to_str()?;
        if valued.iter().any(|flag| flag == arg) {
            rest.next();
        } else if !arg.starts_with('-') {
            if arg != SUBCOMMAND {
                return None;
            }
            break;
        }
    }
    let flag = format!("--{FLAG}");
    let prefixed = format!("--{FLAG}=");
    let mut rest = rest.map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = rest.next() {
        if arg == flag {
            return rest.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix(&prefixed) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(VARIABLE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
