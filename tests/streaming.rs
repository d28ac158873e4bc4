//! End-to-end: response bodies stream from the function to the client as they are written
//! (a Python generator, a Node.js async iterator or stream, server-sent events), a streamed
//! response of any size passes through Gust in bounded memory, and the function's timeout
//! runs until the last byte. Request bodies stream the other way for functions deployed with
//! `--request-body stream`: the function reads the first piece while the client is still
//! sending, of any size, and a client that stalls gets 408 without spoiling the instance.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gust_harness::{Gust, GustOptions};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

const PYTHON_DRIP: &str = "\
import time
def main():
    yield 'first\\n'
    time.sleep(1)
    yield 'second\\n'
";

const NODE_DRIP: &str = "\
module.exports = async function () {
  async function* drip() {
    yield 'first\\n';
    await new Promise((resolve) => setTimeout(resolve, 1000));
    yield 'second\\n';
  }
  return { status: 200, headers: { 'content-type': 'text/plain' }, body: drip() };
};
";

/// A GET on the public listener, read by hand: the head, then the body as it arrives.
struct Streamed {
    reader: BufReader<TcpStream>,
    head: String,
}

/// A raw connection to the public listener, for requests written byte by byte; reads give up
/// after 30 s.
fn connect(gust: &Gust) -> TcpStream {
    let url = gust.public_url("/");
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

impl Streamed {
    fn get(gust: &Gust, path: &str) -> Self {
        let mut stream = connect(gust);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        Self { reader, head }
    }

    fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// The next chunk of a chunked body; `None` at its end; an error when the connection
    /// ended without the last chunk (the response was cut).
    fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut size = String::new();
        if self.reader.read_line(&mut size)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| std::io::Error::other(format!("not a chunk size: {size:?}")))?;
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data)?;
        data.truncate(size);
        Ok((size > 0).then_some(data))
    }
}

/// The first chunk arrives while the function still sleeps before its second.
fn assert_first_chunk_comes_before_the_rest(gust: &Gust, path: &str) {
    let mut response = Streamed::get(gust, path);
    assert_eq!(response.status(), 200, "{}", response.head);
    assert_eq!(
        response.header("transfer-encoding").as_deref(),
        Some("chunked")
    );
    let first = response.chunk().unwrap().unwrap();
    let first_at = Instant::now();
    assert_eq!(first, b"first\n");
    let second = response.chunk().unwrap().unwrap();
    assert_eq!(second, b"second\n");
    // Lower bound only: the function slept a second between its two chunks, so the first
    // cannot have been held back until the end.
    assert!(
        first_at.elapsed() >= Duration::from_millis(800),
        "the first chunk came only {:?} before the second",
        first_at.elapsed()
    );
    assert_eq!(response.chunk().unwrap(), None);
}

#[test]
fn a_python_generator_and_a_node_async_iterator_stream_chunk_by_chunk() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("pydrip", "python", "drip.py", PYTHON_DRIP, &[]);
    gust.deploy("nodedrip", "node", "drip.js", NODE_DRIP, &[]);
    for _ in 0..2 {
        // Cold, then warm on the same instance (a streamed response leaves it reusable).
        assert_first_chunk_comes_before_the_rest(&gust, "/pydrip");
        assert_first_chunk_comes_before_the_rest(&gust, "/nodedrip");
    }
    // HEAD says what GET would (a body of unknown length), not that the body is empty.
    for path in ["/pydrip", "/nodedrip"] {
        let head = reqwest::blocking::Client::new()
            .head(gust.public_url(path))
            .send()
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers().get("content-length"),
            None,
            "HEAD {path} announced a length: {:?}",
            head.headers()
        );
    }
    // Through the API's invoke as well.
    let output = gust.cli(&["fn", "invoke", "pydrip"]).ok();
    assert_eq!(output.stdout, "first\nsecond\n");
}

#[test]
fn server_sent_events_reach_the_client_as_they_are_produced() {
    let gust = Gust::start(GUST, GustOptions::default());
    let source = "\
import time
def main(req):
    def events():
        for n in range(3):
            yield 'id: %d\\ndata: tick %d\\n\\n' % (n, n)
            time.sleep(0.3)
    return events(), 200, {'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache'}
";
    gust.deploy("ticks", "python", "ticks.py", source, &[]);
    let mut response = Streamed::get(&gust, "/ticks");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert!(response.header("x-gust-request-id").is_some());
    for n in 0..3 {
        let event = String::from_utf8(response.chunk().unwrap().unwrap()).unwrap();
        assert_eq!(event, format!("id: {n}\ndata: tick {n}\n\n"));
    }
    assert_eq!(response.chunk().unwrap(), None);
}

/// Resident memory high-water mark of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_100_mb_streamed_response_passes_through_in_bounded_memory() {
    let gust = Gust::start(GUST, GustOptions::default());
    let source = "\
def main():
    block = b'x' * (1024 * 1024)
    return (block for _ in range(100))
";
    gust.deploy("big", "python", "big.py", source, &["--memory", "256"]);
    // Warm: the peak below is the response's, not the first start's.
    let mut warm = gust.get("/big");
    std::io::copy(&mut warm, &mut std::io::sink()).unwrap();
    let before = peak_rss_kib(gust.pid());

    let mut response = gust.get("/big");
    assert_eq!(response.status(), 200);
    let received = std::io::copy(&mut response, &mut std::io::sink()).unwrap();
    assert_eq!(received, 100 * 1024 * 1024);
    // The kernel's counters behind VmHWM are per-CPU approximations, so a peak read twice
    // can come out a few pages lower the second time.
    let grown_mib = peak_rss_kib(gust.pid()).saturating_sub(before) / 1024;
    // Buffered whole, the response alone would take 100 MiB.
    assert!(
        grown_mib < 32,
        "gust's peak memory grew by {grown_mib} MiB for a 100 MiB response"
    );
}

#[test]
fn a_response_still_streaming_at_the_timeout_is_cut_and_the_next_request_is_served() {
    let gust = Gust::start(GUST, GustOptions::default());
    let source = "\
import time
def main(req):
    if req.query.get('slow'):
        def slow():
            yield 'started\\n'
            time.sleep(30)
            yield 'never\\n'
        return slow()
    return 'quick'
";
    gust.deploy(
        "slowstream",
        "python",
        "slow.py",
        source,
        &["--timeout", "1s"],
    );
    let asked = Instant::now();
    let mut response = Streamed::get(&gust, "/slowstream?slow=1");
    assert_eq!(response.status(), 200);
    assert_eq!(response.chunk().unwrap().unwrap(), b"started\n");
    // The response ends without its last chunk: the client can tell it is incomplete.
    assert!(response.chunk().is_err(), "the response must be cut");
    assert!(asked.elapsed() < Duration::from_secs(20));
    let next = gust.get("/slowstream");
    assert_eq!(next.status(), 200);
    assert_eq!(next.text().unwrap(), "quick");
}

#[test]
fn a_wasm_component_streams_through_wasi_http() {
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
    gust.cli(&[
        "fn",
        "create",
        "pywasm",
        "--env",
        "wasm",
        "--code",
        wasm.to_str().unwrap(),
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "pywasm", "--url", "/wasmstream"])
        .ok();
    for _ in 0..2 {
        assert_first_chunk_comes_before_the_rest(&gust, "/wasmstream");
    }
    // Request bodies stream into the component through wasi:http's incoming body: one larger
    // than the buffered limit (6 MiB) arrives whole when the function takes bodies as a stream.
    gust.cli(&["fn", "update", "pywasm", "--request-body", "stream"])
        .ok();
    gust.cli(&[
        "route", "create", "--fn", "pywasm", "--url", "/upload", "--method", "POST",
    ])
    .ok();
    let answer = gust
        .http()
        .post(gust.public_url("/upload"))
        .body(vec![b'z'; 8 * 1024 * 1024])
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer.text().unwrap().starts_with("received 8388608 bytes"),
        "the component got the whole body"
    );
}

/// A client that stops reading fills the connection's buffers and the connection stops
/// asking the response for more; the function's timeout still stops its worker and frees
/// its capacity, while the client holds the connection.
#[test]
fn a_client_that_reads_nothing_does_not_keep_a_function_past_its_timeout() {
    let gust = Gust::start(GUST, GustOptions::default());
    let source = "\
def main():
    block = b'x' * 65536
    def endless():
        while True:
            yield block
    return endless()
";
    gust.deploy("endless", "python", "e.py", source, &["--timeout", "2s"]);
    let mut silent = connect(&gust);
    write!(silent, "GET /endless HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let busy = || -> u64 {
        let info: serde_json::Value = serde_json::from_str(
            &gust
                .cli(&["fn", "get", "endless", "-o", "json"])
                .ok()
                .stdout,
        )
        .unwrap();
        info["instances"]["busy"].as_u64().unwrap() + info["instances"]["idle"].as_u64().unwrap()
    };
    let started = Instant::now();
    gust_harness::eventually(Duration::from_secs(5), || (busy() == 1).then_some(()))
        .expect("the stream starts");
    let freed = gust_harness::eventually(Duration::from_secs(20), || (busy() == 0).then_some(()));
    assert!(freed.is_some(), "the worker outlived its timeout");
    // Well before the 30 s send timeout would have closed the connection.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

const PYTHON_UPLOAD: &str = "\
def main(req):
    total = 0
    for chunk in req.stream:
        if total == 0:
            print('first chunk: %s' % chunk[:20].decode('utf-8', 'replace'), flush=True)
        total += len(chunk)
    return 'received %d bytes\\n' % total
";

const NODE_UPLOAD: &str = "\
module.exports = async (context) => {
  let total = 0;
  for await (const chunk of context.request.stream) {
    if (total === 0) console.log(`first chunk: ${chunk.subarray(0, 20).toString()}`);
    total += chunk.length;
  }
  return `received ${total} bytes\\n`;
};
";

/// A POST whose chunked body is sent in two parts: `hello`, then (once `between` returns)
/// ` world` and the body's end. Returns the answer's status and body.
fn upload_in_two_parts(gust: &Gust, path: &str, between: impl FnOnce()) -> (u16, String) {
    let mut stream = connect(gust);
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    .unwrap();
    between();
    write!(stream, "6\r\n world\r\n0\r\n\r\n").unwrap();
    gust_harness::read_answer(&mut stream)
}

/// The function logs the body's first piece before the client has sent the rest: the client
/// sends the rest only once that line is in the function's logs.
fn assert_the_function_reads_while_the_client_sends(gust: &Gust, function: &str) {
    let before = gust.cli(&["fn", "logs", function]).ok().stdout;
    let seen = |logs: &str| logs.matches("first chunk: hello").count();
    let (status, body) = upload_in_two_parts(gust, &format!("/{function}"), || {
        let read = gust_harness::eventually(Duration::from_secs(15), || {
            let logs = gust.cli(&["fn", "logs", function]).ok().stdout;
            (seen(&logs) > seen(&before)).then_some(())
        });
        assert!(
            read.is_some(),
            "{function} did not get the first piece before the rest was sent"
        );
    });
    assert_eq!((status, body.as_str()), (200, "received 11 bytes\n"));
}

#[test]
fn request_bodies_reach_python_and_node_functions_as_the_client_sends_them() {
    let gust = Gust::start(GUST, GustOptions::default());
    let stream = ["--request-body", "stream"];
    gust.deploy("pyupload", "python", "up.py", PYTHON_UPLOAD, &stream);
    gust.deploy("nodeupload", "node", "up.js", NODE_UPLOAD, &stream);
    for _ in 0..2 {
        // Cold, then warm on the same instance: a body read to its end leaves it reusable.
        assert_the_function_reads_while_the_client_sends(&gust, "pyupload");
        assert_the_function_reads_while_the_client_sends(&gust, "nodeupload");
    }
    let shown = gust
        .cli(&["fn", "get", "pyupload", "-o", "json"])
        .ok()
        .stdout;
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["request_body"], "stream");

    // The same function buffered: the body arrives whole, and past the limit it is refused
    // before any instance is taken.
    gust.cli(&["fn", "update", "pyupload", "--request-body", "buffer"])
        .ok();
    let (status, body) = upload_in_two_parts(&gust, "/pyupload", || {});
    assert_eq!((status, body.as_str()), (200, "received 11 bytes\n"));
    // Refused on its declared length, before a byte of it is read (a client still writing
    // it could meet the closed connection instead of the answer, so none is sent).
    let mut stream = connect(&gust);
    write!(
        stream,
        "POST /pyupload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        7 * 1024 * 1024
    )
    .unwrap();
    let (status, body) = gust_harness::read_answer(&mut stream);
    assert_eq!(status, 413, "{body}");
}

#[test]
fn a_100_mb_request_body_streams_through_in_bounded_memory() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "bigupload",
        "python",
        "up.py",
        PYTHON_UPLOAD,
        &["--request-body", "stream"],
    );
    let small = gust
        .http()
        .post(gust.public_url("/bigupload"))
        .body("warm")
        .send()
        .unwrap();
    assert_eq!(small.text().unwrap(), "received 4 bytes\n");
    let before = peak_rss_kib(gust.pid());
    let body = vec![b'y'; 100 * 1024 * 1024];
    let answer = gust
        .http()
        .post(gust.public_url("/bigupload"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().unwrap(), "received 104857600 bytes\n");
    // See the response test above for why the difference saturates.
    let grown_mib = peak_rss_kib(gust.pid()).saturating_sub(before) / 1024;
    // Buffered whole, the body alone would take 100 MiB.
    assert!(
        grown_mib < 32,
        "gust's peak memory grew by {grown_mib} MiB for a 100 MiB request body"
    );
}

#[test]
fn a_client_that_stalls_mid_body_gets_408_and_the_next_request_is_served() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "stalled",
        "python",
        "up.py",
        PYTHON_UPLOAD,
        &["--request-body", "stream"],
    );
    let mut stream = connect(&gust);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /stalled HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    .unwrap();
    // Nothing more is sent: past the listener's pause limit (10 s) the body is given up.
    let (status, body) = gust_harness::read_answer(&mut stream);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body_too_slow"), "{body}");
    let (status, body) = upload_in_two_parts(&gust, "/stalled", || {});
    assert_eq!((status, body.as_str()), (200, "received 11 bytes\n"));
    // The stalled attempt held an instance while the function waited for the body (the
    // listener's 10 s pause limit), so it is billed for that time.
    let billed = gust_harness::eventually(Duration::from_secs(15), || {
        let usage = gust
            .cli(&["usage", "--fn", "stalled", "-o", "json"])
            .ok()
            .stdout;
        let usage: serde_json::Value = serde_json::from_str(&usage).ok()?;
        let row = usage["rows"].get(0)?.clone();
        (row["invocations"] == 2).then_some(row)
    })
    .expect("both attempts are in the usage");
    assert!(billed["billed_ms"].as_u64().unwrap() >= 9_000, "{billed}");
}

#[test]
fn a_streaming_function_serves_again_after_a_body_of_declared_length_or_none() {
    let gust = Gust::start(GUST, GustOptions::default());
    // The token is drawn when the worker loads the code: the same token means the same worker.
    let source = "\
import uuid
TOKEN = uuid.uuid4().hex
def main(req):
    return '%s %d' % (TOKEN, sum(len(c) for c in req.stream))
";
    gust.deploy(
        "reused",
        "python",
        "r.py",
        source,
        &["--request-body", "stream"],
    );
    let url = gust.public_url("/reused");
    let mut answers = Vec::new();
    for body in ["hello", "", "again"] {
        let request = if body.is_empty() {
            gust.http().get(&url)
        } else {
            gust.http().post(&url).body(body)
        };
        let answer = request.send().unwrap();
        assert_eq!(answer.status(), 200);
        let text = answer.text().unwrap();
        let (token, length) = text.split_once(' ').unwrap();
        assert_eq!(length, body.len().to_string());
        answers.push(token.to_owned());
    }
    assert!(
        answers.iter().all(|token| *token == answers[0]),
        "every request started a new worker: {answers:?}"
    );

    // A body in a transfer coding Gust cannot pass on as sent is refused, not silently
    // decoded halfway.
    let mut stream = connect(&gust);
    write!(
        stream,
        "POST /reused HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    .unwrap();
    let (status, body) = gust_harness::read_answer(&mut stream);
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("unsupported_transfer_coding"), "{body}");
}
