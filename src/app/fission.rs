//! Fission's spec directories (`fission spec init`, `fission ... --spec`): every
//! `fission.io/v1` document read and turned into the same app a `gust.yaml` describes, then
//! checked and applied like one. Fission's Python and Node.js images become Gust's built-in
//! environments; a field with no Gust meaning is a warning naming it, one whose loss would
//! change what the function does is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gust_model::{HumanDuration, MqTriggerConfig, RouteConfig, TimerConfig};
use serde_norway::Value;

use super::load::{LoadedApp, Problem, Problems, check, locate};
use super::spec::{AppFile, FunctionEntry};

/// Whether `dir` holds Fission specs rather than a `gust.yaml`.
pub fn is_spec_dir(dir: &Path) -> bool {
    dir.is_dir()
        && !dir.join(super::spec::FILE_NAME).exists()
        && spec_files(dir).iter().any(|file| {
            std::fs::read_to_string(file).is_ok_and(|text| {
                text.contains("fission.io/v1") || text.contains("kind: ArchiveUploadSpec")
            })
        })
}

/// Every `*.yaml` and `*.yml` below `dir`, in order (Fission reads them recursively).
fn spec_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // A symlinked directory is not followed (it could be `/`, or the directory itself).
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// One YAML document of a spec file.
struct Document {
    file: PathBuf,
    /// The line of the file its text starts at (1-based).
    first_line: usize,
    text: String,
    value: Value,
}

impl Document {
    fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }

    fn name(&self) -> String {
        self.str(&["metadata", "name"])
            .or_else(|| self.str(&["name"]))
            .unwrap_or_default()
    }

    fn get(&self, path: &[&str]) -> Option<&Value> {
        let mut value = &self.value;
        for step in path {
            value = value.get(*step)?;
        }
        Some(value).filter(|v| !v.is_null())
    }

    fn str(&self, path: &[&str]) -> Option<String> {
        self.get(path).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
    }

    /// The strings of a list; none when it is absent or not a list.
    fn strings(&self, path: &[&str]) -> Vec<String> {
        self.get(path)
            .and_then(Value::as_sequence)
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn int(&self, path: &[&str]) -> Option<i64> {
        self.get(path).and_then(Value::as_i64)
    }

    /// A problem at `path` inside this document.
    fn at(&self, path: &[&str], message: impl Into<String>) -> Problem {
        let (line, column) = locate(&self.text, path);
        Problem {
            file: self.file.clone(),
            line: self.first_line + line - 1,
            column,
            message: format!("{} {}: {}", self.kind(), self.name(), message.into()),
        }
    }
}

/// Splits a file into its documents where a line starts with `---`, as Fission does.
fn documents(file: &Path, text: &str) -> Result<Vec<Document>, Problem> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let (mut first_line, mut line_number) = (1, 0);
    let mut finish = |text: &str, first_line: usize| -> Result<(), Problem> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let value: Value = serde_norway::from_str(text).map_err(|err| {
            let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
            Problem {
                file: file.to_owned(),
                line: first_line + line - 1,
                column,
                message: super::load::without_location(&err.to_string()),
            }
        })?;
        documents.push(Document {
            file: file.to_owned(),
            first_line,
            text: text.to_owned(),
            value,
        });
        Ok(())
    };
    for line in text.split_inclusive('\n') {
        line_number += 1;
        if line.starts_with("---") {
            finish(&current, first_line)?;
            current.clear();
            first_line = line_number + 1;
        } else {
            current.push_str(line);
        }
    }
    finish(&current, first_line)?;
    Ok(documents)
}

/// The Gust built-in environment a Fission image runs as, if any.
fn builtin_for_image(image: &str) -> Option<&'static str> {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split([':', '@']).next().unwrap_or(base);
    if base.starts_with("python-env") || base.starts_with("python-fastapi-env") {
        Some("python")
    } else if base.starts_with("node-env") {
        Some("node")
    } else {
        None
    }
}

/// Kubernetes memory quantities (`256Mi`, `1Gi`, `500M`, bytes) in MB, rounded up.
fn memory_mb(quantity: &str) -> Option<u32> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let bytes = number
        * match unit {
            "" => 1.0,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "K" | "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            _ => return None,
        };
    let mb = (bytes / (1024.0 * 1024.0)).ceil();
    (mb >= 1.0 && mb <= f64::from(u32::MAX)).then_some(mb as u32)
}

/// A spec document's fields the importer knows, by kind: anything else is named in a warning.
fn known_spec_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Environment" => &[
            "version",
            "runtime",
            "builder",
            "allowedFunctionsPerContainer",
            "allowAccessToExternalNetwork",
            "resources",
            "poolsize",
            "terminationGracePeriod",
            "TerminationGracePeriod",
            "keeparchive",
            "imagepullsecret",
        ],
        "Package" => &["environment", "source", "deployment", "buildcmd"],
        "Function" => &[
            "environment",
            "package",
            "secrets",
            "configmaps",
            "resources",
            "InvokeStrategy",
            "functionTimeout",
            "idletimeout",
            "concurrency",
            "requestsPerPod",
            "onceOnly",
            "retainPods",
            "podspec",
        ],
        "HTTPTrigger" => &[
            "host",
            "relativeurl",
            "prefix",
            "keepPrefix",
            "method",
            "methods",
            "functionref",
            "createingress",
            "ingressconfig",
        ],
        "TimeTrigger" => &["cron", "functionref", "method", "subpath"],
        "MessageQueueTrigger" => &[
            "functionref",
            "messageQueueType",
            "topic",
            "respTopic",
            "errorTopic",
            "maxRetries",
            "contentType",
            "pollingInterval",
            "cooldownPeriod",
            "minReplicaCount",
            "maxReplicaCount",
            "metadata",
            "secret",
            "mqtkind",
            "podspec",
        ],
        _ => &[],
    }
}

/// Whether a value says nothing: absent, null, empty, zero, false.
fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Sequence(s)) => s.is_empty(),
        Some(Value::Mapping(m)) => m.values().all(|v| is_empty(Some(v))),
        Some(Value::Bool(b)) => !b,
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::Tagged(_)) => false,
    }
}

/// The converted app and what was said along the way.
struct Import {
    spec: AppFile,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Where each entry came from: `functions/hello` → its document's name line.
    origins: BTreeMap<String, (PathBuf, usize)>,
}

/// Reads a Fission spec directory as an app. `namespace` is the CLI's.
pub fn load_specs(dir: &Path, namespace: &str) -> Result<LoadedApp, Problems> {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for file in spec_files(dir) {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            Problems(vec![Problem {
                file: file.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        match documents(&file, &text) {
            Ok(found) => all.extend(found),
            Err(problem) => errors.push(problem),
        }
    }
    if !errors.is_empty() {
        return Err(Problems(errors));
    }
    let root = dir.canonicalize().map_err(|e| {
        Problems(vec![at_dir(
            dir,
            format!("cannot resolve the directory: {e}"),
        )])
    })?;
    let project = root.parent().unwrap_or(&root).to_owned();
    let staging = tempfile::tempdir().map_err(|e| {
        Problems(vec![at_dir(
            dir,
            format!("cannot make a scratch directory: {e}"),
        )])
    })?;
    let mut import = convert(&all, &project, staging.path());
    let default_app = crate::templates::app_name(&project).unwrap_or_default();
    if import.spec.app.is_empty() {
        import.spec.app = default_app;
    }
    let mut loaded = LoadedApp {
        spec: import.spec,
        file: dir.to_owned(),
        dir: staging.path().to_owned(),
        text: String::new(),
        warnings: import.warnings,
        origins: import.origins,
        staging: Some(staging),
    };
    let (problems, warnings) = check(&loaded, namespace);
    loaded.warnings.extend(warnings);
    import.errors.extend(problems);
    if import.errors.is_empty() {
        Ok(loaded)
    } else {
        // The warnings are said with the errors: a fix should not bring new surprises.
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
        Err(Problems(import.errors))
    }
}

fn at_dir(dir: &Path, message: String) -> Problem {
    Problem {
        file: dir.to_owned(),
        line: 1,
        column: 1,
        message,
    }
}

fn convert(documents: &[Document], project: &Path, staging: &Path) -> Import {
    let mut import = Import {
        spec: AppFile::default(),
        errors: Vec::new(),
        warnings: Vec::new(),
        origins: BTreeMap::new(),
    };
    let by_kind = |kind: &'static str| documents.iter().filter(move |d| d.kind() == kind);
    let mut seen = BTreeMap::new();
    for doc in documents {
        let key = (doc.kind().to_owned(), doc.name());
        if let Some(first) = seen.insert(key, (doc.file.clone(), doc.first_line)) {
            import.errors.push(doc.at(
                &["metadata", "name"],
                format!("defined twice (first in {}:{})", first.0.display(), first.1),
            ));
        }
        match doc.kind() {
            "DeploymentConfig" | "ArchiveUploadSpec" | "Environment" | "Package" | "Function"
            | "HTTPTrigger" | "TimeTrigger" | "MessageQueueTrigger" => {}
            other => import.errors.push(doc.at(
                &["kind"],
                format!("kind {other:?} is not supported (Gust reads DeploymentConfig, ArchiveUploadSpec, Environment, Package, Function, HTTPTrigger, TimeTrigger and MessageQueueTrigger)"),
            )),
        }
        if let Some(Value::Mapping(spec)) = doc.get(&["spec"]) {
            let known = known_spec_fields(doc.kind());
            for key in spec.keys().filter_map(Value::as_str) {
                if !known.contains(&key) {
                    import.warnings.push(doc.at(
                        &["spec", key],
                        format!("spec.{key} has no meaning in Gust and is ignored"),
                    ));
                }
            }
        }
        let namespace = doc
            .str(&["metadata", "namespace"])
            .filter(|n| !n.is_empty());
        if let Some(namespace) = namespace {
            match &import.spec.namespace {
                Some(chosen) if *chosen != namespace => import.errors.push(doc.at(
                    &["metadata", "namespace"],
                    format!("namespace {namespace} differs from {chosen} of the other documents: apply one namespace at a time"),
                )),
                _ => import.spec.namespace = Some(namespace),
            }
        }
    }
    if let Some(config) = by_kind("DeploymentConfig").next() {
        import.spec.app = config.str(&["name"]).unwrap_or_default();
    }

    // Environments: Fission's Python and Node.js images are Gust's built-in environments.
    let mut environments: BTreeMap<String, &'static str> = BTreeMap::new();
    for doc in by_kind("Environment") {
        let image = doc.str(&["spec", "runtime", "image"]).unwrap_or_default();
        let Some(builtin) = builtin_for_image(&image) else {
            import.errors.push(doc.at(
                &["spec", "runtime", "image"],
                format!("image {image:?} has no Gust equivalent: Gust runs Fission's Python and Node.js functions in its own environments; for another runtime, create a custom environment (gust env create --protocol fission)"),
            ));
            continue;
        };
        environments.insert(doc.name(), builtin);
        if let Some(builder) = doc.str(&["spec", "builder", "image"]) {
            let ok = builder.rsplit('/').next().is_some_and(|b| {
                b.starts_with(&format!(
                    "{}-builder",
                    if builtin == "node" { "node" } else { "python" }
                )) || b.starts_with("python-fastapi-builder")
            });
            if !ok {
                import.errors.push(doc.at(
                    &["spec", "builder", "image"],
                    format!("builder image {builder:?} is not Fission's own: Gust installs requirements.txt and package.json itself, and cannot run another builder"),
                ));
            }
        }
        if let Some(command) = doc.str(&["spec", "builder", "command"])
            && command != "build"
        {
            import.errors.push(doc.at(
                &["spec", "builder", "command"],
                format!("builder command {command:?}: Gust installs requirements.txt and package.json itself and runs no builder command"),
            ));
        }
        if !is_empty(doc.get(&["spec", "runtime", "podspec"]))
            && doc
                .get(&["spec", "runtime", "podspec"])
                .and_then(Value::as_mapping)
                .is_some_and(|m| m.keys().any(|k| k.as_str() != Some("containers")))
        {
            import.errors.push(doc.at(
                &["spec", "runtime", "podspec"],
                "runtime.podspec changes the runtime's pod, which Gust does not have",
            ));
        }
        for (field, why) in [
            (
                "poolsize",
                "Gust's pools are sized by `gust up --pool-size`",
            ),
            ("resources", "set memory on the functions instead"),
            (
                "terminationGracePeriod",
                "Gust drains instances on its own schedule",
            ),
            (
                "TerminationGracePeriod",
                "Gust drains instances on its own schedule",
            ),
            ("imagepullsecret", "Gust pulls no images"),
            ("keeparchive", "Gust keeps code as uploaded"),
            (
                "allowAccessToExternalNetwork",
                "Gust functions reach public addresses by default (`network`, `allow_outbound`)",
            ),
        ] {
            let value = doc.get(&["spec", field]);
            let default = match field {
                "poolsize" => doc.int(&["spec", field]) == Some(3),
                "terminationGracePeriod" | "TerminationGracePeriod" => {
                    doc.int(&["spec", field]) == Some(360)
                }
                _ => false,
            };
            if !is_empty(value) && !default {
                import
                    .warnings
                    .push(doc.at(&["spec", field], format!("spec.{field} is ignored: {why}")));
            }
        }
    }

    // Archives and the packages that name them.
    let archives: BTreeMap<String, &Document> = by_kind("ArchiveUploadSpec")
        .map(|d| (d.name(), d))
        .collect();
    let mut staged: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut packages: BTreeMap<String, (Option<String>, String)> = BTreeMap::new();
    for doc in by_kind("Package") {
        let env = doc
            .str(&["spec", "environment", "name"])
            .unwrap_or_default();
        if let Some(command) = doc.str(&["spec", "buildcmd"]).filter(|c| !c.is_empty()) {
            import.errors.push(doc.at(
                &["spec", "buildcmd"],
                format!("buildcmd {command:?} is not run by Gust, which installs requirements.txt and package.json itself: remove it if it only does that, or build the package before applying"),
            ));
        }
        let url = ["deployment", "source"]
            .iter()
            .find_map(|side| doc.str(&["spec", side, "url"]).map(|u| (*side, u)));
        let Some((side, url)) = url else {
            let literal = doc
                .get(&["spec", "deployment", "literal"])
                .or(doc.get(&["spec", "source", "literal"]));
            let message = if literal.is_some() {
                "a literal archive is not supported: name the files with an ArchiveUploadSpec"
            } else {
                "names no archive (spec.deployment.url or spec.source.url)"
            };
            import.errors.push(doc.at(&["spec"], message));
            continue;
        };
        let Some(archive) = url.strip_prefix("archive://") else {
            import.errors.push(doc.at(
                &["spec", side, "url"],
                format!("{url:?}: only archive:// URLs of this directory's ArchiveUploadSpecs can be applied"),
            ));
            continue;
        };
        let Some(archive_doc) = archives.get(archive) else {
            import.errors.push(doc.at(
                &["spec", side, "url"],
                format!("archive {archive:?} is not defined by an ArchiveUploadSpec here"),
            ));
            continue;
        };
        if !staged.contains_key(archive) {
            let code = match stage_archive(archive_doc, project, staging) {
                Ok(code) => Some(code),
                Err(problem) => {
                    import.errors.push(problem);
                    None
                }
            };
            staged.insert(archive.to_owned(), code);
        }
        packages.insert(doc.name(), (staged[archive].clone(), env));
    }
    for (name, doc) in &archives {
        if !staged.contains_key(name) {
            import
                .errors
                .push(doc.at(&["name"], "no Package uses this archive"));
        }
    }

    let origin = |section: &str, doc: &Document| {
        (
            format!("{section}/{}", doc.name()),
            (doc.file.clone(), doc.first_line),
        )
    };
    for doc in by_kind("Function") {
        if let Some(entry) = function_entry(doc, &environments, &packages, &mut import) {
            import.origins.extend([origin("functions", doc)]);
            import.spec.functions.insert(doc.name(), entry);
        }
    }
    for doc in by_kind("HTTPTrigger") {
        if let Some(route) = route_config(doc, &mut import) {
            import.origins.extend([origin("routes", doc)]);
            import.spec.routes.insert(doc.name(), route);
        }
    }
    for doc in by_kind("TimeTrigger") {
        if let Some(timer) = timer_config(doc, &mut import) {
            import.origins.extend([origin("timers", doc)]);
            import.spec.timers.insert(doc.name(), timer);
        }
    }
    for doc in by_kind("MessageQueueTrigger") {
        if let Some(trigger) = queue_trigger_config(doc, &mut import) {
            import.origins.extend([origin("queue_triggers", doc)]);
            import.spec.queue_triggers.insert(doc.name(), trigger);
        }
    }
    import
}

/// Copies what an ArchiveUploadSpec's globs match into `staging/<archive>/`, each match at
/// the root under its base name (as Fission zips them); returns the code path: the single
/// file, or the directory.
fn stage_archive(doc: &Document, project: &Path, staging: &Path) -> Result<String, Problem> {
    let name = doc.name();
    // The name becomes a directory of the scratch area: one plain path component only.
    let plain = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(doc.at(
            &["name"],
            format!("archive name {name:?} must be letters, digits, '-', '_' and '.'"),
        ));
    }
    let root = match doc.str(&["rootdir"]).filter(|r| !r.is_empty()) {
        Some(dir) => project.join(dir),
        None => project.to_owned(),
    };
    let root = root
        .canonicalize()
        .map_err(|e| doc.at(&["rootdir"], format!("{}: {e}", root.display())))?;
    if !root.starts_with(project) {
        return Err(doc.at(
            &["rootdir"],
            format!(
                "rootdir {} is outside the project {}",
                root.display(),
                project.display()
            ),
        ));
    }
    if !is_empty(doc.get(&["exclude"])) {
        return Err(doc.at(
            &["exclude"],
            "exclude is not applied by Fission either: list what to include instead",
        ));
    }
    let includes = doc.strings(&["include"]);
    let mut matches = Vec::new();
    for include in &includes {
        let pattern = root.join(include);
        let found = glob::glob(&pattern.to_string_lossy())
            .map_err(|e| doc.at(&["include"], format!("{include:?}: {e}")))?;
        for path in found.flatten() {
            let resolved = path
                .canonicalize()
                .map_err(|e| doc.at(&["include"], format!("{}: {e}", path.display())))?;
            if !resolved.starts_with(&root) {
                return Err(doc.at(
                    &["include"],
                    format!(
                        "{include:?} matches {}, outside {}",
                        resolved.display(),
                        root.display()
                    ),
                ));
            }
            matches.push(path);
        }
    }
    if matches.is_empty() {
        return Err(doc.at(&["include"], "matches no file: the archive would be empty"));
    }
    let target = staging.join(&name);
    std::fs::create_dir(&target)
        .map_err(|e| doc.at(&["name"], format!("cannot stage the archive: {e}")))?;
    for path in &matches {
        let base = path.file_name().unwrap_or_default();
        copy_inside(path, &target.join(base), &root).map_err(|e| doc.at(&["include"], e))?;
    }
    Ok(match matches.as_slice() {
        [single] if single.is_file() => format!(
            "{name}/{}",
            single.file_name().unwrap_or_default().to_string_lossy()
        ),
        _ => name,
    })
}

/// Copies a file or directory as Fission zips it: a symlink to a file inside `root` becomes a
/// copy of that file; one out of `root`, or to a directory, is refused. Nothing existing is
/// overwritten.
fn copy_inside(from: &Path, to: &Path, root: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    if meta.file_type().is_symlink() {
        let target = from
            .canonicalize()
            .map_err(|e| format!("symlink {}: {e}", from.display()))?;
        if !target.starts_with(root) {
            return Err(format!(
                "symlink {} points outside {} ({})",
                from.display(),
                root.display(),
                target.display()
            ));
        }
        if !target.is_file() {
            return Err(format!(
                "symlink {} points to a directory: include the directory itself",
                from.display()
            ));
        }
        return copy_file(&target, to);
    }
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
        for entry in std::fs::read_dir(from).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            copy_inside(&entry.path(), &to.join(entry.file_name()), root)?;
        }
        return Ok(());
    }
    copy_file(from, to)
}

/// Copies a file's content and mode into a new file.
fn copy_file(from: &Path, to: &Path) -> Result<(), String> {
    let mut source = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mode = source
        .metadata()
        .map_err(|e| format!("{}: {e}", from.display()))?
        .permissions();
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| format!("{}: {e}", to.display()))?;
    std::io::copy(&mut source, &mut target).map_err(|e| format!("{}: {e}", from.display()))?;
    target
        .set_permissions(mode)
        .map_err(|e| format!("{}: {e}", to.display()))
}

fn function_entry(
    doc: &Document,
    environments: &BTreeMap<String, &'static str>,
    packages: &BTreeMap<String, (Option<String>, String)>,
    import: &mut Import,
) -> Option<FunctionEntry> {
    let errors_before = import.errors.len();
    let mut error = |path: &[&str], message: String| import.errors.push(doc.at(path, message));
    let env_name = doc
        .str(&["spec", "environment", "name"])
        .unwrap_or_default();
    let env = match environments.get(&env_name) {
        Some(builtin) => (*builtin).to_owned(),
        None if ["python", "node"].contains(&env_name.as_str()) => env_name.clone(),
        None => {
            error(
                &["spec", "environment", "name"],
                format!("environment {env_name:?} is not defined by an Environment here"),
            );
            String::new()
        }
    };
    let package = doc
        .str(&["spec", "package", "packageref", "name"])
        .unwrap_or_default();
    let code = match packages.get(&package) {
        Some((Some(code), _)) => code.clone(),
        // The archive's own error is reported already.
        Some((None, _)) => return None,
        None => {
            error(
                &["spec", "package", "packageref", "name"],
                format!("package {package:?} is not defined by a Package here"),
            );
            String::new()
        }
    };
    let strategy = ["spec", "InvokeStrategy", "ExecutionStrategy"];
    let field = |name: &'static str| {
        let mut path = strategy.to_vec();
        path.push(name);
        path
    };
    let executor = doc
        .str(&field("ExecutorType"))
        .unwrap_or_else(|| "poolmgr".to_owned());
    let mut entry = FunctionEntry {
        code,
        env,
        entrypoint: doc
            .str(&["spec", "package", "functionName"])
            .filter(|f| !f.is_empty()),
        ..FunctionEntry::default()
    };
    match executor.as_str() {
        "poolmgr" | "newdeploy" => {}
        other => error(
            &field("ExecutorType"),
            format!("executor type {other:?} runs a container image, which Gust does not"),
        ),
    }
    let min = doc.int(&field("MinScale")).filter(|n| *n > 0);
    let max = doc.int(&field("MaxScale")).filter(|n| *n > 0);
    entry.min_instances = min.map(|n| n as u32);
    entry.max_instances = max.map(|n| n as u32);
    // poolmgr's `concurrency` caps the instances specialized at once.
    if entry.max_instances.is_none()
        && executor == "poolmgr"
        && let Some(concurrency) = doc
            .int(&["spec", "concurrency"])
            .filter(|c| *c > 0 && *c != 500)
    {
        entry.max_instances = Some(concurrency as u32);
    }
    if let Some(per_pod) = doc.int(&["spec", "requestsPerPod"]).filter(|n| *n > 1) {
        entry.concurrency = Some(per_pod as u32);
    }
    if let Some(seconds) = doc.int(&["spec", "functionTimeout"]).filter(|s| *s > 0) {
        entry.timeout = Some(HumanDuration::from(std::time::Duration::from_secs(
            seconds as u64,
        )));
    }
    if let Some(seconds) = doc
        .int(&["spec", "idletimeout"])
        .filter(|s| *s > 0 && *s != 120)
    {
        entry.idle_timeout = Some(HumanDuration::from(std::time::Duration::from_secs(
            seconds as u64,
        )));
    }
    if let Some(memory) = doc.str(&["spec", "resources", "limits", "memory"]) {
        match memory_mb(&memory) {
            Some(mb) => entry.memory = Some(mb),
            None => error(
                &["spec", "resources", "limits", "memory"],
                format!("memory {memory:?} is not a quantity such as 256Mi"),
            ),
        }
    }
    for (path, why) in [
        (
            &["spec", "resources", "limits", "cpu"][..],
            "Gust limits memory, not CPU, per function",
        ),
        (
            &["spec", "resources", "requests"][..],
            "Gust reserves nothing ahead for a function",
        ),
        (
            &field("TargetCPUPercent")[..],
            "Gust scales on requests in flight, not CPU",
        ),
        (
            &field("hpaMetrics")[..],
            "Gust scales on requests in flight",
        ),
        (
            &["spec", "retainPods"][..],
            "Gust keeps no finished instances",
        ),
    ] {
        if !is_empty(doc.get(path)) {
            import
                .warnings
                .push(doc.at(path, format!("{} is ignored: {why}", path.join("."))));
        }
    }
    if let Some(timeout) = doc
        .int(&field("SpecializationTimeout"))
        .filter(|t| *t != 120 && *t > 0)
    {
        import.warnings.push(doc.at(
            &field("SpecializationTimeout"),
            format!("SpecializationTimeout {timeout} is ignored: `gust up --start-timeout` sets it for every function"),
        ));
    }
    // Fission mounts a Kubernetes Secret or ConfigMap of the function's namespace at
    // /secrets/<namespace>/<name>/ (and /configs/...); Gust mounts its own secrets and configs
    // of the same names at the same paths. Their values are not in the specs: they are made
    // with `gust secret create` / `gust config create`.
    let own_namespace = doc
        .str(&["metadata", "namespace"])
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    for (field, what) in [("secrets", "secret"), ("configmaps", "config map")] {
        let Some(list) = doc.get(&["spec", field]).and_then(Value::as_sequence) else {
            continue;
        };
        for reference in list {
            let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
            let namespace = reference
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or(&own_namespace);
            if name.is_empty() || namespace != own_namespace {
                import.errors.push(doc.at(
                    &["spec", field],
                    format!(
                        "{what} {name:?} of namespace {namespace:?}: Gust mounts only the function's own namespace's"
                    ),
                ));
                continue;
            }
            match field {
                "secrets" => entry.secrets.push(name.to_owned()),
                _ => entry.configs.push(name.to_owned()),
            }
        }
    }
    if doc.get(&["spec", "onceOnly"]).and_then(Value::as_bool) == Some(true) {
        import.errors.push(doc.at(
            &["spec", "onceOnly"],
            "onceOnly (one request per instance) has no Gust equivalent for process functions",
        ));
    }
    if !is_empty(doc.get(&["spec", "podspec"])) {
        import.errors.push(doc.at(
            &["spec", "podspec"],
            "a podspec changes the function's pod, which Gust does not have",
        ));
    }
    (import.errors.len() == errors_before).then_some(entry)
}

/// The function a trigger names; function weights (canaries) are refused.
fn function_ref(doc: &Document, import: &mut Import) -> Option<String> {
    let kind = doc
        .str(&["spec", "functionref", "type"])
        .unwrap_or_else(|| "name".to_owned());
    if kind != "name" {
        import.errors.push(doc.at(
            &["spec", "functionref", "type"],
            format!("functionref type {kind:?}: Gust triggers name one function (no weights)"),
        ));
        return None;
    }
    let name = doc
        .str(&["spec", "functionref", "name"])
        .unwrap_or_default();
    if name.is_empty() {
        import
            .errors
            .push(doc.at(&["spec", "functionref"], "names no function"));
        return None;
    }
    Some(name)
}

fn route_config(doc: &Document, import: &mut Import) -> Option<RouteConfig> {
    let function = function_ref(doc, import)?;
    let host = doc.str(&["spec", "host"]).filter(|h| !h.is_empty());
    if let Some(Err(err)) = host.as_deref().map(gust_model::RouteHost::parse) {
        import
            .errors
            .push(doc.at(&["spec", "host"], err.to_string()));
        return None;
    }
    if doc.get(&["spec", "createingress"]).and_then(Value::as_bool) == Some(true) {
        import.warnings.push(doc.at(
            &["spec", "createingress"],
            "createingress is ignored: Gust's public listener serves the route itself",
        ));
    }
    let prefix = doc.str(&["spec", "prefix"]).filter(|p| !p.is_empty());
    let keep_prefix = doc.get(&["spec", "keepPrefix"]).and_then(Value::as_bool) == Some(true);
    if prefix.is_some() && !keep_prefix {
        import.errors.push(doc.at(
            &["spec", "prefix"],
            "a prefix route passes the whole path to the function in Gust, as Fission's keepPrefix: true does; set keepPrefix: true if the function handles that",
        ));
        return None;
    }
    let url = prefix
        .clone()
        .or_else(|| doc.str(&["spec", "relativeurl"]))
        .unwrap_or_default();
    let url = if url.starts_with('/') {
        url
    } else {
        format!("/{url}")
    };
    let mut methods = doc.strings(&["spec", "methods"]);
    if methods.is_empty() {
        methods = doc
            .str(&["spec", "method"])
            .filter(|m| !m.is_empty())
            .into_iter()
            .collect();
    }
    if methods.is_empty() {
        // Fission's default.
        methods.push("GET".to_owned());
    }
    Some(RouteConfig {
        name: None,
        function,
        url,
        methods,
        prefix: prefix.is_some(),
        async_only: false,
        allow_async: false,
        app: None,
        auth: Default::default(),
        // Fission's router serves a trigger with a host only for requests to that host.
        host,
    })
}

fn timer_config(doc: &Document, import: &mut Import) -> Option<TimerConfig> {
    let function = function_ref(doc, import)?;
    if let Some(method) = doc
        .str(&["spec", "method"])
        .filter(|m| !m.is_empty() && !m.eq_ignore_ascii_case("POST"))
    {
        import.errors.push(doc.at(
            &["spec", "method"],
            format!("method {method:?}: Gust's timers invoke with POST"),
        ));
        return None;
    }
    if let Some(subpath) = doc
        .str(&["spec", "subpath"])
        .filter(|s| !s.is_empty() && s != "/")
    {
        import.errors.push(doc.at(
            &["spec", "subpath"],
            format!("subpath {subpath:?}: Gust's timers invoke the function at /"),
        ));
        return None;
    }
    Some(TimerConfig {
        name: None,
        function,
        cron: doc.str(&["spec", "cron"]).unwrap_or_default(),
        tz: None,
        app: None,
    })
}

fn queue_trigger_config(doc: &Document, import: &mut Import) -> Option<MqTriggerConfig> {
    let function = function_ref(doc, import)?;
    let kind = doc.str(&["spec", "messageQueueType"]).unwrap_or_default();
    // Where Fission's connectors (KEDA's scalers) take the broker's address from.
    let (gust_kind, address_key) = match kind.as_str() {
        "nats-jetstream" => ("nats", "natsServer"),
        "rabbitmq" => ("amqp", "host"),
        "redis" => ("redis", "address"),
        other => {
            import.errors.push(doc.at(
                &["spec", "messageQueueType"],
                format!("message queue {other:?} has no Gust trigger (Gust reads nats-jetstream, rabbitmq and redis, and MQTT with `gust mqt`)"),
            ));
            return None;
        }
    };
    if !is_empty(doc.get(&["spec", "secret"])) {
        import.errors.push(doc.at(
            &["spec", "secret"],
            "the broker's credentials in a Kubernetes secret cannot be read: put them in the metadata's address, from an environment variable",
        ));
        return None;
    }
    let Some(address) = doc
        .str(&["spec", "metadata", address_key])
        .filter(|a| !a.is_empty())
    else {
        import.errors.push(doc.at(
            &["spec", "metadata"],
            format!("metadata.{address_key} must give the broker's address for {kind}"),
        ));
        return None;
    };
    let url = if address.contains("://") {
        address
    } else {
        format!("{gust_kind}://{address}")
    };
    for field in [
        "pollingInterval",
        "cooldownPeriod",
        "minReplicaCount",
        "maxReplicaCount",
        "mqtkind",
        "podspec",
    ] {
        if !is_empty(doc.get(&["spec", field])) {
            import.warnings.push(doc.at(
                &["spec", field],
                format!("spec.{field} is ignored: Gust consumes the queue itself, on every node"),
            ));
        }
    }
    Some(MqTriggerConfig {
        name: None,
        function,
        kind: gust_kind.to_owned(),
        url,
        topic: doc.str(&["spec", "topic"]).unwrap_or_default(),
        resp_topic: doc.str(&["spec", "respTopic"]).filter(|t| !t.is_empty()),
        error_topic: doc.str(&["spec", "errorTopic"]).filter(|t| !t.is_empty()),
        max_retries: doc.int(&["spec", "maxRetries"]).map(|n| n.max(0) as u32),
        concurrency: None,
        content_type: doc.str(&["spec", "contentType"]).filter(|t| !t.is_empty()),
        app: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_quantities_map_to_gust() {
        assert_eq!(
            builtin_for_image("ghcr.io/fission/python-env-3.10:latest"),
            Some("python")
        );
        assert_eq!(builtin_for_image("fission/node-env"), Some("node"));
        assert_eq!(builtin_for_image("fission/go-env-1.22"), None);
        assert_eq!(memory_mb("256Mi"), Some(256));
        assert_eq!(memory_mb("1Gi"), Some(1024));
        assert_eq!(memory_mb("128M"), Some(123));
        assert_eq!(memory_mb("lots"), None);
    }
}
