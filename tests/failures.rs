//! End-to-end: functions that fail in every way a function can, and what callers and logs see.

use std::time::{Duration, Instant};

use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

fn error_body(response: gust_harness::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let id = response.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(
        body["request_id"],
        id.as_str(),
        "the error names the request"
    );
    (status, body)
}

#[test]
fn a_raising_function_answers_502_and_its_traceback_goes_to_the_logs_only() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "boom",
        "python",
        "boom.py",
        "def main(req):\n    raise ValueError('the-secret-detail')\n",
        &[],
    );
    let (status, body) = error_body(gust.get("/boom"));
    assert_eq!(status, 502);
    assert_eq!(body["component"], "function");
    assert_eq!(body["reason"], "function_error");
    assert!(!body.to_string().contains("the-secret-detail"), "{body}");
    let logs = eventually(Duration::from_secs(10), || {
        let out = gust.cli(&["fn", "logs", "boom"]).ok().stdout;
        out.contains("ValueError: the-secret-detail").then_some(out)
    });
    assert!(logs.is_some(), "the traceback reaches the logs");

    gust.deploy(
        "boom-js",
        "node",
        "boom.js",
        "module.exports = async () => { throw new TypeError('js-secret'); };\n",
        &[],
    );
    let (status, body) = error_body(gust.get("/boom-js"));
    assert_eq!(
        (status, body["reason"].as_str()),
        (502, Some("function_error"))
    );
    assert!(!body.to_string().contains("js-secret"));
    // The instance survives an exception and serves the next request.
    assert_eq!(gust.get("/boom-js").status(), 502);
}

/// Python that finds the connection of the exchange it runs in (the load or a request) as
/// `out`, the way hostile code can: the server's handler is up the call stack.
const OWN_CONNECTION: &str = "import io, sys\n\
    frame = sys._getframe()\n\
    while not hasattr(frame.f_locals.get('self'), 'wfile'):\n\
    \x20   frame = frame.f_back\n\
    handler = frame.f_locals['self']\n\
    out = handler.wfile\n";

/// Bytes that carry no data, as hostile code writes them on its own connection.
#[derive(Clone, Copy)]
enum Flood {
    /// 64 MB of `100 Continue` answers.
    Continue,
    /// An answer's chunked head, then a chunk size of 64 MB of zeros.
    Zeros,
}

/// Python lines, each indented by `indent`, that write `flood` to `out`.
fn flood_lines(flood: Flood, indent: &str) -> String {
    let lines = match flood {
        Flood::Continue => vec![
            format!("for _ in range({}):", (64 << 20) / (25 * 4096)),
            "    out.write(b'HTTP/1.1 100 Continue\\r\\n\\r\\n' * 4096)".to_owned(),
        ],
        Flood::Zeros => vec![
            "out.write(b'HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n')".to_owned(),
            format!("for _ in range({}):", 64 << 4),
            "    out.write(b'0' * 65536)".to_owned(),
        ],
    };
    lines
        .iter()
        .map(|line| format!("{indent}{line}\n"))
        .collect()
}

/// A function's code runs in the process that answers Gust, and can write anything on that
/// connection: its own endless answer to the load, or bytes that carry no data (a flood of
/// informational answers, a chunk size padded with endless zeros). Each is cut off once it is
/// more than any honest answer, the worker is stopped, and Gust serves on.
#[test]
fn answers_flooded_by_the_functions_own_code_are_cut_off() {
    let gust = Gust::start(GUST, GustOptions::default());
    // At import, so in the answer to the load.
    let long_answer = format!(
        "out.write(b'HTTP/1.1 200 OK\\r\\nContent-Length: {}\\r\\n\\r\\n')\n\
         for _ in range({}):\n    out.write(b'x' * 65536)\n",
        64 << 20,
        64 << 4
    );
    for (name, flood) in [
        ("long-load", long_answer),
        ("continue-load", flood_lines(Flood::Continue, "")),
        ("zeros-load", flood_lines(Flood::Zeros, "")),
    ] {
        let code = format!("{OWN_CONNECTION}{flood}def main():\n    return 'never'\n");
        let path = gust.write_file(&format!("{name}/{name}.py"), code);
        let err = gust.create_function(name, "python", &path, &[]).failed();
        assert!(
            err.contains("the worker's answer to loading the code was too long"),
            "{name}: {err}"
        );
    }
    // In a request: the caller gets an error, never the forged answer behind the flood, and
    // long before the function's timeout (the client gives up at 30 s, the function at 120).
    let client = gust_harness::reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let forged = "    out.write(b'HTTP/1.1 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nforged')\n";
    for (name, flood) in [
        (
            "continue-request",
            flood_lines(Flood::Continue, "    ") + forged,
        ),
        ("zeros-request", flood_lines(Flood::Zeros, "    ")),
    ] {
        let code = format!(
            "def main():\n{}{flood}    handler.wfile = io.BytesIO()\n    return 'unseen'\n",
            OWN_CONNECTION
                .lines()
                .map(|line| format!("    {line}\n"))
                .collect::<String>()
        );
        gust.deploy(name, "python", "f.py", &code, &["--timeout", "120s"]);
        let outcome = client
            .get(gust.public_url(&format!("/{name}")))
            .send()
            .and_then(|response| Ok((response.status().as_u16(), response.text()?)));
        match outcome {
            Ok((status, body)) => {
                assert_eq!(status, 502, "{name}: {body}");
                assert!(body.contains("worker_exited"), "{name}: {body}");
            }
            // The head came through and the body was cut: not the client's timeout.
            Err(err) => assert!(!err.is_timeout(), "{name}: {err}"),
        }
    }
    gust.deploy(
        "after",
        "python",
        "after.py",
        "def main():\n    return 'fine'\n",
        &[],
    );
    assert_eq!(gust.get("/after").text().unwrap(), "fine");
}

#[test]
fn code_that_cannot_load_is_refused_at_deploy_and_the_previous_revision_keeps_serving() {
    let gust = Gust::start(GUST, GustOptions::default());
    let create = |name: &str, env: &str, file: &str, source: &str| {
        let path = gust.write_file(&format!("{name}/{file}"), source);
        gust.create_function(name, env, &path, &[])
    };
    for (name, env, file, source, cause) in [
        ("syntax", "python", "s.py", "def main(:\n", "SyntaxError"),
        (
            "noentry",
            "python",
            "n.py",
            "def other():\n    return 1\n",
            "LookupError",
        ),
        (
            "missing",
            "python",
            "m.py",
            "import no_such_module_here\ndef main():\n    return 1\n",
            "No module named 'no_such_module_here'",
        ),
        (
            "js-syntax",
            "node",
            "bad.js",
            "module.exports = async function( {\n",
            "SyntaxError",
        ),
    ] {
        let err = create(name, env, file, source).failed();
        assert!(err.contains("was not deployed"), "{name}: {err}");
        assert!(
            err.contains(cause),
            "{name}: the error and its output: {err}"
        );
        // Nothing was stored.
        let missing = gust.cli(&["fn", "get", name]).failed();
        assert!(missing.contains("not found"), "{name}: {missing}");
    }

    // An update that cannot load leaves the current revision serving, warm.
    gust.deploy(
        "steady",
        "python",
        "ok.py",
        "def main():\n    return 'v1'\n",
        &[],
    );
    assert_eq!(gust.get("/steady").text().unwrap(), "v1");
    let broken = gust.write_file("steady/broken.py", "raise RuntimeError('not today')\n");
    let err = gust
        .cli(&["fn", "update", "steady", "--code", broken.to_str().unwrap()])
        .failed();
    assert!(err.contains("RuntimeError: not today"), "{err}");
    assert!(err.contains("Traceback"), "{err}");
    assert_eq!(gust.get("/steady").text().unwrap(), "v1");
    let info: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "steady", "-o", "json"]).ok().stdout)
            .unwrap();
    assert_eq!(info["revision"], 1);
    assert_eq!(info["revisions"], 1);
    // A revision that loads goes live with its first instance already warm.
    let good = gust.write_file("steady/good.py", "def main():\n    return 'v2'\n");
    gust.cli(&["fn", "update", "steady", "--code", good.to_str().unwrap()])
        .ok();
    let info: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "steady", "-o", "json"]).ok().stdout)
            .unwrap();
    assert_eq!(info["instances"]["idle"], 1, "{info}");
    assert_eq!(gust.get("/steady").text().unwrap(), "v2");
}

#[test]
fn a_function_that_exits_fails_its_request_and_the_next_gets_a_fresh_worker() {
    let gust = Gust::start(GUST, GustOptions::default());
    let py = "import os\ndef main(req):\n    if req.query.get('die'):\n        os._exit(3)\n    return str(os.getpid())\n";
    gust.deploy("mortal", "python", "m.py", py, &[]);
    let first = gust.get("/mortal");
    assert_eq!(
        first.status(),
        200,
        "{}\n{}",
        first.text().unwrap(),
        gust.log()
    );
    let (status, body) = error_body(gust.get("/mortal?die=1"));
    assert_eq!(status, 502);
    assert_eq!(body["reason"], "worker_exited");
    assert_eq!(gust.get("/mortal").status(), 200);
}

#[test]
fn r06_a_function_past_its_timeout_answers_504_and_its_worker_is_killed() {
    let gust = Gust::start(GUST, GustOptions::default());
    let py = "import time\ndef main(req):\n    time.sleep(float(req.query.get('s', '0')))\n    return 'done'\n";
    gust.deploy("sleepy", "python", "s.py", py, &["--timeout", "1s"]);
    assert_eq!(gust.get("/sleepy").text().unwrap(), "done");
    let workers_before = gust.worker_pids("/gust-env/server.py").len();
    let started = Instant::now();
    let (status, body) = error_body(gust.get("/sleepy?s=60"));
    // Generous bound: the point is that the caller is not held for the function's 60 s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "held for {:?}",
        started.elapsed()
    );
    assert_eq!(status, 504);
    assert_eq!(body["reason"], "timeout");
    // The killed worker is gone and a fresh one serves.
    assert_eq!(gust.get("/sleepy").text().unwrap(), "done");
    let settled = eventually(Duration::from_secs(10), || {
        (gust.worker_pids("/gust-env/server.py").len() <= workers_before).then_some(())
    });
    assert!(settled.is_some(), "the timed-out worker was not killed");

    // An infinite loop is no different (S-09).
    gust.deploy(
        "spin",
        "node",
        "spin.js",
        "module.exports = async () => { for (;;) {} };\n",
        &["--timeout", "500ms"],
    );
    let (status, _) = error_body(gust.get("/spin"));
    assert_eq!(status, 504);
}

#[test]
fn a_cold_start_has_its_own_bound_apart_from_the_timeout_and_a_late_worker_serves_the_next_request()
{
    let gust = Gust::start(
        GUST,
        GustOptions {
            extra_args: vec!["--start-timeout".into(), "2s".into()],
            ..GustOptions::default()
        },
    );
    // Loading takes 1 s and the call 0.6 s: together past the 1 s timeout, which starts only
    // once the request reaches its instance.
    let py = "import time\ntime.sleep(1)\ndef main():\n    time.sleep(0.6)\n    return 'in time'\n";
    gust.deploy("slowload", "python", "s.py", py, &["--timeout", "1s"]);
    let response = gust.get("/slowload");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "in time");

    // Loading takes 4 s, longer than the 2 s start bound. The deploy waits for it (the
    // revision is loaded before it goes live) and keeps that instance warm; a second request
    // while the first holds it needs a cold start, which the bound cuts short.
    let py = "import time\ntime.sleep(4)\ndef main(req):\n    time.sleep(float(req.query.get('s', 0)))\n    return 'loaded'\n";
    gust.deploy("heavy", "python", "h.py", py, &["--timeout", "5s"]);
    let holder = std::thread::scope(|scope| {
        let holder = scope.spawn(|| gust.get("/heavy?s=3").status());
        std::thread::sleep(Duration::from_millis(300));
        let asked = Instant::now();
        let (status, body) = error_body(gust.get("/heavy"));
        (holder.join().unwrap(), status, body, asked.elapsed())
    });
    let (held, status, body, waited) = holder;
    assert_eq!(held, 200);
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["reason"], "start_timeout");
    // Generous bound for a loaded machine; without the bound the caller waits for the load.
    assert!(
        waited < Duration::from_millis(3500),
        "answered after {waited:?}"
    );
    // The load went on: once it is done the worker serves, without loading again.
    std::thread::sleep(Duration::from_secs(3));
    let served = eventually(Duration::from_secs(15), || {
        let response = gust.get("/heavy");
        (response.status() == 200).then(|| response.text().unwrap())
    });
    assert_eq!(served.as_deref(), Some("loaded"));
    let asked = Instant::now();
    assert_eq!(gust.get("/heavy").text().unwrap(), "loaded");
    assert!(asked.elapsed() < Duration::from_millis(2500), "served warm");
}

#[test]
fn r01_killing_a_worker_mid_request_fails_only_that_request() {
    let gust = Gust::start(GUST, GustOptions::default());
    // The victim is the only Node.js function, so its worker is easy to find from outside.
    let js = "module.exports = async (ctx) => {\n  if (ctx.request.query.slow) await new Promise((r) => setTimeout(r, 30000));\n  return 'fine';\n};\n";
    gust.deploy("victim", "node", "v.js", js, &[]);
    gust.deploy(
        "bystander",
        "python",
        "b.py",
        "def main():\n    return 'unaffected'\n",
        &[],
    );
    assert_eq!(gust.get("/victim").text().unwrap(), "fine");

    let slow_url = gust.public_url("/victim?slow=1");
    let client = gust.http().clone();
    let slow = std::thread::spawn(move || client.get(slow_url).send().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let node_workers = gust.worker_pids("/gust-env/server.js");
    assert!(!node_workers.is_empty());
    for pid in node_workers {
        // SAFETY: sending SIGKILL to a process id we just read from /proc.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let started = Instant::now();
    let (status, body) = error_body(slow.join().unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the request hung"
    );
    assert_eq!(status, 502);
    assert_eq!(body["reason"], "worker_exited");
    assert_eq!(gust.get("/bystander").text().unwrap(), "unaffected");
    assert_eq!(gust.get("/victim").text().unwrap(), "fine");
}

#[test]
fn sigterm_drains_in_flight_requests_and_stops_every_worker() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    let py = "import time\ndef main(req):\n    time.sleep(1)\n    return 'drained'\n";
    gust.deploy("drain", "python", "d.py", py, &[]);
    let url = gust.public_url("/drain");
    let client = gust.http().clone();
    let in_flight = std::thread::spawn(move || client.get(url).send().unwrap().text().unwrap());
    std::thread::sleep(Duration::from_millis(400));
    let workers = gust.worker_pids("/gust-env/");
    assert!(!workers.is_empty());
    assert!(gust.stop(), "clean exit:\n{}", gust.log());
    assert_eq!(in_flight.join().unwrap(), "drained");
    assert!(all_gone(&workers), "workers {workers:?} outlived gust");
}

#[test]
fn workers_die_with_a_killed_gust_and_a_restart_removes_their_directories_and_cgroups() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "orphan",
        "python",
        "o.py",
        "def main():\n    return 'ok'\n",
        &[],
    );
    assert_eq!(gust.get("/orphan").text().unwrap(), "ok");
    let workers = gust.worker_pids("/gust-env/");
    assert!(
        workers.len() >= 2,
        "a specialized worker and pool workers: {workers:?}"
    );
    // Function code runs below Gust's own priority.
    for pid in &workers {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let nice: i32 = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(16))
            .and_then(|nice| nice.parse().ok())
            .unwrap();
        assert_eq!(nice, 10, "worker {pid}");
    }
    // The next run's workers may get the same names: the old run's directories are marked.
    let workers_dir = gust.worker_run_dir().join("workers");
    for dir in std::fs::read_dir(&workers_dir).unwrap().flatten() {
        std::fs::write(dir.path().join("left-by-the-killed-run"), "").unwrap();
    }
    let cgroup_base = cgroup_dir(workers[0]).and_then(|dir| dir.parent().map(|p| p.to_owned()));
    gust.restart();
    assert!(
        all_gone(&workers),
        "workers {workers:?} outlived a killed gust"
    );
    let names = |dir: &std::path::Path| -> std::collections::BTreeSet<String> {
        std::fs::read_dir(dir).map_or_else(
            |_| Default::default(),
            |entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            },
        )
    };
    let marked: Vec<_> = names(&workers_dir)
        .into_iter()
        .filter(|name| {
            workers_dir
                .join(name)
                .join("left-by-the-killed-run")
                .exists()
        })
        .collect();
    assert!(marked.is_empty(), "left by the killed run: {marked:?}");
    // Every worker cgroup belongs to a worker of the new run.
    if let Some(base) = cgroup_base {
        let workers_now = names(&workers_dir);
        let stale: Vec<_> = names(&base)
            .into_iter()
            .filter(|name| !workers_now.contains(name))
            .collect();
        assert!(
            stale.is_empty(),
            "cgroups left by the killed run: {stale:?}"
        );
    }
    assert_eq!(gust.get("/orphan").text().unwrap(), "ok");
}

/// A process's own memory cgroup directory (cgroup v1's memory hierarchy, or the unified
/// one), when it is not the root.
fn cgroup_dir(pid: u32) -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mount_of = |v1_memory: bool| {
        mounts.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let matches = match (fields.get(2).copied(), v1_memory) {
                (Some("cgroup"), true) => fields[3].split(',').any(|o| o == "memory"),
                (Some("cgroup2"), false) => true,
                _ => false,
            };
            matches.then(|| fields[1].to_owned())
        })
    };
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let base = match controllers {
            "" => mount_of(false)?,
            c if c.split(',').any(|c| c == "memory") => mount_of(true)?,
            _ => return None,
        };
        (path != "/").then(|| std::path::PathBuf::from(base + path))
    })
}

/// Whether every pid has exited (gone, or a zombie nobody reaped yet).
fn all_gone(pids: &[u32]) -> bool {
    eventually(Duration::from_secs(10), || {
        pids.iter()
            .all(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|stat| {
                        stat.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(true)
            })
            .then_some(())
    })
    .is_some()
}

#[test]
fn a_worker_that_fails_to_start_leaves_no_directory_or_cgroup_behind() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&[
        "env",
        "create",
        "broken",
        "--command",
        "/usr/bin/false",
        "--pool-size",
        "0",
    ])
    .ok();
    // Each deploy tries to start a worker to load the code in, and says why it could not.
    let code = gust.write_file("doomed/d.txt", "never runs");
    for _ in 0..3 {
        let err = gust
            .create_function("doomed", "broken", &code, &[])
            .failed();
        assert!(err.contains("exited during start"), "{err}");
    }
    let workers_dir = gust.worker_run_dir().join("workers");
    let cgroup_base = gust
        .worker_pids("/gust-env/")
        .first()
        .and_then(|pid| cgroup_dir(*pid))
        .and_then(|dir| dir.parent().map(|p| p.to_owned()));
    let left = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir).map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("broken-"))
                    .collect()
            },
        )
    };
    let settled = eventually(Duration::from_secs(10), || {
        let mut found = left(&workers_dir);
        if let Some(base) = &cgroup_base {
            found.extend(left(base));
        }
        found.is_empty().then_some(())
    });
    assert!(
        settled.is_some(),
        "left by failed starts: {:?} {:?}",
        left(&workers_dir),
        cgroup_base.as_deref().map(left)
    );
}
