//! What the benchmarks share: HTTP/1.1 clients on raw hyper connections (so the client adds
//! as little as possible), percentiles, deploying many functions, and the result table.

#![allow(dead_code)] // each benchmark uses a different part

use std::time::{Duration, Instant};

use bytes::Bytes;
use gust_harness::Gust;
use gust_harness::reqwest::Method;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

pub const PROBE_WASM: &[u8] = include_bytes!("../../tests/components/probe.wasm");
/// The smallest C component: answers "hello from wasm", links no C library.
pub const HELLO_WASM: &[u8] = include_bytes!("../../tests/components/hello.wasm");

pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
}

pub fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

pub async fn tcp_sender(port: u16) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// One GET on a kept-alive connection; panics unless it answers 200.
pub async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> Duration {
    get_expecting(sender, path, 200).await
}

/// One GET on a kept-alive connection; panics unless it answers `expected`.
pub async fn get_expecting(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    expected: u16,
) -> Duration {
    let request = http::Request::get(path)
        .header("host", "bench")
        .body(Empty::new())
        .unwrap();
    let started = Instant::now();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let elapsed = started.elapsed();
    assert_eq!(
        status,
        expected,
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    elapsed
}

/// The test component with a custom section naming `i` appended: the same behaviour, another
/// digest, so that each function is really compiled and loaded on its own.
pub fn distinct_component(i: usize) -> Vec<u8> {
    distinct_copy(PROBE_WASM, i)
}

/// `component` with a custom section naming `i` appended (see [`distinct_component`]).
pub fn distinct_copy(component: &[u8], i: usize) -> Vec<u8> {
    let name = b"gust-bench";
    let payload = i.to_le_bytes();
    let mut wasm = component.to_vec();
    let size = 1 + name.len() + payload.len();
    wasm.extend_from_slice(&[0, size as u8, name.len() as u8]);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(&payload);
    wasm
}

/// Deploys one function with the route `/<name>` through the API.
pub fn deploy(gust: &Gust, name: &str, env: &str, file: &str, code: &[u8]) {
    use base64::Engine;
    let content = base64::engine::general_purpose::STANDARD.encode(code);
    let body = serde_json::json!({"name": name, "env": env, "code": {"filename": file, "content_base64": content}});
    let response = gust
        .api(Method::POST, "/v1/functions")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().unwrap());
    create_route(
        gust,
        serde_json::json!({"function": name, "url": format!("/{name}"), "name": name}),
    );
}

/// Creates a route from its JSON body through the API.
pub fn create_route(gust: &Gust, route: serde_json::Value) {
    let response = gust
        .api(Method::POST, "/v1/routes")
        .json(&route)
        .send()
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().unwrap());
}

/// Deploys `count` functions with routes `/<prefix>-<i>`.
pub fn deploy_many(
    gust: &Gust,
    prefix: &str,
    env: &str,
    file: &str,
    source: impl Fn(usize) -> Vec<u8>,
    count: usize,
) {
    for i in 0..count {
        deploy(gust, &format!("{prefix}-{i}"), env, file, &source(i));
    }
}

/// Waits until no function has an idle instance: a deploy loads each new revision in its
/// first instance, and a cold start is measured on a request that finds none (as after scale
/// to zero). Needs a Gust started with a short `--idle-timeout`.
pub fn wait_for_scale_to_zero(gust: &Gust) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let idle: f64 = gust
            .metrics()
            .lines()
            .filter(|l| l.starts_with("gust_function_instances{") && l.contains("state=\"idle\""))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum();
        if idle == 0.0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{idle} instances still idle after a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The first value in `/metrics` of a line starting with `prefix` (0 when absent).
pub fn metric(gust: &Gust, prefix: &str) -> f64 {
    gust.metrics()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Prints the rows as a Markdown table under a line naming the machine.
pub fn print_table(title: &str, rows: Vec<[String; 4]>) {
    print_table_headed(
        ["measure", "Gust", "baseline (same run)", "ratio"],
        title,
        rows,
    );
}

/// [`print_table`] with columns of its own.
pub fn print_table_headed(header: [&str; 4], title: &str, rows: Vec<[String; 4]>) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("\n{title} — {cores} cores, {cpu}\n");
    println!("| {} |", header.join(" | "));
    println!("|---|---|---|---|");
    for [a, b, c, d] in rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
}

/// Runs `bench` on a single-threaded runtime, only when cargo runs this as a benchmark
/// (`cargo test --benches` runs it without `--bench`).
pub fn main_with(bench: fn(&tokio::runtime::Runtime)) {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench(&rt);
}
