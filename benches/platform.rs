//! Platform benchmark: cold starts, warm-request overhead and idle memory, each against a
//! baseline measured in the same run.
//!
//! Run with `cargo bench --bench platform` (release build). Prints a Markdown table.
//!
//! 1. Cold start: the first request to a never-invoked function, with the environment's pool
//!    warm, against the same with no pool (`--pool-size 0`: a worker is started per cold start).
//! 2. Warm overhead: a warm function through Gust's public listener against the same worker
//!    server, specialized with the same code, called directly on its Unix socket.
//! 3. Memory: resident memory of `gust up` with 1,000 deployed idle functions against the same
//!    process with none; pool workers reported separately.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gust_harness::{Gust, GustOptions};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use common::{
    deploy_many, distinct_component, get, ms, print_table, rss_kib, stats, tcp_sender, us,
    wait_for_scale_to_zero,
};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const COLD_SAMPLES: usize = 40;
const WARM_SAMPLES: usize = 3_000;
const IDLE_FUNCTIONS: usize = 1_000;

const PYTHON_FN: &str = "def main():\n    return 'ok'\n";
const NODE_FN: &str = "module.exports = async () => ({ status: 200, body: 'ok' });\n";

async fn cold_starts(gust: &Gust, prefix: &str) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(COLD_SAMPLES);
    for i in 0..COLD_SAMPLES {
        // Let the pool refill from the previous cold start, as between real first requests.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut sender = tcp_sender(gust.public_port).await;
        let path = format!("/{prefix}-{i}");
        let request = http::Request::get(&path)
            .header("host", "bench")
            .body(Empty::new())
            .unwrap();
        let started = Instant::now();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        samples.push(started.elapsed());
        assert_eq!(
            status,
            200,
            "{path}: {}\n{}",
            String::from_utf8_lossy(&body),
            gust.log()
        );
    }
    samples
}

/// Starts the built-in Python worker server directly (no Gust, no sandbox) and specializes it.
async fn direct_python_worker(dir: &Path) -> (std::process::Child, SendRequest<Full<Bytes>>) {
    let server = dir.join("server.py");
    std::fs::write(&server, include_str!("../environments/python/server.py")).unwrap();
    let code = dir.join("direct.py");
    std::fs::write(&code, PYTHON_FN).unwrap();
    let socket = dir.join("direct.sock");
    // As Gust does: the server inherits a listening socket as descriptor 3.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut command = std::process::Command::new("/usr/bin/python3");
    command
        .arg(&server)
        .env_clear()
        .env("GUST_LISTEN_FD", "3")
        .env("PYTHONUNBUFFERED", "1");
    // SAFETY: dup and dup2 are async-signal-safe; `fd` stays open until spawn returns.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            let copy = libc::dup(fd);
            if copy < 0 || libc::dup2(copy, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A copy that landed on 3 itself (3 was free) is the descriptor the server
            // reads: closing it would leave the server none.
            if copy != 3 {
                libc::close(copy);
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    drop(listener);
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let body = serde_json::json!({"filepath": code, "functionName": "", "env": {}}).to_string();
    let request = http::Request::post("/v2/specialize")
        .header("host", "bench")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert!(response.status().is_success());
    response.into_body().collect().await.unwrap();
    (child, sender)
}

fn run(rt: &tokio::runtime::Runtime) {
    let mut rows: Vec<[String; 4]> = Vec::new();

    // 1. Cold start, with and without the pool.
    // A short idle timeout: each function's first instance, started when it was deployed,
    // is gone before its cold start is measured.
    let scale_to_zero = || vec!["--idle-timeout".to_owned(), "1s".to_owned()];
    let pooled = Gust::start(
        GUST,
        GustOptions {
            pool_size: 3,
            extra_args: scale_to_zero(),
            ..Default::default()
        },
    );
    let unpooled = Gust::start(
        GUST,
        GustOptions {
            pool_size: 0,
            extra_args: scale_to_zero(),
            ..Default::default()
        },
    );
    for (env, file, source) in [("python", "f.py", PYTHON_FN), ("node", "f.js", NODE_FN)] {
        deploy_many(&pooled, env, env, file, |_| source.into(), COLD_SAMPLES);
        deploy_many(&unpooled, env, env, file, |_| source.into(), COLD_SAMPLES);
        wait_for_scale_to_zero(&pooled);
        wait_for_scale_to_zero(&unpooled);
        let warm_pool = stats(rt.block_on(cold_starts(&pooled, env)));
        let no_pool = stats(rt.block_on(cold_starts(&unpooled, env)));
        rows.push([
            format!("cold start, {env} (p50 / p99)"),
            format!("{} / {}", ms(warm_pool.p50), ms(warm_pool.p99)),
            format!("{} / {} (no pool)", ms(no_pool.p50), ms(no_pool.p99)),
            format!(
                "{:.3}",
                warm_pool.p50.as_secs_f64() / no_pool.p50.as_secs_f64()
            ),
        ]);
    }
    drop(unpooled);

    // 1b. WebAssembly: no pool needed; each function's first request instantiates its
    //     component, compiled at deploy. Baseline: the Python cold start above.
    deploy_many(
        &pooled,
        "wasm",
        "wasm",
        "probe.wasm",
        distinct_component,
        COLD_SAMPLES,
    );
    wait_for_scale_to_zero(&pooled);
    let wasm_cold = stats(rt.block_on(cold_starts(&pooled, "wasm")));
    let python_cold = rows[0][1].clone();
    rows.push([
        "cold start, wasm (p50 / p99)".into(),
        format!("{} / {}", ms(wasm_cold.p50), ms(wasm_cold.p99)),
        format!("{python_cold} (python, pooled)"),
        String::new(),
    ]);

    // 2. Warm overhead: through Gust vs the same worker server called directly.
    let scratch = tempfile::tempdir().unwrap();
    let (through_gust, direct_samples, mut child) = rt.block_on(async {
        let mut through_gust = Vec::with_capacity(WARM_SAMPLES);
        let mut sender = tcp_sender(pooled.public_port).await;
        for _ in 0..200 {
            get(&mut sender, "/python-0").await;
        }
        for _ in 0..WARM_SAMPLES {
            through_gust.push(get(&mut sender, "/python-0").await);
        }
        let (child, mut direct) = direct_python_worker(scratch.path()).await;
        let mut direct_samples = Vec::with_capacity(WARM_SAMPLES);
        for i in 0..(WARM_SAMPLES + 200) {
            let request = http::Request::get("/")
                .header("host", "bench")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let started = Instant::now();
            direct.ready().await.unwrap();
            let response = direct.send_request(request).await.unwrap();
            response.into_body().collect().await.unwrap();
            if i >= 200 {
                direct_samples.push(started.elapsed());
            }
        }
        (through_gust, direct_samples, child)
    });
    let _ = child.kill();
    let gust_stats = stats(through_gust);
    let direct_stats = stats(direct_samples);
    // A warm wasm function still gets a fresh instance per request.
    let wasm_warm = stats(rt.block_on(async {
        let mut sender = tcp_sender(pooled.public_port).await;
        for _ in 0..200 {
            get(&mut sender, "/wasm-0").await;
        }
        let mut samples = Vec::with_capacity(WARM_SAMPLES);
        for _ in 0..WARM_SAMPLES {
            samples.push(get(&mut sender, "/wasm-0").await);
        }
        samples
    }));
    rows.push([
        "request, wasm, fresh instance each (p50 / p99)".into(),
        format!("{} / {}", us(wasm_warm.p50), us(wasm_warm.p99)),
        format!(
            "{} / {} (python, warm, through Gust)",
            us(gust_stats.p50),
            us(gust_stats.p99)
        ),
        format!(
            "{:.2}",
            wasm_warm.p50.as_secs_f64() / gust_stats.p50.as_secs_f64()
        ),
    ]);
    rows.push([
        "warm request, python (p50 / p99)".into(),
        format!("{} / {}", us(gust_stats.p50), us(gust_stats.p99)),
        format!(
            "{} / {} (worker direct)",
            us(direct_stats.p50),
            us(direct_stats.p99)
        ),
        format!(
            "{:.2}",
            gust_stats.p50.as_secs_f64() / direct_stats.p50.as_secs_f64()
        ),
    ]);
    rows.push([
        "warm overhead, python (p50 / p99)".into(),
        format!(
            "{} / {}",
            us(gust_stats.p50.saturating_sub(direct_stats.p50)),
            us(gust_stats.p99.saturating_sub(direct_stats.p99))
        ),
        "Gust minus direct".into(),
        "".into(),
    ]);
    drop(pooled);

    // 3. Memory with 1,000 idle functions (idle: the instances their deploys loaded them
    //    in have stopped).
    let gust = Gust::start(
        GUST,
        GustOptions {
            pool_size: 3,
            extra_args: scale_to_zero(),
            ..Default::default()
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let empty_rss = rss_kib(gust.pid());
    deploy_many(
        &gust,
        "idle",
        "python",
        "f.py",
        |_| PYTHON_FN.into(),
        IDLE_FUNCTIONS,
    );
    wait_for_scale_to_zero(&gust);
    std::thread::sleep(Duration::from_secs(1));
    let full_rss = rss_kib(gust.pid());
    let workers: u64 = gust
        .worker_pids("/gust-env/")
        .into_iter()
        .map(rss_kib)
        .sum();
    rows.push([
        format!("gust RSS, {IDLE_FUNCTIONS} idle functions"),
        format!("{:.1} MB", full_rss as f64 / 1024.0),
        format!("{:.1} MB (no functions)", empty_rss as f64 / 1024.0),
        format!("{:.2}", full_rss as f64 / empty_rss as f64),
    ]);
    rows.push([
        "pool workers RSS (3 python + 3 node, with bwrap)".into(),
        format!("{:.1} MB", workers as f64 / 1024.0),
        "".into(),
        "".into(),
    ]);

    print_table("Gust platform benchmark", rows);
}

fn main() {
    common::main_with(run);
}
