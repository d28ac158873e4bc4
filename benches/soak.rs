//! Soak benchmark: steady load on the three tiers with functions created,
//! invoked and deleted throughout, sampling Gust's memory, descriptors, threads, store size and
//! metrics page; then each one's slope after warm-up, per 1,000 requests and per function
//! created, and the time to be ready after a kill -9 with the store at its steady size.
//!
//! Run with `cargo bench --bench soak` (release build). Bounded in time: `GUST_SOAK_SECONDS`
//! (default 300). Raw usage records are kept 60 s here (`--usage-records-retention`), so the
//! store reaches its steady size within the run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions};

use common::{
    HELLO_WASM, deploy, distinct_component, get, print_table_headed, rss_kib, tcp_sender,
};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const PYTHON_FN: &[u8] = b"def main():\n    return 'ok'\n";
const NODE_FN: &[u8] = b"module.exports = async () => ({ body: 'ok' });\n";
/// Clients sending requests at once, one kept-alive connection each.
const CLIENTS: usize = 8;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const CHURN_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Sample {
    seconds: f64,
    requests: f64,
    created: f64,
    rss_mb: f64,
    descriptors: f64,
    threads: f64,
    store_mb: f64,
    metrics_kb: f64,
}

fn proc_field(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn sample(gust: &Gust, started: Instant, requests: u64, created: u64) -> Sample {
    let pid = gust.pid();
    Sample {
        seconds: started.elapsed().as_secs_f64(),
        requests: requests as f64,
        created: created as f64,
        rss_mb: rss_kib(pid) as f64 / 1024.0,
        descriptors: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()) as f64,
        threads: proc_field(pid, "Threads:"),
        store_mb: dir_bytes(&gust.data_dir()) as f64 / 1e6,
        metrics_kb: gust.metrics().len() as f64 / 1024.0,
    }
}

/// One measure of a sample.
type Reading = fn(&Sample) -> f64;

/// What Gust holds, by kind: its descriptors by what they point to (digests and numbers
/// folded), and the series of its metrics page (without values). Compared between the end of
/// warm-up and the end of the run, it names what grew.
#[derive(Default)]
struct Holdings {
    descriptors: BTreeMap<String, i64>,
    series: BTreeSet<String>,
}

/// `text` with each number and each long hexadecimal run (a digest) replaced by `#`.
fn fold_digits(text: &str) -> String {
    let mut folded = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, folded: &mut String| {
        if !run.is_empty() {
            let number = run.chars().all(|c| c.is_ascii_digit());
            folded.push_str(if number || run.len() >= 16 { "#" } else { run });
            run.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut folded);
            folded.push(c);
        }
    }
    flush(&mut run, &mut folded);
    folded
}

fn holdings(gust: &Gust) -> Holdings {
    let pid = gust.pid();
    let mut held = Holdings::default();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).map_or_else(
            |_| "?".to_owned(),
            |t| {
                t.to_string_lossy()
                    .replace(&*gust.data_dir().to_string_lossy(), "<data>")
            },
        );
        *held.descriptors.entry(fold_digits(&target)).or_default() += 1;
    }
    held.series = gust
        .metrics()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect();
    held
}

/// What the end holds that warm-up's end did not, one line per kind.
fn growth(warm: &Holdings, end: &Holdings) -> Vec<String> {
    let mut lines = Vec::new();
    let kinds: BTreeSet<&String> = warm
        .descriptors
        .keys()
        .chain(end.descriptors.keys())
        .collect();
    for kind in kinds {
        let (before, after) = (
            warm.descriptors.get(kind).copied().unwrap_or(0),
            end.descriptors.get(kind).copied().unwrap_or(0),
        );
        if before != after {
            lines.push(format!("descriptors {kind}: {before} → {after}"));
        }
    }
    let added: Vec<&String> = end.series.difference(&warm.series).collect();
    let removed = warm.series.difference(&end.series).count();
    lines.push(format!(
        "metrics series: {} → {} ({} new, {removed} gone)",
        warm.series.len(),
        end.series.len(),
        added.len()
    ));
    for series in added.iter().take(20) {
        lines.push(format!("  new: {series}"));
    }
    lines
}

/// Least-squares slope of `y` against `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

fn run(rt: &tokio::runtime::Runtime) {
    let seconds: u64 = std::env::var("GUST_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut gust = Gust::start(
        GUST,
        GustOptions {
            pool_size: 2,
            extra_args: vec!["--usage-records-retention".into(), "60s".into()],
            ..GustOptions::default()
        },
    );
    deploy(&gust, "py", "python", "f.py", PYTHON_FN);
    deploy(&gust, "js", "node", "f.js", NODE_FN);
    deploy(&gust, "wasm", "wasm", "hello.wasm", HELLO_WASM);
    let port = gust.public_port;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = {
        let requests = requests.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut clients = Vec::new();
                for client in 0..CLIENTS {
                    let requests = requests.clone();
                    clients.push(tokio::spawn(async move {
                        let mut sender = tcp_sender(port).await;
                        let paths = ["/py", "/js", "/wasm"];
                        let mut i = client;
                        while Instant::now() < deadline {
                            get(&mut sender, paths[i % paths.len()]).await;
                            requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            i += 1;
                        }
                    }));
                }
                for client in clients {
                    client.await.unwrap();
                }
            });
        })
    };
    let mut samples = Vec::new();
    let mut created = 0u64;
    let mut next_sample = started;
    let mut warm = None;
    while Instant::now() < deadline {
        if Instant::now() >= next_sample {
            let done = requests.load(std::sync::atomic::Ordering::Relaxed);
            samples.push(sample(&gust, started, done, created));
            next_sample += SAMPLE_EVERY;
            if warm.is_none() && started.elapsed().as_secs() >= seconds / 3 {
                warm = Some(holdings(&gust));
            }
        }
        // Churn: a wasm and a Python function created, invoked and deleted.
        for (env, file, code) in [
            ("wasm", "c.wasm", distinct_component(created as usize)),
            ("python", "c.py", PYTHON_FN.to_vec()),
        ] {
            let name = format!("churn-{created}");
            deploy(&gust, &name, env, file, &code);
            rt.block_on(async {
                let mut sender = tcp_sender(port).await;
                get(&mut sender, &format!("/{name}")).await;
            });
            let deleted = gust
                .api(Method::DELETE, &format!("/v1/functions/{name}"))
                .send()
                .unwrap();
            assert_eq!(deleted.status(), 204);
            let route = gust
                .api(Method::DELETE, &format!("/v1/routes/{name}"))
                .send()
                .unwrap();
            assert!(route.status().is_success() || route.status() == 404);
            created += 1;
        }
        std::thread::sleep(CHURN_EVERY);
    }
    load.join().unwrap();
    let done = requests.load(std::sync::atomic::Ordering::Relaxed);
    samples.push(sample(&gust, started, done, created));
    let grew = growth(&warm.unwrap_or_default(), &holdings(&gust));

    // Slopes after warm-up (the first third).
    let steady: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.seconds >= seconds as f64 / 3.0)
        .collect();
    let series: [(&str, Reading, &str); 5] = [
        ("gust RSS", |s| s.rss_mb, "MB"),
        ("descriptors", |s| s.descriptors, ""),
        ("threads", |s| s.threads, ""),
        ("data directory", |s| s.store_mb, "MB"),
        ("metrics page", |s| s.metrics_kb, "KB"),
    ];
    let first = steady.first().copied().unwrap_or(samples[0]);
    let last = *samples.last().unwrap();
    let mut rows = Vec::new();
    for (name, value, unit) in series {
        let per_request: Vec<(f64, f64)> = steady
            .iter()
            .map(|s| (s.requests / 1000.0, value(s)))
            .collect();
        let per_function: Vec<(f64, f64)> = steady.iter().map(|s| (s.created, value(s))).collect();
        rows.push([
            name.to_owned(),
            format!("{:.1} → {:.1} {unit}", value(&first), value(&last)),
            format!("{:+.4} {unit}", slope(&per_request)),
            format!("{:+.4} {unit}", slope(&per_function)),
        ]);
    }
    // Recovery: kill -9 with the store at its steady size, then time until the API answers.
    let store_mb =
        std::fs::metadata(gust.data_dir().join("gust.redb")).map_or(0, |m| m.len()) as f64 / 1e6;
    let restarted = Instant::now();
    gust.restart();
    let recovery = restarted.elapsed();
    rows.push([
        "ready after kill -9".to_owned(),
        format!("{:.0} ms", recovery.as_secs_f64() * 1e3),
        format!("store file {store_mb:.1} MB"),
        String::new(),
    ]);
    print_table_headed(
        [
            "measure",
            "after warm-up → end",
            "per 1,000 requests",
            "per function created",
        ],
        &format!(
            "Soak: {seconds} s, {done} requests ({:.0}/s) over python, node and wasm from {CLIENTS} clients, {created} functions created, invoked and deleted",
            done as f64 / seconds as f64
        ),
        rows,
    );
    println!("\nWhat Gust holds at the end that it did not after warm-up:\n");
    for line in grew {
        println!("    {line}");
    }
}

fn main() {
    common::main_with(run);
}
