//! Scaling and metering benchmark, each figure against a baseline measured in the same run.
//!
//! Run with `cargo bench --bench scaling` (release build). Prints a Markdown table.
//!
//! 1. Bursts of 100 and 500 concurrent requests (one connection each) against a function at
//!    zero instances, Python and wasm: success rate, latency p50 and p99, instances started
//!    (cold starts from `/metrics`), and the time from the end of the burst until the
//!    function is back at zero instances (idle timeout 2 s, reaper ticks once a second).
//!    Baseline: the same requests one at a time against the warm function.
//! 2. What metering adds to a warm request: the same function on two fresh `gust up`s, one
//!    with `--no-metering`, in alternating rounds of 3,000 requests (the median round's
//!    percentiles).

mod common;

use std::time::{Duration, Instant};

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions};
use serde_json::Value;

use common::{PROBE_WASM, Stats, deploy, get, metric, ms, print_table, stats, tcp_sender, us};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const PYTHON_FN: &str = "def main():\n    return 'ok'\n";
const WARM_SAMPLES: usize = 3_000;

/// `count` requests at once, each on its own connection: (successes, latencies).
async fn burst(port: u16, path: &str, count: usize) -> (usize, Stats) {
    let calls: Vec<_> = (0..count)
        .map(|_| {
            let path = path.to_owned();
            tokio::spawn(async move {
                let mut sender = tcp_sender(port).await;
                let request = http::Request::get(&path)
                    .header("host", "bench")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let started = Instant::now();
                let response = sender.send_request(request).await.unwrap();
                let ok = response.status() == 200;
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                (ok, started.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut samples = Vec::with_capacity(count);
    for call in calls {
        let (success, elapsed) = call.await.unwrap();
        ok += usize::from(success);
        samples.push(elapsed);
    }
    (ok, stats(samples))
}

fn instances(gust: &Gust, function: &str) -> u64 {
    let info: Value = gust
        .api(Method::GET, &format!("/v1/functions/{function}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    info["instances"]["busy"].as_u64().unwrap() + info["instances"]["idle"].as_u64().unwrap()
}

async fn warm(port: u16, path: &str, samples: usize) -> Stats {
    let mut sender = tcp_sender(port).await;
    for _ in 0..200 {
        get(&mut sender, path).await;
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        out.push(get(&mut sender, path).await);
    }
    stats(out)
}

fn run(rt: &tokio::runtime::Runtime) {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let gust = Gust::start(
        GUST,
        GustOptions {
            pool_size: 3,
            ..Default::default()
        },
    );

    // 1. Bursts against functions at zero.
    for size in [100, 500] {
        for (env, file, code) in [
            ("python", "f.py", PYTHON_FN.as_bytes()),
            ("wasm", "probe.wasm", PROBE_WASM),
        ] {
            let name = format!("burst-{env}-{size}");
            deploy(&gust, &name, env, file, code);
            let update = serde_json::json!({"idle_timeout": "2s"});
            let response = gust
                .api(Method::PUT, &format!("/v1/functions/{name}"))
                .json(&update)
                .send()
                .unwrap();
            assert_eq!(response.status(), 200);
            // A deploy loads the code in a first instance: the burst starts once it has gone
            // (idle timeout), and the pool has refilled.
            let deployed = Instant::now();
            while instances(&gust, &name) > 0 {
                assert!(deployed.elapsed() < Duration::from_secs(60));
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(500));
            let path = format!("/{name}");
            let (ok, latency) = rt.block_on(burst(gust.public_port, &path, size));
            let burst_end = Instant::now();
            let started = metric(
                &gust,
                &format!(
                    "gust_function_cold_starts_total{{namespace=\"default\",function=\"{name}\"}}"
                ),
            );
            let warm_one_at_a_time = rt.block_on(warm(gust.public_port, &path, 500));
            while instances(&gust, &name) > 0 {
                assert!(burst_end.elapsed() < Duration::from_secs(60));
                std::thread::sleep(Duration::from_millis(50));
            }
            let back_to_zero = burst_end.elapsed();
            rows.push([
                format!("burst of {size} at zero, {env}: success, p50 / p99"),
                format!(
                    "{:.1}%, {} / {}",
                    ok as f64 * 100.0 / size as f64,
                    ms(latency.p50),
                    ms(latency.p99)
                ),
                format!(
                    "{} / {} (warm, one at a time)",
                    ms(warm_one_at_a_time.p50),
                    ms(warm_one_at_a_time.p99)
                ),
                format!(
                    "{:.1}",
                    latency.p50.as_secs_f64() / warm_one_at_a_time.p50.as_secs_f64()
                ),
            ]);
            rows.push([
                format!("burst of {size}, {env}: instances started, back to zero"),
                format!(
                    "{started:.0} instances, {:.1} s",
                    back_to_zero.as_secs_f64()
                ),
                "idle timeout 2 s".into(),
                String::new(),
            ]);
        }
    }

    let records = gust
        .api(Method::GET, "/v1/usage?since=1h")
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()["totals"]["invocations"]
        .as_u64()
        .unwrap_or(0);
    rows.push([
        "usage records of the bursts and warm runs above".into(),
        records.to_string(),
        String::new(),
        String::new(),
    ]);
    drop(gust);

    // 2. Metering overhead on a warm request: two fresh, identical `gust up`s but for
    //    `--no-metering`.
    let gust = Gust::start(
        GUST,
        GustOptions {
            pool_size: 3,
            ..Default::default()
        },
    );
    let unmetered = Gust::start(
        GUST,
        GustOptions {
            pool_size: 3,
            extra_args: vec!["--no-metering".into()],
            ..GustOptions::default()
        },
    );
    for (env, file, code) in [
        ("python", "f.py", PYTHON_FN.as_bytes()),
        ("wasm", "probe.wasm", PROBE_WASM),
    ] {
        let name = format!("warm-{env}");
        deploy(&gust, &name, env, file, code);
        deploy(&unmetered, &name, env, file, code);
        let path = format!("/{name}");
        // Alternate rounds so that drift on the machine affects both alike.
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            with.push(rt.block_on(warm(gust.public_port, &path, WARM_SAMPLES)));
            without.push(rt.block_on(warm(unmetered.public_port, &path, WARM_SAMPLES)));
        }
        let median = |runs: &mut Vec<Stats>| {
            runs.sort_by_key(|s| s.p50);
            let mid = &runs[runs.len() / 2];
            (mid.p50, mid.p99)
        };
        let (with_p50, with_p99) = median(&mut with);
        let (without_p50, without_p99) = median(&mut without);
        rows.push([
            format!("warm request, {env}, metered (p50 / p99)"),
            format!("{} / {}", us(with_p50), us(with_p99)),
            format!("{} / {} (--no-metering)", us(without_p50), us(without_p99)),
            format!("{:.3}", with_p50.as_secs_f64() / without_p50.as_secs_f64()),
        ]);
    }
    print_table("Gust scaling and metering benchmark", rows);
}

fn main() {
    common::main_with(run);
}
