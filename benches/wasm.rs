//! WebAssembly tier benchmark, each figure against a baseline measured in the same run.
//!
//! Run with `cargo bench --bench wasm` (release build). The first run builds wasmtime-cli
//! 48.0.8 into `target/tools` (`scripts/wasmtime-cli.sh`, about 20 minutes). Prints a Markdown
//! table.
//!
//! (1) to (3) run for each of two C components: `tests/components/hello.wasm` (no C library,
//! so no preview1 adapter) and `tests/components/probe.wasm` (wasi-libc and the adapter).
//!
//! 1. Throughput of the component (path `/`) through Gust's public listener against the same file under `wasmtime serve`, with the same
//!    closed-loop load generator (keep-alive connections, each sending its next request when
//!    the previous answered). Both give every request a fresh instance.
//! 2. First request after deploy: a distinct copy of the component is deployed through the API
//!    and requested at once; against a warm request to the same function.
//! 3. Instantiation inside Gust: the per-request instantiation histogram from `/metrics`,
//!    over the warm requests of (2) only (requests one at a time).
//! 4. Resident memory of `gust up` with 1,000 deployed copies of the probe, idle (never invoked, and
//!    after each answered once), against the same process with none.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gust_harness::{Gust, GustOptions, free_port};

use common::{
    HELLO_WASM, PROBE_WASM, Stats, deploy, deploy_many, distinct_component, distinct_copy, get, ms,
    print_table, rss_kib, stats, tcp_sender, us,
};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const LOAD_CONNECTIONS: usize = 16;
const LOAD_REQUESTS: usize = 30_000;
const FIRST_REQUEST_SAMPLES: usize = 100;
const IDLE_FUNCTIONS: usize = 1_000;

/// `total` requests over `connections` kept-alive connections, each sending its next request
/// when the previous one answered. Returns requests per second and the latencies.
async fn closed_loop(port: u16, path: &str, connections: usize, total: usize) -> (f64, Stats) {
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let path = path.to_owned();
            let share = total / connections + usize::from(i < total % connections);
            tokio::spawn(async move {
                let mut sender = tcp_sender(port).await;
                let mut samples = Vec::with_capacity(share);
                for _ in 0..share {
                    samples.push(get(&mut sender, &path).await);
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(total);
    for worker in workers {
        samples.extend(worker.await.unwrap());
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    (rate, stats(samples))
}

/// The wasmtime CLI at Gust's wasmtime version, built on first use.
fn wasmtime_cli() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/wasmtime-cli.sh");
    let output = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "building wasmtime-cli failed");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// `wasmtime serve` on a free port; returns once it accepts connections.
fn wasmtime_serve(wasmtime: &PathBuf, component: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(wasmtime)
        .args(["serve", "-S", "cli=y", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "wasmtime serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// The cumulative buckets `(upper bound, count)` of a histogram in `/metrics` text.
fn histogram_buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `quantile` of cumulative histogram buckets, interpolated within its bucket as PromQL's
/// `histogram_quantile` does.
fn histogram_quantile(buckets: &[(f64, f64)], quantile: f64) -> Option<Duration> {
    let total = buckets.last()?.1;
    let rank = quantile * total;
    let mut previous = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(Duration::from_secs_f64(previous.0));
            }
            let within = (rank - previous.1) / (count - previous.1).max(1.0);
            return Some(Duration::from_secs_f64(
                previous.0 + (bound - previous.0) * within,
            ));
        }
        previous = (bound, count);
    }
    None
}

/// One of the C test components the benchmark runs.
struct Subject {
    /// How the table names it.
    label: &'static str,
    file: &'static str,
    wasm: &'static [u8],
}

const SUBJECTS: [Subject; 2] = [
    Subject {
        label: "C hello, no libc",
        file: "hello.wasm",
        wasm: HELLO_WASM,
    },
    Subject {
        label: "C probe, wasi-libc + preview1 adapter",
        file: "probe.wasm",
        wasm: PROBE_WASM,
    },
];

fn run(rt: &tokio::runtime::Runtime) {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let wasmtime = wasmtime_cli();
    for subject in &SUBJECTS {
        measure(rt, &wasmtime, subject, &mut rows);
    }

    // 4. Memory with 1,000 deployed wasm functions.
    let gust = Gust::start(GUST, GustOptions::default());
    std::thread::sleep(Duration::from_secs(1));
    let empty = rss_kib(gust.pid());
    deploy_many(
        &gust,
        "idle",
        "wasm",
        "probe.wasm",
        distinct_component,
        IDLE_FUNCTIONS,
    );
    std::thread::sleep(Duration::from_secs(1));
    let deployed = rss_kib(gust.pid());
    rt.block_on(async {
        let mut sender = tcp_sender(gust.public_port).await;
        for i in 0..IDLE_FUNCTIONS {
            get(&mut sender, &format!("/idle-{i}")).await;
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let invoked = rss_kib(gust.pid());
    let mb = |kib: u64| format!("{:.1} MB", kib as f64 / 1024.0);
    rows.push([
        format!("gust RSS, {IDLE_FUNCTIONS} wasm functions deployed, never invoked"),
        mb(deployed),
        format!("{} (no functions)", mb(empty)),
        format!("{:.2}", deployed as f64 / empty as f64),
    ]);
    rows.push([
        format!("gust RSS, {IDLE_FUNCTIONS} wasm functions, each invoked once, idle"),
        mb(invoked),
        format!("{} (no functions)", mb(empty)),
        format!("{:.2}", invoked as f64 / empty as f64),
    ]);

    print_table("Gust WebAssembly benchmark", rows);
}

/// Throughput against `wasmtime serve`, first request after deploy and instantiation inside
/// Gust, for one component.
fn measure(
    rt: &tokio::runtime::Runtime,
    wasmtime: &PathBuf,
    subject: &Subject,
    rows: &mut Vec<[String; 4]>,
) {
    let label = subject.label;
    // 1. Throughput, Gust against `wasmtime serve`.
    let gust = Gust::start(GUST, GustOptions::default());
    deploy(&gust, "hello", "wasm", subject.file, subject.wasm);
    rt.block_on(closed_loop(
        gust.public_port,
        "/hello",
        LOAD_CONNECTIONS,
        2_000,
    ));
    let (gust_rate, gust_latency) = rt.block_on(closed_loop(
        gust.public_port,
        "/hello",
        LOAD_CONNECTIONS,
        LOAD_REQUESTS,
    ));
    let scratch = tempfile::tempdir().unwrap();
    let component = scratch.path().join(subject.file);
    std::fs::write(&component, subject.wasm).unwrap();
    let (mut serve, serve_port) = wasmtime_serve(wasmtime, &component);
    rt.block_on(closed_loop(serve_port, "/", LOAD_CONNECTIONS, 2_000));
    let (serve_rate, serve_latency) = rt.block_on(closed_loop(
        serve_port,
        "/",
        LOAD_CONNECTIONS,
        LOAD_REQUESTS,
    ));
    let _ = serve.kill();
    let _ = serve.wait();
    rows.push([
        format!("{label}: throughput, {LOAD_CONNECTIONS} connections"),
        format!("{gust_rate:.0} req/s"),
        format!("{serve_rate:.0} req/s (wasmtime serve 48.0.8)"),
        format!("{:.2}", gust_rate / serve_rate),
    ]);
    rows.push([
        format!("{label}: latency under that load (p50 / p99)"),
        format!("{} / {}", us(gust_latency.p50), us(gust_latency.p99)),
        format!(
            "{} / {} (wasmtime serve)",
            us(serve_latency.p50),
            us(serve_latency.p99)
        ),
        format!(
            "{:.2}",
            gust_latency.p50.as_secs_f64() / serve_latency.p50.as_secs_f64()
        ),
    ]);

    // 2. First request after deploy, against a warm request to the same function.
    let mut first = Vec::with_capacity(FIRST_REQUEST_SAMPLES);
    for i in 0..FIRST_REQUEST_SAMPLES {
        let name = format!("fresh-{i}");
        let copy = distinct_copy(subject.wasm, i);
        deploy(&gust, &name, "wasm", subject.file, &copy);
        first.push(rt.block_on(async {
            let mut sender = tcp_sender(gust.public_port).await;
            get(&mut sender, &format!("/{name}")).await
        }));
    }
    // The instantiation histogram is read before and after the warm requests, so that
    // (3) covers requests one at a time, not the loaded throughput run.
    let instantiations_before = gust.metrics();
    let warm = rt.block_on(async {
        let mut sender = tcp_sender(gust.public_port).await;
        for _ in 0..500 {
            get(&mut sender, "/fresh-0").await;
        }
        let mut samples = Vec::with_capacity(3_000);
        for _ in 0..3_000 {
            samples.push(get(&mut sender, "/fresh-0").await);
        }
        samples
    });
    let instantiations_after = gust.metrics();
    let (first, warm) = (stats(first), stats(warm));
    rows.push([
        format!("{label}: first request after deploy (p50 / p99)"),
        format!("{} / {}", ms(first.p50), ms(first.p99)),
        format!("{} / {} (warm, same function)", ms(warm.p50), ms(warm.p99)),
        format!("{:.2}", first.p50.as_secs_f64() / warm.p50.as_secs_f64()),
    ]);

    // 3. Instantiation inside Gust, over the warm requests above.
    let name = "gust_wasm_instantiation_seconds";
    let buckets = |text: &str| histogram_buckets(text, name);
    let (before, after) = (
        buckets(&instantiations_before),
        buckets(&instantiations_after),
    );
    let during: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect();
    let (p50, p99) = (
        histogram_quantile(&during, 0.50).expect("instantiation histogram"),
        histogram_quantile(&during, 0.99).expect("instantiation histogram"),
    );
    rows.push([
        format!("{label}: instantiation inside Gust, one request at a time (p50 / p99)"),
        format!("{} / {}", us(p50), us(p99)),
        format!("{} (whole warm request, p50)", us(warm.p50)),
        format!("{:.2}", p50.as_secs_f64() / warm.p50.as_secs_f64()),
    ]);
}

fn main() {
    common::main_with(run);
}
