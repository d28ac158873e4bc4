//! End-to-end: the WebAssembly tier through the real binary. The components are built from
//! the C sources in `tests/components/` (see `build.sh` there).

use std::time::Duration;

use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/components/probe.wasm");
const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/components/hello.wasm");
const NOT_HTTP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/components/not-http.wasm"
);

fn error_reason(response: gust_harness::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().unwrap();
    (
        status,
        body["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn deploy_probe(gust: &Gust, name: &str, extra: &[&str]) {
    gust.deploy_path(name, "wasm", PROBE, extra);
}

#[test]
fn a_standard_wasi_http_component_serves_requests_with_its_env_and_logs() {
    let gust = Gust::start(GUST, GustOptions::default());
    deploy_probe(&gust, "hello", &["--env-var", "GREETING=hi from the host"]);
    let response = gust.get("/hello");
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.text().unwrap(), "hello from wasm\n");
    assert_eq!(gust.get("/hello/env").text().unwrap(), "hi from the host");
    let teapot = gust.get("/hello/status/418");
    assert_eq!(teapot.status(), 418);

    let logs = eventually(Duration::from_secs(10), || {
        let logs: Value =
            serde_json::from_str(&gust.cli(&["fn", "logs", "hello", "-o", "json"]).ok().stdout)
                .ok()?;
        logs.as_array()?
            .iter()
            .find(|line| line["text"] == "handling /hello")
            .cloned()
    })
    .expect("the component's stdout reaches the logs");
    assert_eq!(logs["request_id"], id.as_str());
    assert_eq!(logs["stream"], "stdout");
}

/// A component built without a C library imports wasi:http and nothing else: no preview1
/// adapter in it, and the same file serves under Gust as under `wasmtime serve`.
#[test]
fn a_component_without_libc_or_adapter_serves_requests() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["fn", "create", "bare", "--env", "wasm", "--code", HELLO])
        .ok();
    gust.cli(&["route", "create", "--fn", "bare", "--url", "/bare"])
        .ok();
    for _ in 0..3 {
        let response = gust.get("/bare");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.text().unwrap(), "hello from wasm\n");
    }
}

/// Where the pool's address space (about 250 GB for its thousand slots) cannot be reserved,
/// Gust still starts, says so, and serves wasm functions from instances allocated on demand.
#[test]
fn without_room_for_the_instance_pool_instances_are_allocated_on_demand() {
    let gust = Gust::start(
        GUST,
        GustOptions {
            address_space_limit: Some(16 << 30),
            ..GustOptions::default()
        },
    );
    assert!(
        gust.log()
            .contains("instances are allocated on demand instead"),
        "{}",
        gust.log()
    );
    gust.cli(&["fn", "create", "bare", "--env", "wasm", "--code", HELLO])
        .ok();
    gust.cli(&["route", "create", "--fn", "bare", "--url", "/bare"])
        .ok();
    for _ in 0..3 {
        let response = gust.get("/bare");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().unwrap(), "hello from wasm\n");
    }
}

/// A caller that gives up takes its request's guest with it: a component spinning for a client
/// that has gone must not keep a core busy until its timeout, or beyond.
#[test]
fn a_guest_stops_when_its_client_has_gone() {
    let gust = Gust::start(GUST, GustOptions::default());
    deploy_probe(&gust, "spin", &["--timeout", "60s"]);
    let impatient = gust_harness::reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let gave_up = impatient.get(gust.public_url("/spin/loop")).send();
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    // A spinning guest would use about a core for the whole window; an idle Gust, almost
    // nothing.
    std::thread::sleep(Duration::from_millis(500));
    let before = gust_harness::cpu_time(gust.pid());
    std::thread::sleep(Duration::from_secs(4));
    let used = gust_harness::cpu_time(gust.pid()) - before;
    assert!(
        used < Duration::from_secs(1),
        "gust used {used:?} of CPU in the 4 s after the client left"
    );
    assert_eq!(gust.get("/spin").text().unwrap(), "hello from wasm\n");
}

/// Requests Gust makes itself have no Host header (a timer's tick, a queue message);
/// wasi:http needs an authority, so the tier supplies one.
#[test]
fn a_timer_tick_without_a_host_reaches_the_component() {
    let gust = Gust::start(GUST, GustOptions::default());
    deploy_probe(&gust, "ticked", &[]);
    gust.cli(&[
        "timer",
        "create",
        "tick",
        "--fn",
        "ticked",
        "--cron",
        "@every 1s",
    ])
    .ok();
    let served = eventually(Duration::from_secs(20), || {
        let metrics = gust.metrics();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("gust_function_invocations_total")
                    && l.contains("trigger=\"timer\"")
                    && l.contains("code=\"200\"")
            })
            .map(str::to_owned)
    });
    assert!(served.is_some(), "{}\n{}", gust.metrics(), gust.log());
    let dead = gust.cli(&["dlq", "list", "-o", "json"]).ok().stdout;
    assert_eq!(dead.trim(), "[]", "{dead}");
}

#[test]
fn limits_hold_and_a_failure_never_spills_into_the_next_request() {
    let gust = Gust::start(GUST, GustOptions::default());
    deploy_probe(&gust, "limits", &["--timeout", "500ms", "--memory", "32"]);
    assert_eq!(
        error_reason(gust.get("/limits/loop")),
        (504, "timeout".to_owned())
    );
    assert_eq!(gust.get("/limits").status(), 200);
    assert_eq!(
        error_reason(gust.get("/limits/alloc?mb=64")),
        (502, "out_of_memory".to_owned())
    );
    assert!(
        gust.get("/limits/alloc?mb=4")
            .text()
            .unwrap()
            .starts_with("allocated 4 MiB")
    );
    assert_eq!(
        error_reason(gust.get("/limits/trap")),
        (502, "trap".to_owned())
    );
    assert_eq!(gust.get("/limits").text().unwrap(), "hello from wasm\n");
    let body = gust
        .http()
        .post(gust.public_url("/limits"))
        .body(vec![0u8; 7 * 1024 * 1024])
        .send();
    if let Ok(response) = body {
        assert_eq!(response.status(), 413);
    }
}

#[test]
fn uploads_that_are_not_wasi_http_components_are_refused_at_deploy() {
    let gust = Gust::start(GUST, GustOptions::default());
    let core = gust.write_file("core.wasm", b"\0asm\x01\0\0\0");
    let garbage = gust.write_file("garbage.wasm", b"definitely not wasm");
    let archive = gust.write_file("code.zip", b"PK\x03\x04");
    let cases = [
        (
            core.to_str().unwrap(),
            vec![],
            "not a WebAssembly component",
        ),
        (
            garbage.to_str().unwrap(),
            vec![],
            "not a WebAssembly component",
        ),
        (NOT_HTTP, vec![], "not a wasi:http/proxy component"),
        (
            archive.to_str().unwrap(),
            vec![],
            "one .wasm component file",
        ),
        (PROBE, vec!["--memory", "512"], "at most 256 MB"),
    ];
    for (code, extra, expected) in cases {
        let mut args = vec!["fn", "create", "refused", "--env", "wasm", "--code", code];
        args.extend(extra);
        let err = gust.cli(&args).failed();
        assert!(err.contains(expected), "{code}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let list: Value =
        serde_json::from_str(&gust.cli(&["fn", "list", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(list, serde_json::json!([]));
    // An update that would break a running function is refused too, and changes nothing.
    deploy_probe(&gust, "kept", &[]);
    let err = gust
        .cli(&["fn", "update", "kept", "--memory", "1024"])
        .failed();
    assert!(err.contains("at most 256 MB"), "{err}");
    assert_eq!(gust.get("/kept").text().unwrap(), "hello from wasm\n");
}

#[test]
fn compiled_components_are_cached_and_reused_after_a_restart() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    deploy_probe(&gust, "cached", &[]);
    let cache = gust.data_dir().join("wasm-cache");
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
        .collect();
    assert_eq!(artifacts.len(), 1, "compiled at deploy: {artifacts:?}");
    gust.restart();
    assert_eq!(gust.get("/cached").text().unwrap(), "hello from wasm\n");
    let (path, modified) = &artifacts[0];
    assert_eq!(
        std::fs::metadata(path).unwrap().modified().unwrap(),
        *modified,
        "not recompiled"
    );
}

/// How many of gust's memory mappings are of a file in its compiled-component cache.
fn cache_mappings(gust: &Gust) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", gust.pid())).unwrap();
    let cache = gust.data_dir().join("wasm-cache");
    let cache = cache.to_string_lossy();
    maps.lines().filter(|line| line.contains(&*cache)).count()
}

/// Many deployed functions must not each hold their compiled code: one unused for the unload
/// time lets it go (its compiled file is no longer mapped in gust), and its next request
/// loads it again.
#[test]
fn an_unused_component_is_unloaded_and_its_next_request_loads_it_again() {
    let gust = Gust::start(
        GUST,
        GustOptions {
            extra_args: ["--idle-timeout", "1s", "--unload-after", "2s"]
                .map(String::from)
                .to_vec(),
            ..GustOptions::default()
        },
    );
    deploy_probe(&gust, "seldom", &[]);
    assert_eq!(gust.get("/seldom").text().unwrap(), "hello from wasm\n");
    assert!(cache_mappings(&gust) > 0, "loaded to serve");
    eventually(Duration::from_secs(20), || {
        (cache_mappings(&gust) == 0).then_some(())
    })
    .expect("the unused component is unloaded");
    assert_eq!(gust.get("/seldom").text().unwrap(), "hello from wasm\n");
    assert!(cache_mappings(&gust) > 0, "loaded again");
}

/// A one-answer-fits-all HTTP server on loopback: what a component's outbound call reaches.
fn upstream(answer: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    port
}

#[test]
fn s07_outbound_http_reaches_only_allowed_origins() {
    let gust = Gust::start(GUST, GustOptions::default());
    let allowed = upstream("upstream ok");
    let other = upstream("should not be reached");
    let rule = format!("http://127.0.0.1:{allowed}");
    deploy_probe(&gust, "caller", &["--allow-outbound", &rule]);
    deploy_probe(&gust, "sealed", &[]);
    let fetch = |function: &str, target: String| {
        gust.get(&format!("/{function}/fetch/{target}"))
            .text()
            .unwrap()
    };

    assert_eq!(
        fetch("caller", format!("127.0.0.1:{allowed}/x")),
        "200 upstream ok"
    );
    // HTTP-request-denied is error code 15 in wasi:http.
    assert_eq!(
        fetch("caller", format!("127.0.0.1:{other}/x")),
        "error-code 15"
    );
    assert_eq!(
        fetch("caller", format!("localhost:{allowed}/x")),
        "error-code 15"
    );
    assert_eq!(
        fetch("sealed", format!("127.0.0.1:{allowed}/x")),
        "error-code 15",
        "none by default"
    );

    let info: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "caller", "-o", "json"]).ok().stdout)
            .unwrap();
    assert_eq!(info["allow_outbound"][0], rule.as_str());
    for (bad, expected) in [
        ("ftp://x.com", "scheme"),
        ("https://x.com/path", "no path"),
        ("x.com", "scheme://"),
        ("https://a b.com", "host"),
        ("https://x.com;flush", "host"),
    ] {
        let err = gust
            .cli(&["fn", "update", "caller", "--allow-outbound", bad])
            .failed();
        assert!(err.contains(expected), "{bad}: {err}");
    }
    // A process function's list is enforced by address: a pattern of names cannot be.
    let py = gust.write_file("p.py", "def main():\n    return 'x'\n");
    let err = gust
        .cli(&[
            "fn",
            "create",
            "py",
            "--env",
            "python",
            "--code",
            py.to_str().unwrap(),
            "--allow-outbound",
            "https://*.example.com",
        ])
        .failed();
    assert!(err.contains("names hosts"), "{err}");
}

#[test]
fn a_python_component_runs_fresh_per_request_or_reused_when_asked() {
    let built = tempfile::tempdir().unwrap();
    let wasm = built.path().join("python-hello.wasm");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/components/python-hello/build.sh"
    );
    let status = std::process::Command::new(script)
        .arg(&wasm)
        .status()
        .unwrap();
    assert!(status.success(), "building the Python component failed");

    let gust = Gust::start(GUST, GustOptions::default());
    let wasm = wasm.to_str().unwrap();
    gust.cli(&[
        "fn",
        "create",
        "py",
        "--env",
        "wasm",
        "--code",
        wasm,
        "--env-var",
        "GREETING=hi",
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "py", "--url", "/py", "--name", "py",
    ])
    .ok();
    let served = |gust: &Gust| -> Vec<String> {
        (0..4)
            .map(|_| {
                let response = gust.get("/py");
                assert_eq!(response.status(), 200);
                response.text().unwrap()
            })
            .collect()
    };
    // A fresh instance per request: each request is its instance's first.
    assert_eq!(served(&gust), vec!["hi from python: GET /py served=1\n"; 4]);

    gust.cli(&["fn", "update", "py", "--reuse", "3"]).ok();
    let info: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "py", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(info["scaling"]["reuse"], 3);
    let counts: Vec<String> = served(&gust)
        .iter()
        .map(|text| text.rsplit('=').next().unwrap().trim().to_owned())
        .collect();
    assert_eq!(counts, ["1", "2", "3", "1"], "three requests per instance");

    // Its secrets and configs: files at Fission's paths, read-only, and variables.
    gust.cli(&[
        "secret",
        "create",
        "api",
        "--from-literal",
        "TOKEN=wasm-secret",
    ])
    .ok();
    gust.cli(&["config", "create", "flags", "--from-literal", "mode=fast"])
        .ok();
    gust.cli(&[
        "fn",
        "update",
        "py",
        "--secret",
        "api",
        "--config",
        "flags",
        "--secret-env",
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "py", "--url", "/pyfs", "--prefix", "--name", "pyfs",
    ])
    .ok();
    let answer = |path: &str| gust.get(path).text().unwrap();
    assert_eq!(
        answer("/pyfs/file/secrets/default/api/TOKEN"),
        "wasm-secret"
    );
    assert_eq!(answer("/pyfs/file/configs/default/flags/mode"), "fast");
    assert_eq!(answer("/pyfs/envvar/TOKEN"), "wasm-secret");
    assert!(
        answer("/pyfs/write/secrets/default/api/TOKEN").starts_with("cannot write"),
        "a mounted secret is read-only"
    );
    assert!(answer("/pyfs/file/etc/passwd").starts_with("cannot read"));
    assert_eq!(
        answer("/pyfs/file/secrets/default/api/TOKEN"),
        "wasm-secret"
    );
    // The values' directory (in memory, only Gust's) goes when the function does.
    let values_dirs = || {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("gust-wasm-values-")
                    && std::fs::read_dir(e.path()).is_ok_and(|revisions| {
                        revisions.flatten().any(|revision| {
                            std::fs::read_to_string(
                                revision.path().join("secrets/default/api/TOKEN"),
                            )
                            .is_ok_and(|v| v == "wasm-secret")
                        })
                    })
            })
            .count()
    };
    assert_eq!(values_dirs(), 1);

    let refused = gust.cli(&["fn", "update", "py", "--reuse", "0"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("reuse"), "{}", refused.stderr);
    let process = gust.cli(&[
        "fn", "create", "proc", "--env", "python", "--code", wasm, "--reuse", "2",
    ]);
    assert_ne!(process.code, 0);
    assert!(
        process
            .stderr
            .contains("--reuse applies to wasm functions only"),
        "{}",
        process.stderr
    );
    gust.cli(&["route", "delete", "pyfs"]).ok();
    gust.cli(&["route", "delete", "py"]).ok();
    gust.cli(&["fn", "delete", "py"]).ok();
    eventually(Duration::from_secs(10), || {
        (values_dirs() == 0).then_some(())
    })
    .expect("the values' directory is removed with the function");
}
