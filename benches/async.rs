//! Asynchronous invocations, each figure against a baseline measured in the same run.
//!
//! Run with `cargo bench --bench async` (release build). Prints a Markdown table.
//!
//! 1. Accepted per second: 20,000 requests to an `--async` route of a no-op wasm function
//!    over 50 kept-alive connections; every `202` is sent after its invocation is on disk.
//!    Baseline: the same number of synchronous calls of the same function, same connections.
//! 2. Completed per second: from the first request of (1) until the executor has delivered
//!    all 20,000 (`gust_function_invocations_total{trigger="async"}`).
//! 3. What a `202` adds: one request at a time, alternating rounds of 500 synchronous calls
//!    and 500 asynchronous acceptances of the same function (the median round's
//!    percentiles).

mod common;

use std::time::{Duration, Instant};

use gust_harness::{Gust, GustOptions};

use common::{
    PROBE_WASM, Stats, create_route, deploy, get_expecting, metric, ms, print_table, stats,
    tcp_sender,
};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const REQUESTS: usize = 20_000;
const CONNECTIONS: usize = 50;
const ROUNDS: usize = 5;
const ROUND_SIZE: usize = 500;

/// `total` requests over `connections` kept-alive connections; returns the elapsed time.
async fn load(port: u16, path: &str, total: usize, connections: usize, expected: u16) -> Duration {
    assert_eq!(total % connections, 0, "every connection sends as many");
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let path = path.to_owned();
            tokio::spawn(async move {
                let mut sender = tcp_sender(port).await;
                for _ in 0..total / connections {
                    get_expecting(&mut sender, &path, expected).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

async fn sequential(port: u16, path: &str, count: usize, expected: u16) -> Vec<Duration> {
    let mut sender = tcp_sender(port).await;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        samples.push(get_expecting(&mut sender, path, expected).await);
    }
    samples
}

fn per_second(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn bench(rt: &tokio::runtime::Runtime) {
    let gust = Gust::start(GUST, GustOptions::default());
    deploy(&gust, "noop", "wasm", "noop.wasm", PROBE_WASM);
    create_route(
        &gust,
        serde_json::json!({"function": "noop", "url": "/noop-async", "name": "noop-async", "async": true}),
    );
    let port = gust.public_port;
    let mut rows = Vec::new();

    rt.block_on(async {
        load(port, "/noop", 2_000, CONNECTIONS, 200).await; // warm up
        let sync_took = load(port, "/noop", REQUESTS, CONNECTIONS, 200).await;
        let delivered_before = async_invocations(&gust);
        let started = Instant::now();
        let accept_took = load(port, "/noop-async", REQUESTS, CONNECTIONS, 202).await;
        let completed_took = loop {
            if async_invocations(&gust) - delivered_before >= REQUESTS as f64 {
                break started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let sync_rate = per_second(REQUESTS, sync_took);
        let accepted_rate = per_second(REQUESTS, accept_took);
        let completed_rate = per_second(REQUESTS, completed_took);
        rows.push([
            format!("async accepted per second (durable 202), {REQUESTS} requests, {CONNECTIONS} connections"),
            format!("{accepted_rate:.0}/s"),
            format!("{sync_rate:.0}/s (sync calls, same function and load)"),
            format!("{:.2}", accepted_rate / sync_rate),
        ]);
        rows.push([
            "async completed per second (first request until all delivered)".into(),
            format!("{completed_rate:.0}/s"),
            format!("{sync_rate:.0}/s (sync calls)"),
            format!("{:.2}", completed_rate / sync_rate),
        ]);

        let mut sync_rounds = Vec::new();
        let mut async_rounds = Vec::new();
        for _ in 0..ROUNDS {
            sync_rounds.push(stats(sequential(port, "/noop", ROUND_SIZE, 200).await));
            async_rounds.push(stats(sequential(port, "/noop-async", ROUND_SIZE, 202).await));
        }
        let (sync, asynchronous) = (median(sync_rounds), median(async_rounds));
        rows.push([
            "latency of a 202 vs a sync call, one at a time (p50 / p99)".into(),
            format!("{} / {}", ms(asynchronous.p50), ms(asynchronous.p99)),
            format!("{} / {}", ms(sync.p50), ms(sync.p99)),
            format!(
                "{:.2} (adds {})",
                asynchronous.p50.as_secs_f64() / sync.p50.as_secs_f64(),
                ms(asynchronous.p50.saturating_sub(sync.p50))
            ),
        ]);
    });
    print_table("Asynchronous invocations", rows);
}

fn async_invocations(gust: &Gust) -> f64 {
    metric(
        gust,
        "gust_function_invocations_total{namespace=\"default\",function=\"noop\",trigger=\"async\",code=\"200\"}",
    )
}

/// The round with the median p50.
fn median(mut rounds: Vec<Stats>) -> Stats {
    rounds.sort_by_key(|s| s.p50);
    rounds.swap_remove(rounds.len() / 2)
}

fn main() {
    common::main_with(bench);
}
