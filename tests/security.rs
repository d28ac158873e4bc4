//! End-to-end security scenarios: authentication, the public surface, the sandbox, hostile
//! uploads and hostile output.

use std::io::Write;
use std::time::Duration;

use gust_harness::reqwest::{self, Method};
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

#[test]
fn s01_every_api_route_needs_the_token() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "guarded",
        "python",
        "g.py",
        "def main():\n    return 'x'\n",
        &[],
    );
    let routes: [(Method, &str); 31] = [
        (Method::GET, "/v1/environments"),
        (Method::POST, "/v1/environments"),
        (Method::POST, "/v1/uploads"),
        (Method::GET, "/v1/environments/python"),
        (Method::DELETE, "/v1/environments/python"),
        (Method::GET, "/v1/functions"),
        (Method::POST, "/v1/functions"),
        (Method::GET, "/v1/functions/guarded"),
        (Method::PUT, "/v1/functions/guarded"),
        (Method::DELETE, "/v1/functions/guarded"),
        (Method::GET, "/v1/functions/guarded/revisions"),
        (Method::POST, "/v1/functions/guarded/rollback"),
        (Method::POST, "/v1/functions/guarded/invoke"),
        (Method::GET, "/v1/functions/guarded/logs"),
        (Method::GET, "/v1/routes"),
        (Method::DELETE, "/v1/routes/guarded"),
        (Method::POST, "/v1/functions/guarded/invoke?async=true"),
        (Method::GET, "/v1/invocations/0123abcd"),
        (Method::GET, "/v1/dlq"),
        (Method::GET, "/v1/dlq/0123abcd"),
        (Method::POST, "/v1/dlq/redrive"),
        (Method::POST, "/v1/dlq/purge"),
        (Method::GET, "/v1/timers"),
        (Method::POST, "/v1/timers"),
        (Method::GET, "/v1/timers/t"),
        (Method::DELETE, "/v1/timers/t"),
        (Method::GET, "/v1/mqtriggers"),
        (Method::POST, "/v1/mqtriggers"),
        (Method::GET, "/v1/mqtriggers/t"),
        (Method::DELETE, "/v1/mqtriggers/t"),
        (Method::GET, "/v1/no-such-thing"),
    ];
    for (method, path) in routes {
        let url = format!("{}{path}", gust.api_url());
        let anonymous = gust.http().request(method.clone(), &url).send().unwrap();
        assert_eq!(anonymous.status(), 401, "{method} {path} without a token");
        let body: Value = serde_json::from_str(&anonymous.text().unwrap()).unwrap();
        assert_eq!(body["reason"], "unauthorized");
        let wrong = gust
            .http()
            .request(method.clone(), &url)
            .bearer_auth("wrong")
            .send()
            .unwrap();
        assert_eq!(wrong.status(), 401, "{method} {path} with a wrong token");
    }
    // The scheme's name is case-insensitive; the token is not.
    for (header, status) in [
        (format!("bearer {}", gust.token()), 200),
        (format!("BEARER {}", gust.token()), 200),
        (format!("Bearer {}", gust.token().to_uppercase()), 401),
        (format!("Basic {}", gust.token()), 401),
        (gust.token(), 401),
    ] {
        let response = gust
            .http()
            .get(format!("{}/v1/functions", gust.api_url()))
            .header("authorization", header.as_str())
            .send()
            .unwrap();
        assert_eq!(response.status(), status, "{header}");
    }
    // The function and its route are untouched by all of that.
    assert_eq!(gust.get("/guarded").text().unwrap(), "x");
    for open in ["/healthz", "/readyz", "/v1/openapi.json"] {
        let response = gust
            .http()
            .get(format!("{}{open}", gust.api_url()))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{open}");
    }
    let spec: Value = gust.openapi();
    for path in [
        "/v1/functions/{name}/invoke",
        "/v1/invocations/{id}",
        "/v1/dlq",
        "/v1/dlq/redrive",
        "/v1/timers",
        "/v1/mqtriggers",
        "/v1/mqtriggers/{name}",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    // The token file is readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(gust.data_dir().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn s02_s09_the_public_listener_serves_declared_routes_only_within_limits() {
    let gust = Gust::start(GUST, GustOptions::default());
    let py = "def main(req):\n    return str(len(req.body))\n";
    let path = gust.write_file("hidden/h.py", py);
    gust.cli(&[
        "fn",
        "create",
        "hidden",
        "--env",
        "python",
        "--code",
        path.to_str().unwrap(),
    ])
    .ok();
    for probe in [
        "/hidden",
        "/v1/functions/hidden/invoke",
        "/healthz",
        "/v2/specialize",
        "/_gust/x",
        "/metrics",
    ] {
        let response = gust.http().post(gust.public_url(probe)).send().unwrap();
        assert_eq!(response.status(), 404, "{probe}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["reason"], "no_route");
    }
    gust.cli(&[
        "route", "create", "--fn", "hidden", "--url", "/", "--prefix",
    ])
    .ok();
    // Reserved paths stay unreachable even under a catch-all route.
    for probe in ["/healthz", "/v2/specialize", "/_gust/x"] {
        assert_eq!(
            gust.http()
                .post(gust.public_url(probe))
                .send()
                .unwrap()
                .status(),
            404,
            "{probe}"
        );
    }
    let ok = gust
        .http()
        .post(gust.public_url("/any/path"))
        .body(vec![b'a'; 1000])
        .send()
        .unwrap();
    assert_eq!(ok.text().unwrap(), "1000");

    // A declared length over the limit is refused before a byte of the body is sent.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gust.public_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /any HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        7 * 1024 * 1024
    )
    .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    // Chunked, without a declared length: refused once the limit is crossed.
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 1024 * 1024]));
    let streamed = gust
        .http()
        .post(gust.public_url("/any"))
        .body(reqwest::blocking::Body::new(ChunkReader::new(chunks)))
        .send();
    if let Ok(response) = streamed {
        assert_eq!(response.status(), 413);
    }
}

/// Feeds chunks to a request body without a Content-Length.
struct ChunkReader<I> {
    chunks: I,
    current: std::io::Cursor<Vec<u8>>,
}

impl<I> ChunkReader<I> {
    fn new(chunks: I) -> Self {
        Self {
            chunks,
            current: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl<I: Iterator<Item = std::io::Result<Vec<u8>>>> std::io::Read for ChunkReader<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.chunks.next() {
                Some(chunk) => self.current = std::io::Cursor::new(chunk?),
                None => return Ok(0),
            }
        }
    }
}

#[test]
fn s03_s06_a_function_sees_only_its_own_code_env_and_tmp() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "neighbour",
        "python",
        "neighbour_code.py",
        "def main():\n    return 'n'\n",
        &["--env-var", "NEIGHBOUR_SECRET=n-secret"],
    );
    assert_eq!(gust.get("/neighbour").text().unwrap(), "n");
    let data_dir = gust.data_dir().to_string_lossy().into_owned();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let py = format!(
        r#"
import os, json, socket, urllib.request
def walk(top):
    found = []
    for root, dirs, files in os.walk(top):
        found += [os.path.join(root, f) for f in files]
    return found
def attempt(fn):
    try:
        return "READ " + str(fn())[:200]
    except Exception as e:
        return "DENIED " + type(e).__name__
def main(req):
    open("/tmp/mine", "w").write("private")
    return {{
        "uid": os.getuid(),
        "env": dict(os.environ),
        "code": sorted(os.listdir("/code")),
        "tmp": sorted(os.listdir("/tmp")),
        "root": sorted(os.listdir("/")),
        "token": attempt(lambda: open("{data_dir}/admin.token").read()),
        "data": attempt(lambda: os.listdir("{data_dir}")),
        "home": attempt(lambda: os.listdir("{home}")),
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "neighbour": [p for p in walk("/") if "neighbour_code" in p] if False else attempt(lambda: [p for p in walk("/code") + walk("/tmp") + walk("/run") if "neighbour" in p]),
        "api": attempt(lambda: urllib.request.urlopen("http://127.0.0.1:{api}/v1/functions").read()),
        "metrics": attempt(lambda: urllib.request.urlopen("http://127.0.0.1:{api}/metrics").read()),
        "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
    }}
"#,
        api = gust.api_port
    );
    gust.deploy(
        "snoop",
        "python",
        "snoop.py",
        &py,
        &["--env-var", "MINE=mine"],
    );
    let response = gust.get("/snoop");
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().unwrap();
    assert_ne!(seen["uid"], 0, "workers never run as root");
    let env = seen["env"].as_object().unwrap();
    assert_eq!(env["MINE"], "mine");
    assert!(!env.contains_key("NEIGHBOUR_SECRET"));
    assert!(
        !env.contains_key("XDG_CONFIG_HOME"),
        "nothing inherited from gust up: {env:?}"
    );
    assert!(
        env.keys().all(|k| [
            "MINE",
            "GUST_LISTEN_FD",
            "PATH",
            "HOME",
            "TMPDIR",
            "LANG",
            "PWD",
            "PYTHONUNBUFFERED",
            "PYTHONDONTWRITEBYTECODE"
        ]
        .contains(&k.as_str())),
        "{env:?}"
    );
    assert_eq!(seen["code"], serde_json::json!(["snoop.py"]));
    assert_eq!(seen["tmp"], serde_json::json!(["mine"]));
    for denied in ["token", "data", "home", "shadow"] {
        assert!(
            seen[denied].as_str().unwrap().starts_with("DENIED"),
            "{denied}: {}",
            seen[denied]
        );
    }
    assert_eq!(seen["neighbour"], "READ []");
    // The API on the host's loopback is out of reach: the worker's loopback is its own.
    assert!(
        seen["api"].as_str().unwrap().starts_with("DENIED"),
        "{}",
        seen["api"]
    );
    assert!(
        seen["metrics"].as_str().unwrap().starts_with("DENIED"),
        "{}",
        seen["metrics"]
    );
    assert!(
        seen["processes"].as_array().unwrap().len() <= 3,
        "own pid namespace: {}",
        seen["processes"]
    );
    let root: Vec<&str> = seen["root"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        !root.contains(&"root") && !root.contains(&"home") && !root.contains(&"work"),
        "{root:?}"
    );
}

#[test]
fn s13_forged_headers_and_log_fields_never_pass_for_the_platform() {
    let gust = Gust::start(GUST, GustOptions::default());
    let py = "import json\ndef main(req):\n    print('\\x1b[31mred\\x1b[0m request_id=forged stream=stderr\\nsecond')\n    return (json.dumps(dict(req.headers.items())), 200, {'X-Gust-Request-Id': 'forged-by-fn', 'X-Gust-Error': 'nope'})\n";
    gust.deploy("forge", "python", "f.py", py, &[]);
    gust.cli(&[
        "route",
        "create",
        "--fn",
        "forge",
        "--url",
        "/forge/{id}",
        "--name",
        "forge-param",
    ])
    .ok();
    let response = gust
        .http()
        .get(gust.public_url("/forge/real"))
        .header("X-Gust-Request-Id", "forged")
        .header("X-Gust-Param-id", "forged")
        .header("X-Gust-Params", "{\"id\": \"forged\"}")
        .header("X-Gust-Timer", "forged")
        .header("X-Gust-Attempt", "99")
        .header("X-Forwarded-For", "6.6.6.6")
        .send()
        .unwrap();
    let id = response.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "forged-by-fn");
    assert!(response.headers().get("x-gust-error").is_none());
    let headers: Value = response.json().unwrap();
    assert_eq!(headers["x-gust-request-id"], id.as_str());
    assert_eq!(headers["x-gust-param-id"], "real");
    assert_eq!(headers["x-gust-params"], "{\"id\":\"real\"}");
    assert!(headers.get("x-gust-timer").is_none() && headers.get("x-gust-attempt").is_none());
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");

    let lines = eventually(Duration::from_secs(10), || {
        let logs: Value =
            serde_json::from_str(&gust.cli(&["fn", "logs", "forge", "-o", "json"]).ok().stdout)
                .ok()?;
        (logs.as_array()?.len() >= 2).then_some(logs)
    })
    .expect("the function's output is logged");
    assert_eq!(
        lines[0]["text"],
        "\\x1b[31mred\\x1b[0m request_id=forged stream=stderr"
    );
    assert_eq!(lines[0]["stream"], "stdout");
    assert_eq!(lines[0]["request_id"], id.as_str());
    assert_eq!(lines[1]["text"], "second");
    let table = gust.cli(&["fn", "logs", "forge"]).ok().stdout;
    assert!(!table.contains('\x1b'), "no raw escape reaches a terminal");
}

fn tar_gz_with(entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    entries(&mut builder);
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    link: Option<&str>,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    let name = &mut header.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(link) = link {
        let linkname = &mut header.as_old_mut().linkname;
        linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

#[test]
fn s10_hostile_archives_are_rejected_with_a_clear_error_and_nothing_stored() {
    let gust = Gust::start(GUST, GustOptions::default());
    let escape_marker = gust.dir.path().join("escaped.txt");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot.tar.gz",
            tar_gz_with(|b| raw_entry(b, tar::EntryType::Regular, "../../escaped.txt", None, b"x")),
            "'..'",
        ),
        (
            "abs.tar.gz",
            tar_gz_with(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Regular,
                    &escape_marker.to_string_lossy(),
                    None,
                    b"x",
                )
            }),
            "absolute",
        ),
        (
            "symlink.tar.gz",
            tar_gz_with(|b| {
                raw_entry(b, tar::EntryType::Symlink, "link", Some("/etc/shadow"), b"")
            }),
            "outside",
        ),
        (
            "hardlink.tar.gz",
            tar_gz_with(|b| raw_entry(b, tar::EntryType::Link, "hard", Some("/etc/shadow"), b"")),
            "hard link",
        ),
        (
            "device.tar.gz",
            tar_gz_with(|b| raw_entry(b, tar::EntryType::Block, "sda", None, b"")),
            "block device",
        ),
        (
            "fifo.tar.gz",
            tar_gz_with(|b| raw_entry(b, tar::EntryType::Fifo, "pipe", None, b"")),
            "fifo",
        ),
        (
            "many.tar.gz",
            tar_gz_with(|b| {
                for i in 0..10_001 {
                    raw_entry(b, tar::EntryType::Regular, &format!("f{i}"), None, b"");
                }
            }),
            "more than 10000 files",
        ),
        (
            "bomb.zip",
            {
                let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .large_file(true);
                zip.start_file("zeros", options).unwrap();
                let block = vec![0u8; 1024 * 1024];
                for _ in 0..300 {
                    zip.write_all(&block).unwrap();
                }
                zip.finish().unwrap().into_inner()
            },
            "more than 268435456 bytes",
        ),
        (
            "slip.zip",
            {
                let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                zip.start_file(
                    "../../escaped.txt",
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
                zip.write_all(b"x").unwrap();
                zip.finish().unwrap().into_inner()
            },
            "'..'",
        ),
        ("garbage.zip", b"PK\x03\x04 not really".to_vec(), "zip"),
    ];
    for (name, bytes, expected) in cases {
        let path = gust.write_file(name, bytes);
        let err = gust
            .cli(&[
                "fn",
                "create",
                "hostile",
                "--env",
                "python",
                "--code",
                path.to_str().unwrap(),
            ])
            .failed();
        assert!(err.contains(expected), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    }
    assert!(!escape_marker.exists());
    assert!(!gust.dir.path().join("escaped.txt").exists());
    let list: Value =
        serde_json::from_str(&gust.cli(&["fn", "list", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(list, serde_json::json!([]));
    let code_dir = gust.data_dir().join("code");
    let stored: Vec<_> = std::fs::read_dir(&code_dir).unwrap().collect();
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
}
