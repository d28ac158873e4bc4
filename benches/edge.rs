//! Edge benchmark: how a normal client is answered while the public listener is flooded with
//! idle connections, against the same client on a quiet listener in the same run.
//!
//! Run with `cargo bench --bench edge` (release build). Opens 20,000 idle TCP connections from
//! 20 loopback addresses (1,000 each), keeps the ones Gust holds, and measures warm GETs to a
//! WebAssembly function before, during and after; also Gust's descriptors and resident memory.
//! The header timeout is raised to 300 s so that neither the idle connections nor the measuring
//! client's kept-alive connection are closed while the flood is being opened.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gust_harness::{Gust, GustOptions};
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;

use common::{HELLO_WASM, deploy, get, ms, print_table, rss_kib, stats, tcp_sender};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const SAMPLES: usize = 2_000;
const IDLE_CONNECTIONS: usize = 20_000;
const CLIENT_ADDRESSES: usize = 20;

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Warm GET latencies on a kept-alive connection.
fn measure(rt: &tokio::runtime::Runtime, sender: &mut SendRequest<Empty<Bytes>>) -> Vec<Duration> {
    rt.block_on(async {
        for _ in 0..100 {
            get(sender, "/hello").await;
        }
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            samples.push(get(sender, "/hello").await);
        }
        samples
    })
}

/// Opens idle connections from `CLIENT_ADDRESSES` loopback addresses; returns those Gust kept
/// open (the ones it closed at once are dropped here too) and how many it refused.
fn flood(port: u16) -> (Vec<TcpStream>, usize) {
    let remote: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut kept = Vec::new();
    let mut refused = 0;
    for i in 0..IDLE_CONNECTIONS {
        let from = Ipv4Addr::new(127, 0, 1, 1 + (i % CLIENT_ADDRESSES) as u8);
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
        if socket.connect(&remote.into()).is_err() {
            refused += 1;
            continue;
        }
        kept.push(TcpStream::from(socket));
        // Let go of what Gust has closed, so this process's descriptors stay within its limit.
        if kept.len() % 1_000 == 0 {
            std::thread::sleep(Duration::from_millis(50));
            kept.retain(|stream| {
                stream.set_nonblocking(true).unwrap();
                let mut byte = [0u8; 1];
                let open = matches!(stream.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                if !open {
                    refused += 1;
                }
                open
            });
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    kept.retain(|stream| {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let open =
            matches!(stream.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        if !open {
            refused += 1;
        }
        open
    });
    (kept, refused)
}

fn run(rt: &tokio::runtime::Runtime) {
    raise_own_descriptor_limit();
    let gust = Gust::start(
        GUST,
        GustOptions {
            extra_args: vec!["--header-timeout".into(), "300s".into()],
            ..Default::default()
        },
    );
    deploy(&gust, "hello", "wasm", "hello.wasm", HELLO_WASM);
    let pid = gust.pid();
    let (fd_quiet, rss_quiet) = (descriptors(pid), rss_kib(pid));
    // A client that was connected before the flood keeps its connection through it.
    let mut sender = rt.block_on(tcp_sender(gust.public_port));
    let quiet = stats(measure(rt, &mut sender));

    let started = Instant::now();
    let (idle, refused) = flood(gust.public_port);
    let opened_in = started.elapsed();
    let (fd_flooded, rss_flooded) = (descriptors(pid), rss_kib(pid));
    // A client arriving now: with the flood at the listener's cap it may be refused too.
    let newcomer = std::net::TcpStream::connect(("127.0.0.1", gust.public_port))
        .and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer.starts_with("HTTP/1.1 200"))
        })
        .unwrap_or(false);
    let flooded = stats(measure(rt, &mut sender));
    drop(idle);
    std::thread::sleep(Duration::from_secs(1));
    let after = stats(measure(rt, &mut rt.block_on(tcp_sender(gust.public_port))));
    let (fd_after, rss_after) = (descriptors(pid), rss_kib(pid));

    let latency = |s: &common::Stats| format!("{} / {}", ms(s.p50), ms(s.p99));
    print_table(
        &format!(
            "Edge: {IDLE_CONNECTIONS} idle connections attempted from {CLIENT_ADDRESSES} addresses: {} held, {refused} refused, in {:.1} s; a new client during the flood {}",
            IDLE_CONNECTIONS - refused,
            opened_in.as_secs_f64(),
            if newcomer {
                "was served"
            } else {
                "was refused"
            }
        ),
        vec![
            [
                format!("warm GET to wasm, p50 / p99 ({SAMPLES} requests), flooded"),
                latency(&flooded),
                format!("{} (quiet)", latency(&quiet)),
                format!(
                    "{:.2} / {:.2}",
                    flooded.p50.as_secs_f64() / quiet.p50.as_secs_f64(),
                    flooded.p99.as_secs_f64() / quiet.p99.as_secs_f64()
                ),
            ],
            [
                "warm GET after the flood closed".into(),
                latency(&after),
                format!("{} (quiet)", latency(&quiet)),
                format!("{:.2}", after.p50.as_secs_f64() / quiet.p50.as_secs_f64()),
            ],
            [
                "gust descriptors: flooded / after".into(),
                format!("{fd_flooded} / {fd_after}"),
                format!("{fd_quiet} (quiet)"),
                String::new(),
            ],
            [
                "gust RSS: flooded / after".into(),
                format!(
                    "{:.1} / {:.1} MB",
                    rss_flooded as f64 / 1024.0,
                    rss_after as f64 / 1024.0
                ),
                format!("{:.1} MB (quiet)", rss_quiet as f64 / 1024.0),
                String::new(),
            ],
        ],
    );
}

/// This process opens thousands of sockets.
fn raise_own_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    common::main_with(run);
}
