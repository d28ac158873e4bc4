//! End-to-end: pay-per-use metering and metrics through the real binary. Usage records match
//! the requests sent, survive a kill -9 once flushed, and roll up into reports with cost.

use std::collections::HashSet;
use std::time::Duration;

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/components/probe.wasm");
const FLAKY_PY: &str = "def main(req):\n    if 'fail' in req.query:\n        raise ValueError('asked to fail')\n    return 'ok'\n";

fn records(gust: &Gust, function: &str) -> Vec<Value> {
    let response = gust
        .api(
            Method::GET,
            &format!("/v1/usage/records?function={function}&limit=10000"),
        )
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().unwrap()
}

/// Sends requests, reading each response to its end as a client does, and returns the request
/// ids Gust gave them.
fn send(gust: &Gust, path: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let response = gust.get(path);
            let id = response.headers()["x-gust-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            response.bytes().unwrap();
            id
        })
        .collect()
}

fn wait_for_records(gust: &Gust, function: &str, count: usize) -> Vec<Value> {
    eventually(Duration::from_secs(10), || {
        let found = records(gust, function);
        (found.len() >= count).then_some(found)
    })
    .unwrap_or_else(|| panic!("{count} usage records of {function}"))
}

#[test]
fn usage_records_match_the_requests_sent_one_per_attempt() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("flaky", "python", "f.py", FLAKY_PY, &["--memory", "256"]);
    gust.cli(&[
        "fn", "create", "wasm", "--env", "wasm", "--code", PROBE, "--memory", "64",
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "wasm", "--url", "/wasm", "--prefix",
    ])
    .ok();

    let mut ok_ids = send(&gust, "/flaky", 20);
    let failed_ids = send(&gust, "/flaky?fail", 5);
    ok_ids.extend(failed_ids.iter().cloned());
    let wasm_ids = send(&gust, "/wasm", 10);
    // Requests that never reach a function make no record.
    assert_eq!(gust.get("/nowhere").status(), 404);

    for (function, ids, memory) in [("flaky", &ok_ids, 256), ("wasm", &wasm_ids, 64)] {
        let found = wait_for_records(&gust, function, ids.len());
        std::thread::sleep(Duration::from_millis(300));
        let found_again = records(&gust, function);
        assert_eq!(
            found_again.len(),
            ids.len(),
            "one record per request, no more"
        );
        let keys: HashSet<(String, u64)> = found
            .iter()
            .map(|r| {
                (
                    r["invocation_id"].as_str().unwrap().to_owned(),
                    r["attempt"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(keys.len(), ids.len(), "each record once");
        let expected: HashSet<(String, u64)> = ids.iter().map(|id| (id.clone(), 1)).collect();
        assert_eq!(keys, expected, "the records are these requests");
        for record in &found {
            assert_eq!(record["memory_mb"], memory);
            assert_eq!(record["trigger"], "http");
            assert_eq!(record["revision"], 1);
            let billed = record["billed_ms"].as_u64().unwrap();
            assert!(billed >= 1, "billed time rounds up: {record}");
            assert!(
                billed <= record["wall_ms"].as_u64().unwrap() + 1,
                "{record}"
            );
            let gb_s = record["gb_seconds"].as_f64().unwrap();
            let expected = memory as f64 / 1024.0 * billed as f64 / 1000.0;
            assert!(
                (gb_s - expected).abs() < 1e-12,
                "GB-s = memory × billed: {record}"
            );
        }
        // Measured from the worker's cgroup (process tier) or the guest's thread CPU time
        // (wasm tier). A cgroup's CPU counter takes in a running thread's time only when the
        // scheduler next accounts it (a switch, a tick): a short request answered while its
        // worker thread is still on the CPU can read no time at all on a loaded machine, its
        // time then counting in the next request's. So: measured for most, never for none.
        let measured = found
            .iter()
            .filter(|r| r["cpu_ms"].as_f64().unwrap() > 0.0)
            .count();
        assert!(
            measured * 2 >= found.len(),
            "{function}: CPU time is measured ({measured} of {})",
            found.len()
        );
    }
    let failures: Vec<_> = records(&gust, "flaky")
        .into_iter()
        .filter(|r| r["status"] == 502)
        .collect();
    assert_eq!(failures.len(), 5);

    // The report agrees with the records.
    let report: Value = serde_json::from_str(
        &gust
            .cli(&["usage", "--fn", "flaky", "--since", "1h", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let row = &report["rows"][0];
    assert_eq!(row["function"], "flaky");
    assert_eq!(row["invocations"], 25);
    assert_eq!(row["errors"], 5);
    let sum: f64 = records(&gust, "flaky")
        .iter()
        .map(|r| r["gb_seconds"].as_f64().unwrap())
        .sum();
    assert!((row["gb_seconds"].as_f64().unwrap() - sum).abs() < 1e-9);
    let csv = gust
        .cli(&["usage", "--since", "1h", "--by", "hour", "-o", "csv"])
        .ok()
        .stdout;
    assert!(
        csv.starts_with("FUNCTION,PERIOD START,INVOCATIONS"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("wasm,") && l.contains(",10,")),
        "{csv}"
    );
}

#[test]
fn flushed_usage_survives_a_kill_9_and_is_never_doubled() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("f", "python", "f.py", FLAKY_PY, &[]);
    let before = send(&gust, "/f", 40);
    // Past the flush window (100 ms), every record is on disk.
    wait_for_records(&gust, "f", 40);
    std::thread::sleep(Duration::from_millis(300));
    gust.restart(); // kill -9, then start again
    let after_restart = records(&gust, "f");
    assert_eq!(after_restart.len(), 40, "none lost, none doubled");
    let after = send(&gust, "/f", 10);
    let all = wait_for_records(&gust, "f", 50);
    let ids: HashSet<&str> = all
        .iter()
        .map(|r| r["invocation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 50);
    assert!(
        before
            .iter()
            .chain(&after)
            .all(|id| ids.contains(id.as_str()))
    );

    // A clean stop writes whatever is still queued.
    send(&gust, "/f", 5);
    assert!(gust.stop());
    gust.start_again();
    assert_eq!(records(&gust, "f").len(), 55);
}

#[test]
fn a_price_sheet_turns_usage_into_cost_and_a_bad_one_stops_gust() {
    let scratch = tempfile::tempdir().unwrap();
    let prices = scratch.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"currency": "USD", "per_gb_second": 0.0000166667, "per_million_requests": 0.20}"#,
    )
    .unwrap();
    let gust = Gust::start(
        GUST,
        GustOptions {
            extra_args: vec!["--prices".into(), prices.to_str().unwrap().into()],
            ..Default::default()
        },
    );
    gust.deploy("f", "python", "f.py", FLAKY_PY, &["--memory", "1024"]);
    send(&gust, "/f", 10);
    wait_for_records(&gust, "f", 10);
    let report: Value = gust
        .api(Method::GET, "/v1/usage?function=f&since=1h")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(report["currency"], "USD");
    let totals = &report["totals"];
    let expected = totals["gb_seconds"].as_f64().unwrap() * 0.0000166667 + 10.0 / 1e6 * 0.20;
    assert!(
        (totals["cost"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{report}"
    );
    assert!(totals["cost"].as_f64().unwrap() > 0.0);

    let bad = gust.api(Method::GET, "/v1/usage?by=week").send().unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().unwrap().contains("function, hour or day"));

    std::fs::write(&prices, r#"{"per_gb_second": "cheap"}"#).unwrap();
    let out = std::process::Command::new(GUST)
        .args(["up", "--data-dir"])
        .arg(scratch.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--prices",
        ])
        .arg(&prices)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid price sheet"), "{stderr}");
}

#[test]
fn metrics_count_invocations_cold_starts_and_throttling_with_safe_labels() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("m", "python", "f.py", FLAKY_PY, &["--idle-timeout", "1s"]);
    // Its cold-start series exist at zero once it is prepared, before any request.
    let ready = r#"gust_function_cold_starts_total{namespace="default",function="m"} 0"#;
    eventually(Duration::from_secs(10), || {
        gust.metrics().lines().any(|l| l == ready).then_some(())
    })
    .unwrap_or_else(|| panic!("{ready} in\n{}", gust.metrics()));
    // The instance the deploy loaded the code in goes idle and away: the next request starts
    // one.
    eventually(Duration::from_secs(15), || {
        let info: Value =
            serde_json::from_str(&gust.cli(&["fn", "get", "m", "-o", "json"]).ok().stdout).ok()?;
        (info["instances"]["idle"] == 0).then_some(())
    })
    .expect("scaled to zero");
    send(&gust, "/m?secret-looking-query", 3);
    send(&gust, "/m?fail", 1);

    let unauthenticated = gust
        .http()
        .get(format!("{}/metrics", gust.api_url()))
        .send()
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(
        gust.get("/metrics").status(),
        404,
        "never on the public listener"
    );

    let metrics = gust.metrics();
    let line = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        line(
            r#"gust_function_invocations_total{namespace="default",function="m",trigger="http",code="200"}"#
        ),
        3.0
    );
    assert_eq!(
        line(
            r#"gust_function_invocations_total{namespace="default",function="m",trigger="http",code="502"}"#
        ),
        1.0
    );
    assert_eq!(
        line(r#"gust_function_cold_starts_total{namespace="default",function="m"}"#),
        1.0
    );
    for phase in ["queue", "specialize", "first_response"] {
        assert_eq!(
            line(&format!(
                r#"gust_function_cold_start_seconds_count{{namespace="default",function="m",phase="{phase}"}}"#
            )),
            1.0
        );
    }
    assert_eq!(
        line(r#"gust_function_instances{namespace="default",function="m",state="idle"}"#),
        1.0
    );
    assert!(
        line(r#"gust_billable_ms_total{namespace="default",function="m",trigger="http"}"#) >= 4.0
    );
    assert!(
        !metrics.contains("secret-looking-query"),
        "no raw paths or queries"
    );
    assert!(!metrics.contains("x-gust-request-id"));
}

/// `gust usage` totals of one function: (invocations, errors, billed ms).
fn usage_totals(gust: &Gust, function: &str) -> (u64, u64, u64) {
    let row = gust.usage_row(function);
    let field = |name: &str| row[name].as_u64().unwrap_or(0);
    (field("invocations"), field("errors"), field("billed_ms"))
}

#[test]
fn raw_records_past_their_retention_go_and_usage_totals_stay_the_same_across_a_kill_9() {
    let mut gust = Gust::start(
        GUST,
        GustOptions {
            extra_args: vec!["--usage-records-retention".into(), "1s".into()],
            ..GustOptions::default()
        },
    );
    gust.deploy("kept", "python", "f.py", FLAKY_PY, &[]);
    send(&gust, "/kept", 30);
    send(&gust, "/kept?fail=1", 5);
    let before = eventually(Duration::from_secs(10), || {
        let totals = usage_totals(&gust, "kept");
        (totals.0 == 35).then_some(totals)
    })
    .expect("35 invocations counted");
    assert_eq!(before.1, 5);
    // Pruning runs every 10 s; the raw records go, the totals do not change.
    eventually(Duration::from_secs(30), || {
        records(&gust, "kept").is_empty().then_some(())
    })
    .expect("records past a 1 s retention are deleted");
    assert_eq!(usage_totals(&gust, "kept"), before);
    gust.restart(); // kill -9, then start again
    assert_eq!(
        usage_totals(&gust, "kept"),
        before,
        "none lost, none doubled"
    );
    send(&gust, "/kept", 5);
    let after = eventually(Duration::from_secs(10), || {
        let totals = usage_totals(&gust, "kept");
        (totals.0 == 40).then_some(totals)
    });
    assert!(after.is_some(), "new attempts add to the same totals");
}

#[test]
fn a_caller_that_leaves_before_the_answer_is_still_billed_for_what_ran() {
    let gust = Gust::start(GUST, GustOptions::default());
    let source = "import time\ndef main(req):\n    time.sleep(float(req.query.get('s', '0')))\n    return 'late'\n";
    gust.deploy("slow", "python", "slow.py", source, &[]);
    // Warm, so the attempt below starts at once.
    assert_eq!(gust.get("/slow").text().unwrap(), "late");
    wait_for_records(&gust, "slow", 1);

    let address = gust.public_url("").trim_start_matches("http://").to_owned();
    let mut client = std::net::TcpStream::connect(address).unwrap();
    use std::io::Write;
    client
        .write_all(b"GET /slow?s=3 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    drop(client);

    let found = wait_for_records(&gust, "slow", 2);
    let left = found
        .iter()
        .find(|r| r["status"] == 499)
        .unwrap_or_else(|| panic!("no record of the abandoned request: {found:?}"));
    let billed = left["billed_ms"].as_u64().unwrap();
    // Billed from dispatch until the instance was stopped: about the 0.8 s the caller waited,
    // not nothing and not the 3 s the function would have slept.
    assert!((500..2_500).contains(&billed), "billed {billed} ms");
    // The instance was stopped, not returned half-way through a request; the next is served.
    assert_eq!(gust.get("/slow").text().unwrap(), "late");
}

#[test]
fn a_caller_that_leaves_a_streaming_response_part_way_is_recorded_as_gone_not_as_served() {
    let gust = Gust::start(GUST, GustOptions::default());
    let source = "import time\ndef main(req):\n    def chunks():\n        yield 'first\\n'\n        time.sleep(3)\n        yield 'last\\n'\n    return chunks()\n";
    gust.deploy("ticker", "python", "ticker.py", source, &[]);
    let address = gust.public_url("").trim_start_matches("http://").to_owned();
    let mut client = std::net::TcpStream::connect(address).unwrap();
    use std::io::{Read, Write};
    client
        .write_all(b"GET /ticker HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    // Wait for the first chunk, then leave while the function is still producing.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let read = client.read(&mut buffer).unwrap();
        assert!(read > 0, "the connection closed before the first chunk");
        seen.extend_from_slice(&buffer[..read]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(client);

    let found = wait_for_records(&gust, "ticker", 1);
    assert_eq!(
        found[0]["status"], 499,
        "a response the client did not take whole is not a 200: {found:?}"
    );
    let billed = found[0]["billed_ms"].as_u64().unwrap();
    assert!(
        billed < 2_500,
        "billed {billed} ms: until the client left, not the 3 s sleep"
    );
}

#[test]
fn fn_stats_shows_the_minutes_traffic_by_status_with_latency_and_matches_the_usage_records() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "flaky",
        "python",
        "f.py",
        FLAKY_PY,
        &["--max-instances", "1"],
    );
    send(&gust, "/flaky", 7);
    send(&gust, "/flaky?fail=1", 3);
    let records = wait_for_records(&gust, "flaky", 10);
    let stats = |since: &str| -> Value {
        serde_json::from_str(
            &gust
                .cli(&["fn", "stats", "flaky", "--since", since, "-o", "json"])
                .ok()
                .stdout,
        )
        .unwrap()
    };
    let view = stats("15m");
    let minutes = view["minutes"].as_array().unwrap();
    let sum = |field: &str| -> u64 { minutes.iter().map(|m| m[field].as_u64().unwrap()).sum() };
    // The same attempts as the usage records (a test can straddle a minute's end).
    assert_eq!(sum("invocations"), records.len() as u64, "{view}");
    assert_eq!(
        (sum("ok"), sum("server_errors"), sum("client_errors")),
        (7, 3, 0)
    );
    // The deploy's instance serves the first request, unless it retired first.
    assert!(sum("cold_starts") <= 1, "{view}");
    for minute in minutes {
        let (p50, p99) = (
            minute["p50_ms"].as_f64().unwrap(),
            minute["p99_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 < 10_000.0, "{minute}");
    }
    // The table names its columns; a function that does not exist, or a span past what is
    // kept, is refused by name.
    let table = gust.cli(&["fn", "stats", "flaky"]).ok().stdout;
    assert!(
        table.contains("REQUESTS") && table.contains("P99 MS"),
        "{table}"
    );
    let missing = gust.cli(&["fn", "stats", "nope"]).failed();
    assert!(missing.contains("nope"), "{missing}");
    let too_far = gust
        .cli(&["fn", "stats", "flaky", "--since", "2d"])
        .failed();
    assert!(too_far.contains("since"), "{too_far}");
    // A deleted function's series goes with it.
    gust.cli(&["fn", "delete", "flaky"]).ok();
    let code = gust.write_file("again.py", FLAKY_PY);
    gust.create_function("flaky", "python", &code, &[]).ok();
    assert_eq!(stats("1h")["minutes"], serde_json::json!([]));
    let empty = gust.cli(&["fn", "stats", "flaky"]).ok().stdout;
    assert!(empty.contains("no requests on this node since"), "{empty}");
}

#[test]
fn fn_stats_tells_the_phases_of_each_minutes_cold_starts() {
    let gust = Gust::start(GUST, GustOptions::default());
    let slow = "import time\n\ndef main(req):\n    time.sleep(0.4)\n    return 'ok'\n";
    gust.deploy("slow", "python", "slow.py", slow, &["--max-instances", "3"]);
    // Three at once: the deploy's instance serves one, the others start instances.
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| send(&gust, "/slow", 1));
        }
    });
    wait_for_records(&gust, "slow", 3);
    let view: Value = serde_json::from_str(
        &gust
            .cli(&["fn", "stats", "slow", "--since", "15m", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let cold: Vec<&Value> = view["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["cold_starts"].as_u64().unwrap() > 0)
        .collect();
    assert!(!cold.is_empty(), "no cold start counted: {view}");
    for minute in cold {
        let phases = &minute["cold_start_phases"];
        let ms = |name: &str| phases[name].as_f64().unwrap();
        // A worker is specialized: it imports the code in the load phase; a process tier's
        // revision needs next to no preparing.
        assert!(ms("load_ms") > 0.0, "{minute}");
        assert!(ms("place_ms") > 0.0, "{minute}");
        assert!(ms("prepare_ms") < 1.0, "{minute}");
        let phases_sum: f64 = [
            "prepare_ms",
            "worker_ms",
            "limits_ms",
            "place_ms",
            "load_ms",
        ]
        .iter()
        .map(|name| ms(name))
        .sum();
        let whole = minute["cold_start_ms"].as_f64().unwrap();
        assert!(
            phases_sum <= whole + 0.01,
            "the phases ({phases_sum} ms) fit in the start ({whole} ms): {minute}"
        );
    }
}
