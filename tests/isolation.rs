//! End-to-end isolation scenarios, each performed as an attacker would through the real binary:
//! a function that tries to redirect Gust's connections to another worker (S-14), public
//! requests that spell a worker's control paths every way a server might resolve them (S-15),
//! a specialization that fails with a poisoned environment (S-16), a function that looks for
//! places to write outside its memory (S-09, S-14), nested user namespaces (S-20) and a
//! status no HTTP client can take as an answer.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use gust_harness::{Gust, GustOptions};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// Sends one request with `target` exactly as given (an HTTP client would normalize it);
/// returns the status and body.
fn raw_request(gust: &Gust, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", gust.public_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: gust\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    gust_harness::read_answer(&mut stream)
}

/// The host sockets of this Gust's workers, wherever a worker directory keeps one.
fn worker_sockets(gust: &Gust, environment: &str) -> Vec<PathBuf> {
    let workers = gust.worker_run_dir().join("workers");
    let Ok(entries) = std::fs::read_dir(&workers) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(environment))
        .flat_map(|e| {
            [
                e.path().join("worker.sock"),
                e.path().join("sock/worker.sock"),
            ]
        })
        .filter(|p| p.exists())
        .collect()
}

const ENV_PROBE_PY: &str =
    "import os\ndef main():\n    return {'proxy': os.environ.get('HTTP_PROXY')}\n";
const ENV_PROBE_JS: &str =
    "module.exports = async () => ({ body: { proxy: process.env.HTTP_PROXY || null } });\n";

/// Deploys a fresh function of each built-in environment and checks that the worker it got
/// carries no environment an attacker planted.
fn assert_fresh_workers_are_clean(gust: &Gust, tag: &str) {
    for (env, file, source) in [
        ("python", "probe.py", ENV_PROBE_PY),
        ("node", "probe.js", ENV_PROBE_JS),
    ] {
        let name = format!("victim-{env}-{tag}");
        gust.deploy(&name, env, file, source, &[]);
        let response = gust.get(&format!("/{name}"));
        assert_eq!(response.status(), 200, "{name}");
        let seen: Value = response.json().unwrap();
        assert_eq!(seen["proxy"], Value::Null, "{name} got a poisoned worker");
    }
}

#[test]
fn s14_a_function_cannot_redirect_gusts_connections_to_another_worker() {
    let gust = Gust::start(GUST, GustOptions::default());
    // The target: a generic Node.js worker waiting in the pool. Its host socket is where a
    // worker's own socket path would be redirected to.
    let targets = gust_harness::eventually(Duration::from_secs(30), || {
        let found = worker_sockets(&gust, "node");
        (!found.is_empty()).then_some(found)
    })
    .expect("a pooled node worker");
    let targets: Vec<String> = targets
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let attacker = r#"
import os, time
def main(req):
    if req.query.get("attack"):
        redirected = []
        places = {"/run/gust", os.path.dirname(os.environ.get("GUST_SOCKET", "/nonexistent/x"))}
        for place in places:
            sock = os.path.join(place, "worker.sock")
            for target in os.environ["TARGETS"].split(":"):
                try:
                    os.symlink(target, sock + ".new")
                    os.replace(sock + ".new", sock)
                    redirected.append(sock)
                    break
                except OSError:
                    pass
        return {"redirected": redirected}
    time.sleep(0.5)
    return "attacker"
"#;
    let targets_var = format!("TARGETS={}", targets.join(":"));
    gust.deploy(
        "attacker",
        "python",
        "attacker.py",
        attacker,
        &["--concurrency", "4", "--env-var", &targets_var],
    );
    gust.cli(&[
        "route", "create", "--fn", "attacker", "--url", "/", "--prefix", "--name", "all",
    ])
    .ok();
    let attack = gust.get("/attacker?attack=1");
    assert_eq!(attack.status(), 200);
    // Four requests at once make Gust open three more connections to the attacker's worker;
    // every one must reach that worker and no other.
    let poison = r#"{"filepath": "/nonexistent", "functionName": "", "env": {"HTTP_PROXY": "http://attacker.invalid"}}"#;
    for round in 0..2 {
        std::thread::scope(|scope| {
            let answers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| gust.get("/attacker/slow")))
                .collect();
            let specializes: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| raw_request(&gust, "POST", "//v2/specialize", poison)))
                .collect();
            for answer in answers {
                let answer = answer.join().unwrap();
                let status = answer.status();
                let body = answer.text().unwrap();
                assert_eq!(
                    (status.as_u16(), body.as_str()),
                    (200, "attacker"),
                    "round {round}"
                );
            }
            for specialize in specializes {
                let (status, body) = specialize.join().unwrap();
                assert_eq!(status, 404, "//v2/specialize reached a worker: {body}");
            }
        });
    }
    assert_fresh_workers_are_clean(&gust, "a");
}

#[test]
fn s15_public_requests_never_reach_a_workers_control_paths() {
    let gust = Gust::start(GUST, GustOptions::default());
    for (env, file, source, url) in [
        ("python", "probe.py", ENV_PROBE_PY, "/py"),
        ("node", "probe.js", ENV_PROBE_JS, "/js"),
    ] {
        let name = format!("probe-{env}");
        gust.deploy(&name, env, file, source, &[]);
        gust.cli(&["route", "create", "--fn", &name, "--url", url, "--prefix"])
            .ok();
    }
    let poison = r#"{"filepath": "/nonexistent", "functionName": "", "env": {"HTTP_PROXY": "http://attacker.invalid"}}"#;
    for prefix in ["/py", "/js"] {
        for spelling in [
            "/../v2/specialize",
            "/%2e%2e/v2/specialize",
            "/%2E%2E/v2/specialize",
            "/.%2e/v2/specialize",
            "/%252e%252e/v2/specialize",
            "/..%2fv2%2fspecialize",
            "/..\\v2/specialize",
            "/..;/v2/specialize",
            "/%2e%2e/healthz",
            "/%2e%2e/_gust/warmup",
        ] {
            let target = format!("{prefix}{spelling}");
            let (status, body) = raw_request(&gust, "POST", &target, poison);
            assert_eq!(status, 404, "{target}: {body}");
            assert!(body.contains("no_route"), "{target}: {body}");
        }
    }
    for spelling in ["//v2/specialize", "///healthz", "/%76%32/specialize"] {
        let (status, body) = raw_request(&gust, "POST", spelling, poison);
        assert_eq!(status, 404, "{spelling}: {body}");
    }
    // The specialized workers were not touched and see no planted environment.
    for prefix in ["/py/x", "/js/x"] {
        let (status, body) = raw_request(&gust, "GET", prefix, "");
        assert_eq!(status, 200, "{prefix}: {body}");
        assert!(body.contains(r#""proxy": null"#) || body.contains(r#""proxy":null"#));
    }
    assert_fresh_workers_are_clean(&gust, "b");
}

#[test]
fn s16_a_worker_whose_specialization_failed_is_never_used_again() {
    let gust = Gust::start(GUST, GustOptions::default());
    for (env, file, source) in [
        ("python", "broken.py", "raise RuntimeError('no')\n"),
        ("node", "broken.js", "throw new Error('no');\n"),
    ] {
        // Each deploy loads the code in a worker, which fails and is never used again.
        let name = format!("broken-{env}");
        let code = gust.write_file(&format!("{name}/{file}"), source);
        for _ in 0..3 {
            let err = gust
                .create_function(
                    &name,
                    env,
                    &code,
                    &["--env-var", "HTTP_PROXY=http://attacker.invalid"],
                )
                .failed();
            assert!(err.contains("was not deployed"), "{name}: {err}");
        }
    }
    assert_fresh_workers_are_clean(&gust, "c");
}

#[test]
fn s09_s14_a_function_can_write_only_its_memory_backed_tmp() {
    let gust = Gust::start(GUST, GustOptions::default());
    let explorer = r#"
import os
def main(req):
    if req.query.get("fill"):
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                chunk = b"x" * (1 << 20)
                while written < 512:
                    f.write(chunk)
                    f.flush()
                    written += 1
        except OSError as e:
            return {"written_mb": written, "error": e.strerror}
        return {"written_mb": written}
    writable = []
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys")]
        probe = os.path.join(root, ".gust-probe")
        try:
            with open(probe, "w") as f:
                f.write("x")
            os.unlink(probe)
            writable.append(root)
        except OSError:
            pass
    return {"writable": writable}
"#;
    gust.deploy(
        "explorer",
        "python",
        "explorer.py",
        explorer,
        &["--memory", "64"],
    );
    let seen: Value = gust.get("/explorer").json().unwrap();
    let writable: Vec<&str> = seen["writable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for place in &writable {
        assert!(
            *place == "/tmp" || place.starts_with("/tmp/") || place.starts_with("/dev/shm"),
            "a function can write {place} (all: {writable:?})"
        );
    }
    // Filling its tmp costs the function its own memory, not the host's disk: it is stopped
    // (out of memory) or told the space is gone, and the next request is served.
    let fill = gust.get("/explorer?fill=1");
    let status = fill.status().as_u16();
    let body = fill.text().unwrap();
    if status == 200 {
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert!(
            answer["written_mb"].as_u64().unwrap() < 64 && answer["error"].is_string(),
            "{body}"
        );
    } else {
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("out_of_memory"), "{body}");
    }
    assert_eq!(gust.get("/explorer").status(), 200);
}

#[test]
fn s20_a_function_cannot_create_user_namespaces_or_make_refused_system_calls() {
    let gust = Gust::start(GUST, GustOptions::default());
    // Each of these succeeds for an unprivileged process on a default kernel.
    let nester = r#"
import ctypes, subprocess
SYS_PTRACE, SYS_ADD_KEY, SYS_KEYCTL = 101, 248, 250
def call(*args):
    ctypes.set_errno(0)
    result = libc.syscall(*args)
    return [result, ctypes.get_errno()]
libc = ctypes.CDLL(None, use_errno=True)
def main():
    return {
        "tool": subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode,
        "ptrace_traceme": call(SYS_PTRACE, 0, 0, 0, 0),
        "add_key": call(SYS_ADD_KEY, b"user", b"gust", b"secret", 6, ctypes.c_int(-2)),
        "keyctl": call(SYS_KEYCTL, 0, ctypes.c_int(-2), 0),
    }
"#;
    gust.deploy("nester", "python", "nester.py", nester, &[]);
    let response = gust.get("/nester");
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().unwrap();
    // A single-threaded `unshare -Ur` (the worker itself has threads, which unshare refuses).
    assert_ne!(seen["tool"], 0, "{seen}");
    for call in ["ptrace_traceme", "add_key", "keyctl"] {
        assert_eq!(
            seen[call],
            serde_json::json!([-1, libc::EPERM]),
            "{call}: {seen}"
        );
    }
}

#[test]
fn a_status_outside_200_to_599_is_a_function_error_not_a_hang() {
    let gust = Gust::start(GUST, GustOptions::default());
    let py = "def main(req):\n    return 'early', int(req.query['status'])\n";
    gust.deploy(
        "informal",
        "python",
        "informal.py",
        py,
        &["--timeout", "20s"],
    );
    for status in [101, 150, 199, 600] {
        let response = gust.get(&format!("/informal?status={status}"));
        assert_eq!(response.status(), 502, "status {status}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["reason"], "function_error", "status {status}");
    }
    assert_eq!(gust.get("/informal?status=299").status(), 299);
}

#[test]
fn s09_a_log_flood_is_cut_to_the_rate_with_a_marker_and_the_function_is_not_held_up() {
    let gust = Gust::start(GUST, GustOptions::default());
    let flood = "import sys\ndef main():\n    line = 'x' * 99 + '\\n'\n    for _ in range(200_000):\n        sys.stdout.write(line)\n    sys.stdout.flush()\n    return 'done'\n";
    gust.deploy("flood", "python", "flood.py", flood, &["--timeout", "50s"]);
    let response = gust.get("/flood");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "done");
    // Each second over the rate ends in a marker line counting what was dropped in it. Only
    // the newest 256 KiB of a function's log are kept, so a flood that spans several rate
    // windows (a loaded machine writes it slower) has pushed the earlier windows' markers out:
    // what stays is the last window's, and in any second of this flood the writer outruns
    // the rate (256 KiB, about 2,600 of its lines) many times over.
    let found = gust_harness::eventually(Duration::from_secs(10), || {
        let logs = gust.cli(&["fn", "logs", "flood", "-o", "json"]).ok().stdout;
        let lines: Value = serde_json::from_str(&logs).ok()?;
        let lines = lines.as_array()?;
        let largest_marker = lines
            .iter()
            .filter_map(|l| l["text"].as_str())
            .filter(|t| t.starts_with("[gust]") && t.contains("lines dropped"))
            .filter_map(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
            .max()?;
        let kept = lines
            .iter()
            .filter(|l| l["text"].as_str().is_some_and(|t| t.starts_with("xxx")))
            .count();
        (largest_marker >= 1_000).then_some((largest_marker, kept))
    });
    let (_, kept) = found.expect("a marker counts the lines dropped in its second");
    assert!(
        kept < 10_000,
        "cut to the rate and the log's size: {kept} lines kept"
    );
}

/// A network namespace of the test's own reached from the host over a veth pair: it holds a
/// public address (198.51.100.2, documentation space, routed like any public one) and a private
/// one (10.77.0.2), with an HTTP server on both. Removed on drop.
struct OutsideNetwork {
    server: std::process::Child,
    port: u16,
    namespace: String,
    host_link: String,
}

fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

impl OutsideNetwork {
    fn start() -> Self {
        // Names of this test process's own, so that no other run's can collide.
        let id = std::process::id();
        let (namespace, host_link, out_link) = (
            format!("gust-s17-{id}"),
            format!("s17h{id}"),
            format!("s17o{id}"),
        );
        Self::remove(&namespace, &host_link);
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &out_link,
        ]);
        ip(&["link", "set", &out_link, "netns", &namespace]);
        for address in ["198.51.100.1/24", "10.77.0.1/24"] {
            ip(&["addr", "add", address, "dev", &host_link]);
        }
        ip(&["link", "set", &host_link, "up"]);
        // `nsenter --net` enters the namespace and nothing else (`ip netns exec` also remounts
        // /sys in a mount namespace of its own, which failed now and then beside the other
        // tests' sandboxes).
        let net = format!("--net=/run/netns/{namespace}");
        let inside = |args: &[&str]| {
            let mut all = vec![net.as_str(), "--", "ip"];
            all.extend_from_slice(args);
            run("nsenter", &all);
        };
        for address in ["198.51.100.2/24", "10.77.0.2/24"] {
            inside(&["addr", "add", address, "dev", &out_link]);
        }
        inside(&["link", "set", &out_link, "up"]);
        inside(&["link", "set", "lo", "up"]);
        let port = gust_harness::free_port();
        let server = std::process::Command::new("nsenter")
            .args([net.as_str(), "--", "python3", "-m", "http.server"])
            .args(["--bind", "0.0.0.0", &port.to_string()])
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let up = gust_harness::eventually(Duration::from_secs(10), || {
            TcpStream::connect(("198.51.100.2", port)).ok().map(|_| ())
        });
        assert!(up.is_some(), "the outside server does not answer");
        Self {
            server,
            port,
            namespace,
            host_link,
        }
    }

    fn remove(namespace: &str, host_link: &str) {
        for args in [
            &["link", "del", host_link][..],
            &["netns", "del", namespace][..],
        ] {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for OutsideNetwork {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        Self::remove(&self.namespace, &self.host_link);
    }
}

/// Tries every way out a function might look for; each probe says what it reached.
const NETWORK_PROBE: &str = r#"
import socket, urllib.request
held = []
def reach(family, address, timeout=3):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
        data = s.recv(64)
        return "got:" + data.decode(errors="replace")
    except Exception as e:
        return "failed:" + type(e).__name__
    finally:
        s.close()
def http(url):
    try:
        return "status:%d" % urllib.request.urlopen(url, timeout=3).status
    except Exception as e:
        return "failed:" + type(e).__name__
def through_the_uplink(kind, address):
    # Bound to the outside interface, a socket skips the namespace's own loopback (and the
    # routes, for broadcast and multicast).
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(2)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"tap0")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        # slirp4netns drops datagrams whose TTL would run out at it; 1 is multicast's default.
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 32)
        if kind == socket.SOCK_DGRAM:
            s.sendto(b"from-the-function", address)
        else:
            s.connect(address)
        return "sent"
    except Exception as e:
        return "failed:" + type(e).__name__
    finally:
        s.close()
def send_datagram(address):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"from-the-function", address)
        return "sent"
    except Exception as e:
        return "failed:" + type(e).__name__
    finally:
        s.close()
def main(req):
    q = req.query
    secret, port, listen = int(q["secret"]), int(q["port"]), int(q["listen"])
    datagrams = int(q["udp"])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", listen))
    listener.listen()
    held.append(listener)
    with open("/proc/net/tcp") as f:
        sockets = f.read()
    return {
        "public": http("http://198.51.100.2:%d/" % port),
        "private": http("http://10.77.0.2:%d/" % port),
        "metadata": http("http://169.254.169.254/latest/meta-data/"),
        "host_loopback": reach(socket.AF_INET, ("127.0.0.1", secret)),
        "host_loopback_alias": reach(socket.AF_INET, ("10.0.2.2", secret)),
        "abstract": reach(socket.AF_UNIX, q["abstract"].replace("@", "\0")),
        "sees_host_socket": (":%04X" % secret) in sockets,
        "host_address": reach(socket.AF_INET, ("198.51.100.1", secret)),
        "loopback_via_uplink_tcp": through_the_uplink(socket.SOCK_STREAM, ("127.0.0.1", secret)),
        "loopback_via_uplink_udp": through_the_uplink(socket.SOCK_DGRAM, ("127.0.0.1", datagrams)),
        "broadcast_via_uplink": through_the_uplink(socket.SOCK_DGRAM, ("255.255.255.255", datagrams)),
        "multicast_via_uplink": through_the_uplink(socket.SOCK_DGRAM, (q["group"], int(q["mcast"]))),
        "gateway_udp": send_datagram(("10.0.2.2", datagrams)),
    }
"#;

#[test]
fn s17_a_function_reaches_public_addresses_or_only_what_it_lists() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: building the outside network needs root");
        return;
    }
    let outside = OutsideNetwork::start();
    // Host services a function must not reach: one on every address of the host (counting
    // the connections it gets), one on UDP loopback, one on an abstract socket.
    let secret = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let secret_port = secret.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reached.clone();
    std::thread::spawn(move || {
        for mut stream in secret.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"hostsecret");
        }
    });
    let datagrams = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    datagrams.set_nonblocking(true).unwrap();
    let datagram_port = datagrams.local_addr().unwrap().port();
    // A multicast group the host listens to (as mDNS or SSDP listeners do).
    let group = std::net::Ipv4Addr::new(239, 255, 77, 1);
    let multicast = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    multicast
        .join_multicast_v4(&group, &std::net::Ipv4Addr::UNSPECIFIED)
        .unwrap();
    multicast.set_nonblocking(true).unwrap();
    let multicast_port = multicast.local_addr().unwrap().port();
    let abstract_name = format!("gust-s17-{}", std::process::id());
    let address =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            &abstract_name,
        )
        .unwrap();
    let abstract_listener = std::os::unix::net::UnixListener::bind_addr(&address).unwrap();
    std::thread::spawn(move || {
        for mut stream in abstract_listener.incoming().flatten() {
            let _ = stream.write_all(b"hostsecret");
        }
    });

    let gust = Gust::start(GUST, GustOptions::default());
    assert!(
        gust.log().contains("public addresses via slirp4netns"),
        "{}",
        gust.log()
    );
    gust.deploy("net-out", "python", "net.py", NETWORK_PROBE, &[]);
    gust.deploy(
        "net-none",
        "python",
        "net.py",
        NETWORK_PROBE,
        &["--network", "none"],
    );
    let probe = |function: &str| -> Value {
        let listen = gust_harness::free_port();
        let path = format!(
            "/{function}?secret={secret_port}&port={}&listen={listen}&abstract=@{abstract_name}&udp={datagram_port}&group={group}&mcast={multicast_port}",
            outside.port
        );
        let response = gust.get(&path);
        let status = response.status();
        let text = response.text().unwrap();
        assert_eq!(status, 200, "{function}: {text}");
        let seen: Value = serde_json::from_str(&text).unwrap();
        // What the function listens on is inside its own namespace, not on the host.
        assert!(
            TcpStream::connect(("127.0.0.1", listen)).is_err(),
            "{function} listens on a host port"
        );
        seen
    };
    let seen = probe("net-out");
    assert_eq!(seen["public"], "status:200", "{seen}");
    for refused in [
        "private",
        "metadata",
        "host_loopback",
        "host_loopback_alias",
        "abstract",
    ] {
        let answer = seen[refused].as_str().unwrap();
        assert!(answer.starts_with("failed:"), "{refused}: {seen}");
    }
    assert_eq!(seen["sees_host_socket"], false, "{seen}");
    assert!(
        seen["host_address"]
            .as_str()
            .unwrap()
            .starts_with("failed:"),
        "{seen}"
    );
    // Whatever the function believes it sent, nothing arrived on the host.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a connection reached the host: {seen}"
    );
    let no_datagram_arrived = |seen: &Value| {
        let mut buffer = [0u8; 64];
        assert!(
            datagrams.recv_from(&mut buffer).is_err(),
            "a datagram reached the host's loopback: {seen}"
        );
        assert!(
            multicast.recv_from(&mut buffer).is_err(),
            "a multicast datagram reached the host: {seen}"
        );
    };
    no_datagram_arrived(&seen);

    let seen = probe("net-none");
    assert!(
        seen["public"].as_str().unwrap().starts_with("failed:"),
        "{seen}"
    );
    assert_eq!(seen["sees_host_socket"], false, "{seen}");
    // An allow-list: only the listed private server and the host's loopback port (by name) are
    // reachable; the public server, reachable under plain `outbound`, is not listed. Any host
    // on the secret port and on the datagram ports is listed too: neither the host's own
    // address, nor the link's gateway (now the host's loopback), nor broadcast or multicast
    // is any host.
    let listed = [
        format!("*://10.77.0.2:{}", outside.port),
        format!("*://localhost:{secret_port}"),
        format!("*://*:{secret_port}"),
        format!("*://*:{datagram_port}"),
        format!("*://*:{multicast_port}"),
    ];
    let mut allow = Vec::new();
    for rule in &listed {
        allow.extend(["--allow-outbound", rule.as_str()]);
    }
    gust.deploy("net-listed", "python", "net.py", NETWORK_PROBE, &allow);
    let before = reached.load(std::sync::atomic::Ordering::SeqCst);
    let seen = probe("net-listed");
    assert_eq!(seen["private"], "status:200", "{seen}");
    assert_eq!(seen["host_loopback"], "got:hostsecret", "{seen}");
    for refused in ["public", "metadata", "host_loopback_alias", "host_address"] {
        let answer = seen[refused].as_str().unwrap();
        assert!(answer.starts_with("failed:"), "{refused}: {seen}");
    }
    assert!(
        reached.load(std::sync::atomic::Ordering::SeqCst) > before,
        "the listed loopback port was not reached: {seen}"
    );
    std::thread::sleep(Duration::from_millis(500));
    no_datagram_arrived(&seen);
    for (args, expected) in [
        (
            &["--allow-outbound", "https://*.example.com"][..],
            "names hosts",
        ),
        (
            &[
                "--allow-outbound",
                "https://api.example.com",
                "--network",
                "none",
            ][..],
            "contradict",
        ),
    ] {
        let mut all = vec!["fn", "update", "net-listed"];
        all.extend_from_slice(args);
        let err = gust.cli(&all).failed();
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    let shown: Value = serde_json::from_str(
        &gust
            .cli(&["fn", "get", "net-none", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["network"], "none");
    let err = gust
        .cli(&["fn", "update", "net-none", "--network", "host"])
        .failed();
    assert!(err.contains("outbound, none"), "{err}");
    // Connecting workers changed nothing of the host's mounts: the host's own network
    // namespaces (here the test's, mounted under /run/netns) are all still there.
    run(
        "nsenter",
        &[
            &format!("--net=/run/netns/{}", outside.namespace),
            "--",
            "true",
        ],
    );
}
