//! Structure-aware fuzz targets, on stable Rust: each takes raw bytes, reads a structured
//! input from them with `arbitrary` (archive entries with hostile names and links, routes and
//! request paths, cron expressions, app files, brokers' message attributes), runs it through
//! Gust's own code and checks a
//! property beyond "does not panic". Shared by `cargo bench --bench fuzz` (a time-bounded
//! random search) and `tests/fuzz_corpus.rs` (every committed corpus input, as a regression
//! test).

use std::io::Write;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};

/// A target: bytes in, `Err` with what property failed (a panic is caught by the caller).
pub type Target = fn(&[u8], &Scratch) -> Result<(), String>;

/// What targets may write to: a directory of their own, and the gust binary.
pub struct Scratch {
    pub dir: PathBuf,
    pub gust: PathBuf,
}

pub const TARGETS: [(&str, Target); 6] = [
    ("archive", archive),
    ("routes", routes),
    ("cron", cron),
    ("names", names),
    ("app-file", app_file),
    ("cloudevent", cloudevent),
];

/// An archive entry as an attacker would write one.
#[derive(Debug, Arbitrary)]
enum Entry {
    File { name: Name, data: Vec<u8> },
    Dir { name: Name },
    Symlink { name: Name, target: Name },
    Hardlink { name: Name, target: Name },
}

/// A path inside an archive: mostly plain, sometimes hostile.
#[derive(Debug, Arbitrary)]
enum Name {
    Plain(u8),
    Nested(u8, u8),
    Parent(u8),
    Absolute(u8),
    Dot,
    Raw(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Plain(n) => format!("f{}", n % 8),
            Name::Nested(a, b) => format!("d{}/f{}", a % 4, b % 8),
            Name::Parent(n) => format!("../escape{}", n % 4),
            Name::Absolute(n) => format!("/tmp/escape{}", n % 4),
            Name::Dot => ".".to_owned(),
            Name::Raw(text) => text.chars().take(120).collect(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Archive {
    zip: bool,
    entries: Vec<Entry>,
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries.iter().take(32) {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        let (name, data): (String, &[u8]) = match entry {
            Entry::File { name, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                (name.text(), data)
            }
            Entry::Dir { name } => {
                header.set_entry_type(tar::EntryType::Directory);
                (name.text(), &[])
            }
            Entry::Symlink { name, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                let _ = header.set_link_name(target.text());
                (name.text(), &[])
            }
            Entry::Hardlink { name, target } => {
                header.set_entry_type(tar::EntryType::Link);
                let _ = header.set_link_name(target.text());
                (name.text(), &[])
            }
        };
        header.set_size(data.len() as u64);
        // Names the tar crate itself refuses (`..`, absolute) go in raw, as an attacker would.
        let raw = name.as_bytes();
        let field = &mut header.as_old_mut().name;
        let len = raw.len().min(field.len());
        field.fill(0);
        field[..len].copy_from_slice(&raw[..len]);
        header.set_cksum();
        let _ = builder.append(&header, data);
    }
    builder.into_inner().unwrap_or_default()
}

fn zip_of(entries: &[Entry]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for entry in entries.iter().take(32) {
        let _ = match entry {
            Entry::File { name, data } => writer
                .start_file(name.text(), options)
                .and_then(|()| writer.write_all(data).map_err(Into::into)),
            Entry::Dir { name } => writer.add_directory(name.text(), options),
            Entry::Symlink { name, target } | Entry::Hardlink { name, target } => {
                writer.add_symlink(name.text(), target.text(), options)
            }
        };
    }
    writer
        .finish()
        .map(|cursor| cursor.into_inner())
        .unwrap_or_default()
}

/// Every symlink under `dir` resolves inside it, and nothing else was written outside it.
fn stays_inside(dir: &Path, root: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| e.to_string())?;
            let resolved = path.parent().unwrap_or(root).join(&target);
            let normal = normalize(&resolved);
            if !normal.starts_with(root) {
                return Err(format!(
                    "{} links outside: {}",
                    path.display(),
                    target.display()
                ));
            }
        } else if meta.is_dir() {
            stays_inside(&path, root)?;
        }
    }
    Ok(())
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Archive extraction: whatever the archive holds, ingest refuses it or publishes a tree
/// whose every link stays inside it; nothing lands next to the store.
pub fn archive(bytes: &[u8], scratch: &Scratch) -> Result<(), String> {
    let mut input = Unstructured::new(bytes);
    let Ok(archive) = Archive::arbitrary(&mut input) else {
        return Ok(());
    };
    let root = scratch.dir.join("code");
    let _ = std::fs::remove_dir_all(&root);
    let store = gust_store::CodeStore::open(&root, gust_store::CodeLimits::default())
        .map_err(|e| e.to_string())?;
    let (filename, data) = match archive.zip {
        true => ("code.zip", zip_of(&archive.entries)),
        false => ("code.tar", tar_of(&archive.entries)),
    };
    if let Ok(code) = store.ingest(&gust_store::CodeUpload {
        filename,
        bytes: &data,
    }) {
        let tree = store.tree(&code.digest);
        stays_inside(&tree, &tree)?;
    }
    for escaped in ["escape0", "escape1", "escape2", "escape3"] {
        if scratch.dir.join(escaped).exists() || Path::new("/tmp").join(escaped).exists() {
            return Err(format!("{escaped} was written outside the store"));
        }
    }
    Ok(())
}

#[derive(Debug, Arbitrary)]
struct RouteCase {
    routes: Vec<(Segments, bool, u8)>,
    method: u8,
    path: Segments,
    // Last, so that inputs written before hosts existed still mean what they meant.
    route_hosts: Vec<u8>,
    request_host: u8,
}

/// Hosts a route may claim (or a request name); `None` is every host.
const HOSTS: [Option<&str>; 3] = [None, Some("a.example"), Some("b.example")];

fn host(choice: u8) -> Option<gust_model::RouteHost> {
    HOSTS[choice as usize % HOSTS.len()].map(|h| gust_model::RouteHost::parse(h).expect("valid"))
}

#[derive(Debug, Arbitrary)]
struct Segments(Vec<Segment>);

#[derive(Debug, Arbitrary)]
enum Segment {
    Literal(u8),
    Param(u8),
    Raw(String),
}

impl Segments {
    fn text(&self, as_pattern: bool) -> String {
        let mut text = String::new();
        for segment in self.0.iter().take(8) {
            text.push('/');
            match segment {
                Segment::Literal(n) => text.push_str(&format!("s{}", n % 4)),
                Segment::Param(n) if as_pattern => text.push_str(&format!("{{p{}}}", n % 4)),
                Segment::Param(n) => text.push_str(&format!("v{n}")),
                Segment::Raw(raw) => text.extend(raw.chars().take(40)),
            }
        }
        if text.is_empty() {
            "/".to_owned()
        } else {
            text
        }
    }
}

/// `%XX` decoded, written here apart from the router's own so that the two are compared.
fn percent_decoded(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Route matching: any routes (those that parse, without conflicts) on any hosts, any path and
/// host: a match is one of the table's routes, takes the method, is the request host's own
/// when one of those matches, and its parameters come from the path.
pub fn routes(bytes: &[u8], _: &Scratch) -> Result<(), String> {
    let mut input = Unstructured::new(bytes);
    let Ok(case) = RouteCase::arbitrary(&mut input) else {
        return Ok(());
    };
    let mut table: Vec<gust_model::Route> = Vec::new();
    for (n, (segments, prefix, method)) in case.routes.iter().take(16).enumerate() {
        let config = gust_model::RouteConfig {
            name: Some(format!("r{n}")),
            function: "f".into(),
            url: segments.text(true),
            methods: vec![METHODS[*method as usize % METHODS.len()].to_owned()],
            prefix: *prefix,
            host: host(case.route_hosts.get(n).copied().unwrap_or(0)).map(String::from),
            ..Default::default()
        };
        let Ok(route) = config.validate(
            gust_model::Namespace::default(),
            gust_model::Name::parse("route", "unused").expect("a valid name"),
        ) else {
            continue;
        };
        if table.iter().all(|r| !r.conflicts_with(&route)) {
            table.push(route);
        }
    }
    let names: Vec<String> = table.iter().map(|r| r.name.to_string()).collect();
    let table = gust_model::RouteTable::new(table);
    let method = METHODS[case.method as usize % METHODS.len()];
    let path = case.path.text(false);
    let request_host = host(case.request_host);
    if let Some(found) = table.find(method, request_host.as_ref(), &path) {
        if !names.contains(&found.route.name.to_string()) {
            return Err(format!("{path} matched a route not in the table"));
        }
        // A route of one host never serves another; one of every host serves only when none
        // of the request's host does.
        match (&found.route.host, &request_host) {
            (Some(theirs), asked) if Some(theirs) != asked.as_ref() => {
                return Err(format!("{path} for {asked:?} matched a route of {theirs}"));
            }
            (None, Some(asked)) => {
                let own: Vec<gust_model::Route> = table
                    .routes()
                    .iter()
                    .filter(|r| r.host.as_ref() == Some(asked))
                    .cloned()
                    .collect();
                if gust_model::RouteTable::new(own)
                    .find(method, Some(asked), &path)
                    .is_some()
                {
                    return Err(format!("{path} on {asked} skipped the host's own route"));
                }
            }
            _ => {}
        }
        // A parameter is one segment of the path, percent-decoded (invalid UTF-8 replaced).
        let segments: Vec<String> = path
            .split('/')
            .map(|segment| String::from_utf8_lossy(&percent_decoded(segment)).into_owned())
            .collect();
        for (name, value) in &found.params {
            if !segments.contains(value) {
                return Err(format!(
                    "parameter {name}={value:?} is no segment of {path}"
                ));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Arbitrary)]
struct CronCase {
    fields: Vec<CronField>,
    zone: Option<u8>,
    after_ms: u64,
}

#[derive(Debug, Arbitrary)]
enum CronField {
    Star,
    Number(u8),
    Range(u8, u8),
    Step(u8),
    Every(u64, u8),
    Named(u8),
    Raw(String),
}

const ZONES: [&str; 4] = ["UTC", "Europe/Berlin", "America/St_Johns", "Not/AZone"];

/// Cron: any expression either is refused or gives a next tick strictly after the instant
/// asked about (or none), never a panic or an overflow.
pub fn cron(bytes: &[u8], _: &Scratch) -> Result<(), String> {
    let mut input = Unstructured::new(bytes);
    let Ok(case) = CronCase::arbitrary(&mut input) else {
        return Ok(());
    };
    let parts: Vec<String> = case
        .fields
        .iter()
        .take(7)
        .map(|field| match field {
            CronField::Star => "*".to_owned(),
            CronField::Number(n) => n.to_string(),
            CronField::Range(a, b) => format!("{a}-{b}"),
            CronField::Step(n) => format!("*/{n}"),
            CronField::Every(n, unit) => {
                format!(
                    "@every {n}{}",
                    ["ms", "s", "m", "h", "d"][*unit as usize % 5]
                )
            }
            CronField::Named(n) => {
                ["@hourly", "@daily", "MON-FRI", "JAN", "L"][*n as usize % 5].to_owned()
            }
            CronField::Raw(raw) => raw.chars().take(40).collect(),
        })
        .collect();
    let expression = parts.join(" ");
    let zone = case.zone.map(|z| ZONES[z as usize % ZONES.len()]);
    let Ok(schedule) = gust_model::Schedule::parse(&expression, zone) else {
        return Ok(());
    };
    // Within the years Gust runs in: 1970 to about 2286.
    let after = case.after_ms % 10_000_000_000_000;
    if let Some(next) = schedule.next_after(after)
        && next <= after
    {
        return Err(format!("{expression:?} after {after} gave {next}"));
    }
    Ok(())
}

/// Names, namespaces and durations: what parses prints back as itself.
pub fn names(bytes: &[u8], _: &Scratch) -> Result<(), String> {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(name) = gust_model::Name::parse("function", &text)
        && name.as_str() != text
    {
        return Err(format!("{text:?} parsed as {name}"));
    }
    if let Ok(duration) = text.parse::<gust_model::HumanDuration>() {
        let again: gust_model::HumanDuration = duration
            .to_string()
            .parse()
            .map_err(|e| format!("{duration} does not parse back: {e}"))?;
        if again != duration {
            return Err(format!("{text:?} became {duration} then {again}"));
        }
    }
    Ok(())
}

#[derive(Debug, Arbitrary)]
struct AppCase {
    lines: Vec<(u8, u8, AppValue)>,
}

#[derive(Debug, Arbitrary)]
enum AppValue {
    Word(u8),
    Number(i64),
    Duration(u16),
    Variable(u8),
    Raw(String),
}

const APP_KEYS: [&str; 16] = [
    "app",
    "functions",
    "hello",
    "code",
    "env",
    "timeout",
    "memory",
    "routes",
    "url",
    "function",
    "timers",
    "cron",
    "queue_triggers",
    "env_vars",
    "secrets",
    "namespace",
];

/// The app file reader, through the binary (`gust validate`): any YAML made of its own keys
/// and hostile values is accepted or refused with a message, never a crash.
pub fn app_file(bytes: &[u8], scratch: &Scratch) -> Result<(), String> {
    let mut input = Unstructured::new(bytes);
    let Ok(case) = AppCase::arbitrary(&mut input) else {
        return Ok(());
    };
    let mut text = String::new();
    for (indent, key, value) in case.lines.iter().take(24) {
        let value = match value {
            AppValue::Word(n) => [
                "python",
                "hello.py",
                "/hello",
                "*/5 * * * *",
                "",
                "[]",
                "{}",
            ][*n as usize % 7]
                .to_owned(),
            AppValue::Number(n) => n.to_string(),
            AppValue::Duration(n) => format!("{n}ms"),
            AppValue::Variable(n) => format!("${{VAR{}:-x}}", n % 3),
            AppValue::Raw(raw) => format!("{:?}", raw.chars().take(40).collect::<String>()),
        };
        text.push_str(&"  ".repeat(*indent as usize % 4));
        text.push_str(APP_KEYS[*key as usize % APP_KEYS.len()]);
        text.push_str(": ");
        text.push_str(&value);
        text.push('\n');
    }
    let file = scratch.dir.join("gust.yaml");
    std::fs::write(&file, &text).map_err(|e| e.to_string())?;
    std::fs::write(scratch.dir.join("hello.py"), "def main():\n    return 1\n")
        .map_err(|e| e.to_string())?;
    let output = std::process::Command::new(&scratch.gust)
        .args(["validate", "-f"])
        .arg(&file)
        .env("XDG_CONFIG_HOME", &scratch.dir)
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0 | 1) if !stderr.contains("panicked") => Ok(()),
        code => Err(format!(
            "gust validate exited {code:?} on\n{text}\n{stderr}"
        )),
    }
}

/// Runs `target` on `bytes`, a panic counted as a failure.
pub fn run(target: Target, bytes: &[u8], scratch: &Scratch) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(bytes, scratch))) {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// The committed inputs of a target, oldest first.
pub fn corpus(root: &Path, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(target))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect()
}

#[derive(Debug, Arbitrary)]
struct EventCase {
    id: String,
    subject: String,
    content_type: Option<String>,
    time_ms: u64,
}

/// CloudEvents attributes as a broker hands them over (any text: an MQTT user property, an
/// AMQP message id, a topic): every `ce-*` header is present, a valid header value, and
/// percent-decodes to the attribute; a content type is kept only when it is a valid header.
pub fn cloudevent(bytes: &[u8], _: &Scratch) -> Result<(), String> {
    let mut input = Unstructured::new(bytes);
    let Ok(case) = EventCase::arbitrary(&mut input) else {
        return Ok(());
    };
    let headers =
        gust_trigger_mq::cloudevent::event_headers(&gust_trigger_mq::cloudevent::EventAttributes {
            id: &case.id,
            source: "gust:default/mqt/fuzz",
            event_type: "dev.gust.mqt.mqtt",
            time_ms: case.time_ms,
            subject: &case.subject,
            content_type: case.content_type.as_deref(),
        });
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().map(str::to_owned))
    };
    for (name, expected) in [
        ("ce-specversion", Some("1.0")),
        ("ce-id", Some(case.id.as_str())),
        ("ce-source", Some("gust:default/mqt/fuzz")),
        ("ce-type", Some("dev.gust.mqt.mqtt")),
        ("ce-subject", Some(case.subject.as_str())),
        ("ce-time", None),
    ] {
        let Some(Ok(text)) = value(name) else {
            return Err(format!("{name} is missing or not ASCII for {case:?}"));
        };
        if let Some(expected) = expected
            && percent_decoded(&text) != expected.as_bytes()
        {
            return Err(format!("{name}: {text:?} does not decode to {expected:?}"));
        }
    }
    let valid_type = case
        .content_type
        .as_deref()
        .is_some_and(|t| http::HeaderValue::from_str(t).is_ok());
    if value("content-type").is_some() != valid_type {
        return Err(format!(
            "content type {:?} kept or dropped wrongly",
            case.content_type
        ));
    }
    Ok(())
}
