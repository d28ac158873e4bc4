//! Cluster mode against one embedded node, measured in the same run.
//!
//! Run with `cargo bench --bench cluster` (release build; needs `nats-server`). Starts three
//! NATS servers joined as a cluster and three `gust up --cluster` nodes on loopback, and one
//! Gust with its embedded store. Prints a Markdown table.
//!
//! 1. Propagation: a route created through node A's API, until node C's public listener
//!    answers it (polled on a kept-alive connection); 50 routes. Baseline: the same on the
//!    embedded node (a route created through its API until its own listener answers it).
//! 2. A metadata write: `POST /v1/routes` answered (stored in JetStream, replicated to a
//!    majority of three) against the embedded store's fsynced transaction.
//! 3. A warm synchronous request to a wasm function, one at a time, alternating rounds on a
//!    cluster node and the embedded node (the median round's percentiles): the request path
//!    must not touch NATS (target: within 5 %).
//! 4. Asynchronous invocations accepted per second, 5,000 requests over 50 connections: a
//!    cluster node (each `202` after JetStream acknowledged the work message and the node
//!    stored its record) against the embedded node (an fsynced group commit).
//! 5. Failover: 12 asynchronous invocations of a function that sleeps 3 s, sent to the cluster;
//!    once they all run, one node is killed with kill -9; the time until the last of them has
//!    succeeded (those the dead node ran go to another node after the ack wait, 30 s).

mod common;

use std::time::{Duration, Instant};

use gust_harness::nats_cluster::NatsCluster;
use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions};

use common::{
    PROBE_WASM, Stats, create_route, deploy, get_expecting, ms, print_table, stats, tcp_sender, us,
};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const ROUTES: usize = 50;
const ROUNDS: usize = 5;
const ROUND_SIZE: usize = 2_000;
const ASYNC_REQUESTS: usize = 5_000;
const CONNECTIONS: usize = 50;

fn node(nats: Option<&NatsCluster>) -> Gust {
    // Room for every asynchronous request of the throughput run.
    let mut extra_args = vec!["--async-queue-depth".to_owned(), "100000".to_owned()];
    if let Some(nats) = nats {
        extra_args.extend(["--cluster".to_owned(), nats.urls()]);
    }
    Gust::start(
        GUST,
        GustOptions {
            pool_size: 0,
            extra_args,
            ..GustOptions::default()
        },
    )
}

/// Creates route `/<name>` through `writer` and returns how long its API took to answer and
/// how long after that `reader`'s public listener first answered the route.
async fn propagate(writer: &Gust, reader: &Gust, name: &str) -> (Duration, Duration) {
    let body = serde_json::json!({"function": "noop", "url": format!("/{name}"), "name": name});
    let asked = Instant::now();
    let response = writer
        .api(Method::POST, "/v1/routes")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().unwrap());
    let answered = Instant::now();
    let write = answered - asked;
    let mut sender = tcp_sender(reader.public_port).await;
    let path = format!("/{name}");
    loop {
        let request = http::Request::get(&path)
            .header("host", "bench")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let status = sender.send_request(request).await.unwrap().status();
        if status == 200 {
            return (write, answered.elapsed());
        }
        assert_eq!(status, 404, "{path} while it propagates");
        assert!(
            answered.elapsed() < Duration::from_secs(10),
            "{path} never served"
        );
    }
}

async fn sequential(port: u16, path: &str, count: usize) -> Vec<Duration> {
    let mut sender = tcp_sender(port).await;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        samples.push(get_expecting(&mut sender, path, 200).await);
    }
    samples
}

async fn accept_rate(port: u16) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let mut sender = tcp_sender(port).await;
                for _ in 0..ASYNC_REQUESTS / CONNECTIONS {
                    get_expecting(&mut sender, "/noop-async", 202).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    ASYNC_REQUESTS as f64 / started.elapsed().as_secs_f64()
}

/// The round with the median p50.
fn median(mut rounds: Vec<Stats>) -> Stats {
    rounds.sort_by_key(|s| s.p50);
    rounds.swap_remove(rounds.len() / 2)
}

fn bench(rt: &tokio::runtime::Runtime) {
    let nats = NatsCluster::start(3);
    let mut cluster: Vec<Gust> = (0..3).map(|_| node(Some(&nats))).collect();
    let single = node(None);
    for gust in [&cluster[0], &single] {
        deploy(gust, "noop", "wasm", "noop.wasm", PROBE_WASM);
        create_route(
            gust,
            serde_json::json!({"function": "noop", "url": "/noop-async", "name": "noop-async", "async": true}),
        );
    }
    let mut rows = Vec::new();
    rt.block_on(async {
        let (mut cluster_writes, mut cluster_seen) = (Vec::new(), Vec::new());
        let (mut single_writes, mut single_seen) = (Vec::new(), Vec::new());
        for i in 0..ROUTES {
            let (write, seen) = propagate(&cluster[0], &cluster[2], &format!("c{i}")).await;
            cluster_writes.push(write);
            cluster_seen.push(seen);
            let (write, seen) = propagate(&single, &single, &format!("s{i}")).await;
            single_writes.push(write);
            single_seen.push(seen);
        }
        let (seen, single_seen) = (stats(cluster_seen), stats(single_seen));
        rows.push([
            format!("route created on node A until node C serves it, {ROUTES} routes (p50 / p99)"),
            format!("{} / {}", ms(seen.p50), ms(seen.p99)),
            format!(
                "{} / {} (one node: until its own listener serves it)",
                ms(single_seen.p50),
                ms(single_seen.p99)
            ),
            format!("+{}", ms(seen.p50.saturating_sub(single_seen.p50))),
        ]);
        let (write, single_write) = (stats(cluster_writes), stats(single_writes));
        rows.push([
            "POST /v1/routes answered (p50 / p99)".into(),
            format!("{} / {}", ms(write.p50), ms(write.p99)),
            format!(
                "{} / {} (embedded store, fsynced)",
                ms(single_write.p50),
                ms(single_write.p99)
            ),
            format!(
                "{:.2}",
                write.p50.as_secs_f64() / single_write.p50.as_secs_f64()
            ),
        ]);

        // Warm both, then alternate rounds.
        sequential(cluster[1].public_port, "/noop", 500).await;
        sequential(single.public_port, "/noop", 500).await;
        let (mut on_cluster, mut on_single) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            on_cluster.push(stats(
                sequential(cluster[1].public_port, "/noop", ROUND_SIZE).await,
            ));
            on_single.push(stats(
                sequential(single.public_port, "/noop", ROUND_SIZE).await,
            ));
        }
        let (warm, single_warm) = (median(on_cluster), median(on_single));
        rows.push([
            format!(
                "warm wasm request on a cluster node, {ROUNDS} rounds of {ROUND_SIZE} (p50 / p99)"
            ),
            format!("{} / {}", us(warm.p50), us(warm.p99)),
            format!(
                "{} / {} (embedded node)",
                us(single_warm.p50),
                us(single_warm.p99)
            ),
            format!(
                "{:.3}",
                warm.p50.as_secs_f64() / single_warm.p50.as_secs_f64()
            ),
        ]);

        let cluster_rate = accept_rate(cluster[0].public_port).await;
        let single_rate = accept_rate(single.public_port).await;
        rows.push([
            format!("async accepted per second, {ASYNC_REQUESTS} over {CONNECTIONS} connections"),
            format!("{cluster_rate:.0}/s"),
            format!("{single_rate:.0}/s (embedded node)"),
            format!("{:.2}", cluster_rate / single_rate),
        ]);
    });
    rows.push(failover(&mut cluster));
    print_table(
        "Cluster mode (3 NATS servers, 3 nodes) against one embedded node",
        rows,
    );
}

/// Measure 5: kill -9 of a node until every invocation that was running has succeeded.
fn failover(cluster: &mut [Gust]) -> [String; 4] {
    const SLOW: usize = 12;
    let code = "import time\n\ndef main(req):\n    time.sleep(3)\n    return 'slept'\n";
    deploy(&cluster[0], "slow", "python", "slow.py", code.as_bytes());
    create_route(
        &cluster[0],
        serde_json::json!({"function": "slow", "url": "/slow-async", "name": "slow-async", "async": true}),
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut ids = Vec::new();
    for i in 0..SLOW {
        let gust = &cluster[i % 3];
        let answer = gust
            .http()
            .post(gust.public_url("/slow-async"))
            .send()
            .unwrap();
        assert_eq!(answer.status(), 202);
        let body: serde_json::Value = answer.json().unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let record = |gust: &Gust, id: &str| -> serde_json::Value {
        gust.api(Method::GET, &format!("/v1/invocations/{id}"))
            .send()
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .unwrap_or_default()
    };
    let all_in = |cluster: &[Gust], state: &str| {
        ids.iter()
            .all(|id| record(&cluster[0], id)["state"] == state)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_in(cluster, "running") {
        assert!(
            Instant::now() < deadline,
            "the slow invocations never all ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster[2].kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(180);
    while !all_in(cluster, "succeeded") {
        assert!(
            Instant::now() < deadline,
            "in-flight invocations did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = killed.elapsed();
    let again = ids
        .iter()
        .filter(|id| record(&cluster[0], id)["attempts"].as_u64().unwrap_or(0) > 1)
        .count();
    [
        format!(
            "kill -9 of a node with {SLOW} 3 s async attempts running in the cluster, until all succeeded"
        ),
        format!("{:.1} s ({again} ran again elsewhere)", took.as_secs_f64()),
        "3 s (the attempts' own length; ack wait 30 s)".into(),
        format!("{:.1}", took.as_secs_f64() / 3.0),
    ]
}

fn main() {
    common::main_with(bench);
}
