//! End-to-end: deploy, call, update, roll back and inspect functions through the real binary,
//! its CLI and the public listener, as a user would.

use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;
use std::time::Duration;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn fission_style_python_and_node_functions_run_unmodified() {
    let gust = Gust::start(GUST, GustOptions::default());
    let hello_py = gust.write_file("hello.py", "def main():\n    return \"Hello, world!\\n\"\n");
    gust.cli(&[
        "fn",
        "create",
        "hello",
        "--env",
        "python",
        "--code",
        hello_py.to_str().unwrap(),
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "hello", "--url", "/hello", "--method", "GET",
    ])
    .ok();
    let response = gust.get("/hello");
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!id.is_empty());
    assert_eq!(response.text().unwrap(), "Hello, world!\n");

    gust.deploy(
        "hello-node",
        "node",
        "hello.js",
        "module.exports = async function(context) { return { status: 200, body: \"hello\" }; }\n",
        &[],
    );
    let response = gust.get("/hello-node");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "hello");

    // A route restricted to GET does not answer POST: 405, naming what it answers.
    let post = gust.http().post(gust.public_url("/hello")).send().unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}

#[test]
fn requests_reach_functions_with_params_query_headers_body_and_env_vars() {
    let gust = Gust::start(GUST, GustOptions::default());
    let py = r#"
import os
def main(req):
    return {
        "method": req.method, "path": req.path, "query": req.query, "qs": req.query_string,
        "params": req.params, "agent": req.headers["X-Custom"], "body": req.json(),
        "var": os.environ.get("GREETING"),
    }
"#;
    let py_path = gust.write_file("echo/echo.py", py);
    gust.cli(&[
        "fn",
        "create",
        "echo",
        "--env",
        "python",
        "--code",
        py_path.to_str().unwrap(),
        "--env-var",
        "GREETING=hi there",
    ])
    .ok();
    gust.cli(&[
        "route",
        "create",
        "--fn",
        "echo",
        "--url",
        "/users/{id}/items/{item}",
        "--method",
        "post,put",
    ])
    .ok();
    let response = gust
        .http()
        .post(gust.public_url("/users/42/items/abc?x=1&y=two"))
        .header("X-Custom", "yes")
        .header("Content-Type", "application/json")
        .body(r#"{"n": 5}"#)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json(&response.text().unwrap());
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/users/42/items/abc");
    assert_eq!(body["query"]["y"], "two");
    assert_eq!(body["qs"], "x=1&y=two");
    assert_eq!(body["params"]["id"], "42");
    assert_eq!(body["params"]["item"], "abc");
    assert_eq!(body["agent"], "yes");
    assert_eq!(body["body"]["n"], 5);
    assert_eq!(body["var"], "hi there");

    let js = r#"
module.exports = async function(context) {
  const r = context.request;
  return { status: 201, headers: { "x-answer": "yes" },
           body: { method: r.method, params: r.params, query: r.query, body: r.body, header: r.headers["x-custom"], env: process.env.GREETING } };
};
"#;
    let js_path = gust.write_file("echo-js/index.js", js);
    gust.cli(&[
        "fn",
        "create",
        "echo-js",
        "--env",
        "node",
        "--code",
        js_path.to_str().unwrap(),
        "--env-var",
        "GREETING=hola",
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "echo-js", "--url", "/js/{name}"])
        .ok();
    let response = gust
        .http()
        .put(gust.public_url("/js/ada?lang=en"))
        .header("X-Custom", "yes")
        .header("Content-Type", "application/json")
        .body(r#"{"k": [1, 2]}"#)
        .send()
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-answer"], "yes");
    let body = json(&response.text().unwrap());
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["params"]["name"], "ada");
    assert_eq!(body["query"]["lang"], "en");
    assert_eq!(body["body"]["k"][1], 2);
    assert_eq!(body["header"], "yes");
    assert_eq!(body["env"], "hola");
}

#[test]
fn directories_and_archives_deploy_with_entrypoints() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.write_file(
        "pkg/main.py",
        "from helper import word\ndef main():\n    return word()\n",
    );
    gust.write_file(
        "pkg/helper.py",
        "def word():\n    return 'from a package'\n",
    );
    gust.write_file(
        "pkg/other.py",
        "def handler(req):\n    return ('created', 201, {'X-Kind': 'other'})\n",
    );
    let pkg = gust.scratch().join("pkg");
    gust.cli(&[
        "fn",
        "create",
        "pkg",
        "--env",
        "python",
        "--code",
        pkg.to_str().unwrap(),
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "pkg", "--url", "/pkg"])
        .ok();
    assert_eq!(gust.get("/pkg").text().unwrap(), "from a package");

    gust.cli(&[
        "fn",
        "create",
        "other",
        "--env",
        "python",
        "--code",
        pkg.to_str().unwrap(),
        "--entrypoint",
        "other.handler",
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "other", "--url", "/other"])
        .ok();
    let response = gust.get("/other");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-kind"], "other");

    // A zip archive of a Node.js package with a named export.
    let zip_path = gust.scratch().join("node.zip");
    {
        use std::io::Write;
        let file = std::fs::File::create(&zip_path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("lib/util.js", options).unwrap();
        zip.write_all(b"module.exports.shout = (s) => s.toUpperCase();\n")
            .unwrap();
        zip.start_file("api.js", options).unwrap();
        zip.write_all(b"const u = require('./lib/util');\nexports.handler = async () => ({ body: u.shout('zipped') });\n")
            .unwrap();
        zip.finish().unwrap();
    }
    gust.cli(&[
        "fn",
        "create",
        "zipped",
        "--env",
        "node",
        "--code",
        zip_path.to_str().unwrap(),
        "--entrypoint",
        "api.handler",
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "zipped", "--url", "/zipped"])
        .ok();
    assert_eq!(gust.get("/zipped").text().unwrap(), "ZIPPED");
}

#[test]
fn update_makes_revisions_and_rollback_restores_an_earlier_one() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "ver",
        "python",
        "ver.py",
        "def main():\n    return 'v1'\n",
        &[],
    );
    assert_eq!(gust.get("/ver").text().unwrap(), "v1");

    let v2 = gust.write_file("v2/ver.py", "def main():\n    return 'v2'\n");
    gust.cli(&["fn", "update", "ver", "--code", v2.to_str().unwrap()])
        .ok();
    assert_eq!(gust.get("/ver").text().unwrap(), "v2");

    // Update changes only what it is given: the timeout stays, the code stays.
    gust.cli(&["fn", "update", "ver", "--timeout", "7s"]).ok();
    assert_eq!(gust.get("/ver").text().unwrap(), "v2");
    let info = json(&gust.cli(&["fn", "get", "ver", "-o", "json"]).ok().stdout);
    assert_eq!(info["revision"], 3);
    assert_eq!(info["timeout"], "7s");

    gust.cli(&["fn", "rollback", "ver", "--to", "1"]).ok();
    assert_eq!(gust.get("/ver").text().unwrap(), "v1");
    let revisions = json(
        &gust
            .cli(&["fn", "revisions", "ver", "-o", "json"])
            .ok()
            .stdout,
    );
    assert_eq!(revisions.as_array().unwrap().len(), 4);
    assert_eq!(revisions[3]["copied_from"], 1);
    // Without --to, rollback goes to the revision before the current one.
    gust.cli(&["fn", "rollback", "ver"]).ok();
    assert_eq!(gust.get("/ver").text().unwrap(), "v2");
    let err = gust.cli(&["fn", "rollback", "ver", "--to", "99"]).failed();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn reads_print_table_json_and_yaml() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "listed",
        "python",
        "f.py",
        "def main():\n    return 'x'\n",
        &["--memory", "256"],
    );
    let table = gust.cli(&["fn", "list"]).ok().stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("listed") && table.contains("256MB"),
        "{table}"
    );
    let list = json(&gust.cli(&["fn", "list", "-o", "json"]).ok().stdout);
    assert_eq!(list[0]["name"], "listed");
    assert_eq!(list[0]["memory_mb"], 256);
    let yaml = gust.cli(&["fn", "get", "listed", "-o", "yaml"]).ok().stdout;
    assert!(yaml.contains("name: listed"), "{yaml}");
    let routes = json(&gust.cli(&["route", "list", "-o", "json"]).ok().stdout);
    assert_eq!(routes[0]["path"], "/listed");
    let envs = json(&gust.cli(&["env", "list", "-o", "json"]).ok().stdout);
    let names: Vec<&str> = envs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"python") && names.contains(&"node"),
        "{names:?}"
    );
    let env = json(
        &gust
            .cli(&["env", "get", "python", "-o", "json"])
            .ok()
            .stdout,
    );
    assert_eq!(env["pool_size"], 1);
    let wasm = json(&gust.cli(&["env", "get", "wasm", "-o", "json"]).ok().stdout);
    assert_eq!(wasm["pool_size"], 0, "components need no warm workers");
}

#[test]
fn invoke_goes_through_the_api_and_logs_carry_request_ids() {
    let gust = Gust::start(GUST, GustOptions::default());
    let py = "import sys\ndef main(req):\n    print('got', req.body.decode())\n    print('to stderr', file=sys.stderr)\n    return 'echo:' + req.body.decode() + ':' + req.method + ':' + req.headers.get('x-k', '') + ':' + req.headers.get('authorization', 'none')\n";
    let path = gust.write_file("talk/talk.py", py);
    gust.cli(&[
        "fn",
        "create",
        "talk",
        "--env",
        "python",
        "--code",
        path.to_str().unwrap(),
    ])
    .ok();

    // No route: the public listener cannot reach it (S-02), the API can.
    assert_eq!(gust.get("/talk").status(), 404);
    let out = gust
        .cli(&[
            "fn", "invoke", "talk", "--data", "ping", "--header", "X-K: v",
        ])
        .ok();
    assert_eq!(
        out.stdout, "echo:ping:POST:v:none\n",
        "the admin token never reaches the function"
    );
    let data_file = gust.write_file("payload.txt", "from-file");
    let out = gust
        .cli(&[
            "fn",
            "invoke",
            "talk",
            "--data",
            &format!("@{}", data_file.display()),
            "--method",
            "put",
        ])
        .ok();
    assert!(
        out.stdout.starts_with("echo:from-file:PUT"),
        "{}",
        out.stdout
    );

    let lines = eventually(Duration::from_secs(10), || {
        let logs = json(&gust.cli(&["fn", "logs", "talk", "-o", "json"]).ok().stdout);
        (logs.as_array().unwrap().len() >= 4).then_some(logs)
    })
    .expect("four log lines arrive");
    // stdout and stderr are read separately: order within a stream holds, not across them.
    let find = |text: &str| {
        lines
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["text"] == text)
            .unwrap_or_else(|| panic!("no line {text:?} in {lines}"))
            .clone()
    };
    let got = find("got ping");
    let first_id = got["request_id"].as_str().unwrap().to_owned();
    assert_eq!(got["stream"], "stdout");
    let err_line = find("to stderr");
    assert_eq!(err_line["stream"], "stderr");
    assert_eq!(err_line["request_id"], first_id.as_str());
    assert_ne!(find("got from-file")["request_id"], first_id.as_str());
    let only_first = json(
        &gust
            .cli(&[
                "fn",
                "logs",
                "talk",
                "--request-id",
                &first_id,
                "-o",
                "json",
            ])
            .ok()
            .stdout,
    );
    assert_eq!(only_first.as_array().unwrap().len(), 2);
    let table = gust.cli(&["fn", "logs", "talk"]).ok().stdout;
    assert!(
        table.contains(&first_id) && table.contains("got ping"),
        "{table}"
    );
}

#[test]
fn functions_and_routes_survive_restarts_and_clean_stops() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "durable",
        "python",
        "d.py",
        "def main():\n    return 'still here'\n",
        &[],
    );
    assert_eq!(gust.get("/durable").text().unwrap(), "still here");
    gust.restart(); // kill -9, then start again
    assert_eq!(gust.get("/durable").text().unwrap(), "still here");
    assert!(gust.stop(), "SIGTERM ends gust cleanly:\n{}", gust.log());
    gust.start_again();
    assert_eq!(gust.get("/durable").text().unwrap(), "still here");
    let list = json(&gust.cli(&["fn", "list", "-o", "json"]).ok().stdout);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn custom_environments_run_any_worker_protocol_server() {
    let gust = Gust::start(GUST, GustOptions::default());
    let server = r#"
import http.server, os, socket, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def go(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        body = b"ok" if self.path in ("/healthz", "/v2/specialize") else b"custom:" + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = go
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    def get_request(self):
        r, _ = super().get_request()
        return r, ("x", 0)
# The listening socket Gust hands over as a descriptor.
server = S(None, H, bind_and_activate=False)
server.socket = socket.socket(fileno=int(os.environ["GUST_LISTEN_FD"]))
server.serve_forever()
"#;
    let script = gust.write_file("env/custom_server.py", server);
    // The workers' uid must be able to read the program it is given.
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        gust.dir.path().to_path_buf(),
        gust.scratch(),
        gust.scratch().join("env"),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let command = format!("/usr/bin/python3 {}", script.display());
    let env_dir = gust.scratch().join("env");
    let env_dir = env_dir.to_str().unwrap();
    gust.cli(&[
        "env",
        "create",
        "bin",
        "--command",
        &command,
        "--pool-size",
        "1",
        "--mount",
        env_dir,
    ])
    .ok();
    let err = gust
        .cli(&["env", "create", "bin", "--command", &command])
        .failed();
    assert!(err.contains("already exists"), "{err}");
    // Mounts are explicit and never reach the host's root, its kernel views or Gust's own data
    // (not even through a link).
    let link = gust.scratch().join("sneaky");
    std::os::unix::fs::symlink(gust.data_dir(), &link).unwrap();
    let data_dir = gust.data_dir();
    for (mount, says) in [
        ("/", "whole host"),
        ("/proc", "under /proc"),
        ("/run", "under /run"),
        (data_dir.to_str().unwrap(), "Gust's own"),
        (link.to_str().unwrap(), "Gust's own"),
        (gust.dir.path().to_str().unwrap(), "Gust's own"),
    ] {
        let err = gust
            .cli(&[
                "env",
                "create",
                "nosy",
                "--command",
                &command,
                "--mount",
                mount,
            ])
            .failed();
        assert!(err.contains(says), "{mount}: {err}");
    }
    let err = gust
        .cli(&["env", "create", "nosy", "--command", "/opt/nowhere/server"])
        .failed();
    assert!(err.contains("--mount /opt/nowhere"), "{err}");
    gust.deploy("custom", "bin", "anything.txt", "data", &[]);
    assert_eq!(gust.get("/custom").text().unwrap(), "custom:/custom");

    let err = gust.cli(&["env", "delete", "bin"]).failed();
    assert!(err.contains("in use"), "{err}");
    let err = gust.cli(&["env", "delete", "python"]).failed();
    assert!(err.contains("built in"), "{err}");
    gust.cli(&["fn", "delete", "custom"]).ok();
    gust.cli(&["env", "delete", "bin"]).ok();
    assert_eq!(
        gust.get("/custom").status(),
        404,
        "the route stays; its function is gone"
    );
}

#[test]
fn idle_instances_stop_after_the_idle_timeout_and_the_pool_stays_warm() {
    let gust = Gust::start(
        GUST,
        GustOptions {
            pool_size: 1,
            extra_args: vec!["--idle-timeout".into(), "1s".into()],
            ..GustOptions::default()
        },
    );
    gust.deploy(
        "brief",
        "python",
        "b.py",
        "def main():\n    return 'b'\n",
        &[],
    );
    assert_eq!(gust.get("/brief").text().unwrap(), "b");
    let info = json(&gust.cli(&["fn", "get", "brief", "-o", "json"]).ok().stdout);
    assert_eq!(info["instances"]["idle"], 1);
    let python_workers = || gust.worker_pids("/usr/bin/python3").len();
    let busy = python_workers();
    let stopped = eventually(Duration::from_secs(15), || {
        let info = json(&gust.cli(&["fn", "get", "brief", "-o", "json"]).ok().stdout);
        (info["instances"]["idle"] == 0 && python_workers() < busy).then_some(())
    });
    assert!(stopped.is_some(), "the idle instance was not stopped");
    // The next request is served from the refilled pool.
    assert_eq!(gust.get("/brief").text().unwrap(), "b");
}

#[test]
fn logs_follow_prints_new_lines_as_they_arrive() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "chatty",
        "python",
        "c.py",
        "def main(req):\n    print('said', req.query['n'])\n    return 'ok'\n",
        &[],
    );
    let mut follower = gust.cli_spawn(&["fn", "logs", "chatty", "-f"]);
    let stdout = follower.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    for n in 1..=2 {
        let response = gust.get(&format!("/chatty?n={n}"));
        let id = response.headers()["x-gust-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let line = lines_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the follower prints the new line");
        assert!(
            line.contains(&format!("said {n}")) && line.contains(&id),
            "{line}"
        );
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[test]
fn no_sandbox_mode_runs_the_same_functions_unconfined() {
    let gust = Gust::start(
        GUST,
        GustOptions {
            pool_size: 1,
            extra_args: vec!["--no-sandbox".into()],
            ..GustOptions::default()
        },
    );
    assert!(
        gust.log().contains("--no-sandbox"),
        "the operator is warned:\n{}",
        gust.log()
    );
    gust.deploy(
        "plain",
        "python",
        "p.py",
        "def main(req):\n    return req.params.get('x', 'plain')\n",
        &[],
    );
    assert_eq!(gust.get("/plain").text().unwrap(), "plain");
    gust.deploy(
        "plain-js",
        "node",
        "p.js",
        "module.exports = async () => 'plain js';\n",
        &[],
    );
    assert_eq!(gust.get("/plain-js").text().unwrap(), "plain js");
}

#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let gust = Gust::start(GUST, GustOptions::default());
    let (reader, writer) = std::io::pipe().unwrap();
    // The reading end is closed before the command starts, as when `| head` has already
    // exited: the command's first write fails, however the processes are scheduled.
    drop(reader);
    let output = gust
        .cli_command(&["env", "list", "-o", "json"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "ended by SIGPIPE like other Unix tools: {:?}",
        output.status
    );
}
