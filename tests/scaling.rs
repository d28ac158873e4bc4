//! End-to-end: scaling through the real binary. Bursts against functions at zero, the bounded
//! wait queue answering 429, and instances returning to their minimum.

use std::time::Duration;

use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/components/probe.wasm");

const SLEEPY_PY: &str = "import time\n\ndef main(req):\n    time.sleep(float(req.query.get('s', '0')))\n    return 'done'\n";

/// Sends `count` GETs at once (one thread each); returns each response's status,
/// `Retry-After` and body.
fn burst(gust: &Gust, path: &str, count: usize) -> Vec<(u16, Option<String>, String)> {
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..count)
            .map(|_| {
                scope.spawn(|| {
                    let response = gust.get(path);
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                    (status, retry_after, response.text().unwrap())
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

fn instances(gust: &Gust, function: &str) -> (u64, u64) {
    let info: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", function, "-o", "json"]).ok().stdout)
            .unwrap();
    (
        info["instances"]["busy"].as_u64().unwrap(),
        info["instances"]["idle"].as_u64().unwrap(),
    )
}

#[test]
fn r04_bursts_of_100_and_1000_against_functions_at_zero_all_succeed() {
    let gust = Gust::start(GUST, GustOptions::default());
    // The instance the deploy loaded the code in goes idle and away within the idle timeout:
    // the bursts start from zero.
    gust.deploy(
        "py",
        "python",
        "f.py",
        "def main():\n    return 'ok'\n",
        &["--idle-timeout", "3s"],
    );
    gust.cli(&["fn", "create", "wasm", "--env", "wasm", "--code", PROBE])
        .ok();
    gust.cli(&["route", "create", "--fn", "wasm", "--url", "/wasm"])
        .ok();
    let at_zero = eventually(Duration::from_secs(20), || {
        (instances(&gust, "py") == (0, 0)).then_some(())
    });
    assert!(at_zero.is_some(), "nothing runs before traffic");
    // The process function's largest burst last: its instances are counted right after it,
    // well within their idle timeout.
    for (path, count) in [("/py", 100), ("/wasm", 100), ("/wasm", 1000), ("/py", 1000)] {
        let results = burst(&gust, path, count);
        let failed: Vec<_> = results.iter().filter(|(s, _, _)| *s != 200).collect();
        assert!(failed.is_empty(), "{path} x{count}: {failed:?}");
    }
    // A request that found an instance free before its own start finished left that start
    // going on: it ends within moments, its instance idle.
    let settled = eventually(Duration::from_secs(20), || {
        let (busy, idle) = instances(&gust, "py");
        (busy == 0).then_some(idle)
    });
    let idle = settled.expect("the bursts' starts end");
    assert!(
        (1..=10).contains(&idle),
        "a process function scales up to its default maximum of 10, not more: {idle}"
    );
}

#[test]
fn r07_past_max_instances_requests_wait_then_get_429_never_a_5xx() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "slow",
        "python",
        "f.py",
        SLEEPY_PY,
        &["--max-instances", "1", "--queue-timeout", "500ms"],
    );
    let info: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "slow", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(info["scaling"]["max_instances"], 1);
    assert_eq!(info["scaling"]["queue_timeout"], "500ms");
    assert_eq!(info["scaling"]["concurrency"], 1);
    gust.get("/slow").text().unwrap(); // warm: the burst measures waiting, not the cold start

    let results = burst(&gust, "/slow?s=1.5", 20);
    let served = results.iter().filter(|(s, _, _)| *s == 200).count();
    let throttled: Vec<_> = results.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(
        results.iter().all(|(s, _, _)| *s == 200 || *s == 429),
        "only 200 or 429: {results:?}"
    );
    assert!(served >= 1, "{results:?}");
    assert!(throttled.len() >= 15, "the excess is refused: {results:?}");
    let metrics = gust
        .api(gust_harness::reqwest::Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let counted = format!(
        "gust_function_throttled_total{{namespace=\"default\",function=\"slow\",trigger=\"http\"}} {}",
        throttled.len()
    );
    assert!(metrics.contains(&counted), "{counted} in\n{metrics}");
    for (_, retry_after, body) in throttled {
        let seconds: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(seconds >= 1);
        let error: Value = serde_json::from_str(body).unwrap();
        assert_eq!(error["reason"], "over_capacity");
    }

    // A full queue answers at once.
    gust.cli(&["fn", "update", "slow", "--queue-depth", "0"])
        .ok();
    gust.get("/slow").text().unwrap();
    let started = std::time::Instant::now();
    let results = burst(&gust, "/slow?s=1", 5);
    assert_eq!(results.iter().filter(|(s, _, _)| *s == 200).count(), 1);
    assert_eq!(results.iter().filter(|(s, _, _)| *s == 429).count(), 4);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn instances_return_to_the_minimum_after_the_idle_timeout() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "kept",
        "python",
        "f.py",
        SLEEPY_PY,
        &["--min-instances", "1", "--idle-timeout", "2s"],
    );
    // The minimum starts without any request.
    eventually(Duration::from_secs(20), || {
        (instances(&gust, "kept") == (0, 1)).then_some(())
    })
    .expect("one instance kept warm at zero traffic");

    let results = burst(&gust, "/kept?s=0.5", 4);
    assert!(results.iter().all(|(s, _, _)| *s == 200), "{results:?}");
    let (busy, idle) = instances(&gust, "kept");
    assert!(
        busy + idle >= 2,
        "the burst scaled up: {busy} busy, {idle} idle"
    );

    eventually(Duration::from_secs(20), || {
        (instances(&gust, "kept") == (0, 1)).then_some(())
    })
    .expect("back to the minimum after the idle timeout");

    // Without a minimum, a function scales to zero.
    gust.cli(&["fn", "update", "kept", "--min-instances", "0"])
        .ok();
    gust.get("/kept").text().unwrap();
    eventually(Duration::from_secs(20), || {
        (instances(&gust, "kept") == (0, 0)).then_some(())
    })
    .expect("scaled to zero");
}

#[test]
fn scaling_settings_are_checked() {
    let gust = Gust::start(GUST, GustOptions::default());
    let code = gust.write_file("ok.py", "def main():\n    return 'ok'\n");
    let code = code.to_str().unwrap();
    for (flag, value, message) in [
        ("--max-instances", "0", "max-instances"),
        ("--min-instances", "5000", "min-instances"),
        ("--idle-timeout", "soon", "idle-timeout"),
        ("--queue-timeout", "0s", "queue-timeout"),
    ] {
        let out = gust.cli(&[
            "fn", "create", "f", "--env", "python", "--code", code, flag, value,
        ]);
        assert_ne!(out.code, 0, "{flag} {value}");
        assert!(out.stderr.contains(message), "{flag}: {}", out.stderr);
    }
    let out = gust.cli(&[
        "fn",
        "create",
        "f",
        "--env",
        "python",
        "--code",
        code,
        "--min-instances",
        "3",
        "--max-instances",
        "2",
    ]);
    assert!(
        out.stderr.contains("more than max-instances"),
        "{}",
        out.stderr
    );
    assert!(
        gust.cli(&["fn", "list", "-o", "json"]).ok().stdout.trim() == "[]",
        "nothing stored"
    );
}

#[test]
fn concurrency_lets_one_process_serve_several_requests_at_once() {
    let gust = Gust::start(GUST, GustOptions::default());
    let code = "import os, time\n\ndef main():\n    start = time.time()\n    time.sleep(1)\n    return f'{os.getpid()} {start} {time.time()}'\n";
    gust.deploy(
        "conc",
        "python",
        "f.py",
        code,
        &[
            "--concurrency",
            "4",
            "--max-instances",
            "1",
            "--queue-depth",
            "0",
        ],
    );
    gust.get("/conc").text().unwrap();
    let results = burst(&gust, "/conc", 5);
    let served: Vec<(String, f64, f64)> = results
        .iter()
        .filter(|(status, _, _)| *status == 200)
        .map(|(_, _, body)| {
            let mut parts = body.split_whitespace();
            (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(served.len(), 4, "four in flight at once: {results:?}");
    assert_eq!(
        results.iter().filter(|(s, _, _)| *s == 429).count(),
        1,
        "the fifth finds no room: {results:?}"
    );
    assert!(
        served.iter().all(|(pid, _, _)| *pid == served[0].0),
        "one process: {served:?}"
    );
    let last_start = served.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let first_end = served.iter().map(|s| s.2).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "all four ran at the same time: {served:?}"
    );

    let wasm = gust.cli(&[
        "fn",
        "create",
        "w",
        "--env",
        "wasm",
        "--code",
        PROBE,
        "--concurrency",
        "2",
    ]);
    assert!(
        wasm.stderr
            .contains("--concurrency applies to process functions"),
        "{}",
        wasm.stderr
    );
}

#[test]
fn r02_updates_and_scale_down_under_steady_load_drop_no_request() {
    let gust = Gust::start(GUST, GustOptions::default());
    let version = |v: &str| {
        format!(
            "import time\n\ndef main(req):\n    time.sleep(float(req.query.get('s', '0')))\n    return '{v}'\n"
        )
    };
    gust.deploy("steady", "python", "f.py", &version("v1"), &[]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answers, v2_code) = std::thread::scope(|scope| {
        let load: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut answers = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let response = gust.get("/steady?s=0.2");
                        answers.push((response.status().as_u16(), response.text().unwrap()));
                    }
                    answers
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        let v2 = gust.write_file("v2/f.py", version("v2"));
        gust.cli(&["fn", "update", "steady", "--code", v2.to_str().unwrap()])
            .ok();
        std::thread::sleep(Duration::from_millis(800));
        gust.cli(&[
            "fn",
            "update",
            "steady",
            "--max-instances",
            "1",
            "--idle-timeout",
            "1s",
        ])
        .ok();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers: Vec<(u16, String)> =
            load.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (answers, v2)
    });
    drop(v2_code);
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(failed.is_empty(), "every request answered 200: {failed:?}");
    assert!(
        answers.len() >= 8,
        "steady load: {} requests",
        answers.len()
    );
    assert!(answers.iter().any(|(_, body)| body == "v1"));
    assert_eq!(answers.last().unwrap().1, "v2", "the update took over");
    eventually(Duration::from_secs(15), || {
        let (busy, idle) = instances(&gust, "steady");
        (busy + idle <= 1).then_some(())
    })
    .expect("scaled down to the new maximum");
}
