//! `gust up`: a node's roles in one process (all of them unless `--roles` picks some). This is
//! where the concrete types meet.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use gust_api::{AdminToken, ApiState, Builds, NodeDirectory, TokenCheck, api_router};
use gust_async_queue::{AsyncQueue, Clock, Dispatcher, QueueBounds, QueueLimits, SystemClock};
use gust_builder::{Builder, BuilderConfig};
use gust_cluster::{ClusterAudit, ClusterOptions, ClusterQueue, ClusterUsage, QueueRetention};
use gust_dashboard::{Dashboard, dashboard_router};
use gust_edge::{BodyBudget, ConnectionLimits};
use gust_executor::{
    Enqueue, Executor, ExecutorConfig, FunctionLogs, InvocationObserver, Invoker, NoObserver,
    Runtime,
};
use gust_metering::{Meter, Metrics, PriceSheet, UsageRetention, UsageWriter, prune_usage};
use gust_model::{BuiltinRuntime, DEFAULT_POOL_SIZE, Environment, parse_duration};
use gust_router::{NamespaceRates, PublicState, Routes, public_router};
use gust_runtime_process::{Cgroups, Interpreters, ProcessRuntime, Sandbox};
use gust_runtime_wasm::{PoolSize, WasmRuntime};
use gust_store::{
    AuditStore, CodeLimits, CodeStore, EmbeddedStore, InvocationStore, MetadataStore, Sealer,
    SharedCode, UsageStore,
};
use gust_trigger_mq::{MqMetrics, MqTriggers};
use gust_trigger_timer::TimerScheduler;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::cli_config::CliConfig;
use crate::cluster::{ClusterNodes, ClusterTokens, ThisNode};
use crate::deployments::StoreDeployments;
use crate::garbage::Collector;
use crate::roles::{self, Role, RoleName, Task, check_roles};
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
    /// Unload a function with no instance this long after its last request (a wasm
    /// function's compiled code goes from memory); its next request loads it again
    #[arg(long, env = "GUST_UNLOAD_AFTER", default_value = "10m")]
    unload_after: String,
    /// Functions kept loaded with no instance; beyond it, the least recently used are
    /// unloaded first (a wasm function's compiled code goes from memory)
    #[arg(long, env = "GUST_MAX_IDLE_LOADED", default_value_t = 1_000)]
    max_idle_loaded: usize,
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
    /// How long audit log entries (control-plane writes) are kept
    #[arg(long, env = "GUST_AUDIT_RETENTION", default_value = "90days")]
    audit_retention: String,
    /// Memory (MB) the embedded store may use to cache its pages
    #[arg(long, env = "GUST_STORE_CACHE", default_value_t = 64)]
    store_cache: usize,
    /// Memory (MB) all request bodies in flight may take together, on both listeners; a
    /// request past it is answered 503
    #[arg(long, env = "GUST_BODY_MEMORY", default_value_t = 256)]
    body_memory: usize,
    /// Largest request body (MB) a synchronous invocation reads; larger ones are answered 413
    /// (asynchronous invocations keep their 256 KB, as they are stored)
    #[arg(long, env = "GUST_BODY_LIMIT", default_value_t = 6)]
    body_limit: usize,
    /// Longest a request waits for an instance to be prepared for it (a cold start), apart
    /// from the function's timeout, which runs from the request reaching its instance to the
    /// last byte of the response
    #[arg(long, env = "GUST_START_TIMEOUT", default_value = "10s")]
    start_timeout: String,
    /// Roles this node runs, of api, router, executor, async, timers, queues [default: all];
    /// api, router, async and queues need executor beside them
    #[arg(long, env = "GUST_ROLES", value_delimiter = ',', default_values_t = RoleName::ALL)]
    roles: Vec<RoleName>,
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
    /// Longest a dependency build (requirements.txt, package.json) may run
    #[arg(long, env = "GUST_BUILD_TIMEOUT", default_value = "10m")]
    build_timeout: String,
    /// Memory (MB) of a dependency build, its scratch space included
    #[arg(long, env = "GUST_BUILD_MEMORY", default_value_t = BuilderConfig::default().memory_mb)]
    build_memory: u32,
    /// Dependency builds run at once; more wait for a turn
    #[arg(long, env = "GUST_MAX_BUILDS", default_value_t = BuilderConfig::default().concurrent)]
    max_builds: usize,
    /// NATS servers of a cluster to join, comma-separated (`nats://h1:4222,nats://h2:4222`;
    /// `tls://` for TLS). Nodes share metadata, code and the asynchronous queue through
    /// JetStream; the data directory keeps caches, this node's logs and its copy of the usage records
    #[arg(long, env = "GUST_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
    /// The API's URL as other nodes reach it (`gust fn logs` gathers their lines through
    /// it) [default: the address it is bound to]; needed when it binds 0.0.0.0
    #[arg(long, env = "GUST_ADVERTISE_API")]
    advertise_api: Option<String>,
    /// NATS credentials file (JWT and NKey seed) for --cluster
    #[arg(long, env = "GUST_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) that NATS servers' TLS certificates are checked against
    #[arg(long, env = "GUST_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Package index builds install Python packages from [default: pip's own configuration]
    #[arg(long, env = "GUST_PIP_INDEX_URL")]
    pip_index_url: Option<String>,
    /// Registry builds install npm packages from [default: npm's own configuration]
    #[arg(long, env = "GUST_NPM_REGISTRY")]
    npm_registry: Option<String>,
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
        // Colour codes only for a terminal (and never under NO_COLOR): a log file or a
        // service manager's journal gets plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

/// `gust up`'s settings with durations parsed and numbers checked.
struct Settings {
    idle_timeout: Duration,
    unload_after: Duration,
    start_timeout: Duration,
    header_timeout: Duration,
    send_timeout: Duration,
    drain_deadline: Duration,
    async_retention: Duration,
    usage_retention: UsageRetention,
    audit_retention: Duration,
    queue_limits: QueueLimits,
    wasm_pool: PoolSize,
    build_timeout: Duration,
    roles: Vec<RoleName>,
}

impl Settings {
    fn from_args(args: &UpArgs) -> anyhow::Result<Self> {
        if args.log_lines == 0 || args.async_in_flight == 0 {
            bail!("--log-lines and --async-in-flight must be at least 1");
        }
        if !(1..=100_000).contains(&args.wasm_slots)
            || !(16..=4_096).contains(&args.wasm_max_memory)
        {
            bail!("--wasm-slots is 1 to 100000 and --wasm-max-memory 16 to 4096 (MB)");
        }
        let start_timeout = parse_duration("start timeout", &args.start_timeout)?;
        let build_timeout = parse_duration("build timeout", &args.build_timeout)?;
        if build_timeout.is_zero() || args.max_builds == 0 || args.build_memory < 64 {
            bail!(
                "--build-timeout must be more than 0, --max-builds at least 1 and --build-memory at least 64 (MB)"
            );
        }
        if start_timeout.is_zero() || !(1..=1024).contains(&args.body_limit) {
            bail!("--start-timeout must be more than 0 and --body-limit 1 to 1024 (MB)");
        }
        let mut roles = args.roles.clone();
        roles.sort();
        roles.dedup();
        check_roles(&roles)?;
        Ok(Self {
            idle_timeout: parse_duration("idle timeout", &args.idle_timeout)?,
            unload_after: parse_duration("unload after", &args.unload_after)?,
            start_timeout,
            header_timeout: parse_duration("header timeout", &args.header_timeout)?,
            send_timeout: parse_duration("send timeout", &args.send_timeout)?,
            drain_deadline: parse_duration("drain deadline", &args.drain_deadline)?,
            async_retention: parse_duration("async retention", &args.async_retention)?,
            usage_retention: UsageRetention {
                records: parse_duration("usage records retention", &args.usage_records_retention)?,
                hours: parse_duration("usage retention", &args.usage_retention)?,
            },
            audit_retention: parse_duration("audit retention", &args.audit_retention)?,
            queue_limits: QueueLimits {
                bounds: QueueBounds {
                    per_namespace: None,
                    per_function: args.async_queue_depth,
                    stored_bytes: args.async_store_budget.saturating_mul(1024 * 1024),
                },
                dead_letter_retention: parse_duration(
                    "dead-letter retention",
                    &args.dead_letter_retention,
                )?,
                dead_letters_per_function: args.dead_letters_per_function,
            },
            wasm_pool: PoolSize {
                slots: args.wasm_slots,
                max_memory_mb: args.wasm_max_memory,
            },
            build_timeout,
            roles,
        })
    }

    fn runs(&self, role: RoleName) -> bool {
        self.roles.contains(&role)
    }
}

async fn serve(args: UpArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args)?;
    let data_dir = open_data_dir(args.data_dir.clone())?;
    let (token, token_path) = admin_token(&data_dir)?;
    let node = assemble(&args, &settings, &data_dir, &token).await?;

    if let Some(api_url) = &node.api_url
        && let Err(err) = CliConfig::remember(api_url, token.expose())
    {
        tracing::warn!(error = %format!("{err:#}"), "cannot update the CLI config; pass --token to the CLI");
    }
    let not_here = || "(not on this node: see --roles)".to_owned();
    eprintln!("Gust is up");
    eprintln!(
        "  public routes: {}",
        node.public_url.clone().unwrap_or_else(not_here)
    );
    eprintln!(
        "  API:           {}",
        node.api_url.clone().unwrap_or_else(not_here)
    );
    if let Some(api) = &node.api_url {
        eprintln!("  dashboard:     {}/ui", api.trim_end_matches('/'));
    }
    eprintln!("  admin token:   {}", token_path.display());
    eprintln!("  data:          {}", data_dir.display());
    eprintln!("  workers:       {}", node.run_dir.display());
    eprintln!("  network:       {}", node.sandbox_network);
    if let Some(config) = &args.config {
        eprintln!("  settings:      {}", config.display());
    }
    if settings.roles.len() < RoleName::ALL.len() {
        let names: Vec<&str> = settings.roles.iter().map(|r| r.as_str()).collect();
        eprintln!("  roles:         {}", names.join(","));
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    roles::run(node.roles, shutdown, settings.drain_deadline).await;
    eprintln!("Gust stopped");
    Ok(ExitCode::SUCCESS)
}

/// What `gust up` runs: its roles, and where it can be reached.
struct Node {
    roles: Vec<Box<dyn Role>>,
    public_url: Option<String>,
    api_url: Option<String>,
    run_dir: PathBuf,
    sandbox_network: String,
}

/// Opens the store, starts the runtimes and builds every role the settings ask for, in the
/// order they start (they stop in reverse): usage first and last, the listeners last and
/// first.
async fn assemble(
    args: &UpArgs,
    settings: &Settings,
    data_dir: &Path,
    token: &AdminToken,
) -> anyhow::Result<Node> {
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
    let code = Arc::new(CodeStore::open(
        &data_dir.join("code"),
        CodeLimits::default(),
    )?);
    let node_id = crate::cluster::node_id(data_dir)?;
    // In a cluster, metadata and code are the cluster's; the embedded store keeps this
    // node's asynchronous queue and usage records.
    let joined = if args.cluster.is_empty() {
        None
    } else {
        let options = ClusterOptions {
            urls: args.cluster.clone(),
            credentials: args.nats_creds.clone(),
            tls_ca: args.nats_ca.clone(),
            node_id: node_id.clone(),
        };
        Some(crate::cluster::join(
            &args.cluster,
            options,
            code.clone(),
            token.expose(),
        )?)
    };
    let store: Arc<dyn MetadataStore> = match &joined {
        Some(joined) => joined.store.clone(),
        None => embedded.clone(),
    };
    // In a cluster usage records go to JetStream once each, and every node folds all of
    // them into its embedded store: `gust usage` gives the same totals on every node.
    let usage_store: Arc<dyn UsageStore> = match &joined {
        Some(joined) => ClusterUsage::open(
            &joined.cluster,
            embedded.clone(),
            settings.usage_retention.records,
            data_dir.join("usage-stream.position"),
        )
        .context("cannot open the cluster's usage stream")?,
        None => embedded.clone(),
    };
    // The audit log likewise: every node's writes, read on any node.
    let audit: Arc<dyn AuditStore> = match &joined {
        Some(joined) => ClusterAudit::open(
            &joined.cluster,
            embedded.clone(),
            settings.audit_retention,
            data_dir.join("audit-stream.position"),
        )
        .context("cannot open the cluster's audit stream")?,
        None => embedded.clone(),
    };
    // In a cluster the asynchronous queue is JetStream's: every node takes work from it.
    let invocation_store: Arc<dyn InvocationStore> = match &joined {
        Some(joined) => ClusterQueue::open(
            &joined.cluster,
            QueueRetention {
                // Records of pending work must outlive its max age (6 h by default).
                invocations: settings.async_retention.max(Duration::from_secs(24 * 3600)),
                dead_letters: settings.queue_limits.dead_letter_retention,
                work_bytes: settings.queue_limits.bounds.stored_bytes,
            },
        )
        .context("cannot open the cluster's asynchronous queue")?,
        None => embedded.clone(),
    };
    for runtime in BuiltinRuntime::ALL {
        // Components are instantiated per request; there are no workers to keep warm.
        let pool_size = if runtime == BuiltinRuntime::Wasm {
            0
        } else {
            args.pool_size
        };
        store.put_environment(&Environment::builtin(runtime, pool_size))?;
    }

    // Function output outlives a restart: the recent lines are also kept on disk.
    let logs = Arc::new(
        FunctionLogs::with_journal(args.log_lines, &data_dir.join("function-logs"))
            .context("cannot open the function log journal")?,
    );
    let run_dir = worker_run_dir(data_dir)?;
    let builder = Arc::new(dependency_builder(
        args,
        settings,
        sandbox.clone(),
        (data_dir, &run_dir),
        code.clone(),
    ));
    let process = process_runtime(args, sandbox, data_dir, &run_dir, logs.clone())?;
    let wasm = WasmRuntime::new(
        &data_dir.join("wasm-cache"),
        logs.clone(),
        settings.wasm_pool,
    )
    .context("cannot start the WebAssembly runtime")?
    .with_start_timeout(settings.start_timeout);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let queue = AsyncQueue::new(invocation_store, clock.clone(), settings.queue_limits);
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
    let meter = Arc::new(Meter::new(metrics, usage.clone()));
    let shared_code = joined
        .as_ref()
        .map(|joined| joined.store.code() as Arc<dyn SharedCode>);
    let sealer = Arc::new(Sealer::open(data_dir).context("cannot open the secrets' sealing key")?);
    let deployments = Arc::new(StoreDeployments {
        store: store.clone(),
        sealer: sealer.clone(),
        code: code.clone(),
        shared: shared_code.clone(),
    });
    let executor = Executor::new(
        ExecutorConfig {
            idle_timeout: settings.idle_timeout,
            start_timeout: settings.start_timeout,
            unload_after: settings.unload_after,
            max_idle_loaded: args.max_idle_loaded,
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
        settings.async_retention,
    );
    // Triggers hand their work to whatever implements `Enqueue`: the asynchronous queue.
    let enqueue: Arc<dyn Enqueue> = Arc::new(queue.clone());
    // Every node schedules every timer: a tick is enqueued by each, and stored once (the
    // embedded queue by its last tick, JetStream by the tick's message id).
    let timers = TimerScheduler::new(store.clone(), enqueue.clone(), clock.clone());
    let mq = match &joined {
        Some(joined) => MqTriggers::in_cluster(
            store.clone(),
            invoker.clone(),
            enqueue,
            clock,
            mq_metrics,
            joined.cluster.node_id().to_owned(),
        ),
        None => MqTriggers::new(store.clone(), invoker.clone(), enqueue, clock, mq_metrics),
    };
    let routes = Routes::new(store.routes(None)?);
    let rates = NamespaceRates::default();
    let bodies = BodyBudget::new(args.body_memory.saturating_mul(1024 * 1024))
        .with_request_limit(args.body_limit * 1024 * 1024);
    let collector = Arc::new(Collector {
        store: store.clone(),
        code: code.clone(),
        wasm,
        released: Arc::new(tokio::sync::Notify::new()),
    });
    // The listeners are bound before the state is made: the node's addresses are part of it.
    let api_listener = match settings.runs(RoleName::Api) {
        true => Some(bind(args.api_listen, "API").await?),
        false => None,
    };
    let public_listener = match settings.runs(RoleName::Router) {
        true => Some(bind(args.listen, "public").await?),
        false => None,
    };
    let url_of = |listener: &Option<tokio::net::TcpListener>| -> anyhow::Result<Option<String>> {
        listener
            .as_ref()
            .map(|l| Ok(format!("http://{}", l.local_addr()?)))
            .transpose()
    };
    let this_node = Arc::new(ThisNode {
        id: node_id,
        api: match (&args.advertise_api, &api_listener) {
            (Some(url), Some(_)) => Some(url.clone()),
            _ => url_of(&api_listener)?,
        },
        public: url_of(&public_listener)?,
        roles: settings.roles.iter().map(|r| r.to_string()).collect(),
        started_at_ms: crate::cluster::now_ms(),
        executor: executor.clone(),
    });
    let (tokens, nodes): (Arc<dyn TokenCheck>, Arc<dyn NodeDirectory>) = match &joined {
        Some(joined) => (
            Arc::new(ClusterTokens(joined.store.clone())),
            Arc::new(ClusterNodes::new(
                joined.nodes.clone(),
                this_node.id.clone(),
                token.expose().to_owned(),
            )?),
        ),
        None => (Arc::new(token.clone()), this_node.clone()),
    };
    let state = Arc::new(ApiState {
        store,
        code,
        shared_code,
        executor: executor.clone(),
        invoker: invoker.clone(),
        runtime,
        routes: routes.clone(),
        rates: rates.clone(),
        logs,
        tokens,
        audit,
        sealer,
        nodes,
        usage: usage_store.clone(),
        meter,
        prices,
        queue: queue.clone(),
        timers: timers.clone(),
        mq: mq.clone(),
        bodies: bodies.clone(),
        code_released: collector.released.clone(),
        builds: Builds::new(
            builder.clone(),
            data_dir.join("build-logs"),
            BuilderConfig::default().log_bytes,
        ),
        version: crate::commands::version::this_build(),
        bounded_writes: std::sync::Mutex::new(()),
    });

    adopt_unrecorded_namespaces(state.store.as_ref())?;
    state.sync_namespaces()?;
    let route_tokens: Arc<dyn gust_router::InvokerTokens> = Arc::new(gust_api::RouteTokens {
        store: state.store.clone(),
        admin_tokens: state.tokens.clone(),
    });
    let (public_limits, api_limits) = connection_limits(args, settings);
    let usage_retention = settings.usage_retention;
    let (audit_log, audit_retention) = (state.audit.clone(), settings.audit_retention);
    let mut roles: Vec<Box<dyn Role>> = vec![
        Box::new(
            Task::new("usage", move |stop| {
                prune_usage(usage_store, usage_retention, stop)
            })
            .then(move |_| async move {
                usage.flush().await;
                stop_usage.cancel();
            }),
        ),
        // Stops after the API and the executor: no build runs any more.
        Box::new(
            Task::new("builds", |stop| async move { stop.cancelled().await }).then(
                move |_| async move {
                    let _ = tokio::task::spawn_blocking(move || builder.remove_cgroups()).await;
                },
            ),
        ),
        Box::new(Task::new("code-gc", move |stop| collector.run(stop))),
        Box::new(Task::new("audit", move |stop| {
            gust_api::prune_audit(audit_log, audit_retention, stop)
        })),
    ];
    if settings.runs(RoleName::Executor) {
        // The environments' pools start, and functions with a minimum of instances get them
        // now, not on their first request.
        state.sync_environments()?;
        for function in state.store.functions(None)? {
            if function.current_revision().scaling.min_instances > 0 {
                executor.function_deployed(&function.namespace, &function.name);
            }
        }
        let reaper = executor.clone();
        roles.push(Box::new(
            Task::new("executor", move |stop| reaper.run_reaper(stop))
                .then(move |_| async move { executor.shutdown().await }),
        ));
    }
    if settings.runs(RoleName::Async) {
        let drained = dispatcher.clone();
        roles.push(Box::new(
            Task::new("async", move |stop| dispatcher.run(stop))
                .then(move |left| async move { drained.drain(left).await }),
        ));
    }
    if settings.runs(RoleName::Timers) {
        roles.push(Box::new(Task::new("timers", move |stop| timers.run(stop))));
    }
    if settings.runs(RoleName::Queues) {
        // Stopping lets messages in flight finish (or releases them) before the executor goes.
        roles.push(Box::new(Task::new("queues", move |stop| mq.run(stop))));
    }
    if let Some(joined) = joined {
        let (store, followed) = (joined.store.clone(), state.clone());
        roles.push(Box::new(Task::new("cluster", move |stop| {
            crate::cluster::follow_changes(store, followed, stop)
        })));
        let heartbeat = this_node.clone();
        roles.push(Box::new(Task::new("heartbeat", move |stop| async move {
            joined.nodes.beat(|| heartbeat.heartbeat(), stop).await
        })));
    }
    if let Some(api) = api_listener {
        // Builds a stop interrupted start again: in a cluster, only those this node was
        // running (whose sources it holds), not another node's build in progress.
        Builds::resume(&state, !args.cluster.is_empty())?;
        let queue = state.queue.clone();
        let api_routes = api_router(state);
        // The dashboard calls the API in-process; it is served beside it, never on the
        // public listener.
        let dashboard = Arc::new(Dashboard::new(api_routes.clone(), move || queue.depth()));
        let app = api_routes.merge(dashboard_router(dashboard));
        roles.push(Box::new(Task::new("api", move |stop| {
            gust_edge::serve(api, app, api_limits, "API", stop)
        })));
    }
    if let Some(public) = public_listener {
        let app = public_router(PublicState {
            routes,
            invoker,
            queue: Arc::new(queue),
            bodies,
            rates,
            tokens: route_tokens,
        });
        roles.push(Box::new(Task::new("router", move |stop| {
            gust_edge::serve(public, app, public_limits, "public", stop)
        })));
    }
    Ok(Node {
        roles,
        public_url: this_node.public.clone(),
        api_url: this_node.api.clone(),
        run_dir,
        sandbox_network: sandbox_network.to_owned(),
    })
}

/// Creates the data directory (mode 0700) if needed and returns its canonical path.
fn open_data_dir(data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let data_dir = match data_dir {
        Some(dir) => dir,
        None => dirs::data_dir()
            .context("cannot find a data directory (set --data-dir, XDG_DATA_HOME or HOME)")?
            .join("gust"),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data_dir.display()))
}

/// The process tier: interpreters, cgroups and the directory its workers live in.
fn process_runtime(
    args: &UpArgs,
    sandbox: Sandbox,
    data_dir: &Path,
    run_dir: &Path,
    logs: Arc<FunctionLogs>,
) -> anyhow::Result<Arc<dyn Runtime>> {
    let interpreters = Interpreters {
        python: args.python.clone(),
        node: args.node.clone(),
    };
    for interpreter in [&interpreters.python, &interpreters.node] {
        if !interpreter.exists() {
            tracing::warn!(interpreter = %interpreter.display(), "interpreter not found; its environment cannot start workers");
        }
    }
    let cgroups = match Cgroups::create(&instance_name(data_dir)) {
        Ok(cgroups) => Some(cgroups),
        Err(reason) => {
            tracing::warn!(%reason, "no cgroups: workers' memory, pids and CPU are not limited");
            None
        }
    };
    Ok(Arc::new(
        ProcessRuntime::new(run_dir, sandbox, cgroups, interpreters, logs)?
            .with_protected(vec![data_dir.to_owned()]),
    ))
}

/// Dependency builds: in the workers' sandbox, in cgroups of their own.
fn dependency_builder(
    args: &UpArgs,
    settings: &Settings,
    sandbox: Sandbox,
    (data_dir, run_dir): (&Path, &Path),
    code: Arc<CodeStore>,
) -> Builder {
    let cgroups = match Cgroups::create(&format!("{}-builds", instance_name(data_dir))) {
        Ok(cgroups) => Some(cgroups),
        Err(reason) => {
            tracing::warn!(%reason, "no cgroups: builds' memory, pids and CPU are not limited");
            None
        }
    };
    let npm = args
        .node
        .parent()
        .map_or_else(|| PathBuf::from("/usr/bin/npm"), |dir| dir.join("npm"));
    let config = BuilderConfig {
        timeout: settings.build_timeout,
        memory_mb: args.build_memory,
        concurrent: args.max_builds,
        pip_index_url: args.pip_index_url.clone(),
        npm_registry: args.npm_registry.clone(),
        python: args.python.clone(),
        node: args.node.clone(),
        npm,
        scratch_root: run_dir.join("builds"),
        ..BuilderConfig::default()
    };
    Builder::new(config, sandbox, cgroups, code)
}

/// The public and the API listener's connection limits.
fn connection_limits(args: &UpArgs, settings: &Settings) -> (ConnectionLimits, ConnectionLimits) {
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
    let public = ConnectionLimits {
        max_connections,
        max_per_client: args.max_connections_per_client,
        header_read_timeout: settings.header_timeout,
        max_header_bytes: MAX_HEADER_BYTES,
        max_headers: MAX_HEADERS,
        send_stall_timeout: settings.send_timeout,
    };
    let api = ConnectionLimits {
        max_connections: API_MAX_CONNECTIONS,
        max_per_client: API_MAX_CONNECTIONS_PER_CLIENT,
        ..public.clone()
    };
    (public, api)
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

/// Namespaces were labels before they were records: a data directory (or cluster) from then
/// holds resources in namespaces nobody created. Each gets its record at start, so it can be
/// managed (and deleted) like any other.
fn adopt_unrecorded_namespaces(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let mut used: std::collections::BTreeSet<gust_model::Namespace> =
        std::collections::BTreeSet::new();
    used.extend(store.functions(None)?.into_iter().map(|f| f.namespace));
    used.extend(store.routes(None)?.into_iter().map(|r| r.namespace));
    used.extend(store.timers(None)?.into_iter().map(|t| t.namespace));
    used.extend(store.mq_triggers(None)?.into_iter().map(|t| t.namespace));
    for namespace in used {
        if store.namespace_record(&namespace)?.is_some() {
            continue;
        }
        let record = gust_model::NamespaceRecord {
            name: namespace.clone(),
            created_at_ms: crate::cluster::now_ms(),
            quotas: Default::default(),
            hosts: Vec::new(),
        };
        match store.create_namespace(&record) {
            Ok(()) => {
                tracing::info!(%namespace, "namespace recorded for the resources it already held")
            }
            // Another node of a cluster recorded it first.
            Err(gust_store::StoreError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err).context(format!("cannot record namespace {namespace}")),
        }
    }
    Ok(())
}
