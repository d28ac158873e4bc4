//! One wasm function revision as the executor sees it: each request instantiates the
//! component afresh in its own `Store`, with its own limits and output capture, unless the
//! function opted into reusing an instantiation for several requests (`--reuse`).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gust_executor::{FunctionLogs, Instance, InstanceSpec, InvokeError, LogStream, RequestId};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
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
/// Largest response body a component may return.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

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

pub struct WasmInstance {
    pre: ProxyPre<WasmState>,
    function: String,
    log_key: String,
    env: Vec<(String, String)>,
    memory_bytes: usize,
    allow_outbound: Vec<gust_model::OutboundRule>,
    /// Requests one instantiation serves (`--reuse`); 1 is a fresh instance per request.
    reuse: u32,
    /// The instantiated component kept for the next request, when reuse allows one.
    live: Option<Live>,
    logs: Arc<FunctionLogs>,
    cpu: CpuMeter,
    instantiation: Histogram,
    slots: Arc<Semaphore>,
    /// The function's turns on the guest threads.
    turns: Arc<Semaphore>,
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
    pub fn new(
        pre: ProxyPre<WasmState>,
        spec: &InstanceSpec,
        logs: Arc<FunctionLogs>,
        instantiation: Histogram,
        slots: Arc<Semaphore>,
        turns: Arc<Semaphore>,
    ) -> Self {
        Self {
            pre,
            function: spec.function.to_string(),
            log_key: gust_executor::function_key(&spec.namespace, &spec.function),
            env: spec
                .env_vars
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            memory_bytes: spec.limits.memory_mb as usize * 1024 * 1024,
            allow_outbound: spec.allow_outbound.clone(),
            reuse: spec.scaling.reuse.max(1),
            live: None,
            logs,
            cpu: CpuMeter::default(),
            instantiation,
            slots,
            turns,
        }
    }

    /// A store for one instantiation, with its own limits and output capture, holding `slot`.
    fn new_store(
        &self,
        slot: OwnedSemaphorePermit,
    ) -> (Store<WasmState>, OutputCapture, OutputCapture) {
        let stdout = OutputCapture::new(OUTPUT_CAPACITY);
        let stderr = OutputCapture::new(OUTPUT_CAPACITY);
        let wasi = WasiCtx::builder()
            .envs(&self.env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
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
        (store, stdout, stderr)
    }

    fn record_output(&self, id: &RequestId, stream: LogStream, capture: &OutputCapture) {
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

enum Outcome {
    Answered(http::response::Parts, Bytes),
    TooLarge,
    Failed { out_of_memory: bool },
}

/// What the guest future hands back: the instance when the handler returned normally, and
/// whether the memory limit refused a growth.
type GuestResult = (Result<(Store<WasmState>, Proxy), wasmtime::Error>, bool);

/// Awaits `main` while also driving `side` to completion, keeping `side`'s output in `done`.
async fn alongside<M: Future, S: Future>(
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
async fn finish<S: Future>(side: Pin<&mut S>, done: &mut Option<S::Output>) -> S::Output {
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
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> Result<http::Response<Bytes>, InvokeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut store, proxy, stdout, stderr, served) = match self.live.take() {
            Some(live) => (
                live.store,
                Some(live.proxy),
                live.stdout,
                live.stderr,
                live.served,
            ),
            None => {
                // Every slot may be held, by instances kept for `--reuse` or stores not yet
                // dropped: wait for one until the deadline, then refuse like a full queue.
                let slot =
                    match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
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
                let (store, stdout, stderr) = self.new_store(slot);
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
        let mut request = request.map(Full::new);
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
        // The guest runs on the guest threads, taking turns with the function's other guests
        // (see `guests`). Its task is aborted when this request's future lets go of it: when
        // the request is dropped (its client left) the guest goes with it instead of running
        // on unobserved.
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
        let mut guest = pin!(async move {
            guest.await.unwrap_or_else(|| {
                (
                    Err(wasmtime::Error::msg("the guest's task panicked")),
                    false,
                )
            })
        });
        let mut returned: Option<GuestResult> = None;

        // First the response, within the timeout; the guest keeps running while it is awaited
        // (it writes the body as it is read).
        let outcome = tokio::time::timeout_at(deadline, async {
            let answer = alongside(
                async {
                    match response.await {
                        Ok(Ok(response)) => {
                            let (parts, body) = response.into_parts();
                            match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                                Ok(collected) => {
                                    Some(Outcome::Answered(parts, collected.to_bytes()))
                                }
                                Err(err) if err.is::<LengthLimitError>() => Some(Outcome::TooLarge),
                                Err(_) => Some(Outcome::Failed {
                                    out_of_memory: false,
                                }),
                            }
                        }
                        // The guest answered with an error code, or never answered (it trapped):
                        // its return says why.
                        _ => None,
                    }
                },
                guest.as_mut(),
                &mut returned,
            )
            .await;
            match answer {
                Some(outcome) => outcome,
                None => {
                    let (result, out_of_memory) = finish(guest.as_mut(), &mut returned).await;
                    if let Err(err) = &result {
                        tracing::debug!(error = %format!("{err:#}"), "guest failed");
                    }
                    Outcome::Failed { out_of_memory }
                }
            }
        })
        .await;
        // Then the handler's return (a handler may go on after its response), so that all it
        // printed is this request's and the instance can serve again. A handler still running
        // at the deadline is dropped; its response, if complete, still stands.
        if matches!(outcome, Ok(Outcome::Answered(..))) {
            let finished =
                tokio::time::timeout_at(deadline, finish(guest.as_mut(), &mut returned)).await;
            if let Ok((Ok((store, proxy)), _)) = finished {
                let served = served + 1;
                if served < self.reuse {
                    self.live = Some(Live {
                        store,
                        proxy,
                        stdout: stdout.clone(),
                        stderr: stderr.clone(),
                        served,
                    });
                } else {
                    retire(store);
                }
            }
        }
        self.record_output(id, LogStream::Stdout, &stdout);
        self.record_output(id, LogStream::Stderr, &stderr);
        match outcome {
            Err(_) => Err(InvokeError::Timeout { function, timeout }),
            Ok(Outcome::Answered(parts, body)) => Ok(http::Response::from_parts(parts, body)),
            Ok(Outcome::TooLarge) => Err(InvokeError::ResponseTooLarge {
                function,
                limit: MAX_RESPONSE_BYTES,
            }),
            Ok(Outcome::Failed {
                out_of_memory: true,
            }) => Err(InvokeError::OutOfMemory {
                function,
                limit_mb: (self.memory_bytes / (1024 * 1024)) as u32,
            }),
            Ok(Outcome::Failed {
                out_of_memory: false,
            }) => Err(InvokeError::Trap { function }),
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

    async fn stop(self: Box<Self>) {}
}
