//! S-19 through the real binary: WebAssembly guests that loop until their timeout must not
//! hold up the API, the public router or another function. A test binary of its own, so that
//! no other test's Gust competes for the machine while it measures.

use std::time::Duration;

use gust_harness::{Gust, GustOptions, eventually};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/components/probe.wasm");

fn deploy_probe(gust: &Gust, name: &str, extra: &[&str]) {
    gust.deploy_path(name, "wasm", PROBE, extra);
}

/// S-19: guests that loop until their timeout, as many as a client can send, must not hold up
/// the API, the public router or another function. The figures in the assertions are bounds
/// far above what an idle Gust takes (a few milliseconds) and below what the same load cost
/// when guests ran on Gust's own threads (0.5 s for the API, 2.1 s for another function).
#[test]
fn s19_looping_guests_leave_the_api_the_router_and_other_functions_answering() {
    use std::io::Write;
    let gust = Gust::start(GUST, GustOptions::default());
    deploy_probe(&gust, "spinner", &["--timeout", "20s"]);
    deploy_probe(&gust, "bystander", &[]);
    assert_eq!(gust.get("/bystander").status(), 200);
    // 150 looping requests, each on its own connection, never read.
    let spinning: Vec<std::net::TcpStream> = (0..150)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", gust.public_port)).unwrap();
            stream
                .write_all(b"GET /spinner/loop HTTP/1.1\r\nHost: gust\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    let busy = eventually(Duration::from_secs(10), || {
        let metrics = gust.metrics();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("gust_function_instances{")
                    && l.contains("spinner")
                    && l.contains("busy")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|busy| *busy >= 100.0)
    });
    assert!(busy.is_some(), "the looping guests did not start");
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let timed = |send: &dyn Fn() -> u16| {
        let started = std::time::Instant::now();
        assert_eq!(send(), 200);
        started.elapsed()
    };
    let api: Vec<Duration> = (0..7)
        .map(|_| {
            timed(&|| {
                gust.api(gust_harness::reqwest::Method::GET, "/healthz")
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let other: Vec<Duration> = (0..7)
        .map(|_| timed(&|| gust.get("/bystander").status().as_u16()))
        .collect();
    drop(spinning);
    let (api, other) = (median(api), median(other));
    assert!(
        api < Duration::from_millis(300),
        "API /healthz took {api:?}"
    );
    assert!(
        other < Duration::from_millis(500),
        "another function took {other:?}"
    );
}
