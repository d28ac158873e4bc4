//! `gust up`: every role in one process. This is where the concrete types meet.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use gust_api::{AdminToken, ApiState, api_router};
use gust_async_queue::{AsyncQueue, Clock, Dispatcher, QueueBounds, QueueLimits, SystemClock};
use gust_executor::{
    Executor, ExecutorConfig, FunctionLogs, InvocationObserver, Invoker, NoObserver, Runtime,
};
use gust_metering::{Meter, Metrics, PriceSheet, UsageRetention, UsageWriter, prune_usage};
use gust_model::{BuiltinRuntime, DEFAULT_POOL_SIZE, Environment, parse_duration};
use gust_router::{BodyBudget, ConnectionLimits, PublicState, Routes, public_router};
use gust_runtime_process::{Cgroups, Interpreters, ProcessRuntime, Sandbox};
use gust_runtime_wasm::{PoolSize, WasmRuntime};
use gust_store::{
    CodeLimits, CodeStore, EmbeddedStore, InvocationStore, MetadataStore, UsageStore,
};
use gust_trigger_mq::{MqMetrics, MqTriggers};
use gust_trigger_timer::TimerScheduler;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::cli_config::CliConfig;
use crate::deployments::StoreDeployments;
use crate::garbage::Collector;
use crate::tiers::Tiers;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// TOML file of these settings, keyed by flag name (`pool-size = 5`); environment
    /// variables and flags override it
    #[arg(long, env = "GUST_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: $XDG_DATA_HOME/gust]
    #[arg(long, env = "GUST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Public listener (HTTP routes)
    #[arg(long, env = "GUST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Control-plane API listener
    #[arg(long, env = "GUST_API_LISTEN", default_value = "127.0.0.1:8081")]
    api_listen: SocketAddr,
    /// Pre-warmed workers per built-in process environment (python, node)
    #[arg(long, env = "GUST_POOL_SIZE", default_value_t = DEFAULT_POOL_SIZE)]
    pool_size: u32,
    /// Stop an instance after it has been idle this long
    #[arg(long, env = "GUST_IDLE_TIMEOUT", default_value = "120s")]
    idle_timeout: String,
    /// Python interpreter of the built-in python environment (must work inside the sandbox)
    #[arg(long, env = "GUST_PYTHON", default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// Node.js binary of the built-in node environment
    #[arg(long, env = "GUST_NODE", default_value = "/usr/bin/node")]
    node: PathBuf,
    /// Run workers without isolation (they see the whole host as Gust's user)
    #[arg(long, env = "GUST_NO_SANDBOX")]
    no_sandbox: bool,
    /// Price sheet (JSON: currency, per_gb_second, per_cpu_ms, per_million_requests) that
    /// turns usage into cost [default: everything costs 0]
    #[arg(long, env = "GUST_PRICES")]
    prices: Option<PathBuf>,
    /// How long succeeded asynchronous invocations stay readable (`gust invocation get`);
    /// dead letters stay until purged
    #[arg(long, env = "GUST_ASYNC_RETENTION", default_value = "24h")]
    async_retention: String,
    /// Record no usage and count no invocations (instances are still shown in /metrics)
    #[arg(long, env = "GUST_NO_METERING")]
    no_metering: bool,
    /// Open connections the public listener holds at once; more are closed on arrival (at
    /// most half of the process's descriptor limit)
    #[arg(long, env = "GUST_MAX_CONNECTIONS", default_value_t = 8192)]
    max_connections: usize,
    /// Open connections one client address may hold on the public listener
    #[arg(long, env = "GUST_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 2048)]
    max_connections_per_client: usize,
    /// Time a client has to send a request's headers; an idle keep-alive connection is
    /// closed after the same time
    #[arg(long, env = "GUST_HEADER_TIMEOUT", default_value = "10s")]
    header_timeout: String,
    /// How long a response may wait for its client to take any of it before the connection
    /// is closed (a client that stops reading cannot hold the response's memory)
    #[arg(long, env = "GUST_SEND_TIMEOUT", default_value = "30s")]
    send_timeout: String,
    /// Asynchronous invocations one function may have waiting or running; more are answered
    /// 429
    #[arg(long, env = "GUST_ASYNC_QUEUE_DEPTH", default_value_t = 1_000)]
    async_queue_depth: u64,
    /// Bytes (MB) of requests the asynchronous queue stores, waiting work and dead letters
    /// together; past it an asynchronous invocation is answered 429
    #[arg(long, env = "GUST_ASYNC_STORE_BUDGET", default_value_t = 1024)]
    async_store_budget: u64,
    /// How long dead letters are kept
    #[arg(long, env = "GUST_DEAD_LETTER_RETENTION", default_value = "14days")]
    dead_letter_retention: String,
    /// Dead letters kept per function; the oldest beyond it are deleted
    #[arg(long, env = "GUST_DEAD_LETTERS_PER_FUNCTION", default_value_t = 1_000)]
    dead_letters_per_function: u64,
    /// How long raw usage records (one per attempt) are kept; hourly totals hold them after
    #[arg(long, env = "GUST_USAGE_RECORDS_RETENTION", default_value = "24h")]
    usage_records_retention: String,
    /// How long hourly usage totals (what reports and invoices use) are kept
    #[arg(long, env = "GUST_USAGE_RETENTION", default_value = "400days")]
    usage_retention: String,
    /// Memory (MB) the embedded store may use to cache its pages
    #[arg(long, env = "GUST_STORE_CACHE", default_value_t = 64)]
    store_cache: usize,
    /// Memory (MB) all request bodies in flight may take together, on both listeners; a
    /// request past it is answered 503
    #[arg(long, env = "GUST_BODY_MEMORY", default_value_t = 256)]
    body_memory: usize,
    /// Log lines kept per function (`gust fn logs`); older ones are dropped
    #[arg(long, env = "GUST_LOG_LINES", default_value_t = 2_000)]
    log_lines: usize,
    /// How long in-flight requests (and asynchronous attempts) may take to finish after
    /// SIGTERM
    #[arg(long, env = "GUST_DRAIN_DEADLINE", default_value = "30s")]
    drain_deadline: String,
    /// Asynchronous attempts delivered at once, across functions (each function's own limits
    /// apply within it)
    #[arg(long, env = "GUST_ASYNC_IN_FLIGHT", default_value_t = 256)]
    async_in_flight: usize,
    /// WebAssembly instances that may exist at once (requests the wasm tier serves together)
    #[arg(long, env = "GUST_WASM_SLOTS", default_value_t = PoolSize::default().slots)]
    wasm_slots: u32,
    /// Largest memory (MB) of a wasm function; each instance slot reserves this much address
    /// space
    #[arg(long, env = "GUST_WASM_MAX_MEMORY", default_value_t = PoolSize::default().max_memory_mb)]
    wasm_max_memory: u32,
}

/// Largest request header Gust reads, and most header fields: with the headers Gust adds (a
/// copy of `Host` among them), well below what the built-in worker servers accept (64 KiB in
/// Node.js, 1,000 fields in Python), so what reaches a worker never makes it drop the
/// connection.
const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// The API listener's connection limits (its clients are operators and the CLI).
const API_MAX_CONNECTIONS: usize = 256;
const API_MAX_CONNECTIONS_PER_CLIENT: usize = 64;

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: UpArgs) -> anyhow::Result<ExitCode> {
    let idle_timeout = parse_duration("idle timeout", &args.idle_timeout)?;
    let header_timeout = parse_duration("header timeout", &args.header_timeout)?;
    let send_timeout = parse_duration("send timeout", &args.send_timeout)?;
    let drain_deadline = parse_duration("drain deadline", &args.drain_deadline)?;
    if args.log_lines == 0 || args.async_in_flight == 0 {
        bail!("--log-lines and --async-in-flight must be at least 1");
    }
    if !(1..=100_000).contains(&args.wasm_slots) || !(16..=4_096).contains(&args.wasm_max_memory) {
        bail!("--wasm-slots is 1 to 100000 and --wasm-max-memory 16 to 4096 (MB)");
    }
    let wasm_pool = PoolSize {
        slots: args.wasm_slots,
        max_memory_mb: args.wasm_max_memory,
    };
    let usage_retention = UsageRetention {
        records: parse_duration("usage records retention", &args.usage_records_retention)?,
        hours: parse_duration("usage retention", &args.usage_retention)?,
    };
    let descriptors = raise_descriptor_limit();
    // Connections must leave descriptors for workers, the store and the API.
    let max_connections = args
        .max_connections
        .min(descriptors.saturating_sub(1024) / 2)
        .max(64);
    if max_connections < args.max_connections {
        tracing::warn!(
            max_connections,
            descriptors,
            "the descriptor limit allows fewer public connections than --max-connections"
        );
    }
    let async_retention = parse_duration("async retention", &args.async_retention)?;
    let queue_limits = QueueLimits {
        bounds: QueueBounds {
            per_function: args.async_queue_depth,
            stored_bytes: args.async_store_budget.saturating_mul(1024 * 1024),
        },
        dead_letter_retention: parse_duration(
            "dead-letter retention",
            &args.dead_letter_retention,
        )?,
        dead_letters_per_function: args.dead_letters_per_function,
    };
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => dirs::data_dir()
            .context("cannot find a data directory (set --data-dir, XDG_DATA_HOME or HOME)")?
            .join("gust"),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data_dir.display()))?;

    let sandbox = if args.no_sandbox {
        tracing::warn!("--no-sandbox: workers run unconfined, as this user");
        Sandbox::Disabled
    } else {
        Sandbox::detect().await.context(
            "refusing to start without a sandbox; pass --no-sandbox to run workers unconfined",
        )?
    };
    let sandbox_network = sandbox.network_summary();
    if matches!(&sandbox, Sandbox::Bubblewrap { uplinks: None, .. }) {
        tracing::warn!("slirp4netns is not installed: process functions have no network");
    }
    let (token, token_path) = admin_token(&data_dir)?;
    let prices = match &args.prices {
        Some(path) => PriceSheet::load(path)?,
        None => PriceSheet::default(),
    };

    let embedded = Arc::new(
        EmbeddedStore::open_with_cache(
            &data_dir.join("gust.redb"),
            args.store_cache.saturating_mul(1024 * 1024),
        )
        .context("cannot open the metadata store")?,
    );
    let store: Arc<dyn MetadataStore> = embedded.clone();
    let usage_store: Arc<dyn UsageStore> = embedded.clone();
    let invocation_store: Arc<dyn InvocationStore> = embedded;
    let code = Arc::new(CodeStore::open(
        &data_dir.join("code"),
        CodeLimits::default(),
    )?);
    for runtime in BuiltinRuntime::ALL {
        // Components are instantiated per request; there are no workers to keep warm.
        let pool_size = if runtime == BuiltinRuntime::Wasm {
            0
        } else {
            args.pool_size
        };
        store.put_environment(&Environment::builtin(runtime, pool_size))?;
    }

    let logs = Arc::new(FunctionLogs::new(args.log_lines));
    let interpreters = Interpreters {
        python: args.python,
        node: args.node,
    };
    for interpreter in [&interpreters.python, &interpreters.node] {
        if !interpreter.exists() {
            tracing::warn!(interpreter = %interpreter.display(), "interpreter not found; its environment cannot start workers");
        }
    }
    let cgroups = match Cgroups::create(&instance_name(&data_dir)) {
        Ok(cgroups) => Some(cgroups),
        Err(reason) => {
            tracing::warn!(%reason, "no cgroups: workers' memory, pids and CPU are not limited");
            None
        }
    };
    let run_dir = worker_run_dir(&data_dir)?;
    let process: Arc<dyn Runtime> = Arc::new(
        ProcessRuntime::new(&run_dir, sandbox, cgroups, interpreters, logs.clone())?
            .with_protected(vec![data_dir.clone()]),
    );
    let wasm = WasmRuntime::new(&data_dir.join("wasm-cache"), logs.clone(), wasm_pool)
        .context("cannot start the WebAssembly runtime")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let queue = AsyncQueue::new(invocation_store, clock.clone(), queue_limits);
    let mut metrics = Metrics::new();
    wasm.register_metrics(metrics.registry_mut());
    queue.register_metrics(metrics.registry_mut());
    let mq_metrics = MqMetrics::default();
    mq_metrics.register(metrics.registry_mut());
    let wasm = Arc::new(wasm);
    let runtime: Arc<dyn Runtime> = Arc::new(Tiers {
        process,
        wasm: wasm.clone(),
    });
    let stop_usage = CancellationToken::new();
    let usage = UsageWriter::start(usage_store.clone(), stop_usage.clone());
    tokio::spawn(prune_usage(
        usage_store.clone(),
        usage_retention,
        stop_usage.clone(),
    ));
    let meter = Arc::new(Meter::new(metrics, usage.clone()));
    let deployments = Arc::new(StoreDeployments {
        store: store.clone(),
        code: code.clone(),
    });
    let executor = Executor::new(
        ExecutorConfig {
            idle_timeout,
            ..ExecutorConfig::default()
        },
        deployments.clone(),
        runtime.clone(),
        if args.no_metering {
            Arc::new(NoObserver) as Arc<dyn InvocationObserver>
        } else {
            meter.clone()
        },
    );
    let invoker: Arc<dyn Invoker> = executor.clone();
    let dispatcher = Dispatcher::new(
        queue.clone(),
        invoker.clone(),
        deployments,
        args.async_in_flight,
        async_retention,
    );
    let timers = TimerScheduler::new(store.clone(), queue.clone(), clock.clone());
    let mq = MqTriggers::new(
        store.clone(),
        invoker.clone(),
        queue.clone(),
        clock,
        mq_metrics,
    );
    let routes = Routes::new(store.routes(None)?);
    let bodies = BodyBudget::new(args.body_memory.saturating_mul(1024 * 1024));
    let collector = Arc::new(Collector {
        store: store.clone(),
        code: code.clone(),
        wasm,
        released: Arc::new(tokio::sync::Notify::new()),
    });
    let state = Arc::new(ApiState {
        store,
        code,
        executor: executor.clone(),
        invoker: invoker.clone(),
        runtime,
        routes: routes.clone(),
        logs,
        token: token.clone(),
        usage: usage_store,
        meter,
        prices,
        queue: queue.clone(),
        timers: timers.clone(),
        mq: mq.clone(),
        bodies: bodies.clone(),
        code_released: collector.released.clone(),
    });
    state.sync_environments()?;
    // Functions with a minimum of instances get them now, not on their first request.
    for function in state.store.functions(None)? {
        if function.current_revision().scaling.min_instances > 0 {
            executor.function_deployed(&function.namespace, &function.name);
        }
    }

    let public = bind(args.listen, "public").await?;
    let api = bind(args.api_listen, "API").await?;
    let api_url = format!("http://{}", api.local_addr()?);
    if let Err(err) = CliConfig::remember(&api_url, token.expose()) {
        tracing::warn!(error = %format!("{err:#}"), "cannot update the CLI config; pass --token to the CLI");
    }
    eprintln!("Gust is up");
    eprintln!("  public routes: http://{}", public.local_addr()?);
    eprintln!("  API:           {api_url}");
    eprintln!("  admin token:   {}", token_path.display());
    eprintln!("  data:          {}", data_dir.display());
    eprintln!("  workers:       {}", run_dir.display());
    eprintln!("  network:       {}", sandbox_network);
    if let Some(config) = &args.config {
        eprintln!("  settings:      {}", config.display());
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(executor.clone().run_reaper(shutdown.child_token()));
    tokio::spawn(wait_for_signal(shutdown.clone()));
    tokio::spawn(dispatcher.clone().run(shutdown.child_token()));
    tokio::spawn(timers.run(shutdown.child_token()));
    let mq_stopped = tokio::spawn(mq.run(shutdown.child_token()));
    tokio::spawn(collector.run(shutdown.child_token()));

    let public_app = public_router(PublicState {
        routes,
        invoker,
        queue,
        bodies,
    });
    let public_limits = ConnectionLimits {
        max_connections,
        max_per_client: args.max_connections_per_client,
        header_read_timeout: header_timeout,
        max_header_bytes: MAX_HEADER_BYTES,
        max_headers: MAX_HEADERS,
        send_stall_timeout: send_timeout,
    };
    let api_limits = ConnectionLimits {
        max_connections: API_MAX_CONNECTIONS,
        max_per_client: API_MAX_CONNECTIONS_PER_CLIENT,
        ..public_limits.clone()
    };
    let servers = async {
        tokio::join!(
            gust_router::serve(
                public,
                public_app,
                public_limits,
                "public",
                shutdown.clone()
            ),
            gust_router::serve(api, api_router(state), api_limits, "API", shutdown.clone()),
        )
    };
    tokio::select! {
        _ = servers => {}
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_deadline).await;
        } => tracing::warn!("in-flight requests did not finish within {drain_deadline:?}"),
    }
    dispatcher.drain(drain_deadline).await;
    // Queue triggers let their messages in flight finish (or release them) before the
    // executor goes away.
    let _ = mq_stopped.await;
    executor.shutdown().await;
    usage.flush().await;
    stop_usage.cancel();
    eprintln!("Gust stopped");
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open descriptors to the hard one (connections, workers' pipes and
/// sockets all need descriptors; the listeners' caps are what bounds them) and returns it.
fn raise_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} listener"))
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop Gust with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: draining in-flight requests");
    shutdown.cancel();
}

/// Where worker directories live. As root, workers run as an unprivileged uid that cannot
/// traverse a private data directory (often under `/root`), so they live under `/run`, in a
/// directory named after the data directory so that two Gusts never share one.
fn worker_run_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(data_dir.join("run"));
    }
    let base = if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(instance_name(data_dir));
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
            bail!("{} exists and is not a directory; remove it", dir.display())
        }
        _ => Ok(dir),
    }
}

/// A name for what this Gust creates outside its data directory (worker directories under
/// `/run`, cgroups), derived from the data directory so that two Gusts never share one.
fn instance_name(data_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("gust-{hex}")
}

/// Reads the admin token, creating it (mode 0600) on first start.
fn admin_token(data_dir: &Path) -> anyhow::Result<(AdminToken, PathBuf)> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if token.is_empty() {
                bail!("{} is empty; delete it to make a new token", path.display());
            }
            return Ok((AdminToken::new(token), path));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((AdminToken::new(token), path))
}
