//! One wasm function revision as the executor sees it: each request instantiates the
//! component afresh in its own `Store`, with its own limits and output capture, unless the
//! function opted into reusing an instantiation for several requests (`--reuse`).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gust_executor::{
    FunctionLogs, Instance, InstanceSpec, InvokeError, LogStream, RequestBody, RequestBodyError,
    RequestId, ResponseBody,
};
use http_body_util::BodyExt;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::cpu::CpuMeter;
use crate::guests;
use crate::outbound::OutboundPolicy;
use crate::output::OutputCapture;

/// Output kept per stream per request; more is dropped, with a note in the logs.
const OUTPUT_CAPACITY: usize = 64 * 1024;

pub struct WasmState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    memory: MemoryLimit,
    outbound: OutboundPolicy,
    /// The engine's pool slot this store's instance occupies, given back when the store is
    /// dropped.
    _slot: OwnedSemaphorePermit,
}

impl WasiView for WasmState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for WasmState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The function's `--memory` as a cap on linear memory; remembers that it refused, so that the
/// trap that follows is reported as `out_of_memory`.
struct MemoryLimit {
    max_bytes: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.max_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A revision's mounted secrets and configs as files: a fresh directory of a random name in
/// the runtime's memory-backed values root (see [`gust_executor::private_memory_dir`]),
/// readable by Gust alone, removed with the last instance. Each store sees its `secrets` and
/// `configs` read-only at `/secrets` and `/configs`.
pub struct MountedValues {
    dir: tempfile::TempDir,
}

impl MountedValues {
    /// The spec's values written out under `root`; `None` when it mounts none.
    pub fn place(
        spec: &InstanceSpec,
        root: &std::path::Path,
    ) -> std::io::Result<Option<Arc<Self>>> {
        if spec.mounted.is_empty() {
            return Ok(None);
        }
        // 0700, made by this process under a random name: no other user reaches it.
        let dir = tempfile::Builder::new()
            .prefix("revision-")
            .tempdir_in(root)?;
        spec.place_mounted_values(dir.path())?;
        Ok(Some(Arc::new(Self { dir })))
    }

    fn preopen(&self, wasi: &mut wasmtime_wasi::WasiCtxBuilder) -> wasmtime::Result<()> {
        for root in ["secrets", "configs"] {
            let host = self.dir.path().join(root);
            if host.is_dir() {
                wasi.preopened_dir(&host, format!("/{root}"), wasmtime_wasi::FsPerms::ReadOnly)?;
            }
        }
        Ok(())
    }
}

pub struct WasmInstance {
    pre: ProxyPre<WasmState>,
    function: String,
    env: Vec<(String, String)>,
    values: Option<Arc<MountedValues>>,
    memory_bytes: usize,
    allow_outbound: Vec<gust_model::OutboundRule>,
    /// Requests one instantiation serves (`--reuse`); 1 is a fresh instance per request.
    reuse: u32,
    /// The instantiated component kept for the next request, when reuse allows one; put
    /// back by the response's body once the handler returned.
    live: Arc<Mutex<Option<Live>>>,
    output: OutputSink,
    cpu: CpuMeter,
    instantiation: Histogram,
    slots: Arc<Semaphore>,
    /// The function's turns on the guest threads.
    turns: Arc<Semaphore>,
    /// Longest a request waits for a fresh instance to be prepared (a pool slot, then
    /// instantiation), apart from the function's timeout, which starts once it is instantiated.
    start_timeout: Duration,
    /// The guest of the request being served: `stop` (the executor's timeout) aborts it even
    /// while its response's body is held by a connection that no longer polls it.
    running: Option<tokio::task::AbortHandle>,
}

/// An instantiated component with its store, between requests.
struct Live {
    store: Store<WasmState>,
    proxy: Proxy,
    stdout: OutputCapture,
    stderr: OutputCapture,
    served: u32,
}

impl WasmInstance {
    /// An instance of the prepared revision.
    pub(crate) fn new(prepared: &crate::PreparedComponent) -> Self {
        let crate::PreparedComponent {
            pre,
            spec,
            values,
            logs,
            instantiation,
            slots,
            turns,
            start_timeout,
        } = prepared;
        Self {
            pre: pre.clone(),
            function: spec.function.to_string(),
            env: spec.env_with_secrets().into_iter().collect(),
            values: values.clone(),
            memory_bytes: spec.limits.memory_mb as usize * 1024 * 1024,
            allow_outbound: spec.allow_outbound.clone(),
            reuse: spec.scaling.reuse.max(1),
            live: Arc::default(),
            output: OutputSink {
                logs: logs.clone(),
                log_key: gust_executor::function_key(&spec.namespace, &spec.function),
            },
            cpu: CpuMeter::default(),
            instantiation: instantiation.clone(),
            slots: slots.clone(),
            turns: turns.clone(),
            start_timeout: *start_timeout,
            running: None,
        }
    }

    /// A store for one instantiation, with its own limits and output capture, holding `slot`.
    fn new_store(
        &self,
        slot: OwnedSemaphorePermit,
    ) -> wasmtime::Result<(Store<WasmState>, OutputCapture, OutputCapture)> {
        let stdout = OutputCapture::new(OUTPUT_CAPACITY);
        let stderr = OutputCapture::new(OUTPUT_CAPACITY);
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env)
            .stdout(stdout.clone())
            .stderr(stderr.clone());
        if let Some(values) = &self.values {
            values.preopen(&mut wasi)?;
        }
        let wasi = wasi.build();
        let mut store = Store::new(
            self.pre.engine(),
            WasmState {
                table: ResourceTable::new(),
                wasi,
                http: WasiHttpCtx::new(),
                memory: MemoryLimit {
                    max_bytes: self.memory_bytes,
                    refused: false,
                },
                outbound: OutboundPolicy {
                    allowed: self.allow_outbound.clone(),
                    function: self.function.clone(),
                },
                _slot: slot,
            },
        );
        store.limiter(|state| &mut state.memory);
        // Yield to the scheduler every epoch tick: a busy guest cannot starve other requests,
        // and the timeout can drop it.
        store.epoch_deadline_async_yield_and_update(1);
        Ok((store, stdout, stderr))
    }
}

/// Where a request's captured output goes: the function's logs, under the request's id.
#[derive(Clone)]
struct OutputSink {
    logs: Arc<FunctionLogs>,
    log_key: String,
}

impl OutputSink {
    fn record(&self, id: &RequestId, stdout: &OutputCapture, stderr: &OutputCapture) {
        self.record_stream(id, LogStream::Stdout, stdout);
        self.record_stream(id, LogStream::Stderr, stderr);
    }

    fn record_stream(&self, id: &RequestId, stream: LogStream, capture: &OutputCapture) {
        let output = capture.take();
        let text = output.bytes.strip_suffix(b"\n").unwrap_or(&output.bytes);
        if !text.is_empty() {
            for line in text.split(|b| *b == b'\n') {
                self.logs
                    .append(&self.log_key, stream, "wasm", Some(id.to_string()), line);
            }
        }
        if output.truncated {
            let note = format!("[output past {OUTPUT_CAPACITY} bytes was dropped]");
            self.logs.append(
                &self.log_key,
                stream,
                "wasm",
                Some(id.to_string()),
                note.as_bytes(),
            );
        }
    }
}

/// A request's guest, as the request awaits it.
type Guest = Pin<Box<dyn Future<Output = GuestResult> + Send>>;

/// What the guest future hands back: the instance when the handler returned normally, and
/// whether the memory limit refused a growth.
type GuestResult = (Result<(Store<WasmState>, Proxy), wasmtime::Error>, bool);

/// Awaits `main` while also driving `side` to completion, keeping `side`'s output in `done`.
async fn alongside<M: Future, S: Future + ?Sized>(
    main: M,
    mut side: Pin<&mut S>,
    done: &mut Option<S::Output>,
) -> M::Output {
    let mut main = pin!(main);
    std::future::poll_fn(|cx| {
        if done.is_none()
            && let Poll::Ready(output) = side.as_mut().poll(cx)
        {
            *done = Some(output);
        }
        main.as_mut().poll(cx)
    })
    .await
}

/// `side`'s output: the one [`alongside`] kept if `side` finished there, else awaited now.
async fn finish<S: Future + ?Sized>(side: Pin<&mut S>, done: &mut Option<S::Output>) -> S::Output {
    match done.take() {
        Some(output) => output,
        None => side.await,
    }
}

/// Drops a store after the response has gone out: resetting its pool slot takes tens of
/// microseconds when caches are cold, time the caller need not wait for. The store keeps its
/// slot's permit until then, so the pool is never over-committed.
fn retire(store: Store<WasmState>) {
    tokio::spawn(async move { drop(store) });
}

#[async_trait]
impl Instance for WasmInstance {
    async fn handle(
        &mut self,
        id: &RequestId,
        request: http::Request<RequestBody>,
        timeout: Duration,
    ) -> Result<http::Response<ResponseBody>, InvokeError> {
        let prepared_by = tokio::time::Instant::now() + self.start_timeout;
        let live = self
            .live
            .lock()
            .expect("live lock is never poisoned")
            .take();
        let (mut store, proxy, stdout, stderr, served) = match live {
            Some(live) => (
                live.store,
                Some(live.proxy),
                live.stdout,
                live.stderr,
                live.served,
            ),
            None => {
                // Every slot may be held, by instances kept for `--reuse` or stores not yet
                // dropped: wait for one within the preparation bound, then refuse like a full
                // queue.
                let slot =
                    match tokio::time::timeout_at(prepared_by, self.slots.clone().acquire_owned())
                        .await
                    {
                        Ok(slot) => slot.expect("the slot semaphore is never closed"),
                        Err(_) => {
                            return Err(InvokeError::OverCapacity {
                                function: self.function.clone(),
                                retry_after: Duration::from_secs(1),
                            });
                        }
                    };
                let (store, stdout, stderr) =
                    self.new_store(slot)
                        .map_err(|err| InvokeError::StartFailed {
                            function: self.function.clone(),
                            detail: format!("cannot mount its secrets and configs: {err}"),
                        })?;
                (store, None, stdout, stderr, 0)
            }
        };
        store.data_mut().memory.refused = false;
        // The first yield comes one epoch tick from now. A store's deadline starts at epoch 0,
        // already passed: without this the guest would yield at its first epoch check, in the
        // middle of instantiation, and wait behind whatever else the worker had queued.
        store.set_epoch_deadline(1);

        let function = self.function.clone();
        let start_failed = |detail: String| InvokeError::StartFailed {
            function: function.clone(),
            detail,
        };
        // What a guest reading the body is told when the caller's body broke off.
        let mut request = request.map(|body| {
            body.map_err(|err| match err {
                RequestBodyError::TooSlow(_) => wasmtime_wasi_http::Error::ConnectionReadTimeout,
                RequestBodyError::TooLarge { limit } => {
                    wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit as u64))
                }
                RequestBodyError::OverBudget | RequestBodyError::Unreadable => {
                    wasmtime_wasi_http::Error::ConnectionTerminated
                }
            })
        });
        // wasi:http requires an authority; requests made by Gust itself (a timer's tick, a
        // queue message) have none.
        if request.uri().authority().is_none()
            && !request.headers().contains_key(http::header::HOST)
        {
            request.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| start_failed(format!("{e:#}")))?;
        let (respond, response) = tokio::sync::oneshot::channel();
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(respond)
            .map_err(|e| start_failed(format!("{e:#}")))?;

        let pre = self.pre.clone();
        let instantiation = self.instantiation.clone();
        let (instantiated, prepared) = tokio::sync::oneshot::channel::<()>();
        // The guest runs on the guest threads, taking turns with the function's other guests
        // (see `guests`). Its task is aborted when this request lets go of it: when the
        // request or its response is dropped (its client left) the guest goes with it instead
        // of running on unobserved.
        let guest = guests::spawn(
            self.cpu.time(async move {
                let result = async {
                    let proxy = match proxy {
                        Some(proxy) => proxy,
                        None => {
                            let started = std::time::Instant::now();
                            let proxy = pre.instantiate_async(&mut store).await?;
                            instantiation.observe(started.elapsed().as_secs_f64());
                            proxy
                        }
                    };
                    let _ = instantiated.send(());
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, outparam)
                        .await?;
                    Ok(proxy)
                }
                .await;
                let out_of_memory = store.data().memory.refused;
                (result.map(|proxy| (store, proxy)), out_of_memory) as GuestResult
            }),
            self.turns.clone(),
        );
        self.running = Some(guest.abort_handle());
        let mut guest: Guest = Box::pin(async move {
            guest.await.unwrap_or_else(|| {
                (
                    Err(wasmtime::Error::msg("the guest's task panicked")),
                    false,
                )
            })
        });
        let mut returned: Option<GuestResult> = None;

        // Preparing the instance is bounded on its own; a guest that fails to instantiate
        // drops `instantiated` and its failure is read below.
        let preparation = tokio::time::timeout_at(
            prepared_by,
            alongside(prepared, guest.as_mut(), &mut returned),
        )
        .await;
        if preparation.is_err() {
            self.output.record(id, &stdout, &stderr);
            return Err(InvokeError::StartTimeout {
                function,
                bound: self.start_timeout,
            });
        }
        // The function's timeout runs from here; the response's head must come within it,
        // the guest running meanwhile (it writes the body as it is read).
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = tokio::time::timeout_at(deadline, async {
            let answer = alongside(
                async {
                    match response.await {
                        Ok(Ok(response)) => Some(response),
                        // The guest answered with an error code, or never answered (it
                        // trapped): its return says why.
                        _ => None,
                    }
                },
                guest.as_mut(),
                &mut returned,
            )
            .await;
            match answer {
                Some(response) => Ok(response),
                None => {
                    let (result, out_of_memory) = finish(guest.as_mut(), &mut returned).await;
                    if let Err(err) = &result {
                        tracing::debug!(error = %format!("{err:#}"), "guest failed");
                    }
                    Err(out_of_memory)
                }
            }
        })
        .await;
        let failed = |out_of_memory: bool| {
            if out_of_memory {
                InvokeError::OutOfMemory {
                    function: function.clone(),
                    limit_mb: (self.memory_bytes / (1024 * 1024)) as u32,
                }
            } else {
                InvokeError::Trap {
                    function: function.clone(),
                }
            }
        };
        match outcome {
            Err(_) => {
                self.output.record(id, &stdout, &stderr);
                Err(InvokeError::Timeout {
                    function: function.clone(),
                    timeout,
                })
            }
            Ok(Err(out_of_memory)) => {
                self.output.record(id, &stdout, &stderr);
                Err(failed(out_of_memory))
            }
            Ok(Ok(response)) => {
                let (parts, body) = response.into_parts();
                let body = GuestBody {
                    inner: body,
                    guest,
                    returned,
                    body_ended: false,
                    function,
                    memory_limit_mb: (self.memory_bytes / (1024 * 1024)) as u32,
                    after: Some(AfterGuest {
                        id: id.clone(),
                        stdout,
                        stderr,
                        served: served + 1,
                        reuse: self.reuse,
                        live: self.live.clone(),
                        output: self.output.clone(),
                    }),
                };
                Ok(http::Response::from_parts(
                    parts,
                    gust_executor::body::stream(body),
                ))
            }
        }
    }

    fn cpu_time(&mut self) -> Option<Duration> {
        Some(self.cpu.total())
    }

    fn is_healthy(&mut self) -> bool {
        // A failed or timed-out request drops its instantiation; the next request starts a
        // fresh one, so this object always stays usable.
        true
    }

    async fn stop(self: Box<Self>) {
        if let Some(guest) = &self.running {
            guest.abort();
        }
    }
}

/// What is done once a request's guest has returned: its output recorded under the request,
/// its instantiation kept for the next request when `--reuse` allows one.
struct AfterGuest {
    id: RequestId,
    stdout: OutputCapture,
    stderr: OutputCapture,
    /// Requests this instantiation has served, this one included.
    served: u32,
    reuse: u32,
    live: Arc<Mutex<Option<Live>>>,
    output: OutputSink,
}

impl AfterGuest {
    fn guest_returned(self, returned: Option<GuestResult>) {
        self.output.record(&self.id, &self.stdout, &self.stderr);
        let Some((Ok((store, proxy)), _)) = returned else {
            return;
        };
        if self.served < self.reuse {
            *self.live.lock().expect("live lock is never poisoned") = Some(Live {
                store,
                proxy,
                stdout: self.stdout,
                stderr: self.stderr,
                served: self.served,
            });
        } else {
            retire(store);
        }
    }
}

/// A component's response body as it writes it. After the body's end it waits for the
/// guest's handler to return before it ends too, so that what the handler printed is the
/// request's and its CPU time is billed; it then reports its end from `is_end_stream`, so that
/// a handler still running at the function's deadline is dropped while its complete response
/// stands. Dropping the body before its end (the client left, the timeout passed) aborts the
/// guest.
struct GuestBody {
    inner: wasmtime_wasi_http::p2::body::HyperOutgoingBody,
    guest: Guest,
    returned: Option<GuestResult>,
    /// The guest's body has ended; the handler's return is awaited.
    body_ended: bool,
    function: String,
    memory_limit_mb: u32,
    after: Option<AfterGuest>,
}

impl http_body::Body for GuestBody {
    type Data = Bytes;
    type Error = InvokeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, InvokeError>>> {
        let this = &mut *self;
        if this.after.is_none() {
            return Poll::Ready(None);
        }
        if this.returned.is_none()
            && let Poll::Ready(output) = this.guest.as_mut().poll(cx)
        {
            this.returned = Some(output);
        }
        if !this.body_ended {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(_))) => {
                    let out_of_memory = this.returned.as_ref().is_some_and(|(_, oom)| *oom);
                    let err = if out_of_memory {
                        InvokeError::OutOfMemory {
                            function: this.function.clone(),
                            limit_mb: this.memory_limit_mb,
                        }
                    } else {
                        InvokeError::Trap {
                            function: this.function.clone(),
                        }
                    };
                    let after = this.after.take().expect("checked above");
                    after.guest_returned(this.returned.take());
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => this.body_ended = true,
            }
        }
        match this.returned.take() {
            Some(returned) => {
                let after = this.after.take().expect("checked above");
                after.guest_returned(Some(returned));
                Poll::Ready(None)
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.after.is_none() || self.body_ended
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        if let Some(after) = self.after.take() {
            after.guest_returned(None);
        }
    }
}
