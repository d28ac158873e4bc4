//! One wasm function revision as the executor sees it: each request instantiates the
//! component afresh in its own `Store`, with its own limits and output pipes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gust_executor::{FunctionLogs, Instance, InstanceSpec, InvokeError, LogStream, RequestId};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::outbound::OutboundPolicy;

/// Output kept per stream per request; a guest writing more sees its writes fail.
const OUTPUT_CAPACITY: usize = 64 * 1024;
/// Largest response body a component may return.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

pub struct WasmState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    memory: MemoryLimit,
    outbound: OutboundPolicy,
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
    logs: Arc<FunctionLogs>,
}

impl WasmInstance {
    pub fn new(pre: ProxyPre<WasmState>, spec: &InstanceSpec, logs: Arc<FunctionLogs>) -> Self {
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
            logs,
        }
    }

    fn record_output(&self, id: &RequestId, stream: LogStream, pipe: &MemoryOutputPipe) {
        let contents = pipe.contents();
        let text = contents.strip_suffix(b"\n").unwrap_or(&contents);
        if text.is_empty() {
            return;
        }
        for line in text.split(|b| *b == b'\n') {
            self.logs
                .append(&self.log_key, stream, "wasm", Some(id.to_string()), line);
        }
    }
}

enum Outcome {
    Answered(http::response::Parts, Bytes),
    TooLarge,
    Failed { out_of_memory: bool },
}

#[async_trait]
impl Instance for WasmInstance {
    async fn handle(
        &mut self,
        id: &RequestId,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> Result<http::Response<Bytes>, InvokeError> {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
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
            },
        );
        store.limiter(|state| &mut state.memory);
        // Yield to the scheduler every epoch tick: a busy guest cannot starve other requests,
        // and the timeout below can drop it.
        store.epoch_deadline_async_yield_and_update(1);

        let function = self.function.clone();
        let start_failed = |detail: String| InvokeError::StartFailed {
            function: function.clone(),
            detail,
        };
        let request = request.map(Full::new);
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
        let guest = tokio::spawn(async move {
            let result = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            }
            .await;
            (result, store.data().memory.refused)
        });
        let abort = guest.abort_handle();

        let exchange = async {
            match response.await {
                Ok(Ok(response)) => {
                    let (parts, body) = response.into_parts();
                    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                        Ok(collected) => Outcome::Answered(parts, collected.to_bytes()),
                        Err(err) if err.is::<LengthLimitError>() => Outcome::TooLarge,
                        Err(_) => Outcome::Failed {
                            out_of_memory: false,
                        },
                    }
                }
                // The guest answered with an error code, or never answered (it trapped).
                _ => match guest.await {
                    Ok((Err(err), out_of_memory)) => {
                        tracing::debug!(error = %format!("{err:#}"), "guest failed");
                        Outcome::Failed { out_of_memory }
                    }
                    Ok((Ok(()), out_of_memory)) => Outcome::Failed { out_of_memory },
                    Err(_) => Outcome::Failed {
                        out_of_memory: false,
                    },
                },
            }
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        abort.abort();
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

    fn is_healthy(&mut self) -> bool {
        // Nothing outlives a request: every request starts from a fresh instance.
        true
    }

    async fn stop(self: Box<Self>) {}
}
