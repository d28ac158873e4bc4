//! End-to-end: kernel limits on process-tier instances (S-09). A function that allocates past
//! `--memory` is killed and its caller told why; a fork bomb stays inside its pids limit; the
//! host and other functions keep serving.

use gust_harness::{Gust, GustOptions};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

const HOG_PY: &str = "def main(req):\n    data = b'x' * (int(req.query['mb']) << 20)\n    return f'held {len(data) >> 20} MiB'\n";
const FORK_BOMB_PY: &str = "import os, time\n\ndef main():\n    forks = 0\n    try:\n        while True:\n            if os.fork() == 0:\n                time.sleep(3)\n                os._exit(0)\n            forks += 1\n    except OSError as e:\n        return f'{forks} {e.errno}'\n";

#[test]
fn s09_memory_and_pids_limits_hold_and_the_host_keeps_serving() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("hog", "python", "f.py", HOG_PY, &["--memory", "64"]);
    gust.deploy(
        "bomb",
        "python",
        "f.py",
        FORK_BOMB_PY,
        &["--memory", "1024"],
    );
    gust.deploy(
        "fine",
        "python",
        "f.py",
        "def main():\n    return 'fine'\n",
        &[],
    );

    assert_eq!(gust.get("/hog?mb=8").text().unwrap(), "held 8 MiB");
    let response = gust.get("/hog?mb=300");
    assert_eq!(response.status(), 502);
    let error: Value = response.json().unwrap();
    assert_eq!(error["reason"], "out_of_memory", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("64 MB"),
        "{error}"
    );
    assert_eq!(gust.get("/fine").text().unwrap(), "fine");
    assert_eq!(
        gust.get("/hog?mb=8").text().unwrap(),
        "held 8 MiB",
        "the next request gets a fresh instance"
    );

    let answer = gust.get("/bomb").text().unwrap();
    let mut parts = answer.split_whitespace();
    let forks: u32 = parts
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{answer}"));
    let errno: i32 = parts.next().unwrap().parse().unwrap();
    assert_eq!(
        errno,
        libc::EAGAIN,
        "fork failed for want of pids: {answer}"
    );
    assert!(
        forks < gust_runtime_process::WORKER_PIDS_MAX,
        "bounded by the pids limit: {answer}"
    );
    assert_eq!(gust.get("/fine").text().unwrap(), "fine");
    assert_eq!(gust.get("/hog?mb=1").text().unwrap(), "held 1 MiB");
}

#[test]
fn a_node_function_past_its_memory_fails_with_out_of_memory_and_its_heap_is_sized_to_fit() {
    let gust = Gust::start(GUST, GustOptions::default());
    let hog = "module.exports = async () => {\n  const keep = [];\n  for (let i = 0; i < 100000; i++) keep.push(new Array(100000).fill(i + 0.5));\n  return { status: 200, body: String(keep.length) };\n};\n";
    gust.deploy("nodehog", "node", "f.js", hog, &[]);
    let response = gust.get("/nodehog");
    assert_eq!(response.status(), 502);
    let error: Value = response.json().unwrap();
    assert_eq!(error["reason"], "out_of_memory", "{error}");

    // A function with more memory than the pool's default gets a worker whose heap limit
    // matches its own.
    let heap = "const v8 = require('v8');\nmodule.exports = async () => ({ status: 200, body: String(v8.getHeapStatistics().heap_size_limit >> 20) });\n";
    gust.deploy("heap512", "node", "f.js", heap, &["--memory", "512"]);
    gust.deploy("heap128", "node", "f.js", heap, &[]);
    let limit = |path: &str| -> u64 { gust.get(path).text().unwrap().parse().unwrap() };
    let (big, default) = (limit("/heap512"), limit("/heap128"));
    assert!(
        (384..512).contains(&big),
        "a 512 MB function's heap: {big} MB"
    );
    assert!(
        (96..128).contains(&default),
        "a 128 MB function's heap: {default} MB"
    );
}
