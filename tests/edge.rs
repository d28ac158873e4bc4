//! End-to-end scenarios of hostile or careless clients at Gust's edge: idle and half-open
//! connections past the caps (R-50), bodies that exhaust memory or never arrive, requests a
//! worker cannot take (S-18), an asynchronous route flooded past its queue (R-51), and SIGTERM
//! during keep-alive load (R-54).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gust_harness::{Gust, GustOptions};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

fn options(extra: &[&str]) -> GustOptions {
    GustOptions {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..GustOptions::default()
    }
}

/// A TCP connection to the public listener from the loopback address `from`.
fn connect_from(gust: &Gust, from: [u8; 4]) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = (std::net::Ipv4Addr::from(from), 0).into();
    socket.bind(&local.into()).unwrap();
    let remote: SocketAddr = ([127, 0, 0, 1], gust.public_port).into();
    socket.connect(&remote.into()).unwrap();
    socket.into()
}

/// Whether Gust has closed `stream` (end of stream or reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A Python function answering "hi" at `/hello`, checked once.
fn deploy_hello(gust: &Gust) {
    gust.deploy(
        "hello",
        "python",
        "h.py",
        "def main():\n    return 'hi'\n",
        &[],
    );
    assert_eq!(gust.get("/hello").text().unwrap(), "hi");
}

/// Sends a request head (and `body`) on `stream` and reads the answer's status and body.
fn exchange(stream: &mut TcpStream, head: &str, body: &[u8]) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    gust_harness::read_answer(stream)
}

#[test]
fn r50_idle_connections_past_the_caps_are_closed_and_other_clients_are_served() {
    let gust = Gust::start(
        GUST,
        options(&[
            "--max-connections-per-client",
            "100",
            // Long enough that opening and checking a thousand connections on a busy machine
            // ends well within it; short enough to wait for below.
            "--header-timeout",
            "12s",
        ]),
    );
    deploy_hello(&gust);
    let baseline = open_descriptors(gust.pid());

    // A thousand connections from one address that never send a byte.
    let mut idle: Vec<TcpStream> = (0..1_000)
        .map(|_| connect_from(&gust, [127, 0, 0, 2]))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (closed, open): (Vec<_>, Vec<_>) = idle
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(20)))
        .partition(|closed| *closed);
    assert_eq!(open.len(), 100, "one client holds at most its cap");
    assert_eq!(closed.len(), 900);
    // Another client is served meanwhile, and Gust holds no descriptor per refused connection.
    assert_eq!(gust.get("/hello").text().unwrap(), "hi");
    let during = open_descriptors(gust.pid());
    assert!(
        during < baseline + 150,
        "{during} descriptors, {baseline} before"
    );

    // The header deadline ends the idle ones.
    let started = Instant::now();
    for stream in &mut idle {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        assert!(
            closed_within(stream, left.max(Duration::from_millis(1))),
            "an idle connection outlived the header deadline"
        );
    }
    // A connection that starts a header and never finishes it ends the same way, unanswered
    // or with 408.
    let mut slow = connect_from(&gust, [127, 0, 0, 3]);
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(20)) || {
            let mut rest = String::new();
            let _ = slow.read_to_string(&mut rest);
            rest.contains("408")
        }
    );
    assert_eq!(gust.get("/hello").text().unwrap(), "hi");
}

#[test]
fn bodies_in_flight_share_a_memory_budget_and_a_stalled_body_is_refused() {
    let gust = Gust::start(GUST, options(&["--body-memory", "8"]));
    gust.deploy(
        "size",
        "python",
        "s.py",
        "def main(req):\n    return str(len(req.body))\n",
        &[],
    );
    let head = |len: usize| {
        format!(
            "POST /size HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    // Declaring a length takes nothing: many idle declarations leave room for everyone.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = connect_from(&gust, [127, 0, 0, 2]);
            stream.write_all(head(6 << 20).as_bytes()).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut small = connect_from(&gust, [127, 0, 0, 1]);
    assert_eq!(
        exchange(&mut small, &head(5), b"hello"),
        (200, "5".to_owned())
    );
    drop(idle);
    // Two bodies that stop after 3.5 MB hold 7 MB of the 8 that have arrived.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = connect_from(&gust, [127, 0, 0, 3]);
            stream.write_all(head(6 << 20).as_bytes()).unwrap();
            stream.write_all(&vec![b'a'; 7 << 19]).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut third = connect_from(&gust, [127, 0, 0, 1]);
    let (status, body) = exchange(&mut third, &head(2 << 20), &vec![b'c'; 2 << 20]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("body_memory_exhausted"), "{body}");
    // A stalled body is refused once its pause passes the limit, and gives its memory back.
    let (status, body) = exchange(&mut held[0], "", &[]);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body_too_slow"), "{body}");
    drop(held);
    let mut again = connect_from(&gust, [127, 0, 0, 1]);
    let (status, body) = exchange(&mut again, &head(3 << 20), &vec![b'b'; 3 << 20]);
    assert_eq!((status, body.as_str()), (200, "3145728"));
}

#[test]
fn unread_responses_take_no_body_memory_and_are_cut_at_the_send_timeout() {
    let gust = Gust::start(
        GUST,
        options(&["--body-memory", "16", "--send-timeout", "2s"]),
    );
    gust.deploy(
        "big",
        "python",
        "b.py",
        "def main():\n    return b'A' * 6_000_000\n",
        &["--concurrency", "4"],
    );
    let get = "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Two clients that ask and never read: their responses wait in the function's workers
    // (backpressure), not in Gust's memory.
    let mut unread: Vec<TcpStream> = (0..2)
        .map(|_| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let remote: SocketAddr = ([127, 0, 0, 1], gust.public_port).into();
            socket.connect(&remote.into()).unwrap();
            let mut stream: TcpStream = socket.into();
            stream.write_all(get.as_bytes()).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1_000));
    // Buffered, the two would hold 12 of the 16 MB and a third 6 MB response would not fit.
    let mut third = connect_from(&gust, [127, 0, 0, 1]);
    let (status, body) = exchange(&mut third, get, &[]);
    assert_eq!((status, body.len()), (200, 6_000_000));
    // Past the send timeout (2 s without taking anything) Gust closes them: when they read at
    // last, they get part of the response, then the end.
    std::thread::sleep(Duration::from_secs(4));
    for stream in &mut unread {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        assert!(received.len() < 6_000_000, "{} bytes", received.len());
    }
    let mut fourth = connect_from(&gust, [127, 0, 0, 1]);
    let (status, body) = exchange(&mut fourth, get, &[]);
    assert_eq!((status, body.len()), (200, 6_000_000));
}

#[test]
fn s18_oversized_headers_and_unknown_methods_never_cost_a_warm_worker() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "pid-py",
        "python",
        "p.py",
        "import os\ndef main():\n    return str(os.getpid())\n",
        &[],
    );
    gust.deploy(
        "pid-js",
        "node",
        "p.js",
        "module.exports = async () => ({ body: String(process.pid) });\n",
        &[],
    );
    for name in ["pid-py", "pid-js"] {
        let warm = gust.get(&format!("/{name}")).text().unwrap();
        let big = "a".repeat(20 * 1024);
        let huge = "a".repeat(70 * 1024);
        for (head, expected) in [
            (
                format!(
                    "GET /{name} HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
                ),
                431,
            ),
            (
                format!(
                    "GET /{name} HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n"
                ),
                431,
            ),
            (
                format!("FOO /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                405,
            ),
            (
                format!("get /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                405,
            ),
            (
                format!("PROPFIND /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                405,
            ),
        ] {
            let mut stream = connect_from(&gust, [127, 0, 0, 1]);
            let (status, _) = exchange(&mut stream, &head, &[]);
            assert_eq!(status, expected, "{name}: {}", &head[..40]);
        }
        // What the router lets through, with the headers Gust adds (a copy of a long Host
        // among them), is within what the worker servers take: the warm worker answers.
        let fields = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
        let long_host = "h".repeat(8_000);
        let long_value = "v".repeat(6_000);
        for (headers, expected) in [
            (fields(60), 200),
            (format!("X-A: {long_value}\r\n"), 200),
            (fields(70), 431),
        ] {
            let host = if expected == 200 && headers.starts_with("X-A") {
                long_host.as_str()
            } else {
                "x"
            };
            let mut stream = connect_from(&gust, [127, 0, 0, 1]);
            let (status, body) = exchange(
                &mut stream,
                &format!(
                    "GET /{name} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
                ),
                &[],
            );
            assert_eq!(status, expected, "{name}: {body}");
            if expected == 200 {
                assert_eq!(body, warm, "{name} was restarted");
            }
        }
        assert_eq!(
            gust.get(&format!("/{name}")).text().unwrap(),
            warm,
            "{name} was restarted"
        );
    }
}

#[test]
fn r51_an_async_route_flooded_past_its_queue_answers_429_and_stores_nothing_more() {
    let gust = Gust::start(
        GUST,
        options(&["--async-queue-depth", "20", "--async-store-budget", "2"]),
    );
    let slow = "import time\ndef main():\n    time.sleep(30)\n    return 'late'\n";
    for name in ["flood", "bulky"] {
        let path = gust.write_file(&format!("{name}/f.py"), slow);
        gust.cli(&[
            "fn",
            "create",
            name,
            "--env",
            "python",
            "--code",
            path.to_str().unwrap(),
            "--timeout",
            "60s",
        ])
        .ok();
        gust.cli(&[
            "route",
            "create",
            "--fn",
            name,
            "--url",
            &format!("/{name}"),
            "--async",
        ])
        .ok();
    }
    // The function's depth: 20 waiting or running, then 429 with a reason.
    let mut accepted = 0;
    let mut refused = Vec::new();
    for _ in 0..40 {
        let response = gust
            .http()
            .post(gust.public_url("/flood"))
            .body("x")
            .send()
            .unwrap();
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => refused.push(response),
            other => panic!("status {other}"),
        }
    }
    assert_eq!(accepted, 20);
    assert_eq!(refused.len(), 20);
    let first = refused.remove(0);
    assert!(first.headers().contains_key("retry-after"));
    let body: Value = first.json().unwrap();
    assert_eq!(body["reason"], "async_queue_full", "{body}");
    // The store's byte budget (2 MB): 250 KB requests stop fitting after a few.
    let mut bulky_accepted = 0;
    let mut last = None;
    for _ in 0..12 {
        let response = gust
            .http()
            .post(gust.public_url("/bulky"))
            .body(vec![b'z'; 250 * 1024])
            .send()
            .unwrap();
        match response.status().as_u16() {
            202 => bulky_accepted += 1,
            429 => last = Some(response.json::<Value>().unwrap()),
            other => panic!("status {other}"),
        }
    }
    assert!(
        (4..12).contains(&bulky_accepted),
        "{bulky_accepted} accepted"
    );
    assert_eq!(
        last.expect("some were refused")["reason"],
        "async_store_full"
    );
    let metrics = gust.metrics();
    assert!(
        metrics.contains(r#"gust_async_refused_total{reason="function_depth"} 20"#),
        "{metrics}"
    );
}

#[test]
fn r54_sigterm_during_keep_alive_load_answers_every_request_it_read() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "steady",
        "python",
        "s.py",
        "import time\ndef main():\n    time.sleep(0.05)\n    return 'ok'\n",
        &["--concurrency", "8"],
    );
    assert_eq!(gust.get("/steady").text().unwrap(), "ok");
    let answered = AtomicUsize::new(0);
    let failed_after_read = AtomicUsize::new(0);
    let url = gust.public_url("/steady");
    let pid = gust.pid();
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                let client = gust_harness::reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(40))
                    .build()
                    .unwrap();
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(4) {
                    match client.get(&url).send() {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let text = response.text();
                            if status == 200 && text.is_ok_and(|t| t == "ok") {
                                answered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // Gust read the request and answered it with an error.
                                failed_after_read.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Refused or closed before Gust read the request: the listener is
                        // gone, which a client retries elsewhere.
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1_500));
        // SAFETY: kill with the pid of our own child and a valid signal.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    });
    assert!(gust.stop(), "gust stops cleanly:\n{}", gust.log());
    assert_eq!(failed_after_read.load(Ordering::Relaxed), 0);
    let answered = answered.load(Ordering::Relaxed);
    assert!(answered > 10, "{answered} answered before the stop");
    // Every request Gust read was invoked and answered: its usage records (flushed at a clean
    // stop) count exactly the answers the clients got, plus the warm-up.
    gust.start_again();
    let records: Value = gust
        .api(
            gust_harness::reqwest::Method::GET,
            "/v1/usage/records?function=steady&limit=10000",
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let records = records.as_array().expect("a list of records").len();
    assert_eq!(records, answered + 1, "usage records against answers");
}

#[test]
fn at_the_connection_cap_a_newcomer_takes_the_place_of_the_connection_idle_the_longest() {
    let gust = Gust::start(
        GUST,
        options(&[
            "--max-connections",
            "200",
            "--max-connections-per-client",
            "150",
            "--header-timeout",
            "60s",
        ]),
    );
    deploy_hello(&gust);
    gust.deploy(
        "slow",
        "python",
        "s.py",
        "import time\ndef main():\n    time.sleep(2)\n    return 'done'\n",
        &[],
    );
    // Two addresses fill the listener with connections that never send a byte; past the cap
    // each new one takes the place of the oldest.
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|i| connect_from(&gust, [127, 0, 0, 2 + (i % 2) as u8]))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // A newcomer is served, not refused.
    let mut newcomer = connect_from(&gust, [127, 0, 0, 4]);
    let (status, body) = exchange(
        &mut newcomer,
        "GET /hello HTTP/1.1\r\nHost: gust\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!((status, body.as_str()), (200, "hi"));
    // The oldest idle connections made room; the newest are still open.
    assert!(closed_within(&mut idle[0], Duration::from_secs(2)));
    assert!(!closed_within(
        idle.last_mut().unwrap(),
        Duration::from_millis(200)
    ));
    // A connection whose request is in flight is never the one evicted.
    let mut busy = connect_from(&gust, [127, 0, 0, 5]);
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: gust\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..250 {
        idle.push(connect_from(&gust, [127, 0, 0, 6]));
    }
    busy.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (status, body) = gust_harness::read_answer(&mut busy);
    assert_eq!(
        (status, body.as_str()),
        (200, "done"),
        "a request in flight lost its connection"
    );
    // And newcomers are still served.
    let mut later = connect_from(&gust, [127, 0, 0, 7]);
    assert_eq!(kept_alive_get(&mut later, "/hello"), 200);
}

/// One GET on a kept-alive connection; reads exactly one answer (by its Content-Length) and
/// returns its status, 0 if the connection was closed.
fn kept_alive_get(stream: &mut TcpStream, path: &str) -> u16 {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    if write!(stream, "GET {path} HTTP/1.1\r\nHost: gust\r\n\r\n").is_err() {
        return 0;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return 0,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if stream.read_exact(&mut body).is_err() {
        return 0;
    }
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Peak resident memory of a process so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

#[test]
fn a_large_code_upload_goes_to_disk_as_it_arrives() {
    let gust = Gust::start(GUST, GustOptions::default());
    // A function beside 100 MB that do not compress.
    let entry = gust.write_file("big/main.py", "def main():\n    return 'big'\n");
    let dir = entry.parent().unwrap().to_owned();
    let mut blob = std::fs::File::create(dir.join("blob.bin")).unwrap();
    let mut random = std::fs::File::open("/dev/urandom").unwrap().take(100 << 20);
    std::io::copy(&mut random, &mut blob).unwrap();
    drop(blob);
    // A plain tar, as a user would upload one: the CLI sends an archive file as it is.
    let archive = gust.scratch().join("big.tar");
    let packed = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(packed.success());
    let before = peak_rss(gust.pid());
    gust.cli(&[
        "fn",
        "create",
        "big",
        "--env",
        "python",
        "--code",
        archive.to_str().unwrap(),
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "big", "--url", "/big"])
        .ok();
    assert_eq!(gust.get("/big").text().unwrap(), "big");
    let grew = peak_rss(gust.pid()).saturating_sub(before);
    assert!(
        grew < 48 << 20,
        "receiving 100 MB of code raised Gust's peak memory by {} MB",
        grew >> 20
    );
    // The received upload was used up; nothing of it waits on disk.
    let waiting: Vec<_> = std::fs::read_dir(gust.data_dir().join("code"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("upload"))
        .collect();
    assert!(waiting.is_empty(), "{waiting:?}");
    // An upload larger than the limit, or naming no upload, is refused with a reason.
    let err = gust
        .api(gust_harness::reqwest::Method::POST, "/v1/functions")
        .json(&serde_json::json!({
            "name": "ghost", "env": "python",
            "code": {"filename": "f.py", "upload": "00ff"}
        }))
        .send()
        .unwrap();
    assert_eq!(err.status(), 404);
}
