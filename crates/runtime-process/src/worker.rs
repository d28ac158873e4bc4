//! One worker process: started generic (sandboxed, listening on its Unix socket or a port in
//! its own network namespace), then
//! specialized for one function revision, then handed requests one at a time over a kept-alive
//! HTTP/1.1 connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use gust_executor::{
    Admission, BodyWatch, FunctionLogs, Instance, InstanceSpec, InvokeError, LogStream,
    RequestBody, RequestId, ResponseBody, StartPhases,
};
use gust_model::{NetworkPolicy, WorkerProtocol};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;

use crate::RuntimeError;
use crate::address::WorkerAddress;
use crate::cgroup::{Cgroups, WorkerCgroup};
use crate::connection::{Connection, WorkerBody};
use crate::network::{self, Uplink};
use crate::sandbox::{BindSources, Sandbox, WorkerPaths, prepare_dirs};

/// How long a worker may take from process start to answering `/healthz`.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a running worker may take to accept and answer a new connection's `/healthz`.
const LANE_OPEN_DEADLINE: Duration = Duration::from_secs(5);
/// Header a worker server sets when the function raised instead of answering.
pub const FUNCTION_ERROR_HEADER: &str = "x-gust-function-error";
/// File in a worker's directory holding the pid of its process.
pub const PID_FILE: &str = "pid";
/// Lines of a generic worker's output kept to explain a failed start.
const EARLY_LINES: usize = 20;
/// How long loading a function's code may take in a worker (as Fission's specialization
/// timeout). A request waits for it only up to the executor's start bound; a load that
/// finishes later still serves the requests after it.
const SPECIALIZE_DEADLINE: Duration = Duration::from_secs(120);
/// The name Fission's first protocol loads the code from (`/userfunc/user`).
const FISSION_V1_FILE: &str = "user";
/// Most of an error answer's body read to keep the connection usable; a worker that sends
/// more with its function-error header is stopped instead.
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// What a worker's output lines are attributed to.
#[derive(Default)]
struct LogTarget {
    function: Option<String>,
    /// Output of a generic worker before it has a function: kept (a few lines) to explain a
    /// worker that fails to start.
    early: Vec<String>,
    /// The request being served, or the last one served: output flushed just after a
    /// response still belongs to that request.
    request_id: Option<String>,
    /// The runtime reported its heap exhausted (Node.js's fatal heap error).
    heap_exhausted: bool,
}

/// What V8 prints before it aborts for want of heap.
const HEAP_EXHAUSTED: &[u8] = b"JavaScript heap out of memory";

/// The recipe for starting one environment's workers.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub environment: String,
    pub program: Vec<String>,
    /// A built-in environment's server sources, mounted at `{env}`.
    pub env_dir: Option<PathBuf>,
    /// A custom environment's `--mount`s, read-only: (resolved host path, path inside).
    pub extra_ro: Vec<(PathBuf, PathBuf)>,
    /// The function memory (MB) the command's heap limit was set for, where it sets one
    /// (Node.js); such workers serve only functions with that memory.
    pub heap_sized_for: Option<u32>,
    /// The loopback TCP port its workers listen on in their own network namespace; `None`:
    /// the socket Gust hands them.
    pub port: Option<u16>,
    pub protocol: WorkerProtocol,
}

pub struct Worker {
    id: String,
    dir: PathBuf,
    paths: WorkerPaths,
    code_path: PathBuf,
    child: Child,
    /// The process (and, sandboxed, process group) id of `child`.
    pid: Option<u32>,
    address: WorkerAddress,
    protocol: WorkerProtocol,
    sender: Connection,
    log_target: Arc<Mutex<LogTarget>>,
    function: String,
    /// The function's memory limit, once specialized.
    memory_mb: u32,
    /// Its kernel limits; `None` where the host gives Gust no cgroups.
    cgroup: Option<WorkerCgroup>,
    /// Its sandbox's way out (public addresses only); `None` once cut or where there is none.
    uplink: Option<Uplink>,
    dead: bool,
    /// Where its start went (the cold start's phases), once specialized.
    pub(crate) start_phases: StartPhases,
}

impl Worker {
    /// Starts a generic worker and waits until it answers `/healthz`.
    pub async fn start(
        id: String,
        (workers_dir, values_root): (&Path, Option<&Path>),
        sandbox: &Sandbox,
        cgroups: Option<&Cgroups>,
        command: &WorkerCommand,
        logs: Arc<FunctionLogs>,
    ) -> Result<Self, RuntimeError> {
        let failed = |detail: String| RuntimeError::WorkerStart {
            environment: command.environment.clone(),
            detail,
        };
        let dir = workers_dir.join(&id);
        let mut paths = WorkerPaths::new(&dir);
        if let Some(root) = values_root {
            let unguessable: [u8; 16] = rand::random();
            paths = paths.with_values(root.join(format!("{id}-{}", hex::encode(unguessable))));
        }
        // Until the worker is ready, a failed start takes its directories and cgroups with it.
        let mut leftovers = Leftovers {
            dir: Some(dir.clone()),
            values_dir: paths.values_dir.clone(),
            cgroup: None,
        };
        prepare_dirs(&paths)?;
        leftovers.cgroup = cgroups
            .map(|c| c.worker(&id))
            .transpose()
            .map_err(|e| failed(format!("cannot create its cgroup: {e}")))?;
        let (mut child, info) = {
            let mut binds = BindSources::open(
                &paths,
                command.env_dir.as_deref(),
                sandbox,
                command.port.is_some(),
            )?;
            let join = match &leftovers.cgroup {
                Some(cgroup) => cgroup
                    .procs_files()
                    .map_err(|e| failed(format!("cannot open its cgroup: {e}")))?,
                None => Vec::new(),
            };
            let mut cmd = sandbox.command(&binds, command, &join);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let child = cmd
                .spawn()
                .map_err(|e| failed(format!("cannot run {:?}: {e}", command.program[0])))?;
            (child, binds.take_info())
            // `binds` closes Gust's copy of the listener here: the worker holds the only one.
        };
        let pid = child.id();
        // Until the worker is ready, dropping this future (a cancelled pool refill, a shutdown)
        // must take the whole sandbox down, not only the outer process.
        let starting = StartGuard(pid);
        // Remembered so that a Gust restarted after a kill -9 can stop what this one left.
        if let Some(pid) = pid {
            let _ = std::fs::write(dir.join(PID_FILE), pid.to_string());
        }
        let log_target = Arc::new(Mutex::new(LogTarget::default()));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump_lines(
                stdout,
                LogStream::Stdout,
                id.clone(),
                log_target.clone(),
                logs.clone(),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump_lines(
                stderr,
                LogStream::Stderr,
                id.clone(),
                log_target.clone(),
                logs,
            ));
        }
        let uplinks = match sandbox {
            Sandbox::Bubblewrap { uplinks, .. } => uplinks.as_ref(),
            Sandbox::Disabled => None,
        };
        // The sandbox's network namespace: connected to the outside, and where a worker that
        // listens on a port is reached.
        let network = async {
            let Some(info) = info else {
                return Ok((None, None));
            };
            let sandbox_pid = network::sandbox_pid(info).await?;
            let netns = match command.port {
                Some(_) => Some(Arc::new(sandbox_netns(sandbox_pid, pid)?)),
                None => None,
            };
            let uplink = match uplinks {
                Some(uplinks) => Some(uplinks.connect(sandbox_pid).await?),
                None => None,
            };
            Ok::<_, String>((uplink, netns))
        };
        let (uplink, netns) = match network.await {
            Ok(connected) => connected,
            // A worker that exited at once takes its namespace with it: its exit and what it
            // said are the cause, not the network set-up that failed after.
            Err(err) => {
                return Err(failed(
                    exit_report(&mut child, &log_target, Duration::from_millis(500))
                        .await
                        .unwrap_or(err),
                ));
            }
        };
        let address = match command.port {
            Some(port) => WorkerAddress::Tcp { netns, port },
            None => WorkerAddress::Unix(paths.socket.clone()),
        };
        let started = Instant::now();
        let sender = loop {
            if let Some(report) = exit_report(&mut child, &log_target, Duration::ZERO).await {
                return Err(failed(report));
            }
            let Some(left) = START_DEADLINE.checked_sub(started.elapsed()) else {
                return Err(failed(match command.protocol {
                    WorkerProtocol::Gust => {
                        format!("no answer on /healthz within {START_DEADLINE:?}")
                    }
                    _ => format!(
                        "nothing listened on port {} within {START_DEADLINE:?}",
                        command.port.unwrap_or_default()
                    ),
                }));
            };
            // The socket listens from the start, so a probe waits for the worker to accept
            // rather than failing; a worker that dies resets it. A port is refused until the
            // worker listens on it.
            if let Ok(Some(sender)) =
                tokio::time::timeout(left, probe(&address, command.protocol)).await
            {
                break sender;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        std::mem::forget(starting);
        let cgroup = leftovers.keep();
        Ok(Self {
            code_path: sandbox.code_path(&paths, command.protocol),
            id,
            dir,
            paths,
            child,
            pid,
            address,
            protocol: command.protocol,
            sender,
            log_target,
            function: String::new(),
            memory_mb: 0,
            cgroup,
            uplink,
            dead: false,
            start_phases: StartPhases::default(),
        })
    }

    pub fn is_alive(&mut self) -> bool {
        !self.dead && matches!(self.child.try_wait(), Ok(None))
    }

    /// Loads a revision's code into this worker. A worker is specialized at most once.
    pub async fn specialize(
        &mut self,
        spec: &InstanceSpec,
        first_request: &RequestId,
    ) -> Result<(), InvokeError> {
        let function = spec.function.to_string();
        self.function = function.clone();
        self.memory_mb = spec.limits.memory_mb;
        let start_failed = |detail: String| InvokeError::StartFailed {
            function: function.clone(),
            detail,
        };
        // Each phase's time, for the cold start's report and its trace
        // (`GUST_LOG=gust_runtime_process=debug`).
        let began = Instant::now();
        if let Some(cgroup) = &self.cgroup {
            cgroup.limit_memory(spec.limits.memory_mb).map_err(|e| {
                self.dead = true;
                start_failed(format!(
                    "cannot limit its memory to {} MB ({e}); the runtime alone may use more",
                    spec.limits.memory_mb
                ))
            })?;
        }
        if let Some(uplink) = self.uplink.take() {
            if spec.network == NetworkPolicy::None {
                uplink.cut().await;
            } else if spec.allow_outbound.is_empty() {
                self.uplink = Some(uplink);
            } else {
                self.uplink = Some(uplink.confine(&spec.allow_outbound).await.map_err(|e| {
                    self.dead = true;
                    start_failed(format!("cannot apply --allow-outbound: {e}"))
                })?);
            }
        }
        let limited = began.elapsed();
        let placing = Instant::now();
        link_tree(&spec.code_dir, &self.paths.code_dir)
            .map_err(|e| start_failed(format!("cannot place the code: {e}")))?;
        if !spec.mounted.is_empty() {
            let Some(values_dir) = &self.paths.values_dir else {
                self.dead = true;
                return Err(start_failed(
                    "its secrets and configs cannot be mounted without the sandbox".to_owned(),
                ));
            };
            spec.place_mounted_values(values_dir)
                .map_err(|e| start_failed(format!("cannot mount its secrets and configs: {e}")))?;
        }
        let placed = placing.elapsed();
        {
            let mut target = self
                .log_target
                .lock()
                .expect("log target lock is never poisoned");
            target.function = Some(gust_executor::function_key(&spec.namespace, &spec.function));
            target.request_id = Some(first_request.to_string());
        }
        let filepath = match &spec.code_file {
            Some(file) => self.code_path.join(file),
            None => self.code_path.clone(),
        };
        let entrypoint = spec.entrypoint.clone().unwrap_or_default();
        let (target, body) = match self.protocol {
            WorkerProtocol::Gust => (
                "/v2/specialize",
                serde_json::json!({
                    "filepath": filepath,
                    "functionName": entrypoint,
                    "env": spec.env_with_secrets(),
                    "requestBody": spec.limits.request_body,
                })
                .to_string(),
            ),
            // Fission's fields, as its executor sends them.
            WorkerProtocol::Fission => (
                "/v2/specialize",
                serde_json::json!({
                    "filepath": filepath,
                    "functionName": entrypoint,
                    "url": "",
                    "FunctionMetadata": {
                        "name": spec.function,
                        "namespace": spec.namespace,
                        "uid": spec.function_uid,
                        "resourceVersion": spec.revision.to_string(),
                    },
                })
                .to_string(),
            ),
            // The code is at /userfunc/user: the one source file, under that name.
            WorkerProtocol::FissionV1 => {
                let Some(file) = spec.code_file.as_deref() else {
                    self.dead = true;
                    return Err(start_failed(
                        "a fission-v1 environment loads one source file, not a directory"
                            .to_owned(),
                    ));
                };
                if file != FISSION_V1_FILE {
                    std::os::unix::fs::symlink(file, self.paths.code_dir.join(FISSION_V1_FILE))
                        .map_err(|e| start_failed(format!("cannot place the code: {e}")))?;
                }
                ("/specialize", String::new())
            }
        };
        let request = Request::post(target)
            .header(HOST, "gust-worker")
            .header(CONTENT_TYPE, "application/json")
            .body(RequestBody::full(body))
            .expect("a fixed request is valid");
        let exchange = async {
            // The answer comes from a process that has just run the function's import: read
            // no more of it than a short error, however much it sends.
            let too_long = "the worker's answer to loading the code was too long";
            let broke = |sender: &Connection| match sender.overran() {
                true => too_long,
                false => "the worker exited while loading the code, or answered with no valid HTTP",
            };
            let Some(response) = send(&mut self.sender, &self.address, request).await else {
                return Err(broke(&self.sender));
            };
            let status = response.status();
            let body = Limited::new(response.into_body(), ERROR_BODY_BYTES)
                .collect()
                .await
                .map_err(|err| match err.is::<http_body_util::LengthLimitError>() {
                    true => too_long,
                    false => broke(&self.sender),
                })?;
            Ok::<_, &str>((status, body.to_bytes()))
        };
        let loading = Instant::now();
        match tokio::time::timeout(SPECIALIZE_DEADLINE, exchange).await {
            Ok(Ok((status, body))) if status.is_success() => {
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                let loaded = loading.elapsed();
                // The built-in servers say how much of the round trip was their own work; the
                // rest is the exchange itself (waking the worker, and Gust on the answer).
                let worker_load_ms = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("loadMs").and_then(|ms| ms.as_f64()));
                tracing::debug!(
                    function = %function,
                    limits_ms = ms(limited),
                    place_ms = ms(placed),
                    load_ms = ms(loaded),
                    worker_load_ms,
                    "specialized"
                );
                self.start_phases.limits = limited;
                self.start_phases.place = placed;
                self.start_phases.load = loaded;
                Ok(())
            }
            Ok(Ok((_, body))) => {
                self.dead = true;
                let cause = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(sanitize_cause))
                    .unwrap_or_else(|| "the worker refused the code".to_owned());
                Err(InvokeError::LoadFailed { function, cause })
            }
            Ok(Err(cause)) => {
                self.kill();
                Err(InvokeError::LoadFailed {
                    function,
                    cause: cause.to_owned(),
                })
            }
            Err(_) => {
                self.kill();
                Err(InvokeError::LoadFailed {
                    function,
                    cause: "loading the code did not finish in time".to_owned(),
                })
            }
        }
    }

    fn kill(&mut self) {
        self.dead = true;
        kill_sandbox(self.pid);
        let _ = self.child.start_kill();
    }
}

/// The network namespace of the sandbox whose first process is `sandbox_pid`, opened (the
/// descriptor names it for good) and then checked to be bwrap's child: a pid reused between
/// bwrap saying it and the open would otherwise give another process's namespace, the host's
/// perhaps, where Gust would then connect.
fn sandbox_netns(sandbox_pid: u32, bwrap_pid: Option<u32>) -> Result<std::fs::File, String> {
    let netns = std::fs::File::open(format!("/proc/{sandbox_pid}/ns/net"))
        .map_err(|e| format!("cannot open the sandbox's network namespace: {e}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{sandbox_pid}/stat")).unwrap_or_default();
    // `pid (comm) state ppid ...`: the command may hold spaces and parentheses.
    let parent = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse::<u32>().ok());
    if parent.is_none() || parent != bwrap_pid {
        return Err(format!(
            "process {sandbox_pid} is no longer the worker's sandbox"
        ));
    }
    Ok(netns)
}

/// How a starting worker ended, with what it printed, if it has exited (or does within
/// `wait`).
async fn exit_report(
    child: &mut Child,
    log_target: &Mutex<LogTarget>,
    wait: Duration,
) -> Option<String> {
    let status = match child.try_wait().ok().flatten() {
        Some(status) => status,
        None => tokio::time::timeout(wait, child.wait()).await.ok()?.ok()?,
    };
    // Give the output pumps a moment to read what the worker said before dying.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let said = log_target
        .lock()
        .expect("log target lock is never poisoned")
        .early
        .join(" | ");
    Some(format!(
        "the worker exited during start with {status}: {said}"
    ))
}

/// A worker's error name is shown to callers: keep it to a short identifier.
fn sanitize_cause(cause: &str) -> String {
    cause
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        .take(64)
        .collect()
}

/// Sends a request to a worker and waits for the head of its answer (`None`: the exchange
/// broke). A worker may close its connection after any answer (`Connection: close`, as
/// servers that serve one request per connection do, or after a body it did not read), and
/// the close may still be on its way when the next request is sent: a request that did not go
/// out on the old connection goes on a new one. A request that went out is never sent twice.
async fn send(
    sender: &mut Connection,
    address: &WorkerAddress,
    request: Request<RequestBody>,
) -> Option<Response<WorkerBody>> {
    let unsent = if sender.is_closed() || sender.ready().await.is_err() {
        request
    } else {
        match sender.try_send_request(request).await {
            Ok(response) => return Some(response),
            Err(unsent) => unsent?,
        }
    };
    // A worker that no longer accepts keeps the closed connection: the exchange broke.
    *sender = tokio::time::timeout(LANE_OPEN_DEADLINE, address.connect())
        .await
        .ok()
        .flatten()?;
    sender.ready().await.ok()?;
    sender.send_request(unsent).await
}

/// Connects and, for a worker of Gust's protocol, asks `/healthz`; `Some` once the worker is
/// ready. (Fission's servers are ready once they accept: not all of them serve `/healthz`.)
async fn probe(address: &WorkerAddress, protocol: WorkerProtocol) -> Option<Connection> {
    let mut sender = address.connect().await?;
    if protocol.is_fission() {
        return Some(sender);
    }
    let request = Request::get("/healthz")
        .header(HOST, "gust-worker")
        .body(RequestBody::full(Bytes::new()))
        .expect("a fixed request is valid");
    let response = sender.send_request(request).await?;
    let ready = response.status().is_success();
    // A custom environment's server is not trusted with Gust's memory either.
    Limited::new(response.into_body(), ERROR_BODY_BYTES)
        .collect()
        .await
        .ok()?;
    ready.then_some(sender)
}

enum Exchange {
    /// The response's head; its body streams from the connection after.
    Answered(http::response::Parts, WorkerBody),
    Broken,
}

/// Sends one request on a worker connection and waits for the head of its answer, within
/// `timeout` (`None` when it ran out).
async fn exchange(
    sender: &mut Connection,
    address: &WorkerAddress,
    protocol: WorkerProtocol,
    request: Request<RequestBody>,
    timeout: Duration,
) -> Option<Exchange> {
    let (mut parts, body) = request.into_parts();
    // The worker speaks origin-form HTTP/1.1; keep only path and query. Fission's servers
    // serve their function at `/` alone (the path is in `X-Fission-Full-Url`).
    let target = match protocol {
        WorkerProtocol::Gust => parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        _ => match parts.uri.query() {
            Some(query) => format!("/?{query}"),
            None => "/".to_owned(),
        },
    };
    parts.uri = target
        .parse()
        .expect("a path and query taken from a valid URI is a valid URI");
    if !parts.headers.contains_key(HOST) {
        parts
            .headers
            .insert(HOST, HeaderValue::from_static("gust-worker"));
    }
    let request = Request::from_parts(parts, body);
    let exchange = async {
        match send(sender, address, request).await {
            Some(response) => {
                let (parts, body) = response.into_parts();
                Exchange::Answered(parts, body)
            }
            None => Exchange::Broken,
        }
    };
    tokio::time::timeout(timeout, exchange).await.ok()
}

fn body_broke_off(watch: Option<&BodyWatch>) -> bool {
    watch.is_some_and(|watch| watch.fault().is_some())
}

/// What an exchange means for the caller, and whether the worker must be killed.
async fn outcome(
    exchange: Option<Exchange>,
    function: String,
    timeout: Duration,
    memory_mb: u32,
    out_of_memory: impl FnOnce() -> bool,
) -> (Result<Response<ResponseBody>, InvokeError>, bool) {
    match exchange {
        None => (Err(InvokeError::Timeout { function, timeout }), true),
        Some(Exchange::Broken) if out_of_memory() => (
            Err(InvokeError::OutOfMemory {
                function,
                limit_mb: memory_mb,
            }),
            true,
        ),
        Some(Exchange::Broken) => (Err(InvokeError::WorkerExited { function }), true),
        Some(Exchange::Answered(parts, body))
            if parts.headers.contains_key(FUNCTION_ERROR_HEADER) =>
        {
            // Read the short error body so the connection can serve again; a worker that
            // sends more, or not in time, is not trusted with another request.
            let drained =
                tokio::time::timeout(timeout, Limited::new(body, ERROR_BODY_BYTES).collect())
                    .await
                    .is_ok_and(|read| read.is_ok());
            (Err(InvokeError::FunctionError { function }), !drained)
        }
        Some(Exchange::Answered(parts, body)) => {
            let body = body.map_err(move |_| InvokeError::WorkerExited {
                function: function.clone(),
            });
            (
                Ok(Response::from_parts(
                    parts,
                    gust_executor::body::stream(body),
                )),
                false,
            )
        }
    }
}

impl Worker {
    /// Whether the worker died for want of memory: killed by the kernel at its cgroup's
    /// limit, or its runtime's own heap limit reached.
    async fn died_of_memory(&mut self) -> bool {
        // The runtime's last words may still be in the pipe: give them a moment.
        let _ = tokio::time::timeout(Duration::from_millis(200), self.child.wait()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.out_of_memory()
    }

    fn out_of_memory(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_killed())
            || self
                .log_target
                .lock()
                .expect("log target lock is never poisoned")
                .heap_exhausted
    }

    fn attribute_output_to(&self, id: &RequestId) {
        self.log_target
            .lock()
            .expect("log target lock is never poisoned")
            .request_id = Some(id.to_string());
    }
}

#[async_trait]
impl Instance for Worker {
    async fn handle(
        &mut self,
        id: &RequestId,
        request: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, InvokeError> {
        self.attribute_output_to(id);
        let body = request.body().watch();
        let exchange = exchange(
            &mut self.sender,
            &self.address,
            self.protocol,
            request,
            timeout,
        )
        .await;
        // A caller's body that broke off explains a broken exchange: no memory check then.
        let out_of_memory = matches!(exchange, Some(Exchange::Broken))
            && !body_broke_off(body.as_deref())
            && self.died_of_memory().await;
        let (result, kill) = outcome(
            exchange,
            self.function.clone(),
            timeout,
            self.memory_mb,
            || out_of_memory,
        )
        .await;
        if kill {
            self.kill();
        }
        result
    }

    fn start_phases(&self) -> Option<StartPhases> {
        Some(self.start_phases)
    }

    fn is_healthy(&mut self) -> bool {
        // A connection the worker closed is opened again for the next request.
        self.is_alive()
    }

    fn cpu_time(&mut self) -> Option<Duration> {
        self.cgroup.as_ref().and_then(|c| c.cpu_usage())
    }

    async fn stop(mut self: Box<Self>) {
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// A worker that serves several requests at once (`--concurrency`). Each [`Lane`] is a
/// connection of its own to it, serving one request at a time; the executor sees each lane
/// as an instance. The process stops when its last lane is dropped.
pub struct SharedWorker {
    worker: Mutex<Worker>,
    address: WorkerAddress,
    protocol: WorkerProtocol,
    function: String,
    memory_mb: u32,
    /// Lanes open or being opened.
    lanes: AtomicUsize,
}

impl SharedWorker {
    pub fn new(worker: Worker) -> Arc<Self> {
        Arc::new(Self {
            address: worker.address.clone(),
            protocol: worker.protocol,
            function: worker.function.clone(),
            memory_mb: worker.memory_mb,
            worker: Mutex::new(worker),
            lanes: AtomicUsize::new(0),
        })
    }

    fn worker(&self) -> std::sync::MutexGuard<'_, Worker> {
        self.worker.lock().expect("worker lock is never poisoned")
    }

    /// Reserves a lane if fewer than `limit` are open and the worker is alive.
    pub fn reserve(&self, limit: usize) -> bool {
        if !self.worker().is_alive() {
            return false;
        }
        self.lanes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .is_ok()
    }

    /// Opens a reserved lane; the reservation is released if the worker does not answer in
    /// time (a function can stop accepting connections).
    pub async fn open_lane(self: &Arc<Self>) -> Option<Lane> {
        match tokio::time::timeout(LANE_OPEN_DEADLINE, probe(&self.address, self.protocol))
            .await
            .ok()
            .flatten()
        {
            Some(sender) => Some(Lane {
                shared: self.clone(),
                sender,
                dead: false,
                start_phases: None,
            }),
            None => {
                self.lanes.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }
}

/// One connection to a [`SharedWorker`].
pub struct Lane {
    shared: Arc<SharedWorker>,
    sender: Connection,
    dead: bool,
    /// The worker's start, for the lane that started it; `None` for lanes that joined.
    pub(crate) start_phases: Option<StartPhases>,
}

#[async_trait]
impl Instance for Lane {
    async fn handle(
        &mut self,
        id: &RequestId,
        request: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, InvokeError> {
        // With several requests in flight, output goes to whichever started last.
        self.shared.worker().attribute_output_to(id);
        let exchange = exchange(
            &mut self.sender,
            &self.shared.address,
            self.shared.protocol,
            request,
            timeout,
        )
        .await;
        let out_of_memory =
            matches!(exchange, Some(Exchange::Broken)) && self.shared.worker().out_of_memory();
        let (result, kill) = outcome(
            exchange,
            self.shared.function.clone(),
            timeout,
            self.shared.memory_mb,
            || out_of_memory,
        )
        .await;
        if kill {
            // The process is shared: its other requests fail with it, as they would if it
            // crashed.
            self.dead = true;
            self.shared.worker().kill();
        }
        result
    }

    fn start_phases(&self) -> Option<StartPhases> {
        self.start_phases
    }

    fn is_healthy(&mut self) -> bool {
        !self.dead && self.shared.worker().is_alive()
    }

    fn cpu_time(&mut self) -> Option<Duration> {
        // The process's CPU over a request is shared out by wall time only approximately:
        // each lane sees the whole process's counter move while it serves.
        None
    }

    async fn stop(self: Box<Self>) {}
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.shared.lanes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// SIGKILL to a worker and everything it started. bwrap's sandbox child (pid 1 of the
/// sandbox's pid namespace, in a session of its own) does not reliably die with the outer
/// bwrap if that is killed while the sandbox is being set up, so it is killed directly:
/// killing a pid namespace's init ends every process in it.
fn kill_sandbox(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        // SAFETY: kill with the pid of our own child's child, read just now.
        unsafe {
            libc::kill(child, libc::SIGKILL);
        }
    }
    // SAFETY: killpg with the id of the group our own child leads (sandboxed workers run in
    // their own group; for an unconfined worker this fails harmlessly).
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
}

/// What a worker's start created on the host: removed if the start fails, kept (handed to the
/// `Worker`, whose drop removes them) once it succeeds.
struct Leftovers {
    dir: Option<PathBuf>,
    values_dir: Option<PathBuf>,
    cgroup: Option<WorkerCgroup>,
}

impl Leftovers {
    /// The start succeeded: the worker owns these now.
    fn keep(&mut self) -> Option<WorkerCgroup> {
        self.dir = None;
        self.values_dir = None;
        self.cgroup.take()
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for dir in [self.dir.take(), self.values_dir.take()]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
    }
}

/// Kills a sandbox whose worker never became ready.
struct StartGuard(Option<u32>);

impl Drop for StartGuard {
    fn drop(&mut self) {
        kill_sandbox(self.0);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        kill_sandbox(self.pid);
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(values) = &self.paths.values_dir {
            let _ = std::fs::remove_dir_all(values);
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).finish()
    }
}

/// Places a code tree into a worker's code directory: hard links where the filesystem allows
/// (the tree is read-only to the worker), copies where it does not.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_dir() {
            std::fs::create_dir(&target)?;
            link_tree(&source, &target)?;
        } else if std::fs::hard_link(&source, &target).is_err() {
            std::fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

/// Most output read from one worker stream per second, kept or dropped: past it the reader
/// pauses and the worker's writes wait on its full pipe, so however much (and in whatever
/// shape: a line at a time, megabytes without a newline) a function writes, reading it costs
/// Gust a bounded amount of CPU.
const MAX_READ_BYTES_PER_SECOND: usize = 16 * 1024 * 1024;

/// What one output stream has read in the current second.
struct ReadBudget {
    window_start: tokio::time::Instant,
    read: usize,
}

impl ReadBudget {
    fn new() -> Self {
        Self {
            window_start: tokio::time::Instant::now(),
            read: 0,
        }
    }

    /// Counts `bytes` read; waits for the next second once this one's allowance is used.
    async fn took(&mut self, bytes: usize) {
        let now = tokio::time::Instant::now();
        if now >= self.window_start + Duration::from_secs(1) {
            self.window_start = now;
            self.read = 0;
        }
        self.read += bytes;
        if self.read > MAX_READ_BYTES_PER_SECOND {
            tokio::time::sleep_until(self.window_start + Duration::from_secs(1)).await;
            self.window_start = tokio::time::Instant::now();
            self.read = 0;
        }
    }
}

/// Forwards a worker's output to the function's logs, one line at a time, never holding more
/// than one capped line in memory whatever the worker writes.
async fn pump_lines(
    reader: impl AsyncRead + Unpin,
    stream: LogStream,
    instance: String,
    target: Arc<Mutex<LogTarget>>,
    logs: Arc<FunctionLogs>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line = Vec::new();
    let cap = gust_executor::MAX_LINE_BYTES + 1;
    let emit = |line: &mut Vec<u8>| {
        let (function, request_id) = {
            let mut target = target.lock().expect("log target lock is never poisoned");
            if line
                .windows(HEAP_EXHAUSTED.len())
                .any(|w| w == HEAP_EXHAUSTED)
            {
                target.heap_exhausted = true;
            }
            (target.function.clone(), target.request_id.clone())
        };
        let admission = match function {
            Some(function) => logs.append(&function, stream, &instance, request_id, line),
            None => {
                let mut target = target.lock().expect("log target lock is never poisoned");
                if target.early.len() < EARLY_LINES {
                    target
                        .early
                        .push(gust_executor::escape_line(line).chars().take(500).collect());
                }
                Admission::Kept
            }
        };
        line.clear();
        admission
    };
    let mut budget = ReadBudget::new();
    loop {
        let available = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(bytes) => bytes,
        };
        let (chunk, consumed, complete) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (&available[..end], end + 1, true),
            None => (available, available.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(consumed);
        budget.took(consumed).await;
        if complete && let Admission::Dropped { retry_in } = emit(&mut line) {
            // Over the function's log rate: until it is taken again, read and discard without
            // looking at lines, only counting them, so a flood costs Gust little CPU and the
            // function is not held up by a full pipe.
            let until = tokio::time::Instant::now() + retry_in;
            let mut discarded = 0u64;
            loop {
                let Ok(Ok(bytes)) = tokio::time::timeout_at(until, reader.fill_buf()).await else {
                    break;
                };
                if bytes.is_empty() {
                    break;
                }
                discarded += bytes.iter().filter(|b| **b == b'\n').count() as u64;
                let all = bytes.len();
                reader.consume(all);
                budget.took(all).await;
            }
            let function = target
                .lock()
                .expect("log target lock is never poisoned")
                .function
                .clone();
            if let Some(function) = function {
                logs.dropped(&function, discarded);
            }
        }
    }
    if !line.is_empty() {
        let _ = emit(&mut line);
    }
}
