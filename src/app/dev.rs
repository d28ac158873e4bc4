//! `gust dev`: applies an app, then applies it again on every save, and streams its functions'
//! logs in one view. A file that does not validate, or code that does not load or build, is
//! shown and changes nothing: the last good revision keeps serving. Ctrl-C stops watching and
//! leaves everything deployed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gust_api_types::{LogLine, NodeView};
use http::Method;
use notify::{EventKind, RecursiveMode, Watcher};

use super::apply::execute;
use super::load::LoadedApp;
use super::plan::{Action, Kind, PlanOptions, plan};
use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::commands::function::LogCursor;

/// Saves closer together than this are one change (an editor writes a file in steps).
const DEBOUNCE: Duration = Duration::from_millis(40);
/// How often the functions' logs are read.
const LOG_POLL: Duration = Duration::from_millis(200);

pub async fn dev(file: &Path, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let dir = super::watched_dir(file).canonicalize()?;
    // What build commands write: not a save (it would make the next round, for ever).
    let outputs: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let built = outputs.clone();
    let client = ApiClient::new(connection)?;
    let public = public_url(&client).await;
    let functions: Arc<Mutex<Vec<String>>> = Arc::default();
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();

    // One pending signal is enough: saves that arrive while a round runs make one more round.
    let (changed, mut saves) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let built = built.lock().expect("never poisoned");
        if let Ok(event) = event
            && is_a_save(&event)
            && !event.paths.iter().all(|path| built.contains(path))
        {
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;

    let mut round = Round {
        client,
        file: file.to_owned(),
        namespace: connection.namespace()?.to_owned(),
        public,
        functions: functions.clone(),
        outputs,
        first: true,
    };
    round.run().await;
    let log_client = ApiClient::new(connection)?;
    let namespace = round.client.namespace.clone();
    tokio::spawn(follow_logs(log_client, namespace, functions, color));
    eprintln!(
        "watching {} for changes (Ctrl-C stops watching; everything stays deployed)",
        dir.display()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped watching: everything stays deployed");
                return Ok(());
            }
            Some(()) = saves.recv() => {
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, saves.recv()).await {}
                round.run().await;
            }
        }
    }
}

/// A change worth applying: a file written, made, renamed or removed, outside what tools
/// write beside the sources (compiled Python, version control, editors' swap files).
fn is_a_save(event: &notify::Event) -> bool {
    let writes = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    );
    let ignored = |path: &PathBuf| {
        path.components().any(|c| {
            let part = c.as_os_str().to_string_lossy();
            ["__pycache__", ".git", ".gust", "node_modules"].contains(&part.as_ref())
        }) || path.file_name().is_some_and(|name| {
            let name = name.to_string_lossy();
            name.ends_with('~')
                || name.ends_with(".swp")
                || name.ends_with(".swx")
                || name == "4913"
        })
    };
    writes && event.paths.iter().any(|path| !ignored(path))
}

/// One apply of the file as it is now.
struct Round {
    client: ApiClient,
    file: PathBuf,
    namespace: String,
    public: Option<String>,
    functions: Arc<Mutex<Vec<String>>>,
    outputs: Arc<Mutex<Vec<PathBuf>>>,
    /// No round has run yet: one that changes nothing still says what is live.
    first: bool,
}

impl Round {
    async fn run(&mut self) {
        let started = Instant::now();
        let loaded = match super::read_app(&self.file, &self.namespace) {
            Ok(loaded) => loaded,
            Err(problems) => {
                eprintln!(
                    "error: {problems}\nnothing applied: the last good revisions keep serving"
                );
                return;
            }
        };
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
        self.client.namespace = loaded.namespace(&self.namespace);
        *self.functions.lock().expect("never poisoned") =
            loaded.spec.functions.keys().cloned().collect();
        if let Ok(dir) = loaded.dir.canonicalize() {
            *self.outputs.lock().expect("never poisoned") = loaded
                .spec
                .functions
                .values()
                .filter(|f| f.build.is_some())
                .map(|f| dir.join(&f.code))
                .collect();
        }
        let plan = match plan(&self.client, &loaded, PlanOptions::default()).await {
            Ok(plan) => plan,
            Err(err) => {
                eprintln!("error: {err:#}\nnothing applied: the last good revisions keep serving");
                return;
            }
        };
        if plan.changes() == 0 {
            if std::mem::take(&mut self.first) {
                for name in loaded.spec.functions.keys() {
                    let at = urls(&loaded, name, self.public.as_deref());
                    println!("up to date: function {name}{at}");
                }
            }
            return;
        }
        self.first = false;
        if let Err(err) = execute(&self.client, &loaded, &plan).await {
            eprintln!("error: {err:#}\nthe last good revisions keep serving");
            return;
        }
        let took = started.elapsed();
        for step in plan.steps.iter().filter(|s| s.action != Action::Unchanged) {
            if step.kind == Kind::Function && step.action != Action::Delete {
                println!(
                    "live in {} ms: function {}{}",
                    took.as_millis(),
                    step.name,
                    urls(&loaded, &step.name, self.public.as_deref())
                );
            }
        }
    }
}

/// " at URL, URL" for the routes of `function`, when the public listener's address is known.
fn urls(loaded: &LoadedApp, function: &str, public: Option<&str>) -> String {
    let Some(public) = public else {
        return String::new();
    };
    let found: Vec<String> = loaded
        .spec
        .routes
        .values()
        .filter(|r| r.function == function)
        .map(|r| format!("{}{}", public.trim_end_matches('/'), r.url))
        .collect();
    if found.is_empty() {
        String::new()
    } else {
        format!(" at {}", found.join(", "))
    }
}

/// The public listener's URL, as the node the CLI talks to reports it.
async fn public_url(client: &ApiClient) -> Option<String> {
    let nodes: Vec<NodeView> = client
        .json(Method::GET, &ApiPath::new(["v1", "nodes"]), NO_BODY)
        .await
        .ok()?;
    nodes.into_iter().find_map(|node| node.public)
}

/// Prints every new line of the app's functions, each with its function's name (in its own
/// colour on a terminal), until the process ends.
async fn follow_logs(
    mut client: ApiClient,
    namespace: String,
    functions: Arc<Mutex<Vec<String>>>,
    color: bool,
) {
    const COLORS: [u8; 6] = [36, 33, 35, 32, 34, 31];
    client.namespace = namespace;
    // Lines from before `gust dev` started are history, not this session's.
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut cursors: std::collections::BTreeMap<String, LogCursor> = Default::default();
    loop {
        let names = functions.lock().expect("never poisoned").clone();
        let width = names.iter().map(String::len).max().unwrap_or(0);
        for (index, name) in names.iter().enumerate() {
            let cursor = cursors.entry(name.clone()).or_default();
            let Ok(lines) = client
                .json::<Vec<LogLine>>(Method::GET, &cursor.path(name), NO_BODY)
                .await
            else {
                continue;
            };
            cursor.advance(&lines);
            for line in lines.iter().filter(|l| l.time_ms >= since_ms) {
                let label = format!("{name:>width$}");
                if color {
                    let code = COLORS[index % COLORS.len()];
                    println!("\x1b[{code}m{label} |\x1b[0m {}", line.text);
                } else {
                    println!("{label} | {}", line.text);
                }
            }
        }
        tokio::time::sleep(LOG_POLL).await;
    }
}
