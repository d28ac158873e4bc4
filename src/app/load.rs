//! Reading an app file: `${VAR}` replaced from the environment, the YAML parsed, and every
//! entry checked offline with the API's own validation, each problem with file, line and
//! column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use gust_model::{BuiltinRuntime, ModelError, Name, Namespace, Route};

use super::spec::AppFile;

/// One thing wrong with a file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem of a file, printed one per line.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// An app file read and checked.
#[derive(Debug)]
pub struct LoadedApp {
    pub spec: AppFile,
    /// The file, as given.
    pub file: PathBuf,
    /// Where relative code paths start: the file's directory.
    pub dir: PathBuf,
    /// What the file said once `${VAR}`s were replaced: where problems are looked up.
    pub text: String,
    /// Things that do not stop an apply but are worth saying (a name outside the file).
    pub warnings: Vec<Problem>,
    /// For an app read from other files (Fission specs), where each entry was written:
    /// `functions/NAME` to its file and line.
    pub origins: BTreeMap<String, (PathBuf, usize)>,
    /// The directory the code was gathered in, when it was (Fission's archives); removed
    /// with the app.
    #[expect(
        dead_code,
        reason = "held for its Drop: the directory lives as long as the app"
    )]
    pub staging: Option<tempfile::TempDir>,
}

impl LoadedApp {
    /// A problem at the entry `path` (`["functions", "hello", "timeout"]`): as deep as the
    /// file shows it.
    pub fn problem(&self, path: &[&str], message: impl Into<String>) -> Problem {
        if let [section, key, ..] = path
            && let Some((file, line)) = self.origins.get(&format!("{section}/{key}"))
        {
            return Problem {
                file: file.clone(),
                line: *line,
                column: 1,
                message: message.into(),
            };
        }
        let (line, column) = locate(&self.text, path);
        Problem {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// The namespace the app's resources live in.
    pub fn namespace(&self, default: &str) -> String {
        self.spec
            .namespace
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }
}

/// Reads `file`, replaces `${VAR}` and `${VAR:-default}` from `vars`, parses it and checks
/// every entry. `namespace` is the CLI's, for a file that names none.
pub fn load(
    file: &Path,
    namespace: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedApp, Problems> {
    let at_start = |message: String| {
        Problems(vec![Problem {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message,
        }])
    };
    let raw = std::fs::read_to_string(file)
        .map_err(|e| at_start(format!("cannot read the file: {e}")))?;
    let text = substitute(&raw, vars).map_err(|problems| {
        Problems(
            problems
                .into_iter()
                .map(|(line, column, message)| Problem {
                    file: file.to_owned(),
                    line,
                    column,
                    message,
                })
                .collect(),
        )
    })?;
    if let Err(problem) = check_substitutions(&raw, &text, vars) {
        return Err(Problems(vec![Problem {
            file: file.to_owned(),
            ..problem
        }]));
    }
    // Read untyped first: a mapping refuses a key given twice (two functions of one name),
    // which reading into the typed maps would let the last one win silently.
    let spec: AppFile = serde_norway::from_str::<serde_norway::Value>(&text)
        .and_then(|_| serde_norway::from_str(&text))
        .map_err(|err| {
            let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
            let message = without_location(&err.to_string());
            Problems(vec![Problem {
                file: file.to_owned(),
                line,
                column,
                message,
            }])
        })?;
    let dir = file
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .unwrap_or(Path::new("."))
        .to_owned();
    let mut loaded = LoadedApp {
        spec,
        file: file.to_owned(),
        dir,
        text,
        warnings: Vec::new(),
        origins: BTreeMap::new(),
        staging: None,
    };
    let (problems, warnings) = check(&loaded, namespace);
    loaded.warnings = warnings;
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Problems(problems))
    }
}

/// A parser's message without the " at line L column C" parts: the location goes in front, as
/// for every other problem.
pub(super) fn without_location(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " at line ".len()..];
        let tail = tail.trim_start_matches(|c: char| c.is_ascii_digit());
        let tail = tail.strip_prefix(" column ").unwrap_or(tail);
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` stays a literal `${`. Comment lines are
/// left alone. Returns the problems as (line, column, message).
pub fn substitute(
    text: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<(usize, usize, String)>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at..];
            if let Some(literal) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = literal;
                continue;
            }
            if !after.starts_with("${") {
                out.push('$');
                rest = &after[1..];
                continue;
            }
            let column = line.len() - rest.len() + at + 1;
            let Some(end) = after.find('}') else {
                problems.push((
                    number + 1,
                    column,
                    "`${` without its closing `}`".to_owned(),
                ));
                rest = "";
                break;
            };
            let inner = &after[2..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                problems.push((
                    number + 1,
                    column,
                    format!("`${{{inner}}}` is not a variable name (letters, digits and _)"),
                ));
            } else {
                match (vars(name), default) {
                    (Some(value), _) if !value.is_empty() => out.push_str(&value),
                    (_, Some(default)) => out.push_str(default),
                    (Some(_empty), None) => {}
                    (None, None) => problems.push((
                        number + 1,
                        column,
                        format!("${{{name}}} is not set in the environment (give a default with ${{{name}:-...}})"),
                    )),
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// A variable's value is text inside one YAML value, never YAML: a value holding a newline,
/// `: `, ` #` or an indicator (`!`, `*`, `&`, ...) that would add keys, cut the value or change
/// its type is refused, naming where. Checked by reading the file before and after `${VAR}`s
/// are replaced: the two must have the same shape, and each value with a variable must read
/// exactly as its text with the variables replaced.
fn check_substitutions(
    raw: &str,
    text: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Problem> {
    if raw == text {
        return Ok(());
    }
    let (Ok(before), Ok(after)) = (
        serde_norway::from_str::<serde_norway::Value>(raw),
        serde_norway::from_str::<serde_norway::Value>(text),
    ) else {
        // Both fail: the parse after reports it. Only the one after: a `${` in a flow
        // collection (`{a: ${V}}`), which must be quoted.
        if serde_norway::from_str::<serde_norway::Value>(text).is_ok() {
            return Err(Problem {
                file: PathBuf::new(),
                line: 1,
                column: 1,
                message: "the file reads only once its ${VAR}s are replaced: quote each value that holds one".into(),
            });
        }
        return Ok(());
    };
    let mut path = Vec::new();
    compare_shapes(&before, &after, vars, &mut path).map_err(|message| {
        let steps: Vec<&str> = path.iter().map(String::as_str).collect();
        let (line, column) = locate(text, &steps);
        Problem {
            file: PathBuf::new(),
            line,
            column,
            message,
        }
    })
}

fn compare_shapes(
    before: &serde_norway::Value,
    after: &serde_norway::Value,
    vars: &dyn Fn(&str) -> Option<String>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    use serde_norway::Value;
    let changed = || {
        "a ${VAR} here changed the file's structure: its value holds YAML (a newline, `: `, ` #`, or a leading `!`, `*`, `&`, `{`, `[`); quote the value in the file, or change the variable".to_owned()
    };
    let text_of = |value: &Value| match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    };
    let replaced = |text: &str| substitute(text, vars).unwrap_or_else(|_| text.to_owned());
    match (before, after) {
        (Value::Mapping(b), Value::Mapping(a)) => {
            if b.len() != a.len() {
                return Err(changed());
            }
            for (key, value) in b {
                let key_text = text_of(key).map(|k| replaced(&k)).unwrap_or_default();
                let Some((_, other)) = a
                    .iter()
                    .find(|(k, _)| text_of(k).as_deref() == Some(key_text.as_str()))
                else {
                    return Err(changed());
                };
                path.push(key_text);
                compare_shapes(value, other, vars, path)?;
                path.pop();
            }
            Ok(())
        }
        (Value::Sequence(b), Value::Sequence(a)) => {
            if b.len() != a.len() {
                return Err(changed());
            }
            for (b, a) in b.iter().zip(a) {
                compare_shapes(b, a, vars, path)?;
            }
            Ok(())
        }
        (Value::String(b), after) if b.contains("${") => {
            let expected = replaced(b);
            let got = text_of(after).ok_or_else(changed)?;
            let same = got == expected
                || (matches!(after, Value::Null) && ["", "~", "null"].contains(&expected.as_str()));
            if same { Ok(()) } else { Err(changed()) }
        }
        (before, after) if before == after => Ok(()),
        _ => Err(changed()),
    }
}

/// The line and column of the entry `path` in a block-style YAML text: each step is a key
/// indented deeper than the one before, inside its block. Stops at the deepest step found.
pub fn locate(text: &str, path: &[&str]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let is_content = |line: &str| {
        let trimmed = line.trim_start();
        !trimmed.is_empty() && !trimmed.starts_with('#')
    };
    let mut found = (1, 1);
    let (mut start, mut end, mut parent) = (0, lines.len(), None::<usize>);
    for step in path {
        let keys = [
            format!("{step}:"),
            format!("\"{step}\":"),
            format!("'{step}':"),
        ];
        let hit = (start..end).find(|&i| {
            let line = lines[i];
            let trimmed = line.trim_start().trim_start_matches("- ");
            is_content(line)
                && parent.is_none_or(|p| indent(line) > p)
                && keys.iter().any(|k| trimmed.starts_with(k.as_str()))
        });
        let Some(i) = hit else { break };
        let depth = indent(lines[i]);
        found = (i + 1, depth + 1);
        parent = Some(depth);
        start = i + 1;
        end = (start..end)
            .find(|&j| is_content(lines[j]) && indent(lines[j]) <= depth)
            .unwrap_or(end);
    }
    found
}

/// Checks what can be checked without a server, with the model's validation (the API's own).
pub(super) fn check(loaded: &LoadedApp, default_namespace: &str) -> (Vec<Problem>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let spec = loaded.spec.clone();
    let model = |path: &[&str], err: ModelError| model_problem(loaded, path, err);
    if let Err(err) = Name::parse("app", &spec.app) {
        problems.push(loaded.problem(&["app"], err.to_string()));
    }
    let namespace = match Namespace::parse(&loaded.namespace(default_namespace)) {
        Ok(namespace) => namespace,
        Err(err) => {
            problems.push(loaded.problem(&["namespace"], err.to_string()));
            Namespace::default()
        }
    };
    let environments: Vec<&str> = spec.environments.keys().map(String::as_str).collect();
    for (key, config) in &spec.environments {
        if !config.name.is_empty() {
            problems.push(loaded.problem(
                &["environments", key, "name"],
                "an environment's name is its key; leave `name` out",
            ));
            continue;
        }
        if BuiltinRuntime::ALL.iter().any(|r| r.name() == key) {
            problems.push(loaded.problem(
                &["environments", key],
                format!("{key} is a built-in environment; it needs no entry"),
            ));
            continue;
        }
        let mut config = config.clone();
        config.name = key.clone();
        if let Err(err) = config.validate() {
            problems.push(model(&["environments", key], err));
        }
    }
    for (key, entry) in &spec.functions {
        let _name = match Name::parse("function", key) {
            Ok(name) => name,
            Err(err) => {
                problems.push(loaded.problem(&["functions", key], err.to_string()));
                continue;
            }
        };
        if let Err(err) = entry.settings(&spec.app).apply(None) {
            problems.push(model(&["functions", key], err));
        }
        let builtin = BuiltinRuntime::ALL.iter().any(|r| r.name() == entry.env);
        if !builtin && !environments.contains(&entry.env.as_str()) {
            warnings.push(loaded.problem(
                &["functions", key, "env"],
                format!(
                    "environment {:?} is not in this file: it must exist on the server",
                    entry.env
                ),
            ));
        }
        // What a build makes need not exist before it runs; it must still be inside.
        let checked = match &entry.build {
            Some(_) => check_output_path(&entry.code),
            None => check_code_path(&loaded.dir, &entry.code).map(drop),
        };
        if let Err(message) = checked {
            problems.push(loaded.problem(&["functions", key, "code"], message));
        }
    }
    let mut routes: Vec<(&String, Route)> = Vec::new();
    for (key, config) in &spec.routes {
        let name = match Name::parse("route", key) {
            Ok(name) => name,
            Err(err) => {
                problems.push(loaded.problem(&["routes", key], err.to_string()));
                continue;
            }
        };
        if let Some(problem) = named_inside("routes", key, &config.name, &config.app, loaded) {
            problems.push(problem);
            continue;
        }
        match config.validate(namespace.clone(), name) {
            Ok(route) => {
                if let Some((other, _)) = routes.iter().find(|(_, r)| r.conflicts_with(&route)) {
                    problems.push(loaded.problem(
                        &["routes", key, "url"],
                        format!("route {key} conflicts with route {other} of this file (same path and methods)"),
                    ));
                }
                routes.push((key, route));
            }
            Err(err) => problems.push(model(&["routes", key], err)),
        }
        warnings.extend(function_outside(loaded, "routes", key, &config.function));
    }
    for (key, config) in &spec.timers {
        let name = match Name::parse("timer", key) {
            Ok(name) => name,
            Err(err) => {
                problems.push(loaded.problem(&["timers", key], err.to_string()));
                continue;
            }
        };
        if let Some(problem) = named_inside("timers", key, &config.name, &config.app, loaded) {
            problems.push(problem);
            continue;
        }
        if let Err(err) = config.validate(namespace.clone(), name, 0) {
            problems.push(model(&["timers", key], err));
        }
        warnings.extend(function_outside(loaded, "timers", key, &config.function));
    }
    for (key, config) in &spec.queue_triggers {
        let name = match Name::parse("trigger", key) {
            Ok(name) => name,
            Err(err) => {
                problems.push(loaded.problem(&["queue_triggers", key], err.to_string()));
                continue;
            }
        };
        if let Some(problem) =
            named_inside("queue_triggers", key, &config.name, &config.app, loaded)
        {
            problems.push(problem);
            continue;
        }
        if let Err(err) = config.validate(namespace.clone(), name, 0) {
            problems.push(model(&["queue_triggers", key], err));
        }
        warnings.extend(function_outside(
            loaded,
            "queue_triggers",
            key,
            &config.function,
        ));
    }
    (problems, warnings)
}

/// An entry's name is its key and its app the file's: neither is written inside it.
fn named_inside(
    section: &str,
    key: &str,
    name: &Option<String>,
    app: &Option<String>,
    loaded: &LoadedApp,
) -> Option<Problem> {
    if name.is_some() {
        return Some(loaded.problem(
            &[section, key, "name"],
            "an entry's name is its key; leave `name` out",
        ));
    }
    app.as_ref().map(|_| {
        loaded.problem(
            &[section, key, "app"],
            "an entry belongs to the file's app; leave `app` out",
        )
    })
}

fn function_outside(
    loaded: &LoadedApp,
    section: &str,
    key: &str,
    function: &str,
) -> Option<Problem> {
    (!loaded.spec.functions.contains_key(function)).then(|| {
        loaded.problem(
            &[section, key, "function"],
            format!("function {function:?} is not in this file: it must exist on the server"),
        )
    })
}

/// A model error at the entry `path`, at the field it names when the entry has it.
fn model_problem(loaded: &LoadedApp, path: &[&str], err: ModelError) -> Problem {
    let field = match &err {
        ModelError::OutOfRange { field, .. } => Some(field.replace('-', "_")),
        _ => None,
    };
    let mut at: Vec<&str> = path.to_vec();
    if let Some(field) = field.as_deref() {
        at.push(field);
    }
    loaded.problem(&at, err.to_string())
}

/// A path a build writes: relative, and never above the file's directory.
fn check_output_path(code: &str) -> Result<(), String> {
    let path = Path::new(code);
    let escapes = path.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if code.is_empty() || escapes {
        Err(format!(
            "code {code:?} must be a path inside the file's directory"
        ))
    } else {
        Ok(())
    }
}

/// A code path must stay inside the file's directory, and so must every symlink in it: an
/// app deploys what its repository holds, nothing else of the machine that applies it.
pub fn check_code_path(dir: &Path, code: &str) -> Result<PathBuf, String> {
    if code.is_empty() {
        return Err("code is empty: give a file or directory relative to this file".into());
    }
    let root = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve the file's directory: {e}"))?;
    let path = dir.join(code);
    let resolved = path
        .canonicalize()
        .map_err(|e| format!("code {code:?}: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err(format!(
            "code {code:?} is outside the file's directory ({})",
            resolved.display()
        ));
    }
    if resolved.is_dir() {
        let mut stack = vec![resolved.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
                let kind = entry.file_type().map_err(|e| e.to_string())?;
                if kind.is_symlink() {
                    let target = entry.path().canonicalize().map_err(|e| {
                        format!("symlink {} cannot be resolved: {e}", entry.path().display())
                    })?;
                    // Links stay links in the upload, and Gust refuses one that leaves the
                    // code: inside the file's directory is not enough.
                    if !target.starts_with(&resolved) {
                        return Err(format!(
                            "symlink {} points outside the code ({})",
                            entry.path().display(),
                            target.display()
                        ));
                    }
                } else if kind.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("v2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_and_missing_ones_are_located() {
        let text = "a: ${TAG}\nb: ${NOPE:-x} ${EMPTY:-d}\n# ${NOT_CHECKED}\nc: $${TAG} $5\n";
        assert_eq!(
            substitute(text, &vars).unwrap(),
            "a: v2\nb: x d\n# ${NOT_CHECKED}\nc: ${TAG} $5\n"
        );
        let err = substitute("a: 1\nb: x ${MISSING}\n", &vars).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!((err[0].0, err[0].1), (2, 6));
        assert!(err[0].2.contains("MISSING"));
    }

    #[test]
    fn an_entry_is_located_inside_its_section() {
        let text = "app: a\nfunctions:\n  hello:\n    code: h.py\n    timeout: 1\nroutes:\n  hello:\n    url: /x\n";
        assert_eq!(locate(text, &["functions", "hello", "timeout"]), (5, 5));
        assert_eq!(locate(text, &["routes", "hello", "url"]), (8, 5));
        // A field the entry does not have: the entry itself.
        assert_eq!(locate(text, &["routes", "hello", "methods"]), (7, 3));
    }
}
