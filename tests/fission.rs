//! End-to-end: what a Fission user brings on day one, through the real binary. Routes written
//! the way Fission (gorilla/mux) writes them, request metadata under Fission's header names,
//! `fn create --url`, and the rough edges a new user met (decoded path parameters, `HEAD`,
//! `405`, `gust version`, what `fn get` and `fn revisions` say).

use gust_harness::{Gust, GustOptions};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Answers with what it was asked: method, parameters, and the headers Fission's
/// environments read.
const ECHO_PY: &str = r#"
def main(req):
    fission = {k: v for k, v in req.headers.items() if k.startswith("x-fission-")}
    return {"method": req.method, "params": req.params, "fission": fission}
"#;

#[test]
fn routes_take_fission_patterns_and_requests_carry_fission_metadata() {
    let gust = Gust::start(GUST, GustOptions::default());
    let code = gust.write_file("echo/echo.py", ECHO_PY);
    // One step, as `fission fn create --url` does: the function and its route.
    let out = gust
        .create_function(
            "items",
            "python",
            &code,
            &["--url", "/items/{id:[0-9]+}", "--method", "GET"],
        )
        .ok();
    assert!(out.stderr.contains("route items created"), "{}", out.stderr);
    gust.create_function(
        "names",
        "python",
        &code,
        &["--url", "/items/{name}", "--method", "GET,PUT"],
    )
    .ok();

    // The pattern decides which route a segment reaches.
    let by_id = json(&gust.get("/items/42?x=1").text().unwrap());
    assert_eq!(by_id["params"]["id"], "42");
    let fission = &by_id["fission"];
    assert_eq!(fission["x-fission-params-id"], "42");
    assert_eq!(fission["x-fission-full-url"], "/items/42?x=1");
    assert_eq!(fission["x-fission-function-name"], "items");
    assert_eq!(fission["x-fission-function-namespace"], "default");
    assert_eq!(fission["x-fission-function-resourceversion"], "1");
    let uid = fission["x-fission-function-uid"].as_str().unwrap();
    assert_eq!(uid.len(), 36, "{uid}");
    // Path parameters are percent-decoded, as query values are.
    let by_name = json(&gust.get("/items/a%20b%2Fc").text().unwrap());
    assert_eq!(by_name["params"]["name"], "a b/c");
    assert_eq!(by_name["fission"]["x-fission-function-name"], "names");
    // A caller cannot pass Fission's headers off as Gust's.
    let forged = gust
        .http()
        .get(gust.public_url("/items/7"))
        .header("X-Fission-Function-Name", "someone-else")
        .header("X-Fission-Params-Id", "666")
        .send()
        .unwrap();
    let forged = json(&forged.text().unwrap());
    assert_eq!(forged["fission"]["x-fission-function-name"], "items");
    assert_eq!(forged["fission"]["x-fission-params-id"], "7");

    // HEAD is served by a GET route, without a body; another method gets 405 and Allow.
    let head = gust
        .http()
        .head(gust.public_url("/items/42"))
        .send()
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.bytes().unwrap().len(), 0);
    let post = gust
        .http()
        .post(gust.public_url("/items/42"))
        .send()
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD, PUT");
    assert_eq!(json(&post.text().unwrap())["reason"], "method_not_allowed");
    assert_eq!(gust.get("/nothing/here").status(), 404);

    // A route that cannot be created leaves no function behind.
    let err = gust
        .create_function(
            "clash",
            "python",
            &code,
            &["--url", "/items/{other}", "--method", "GET"],
        )
        .failed();
    assert!(err.contains("conflict"), "{err}");
    let err = gust.cli(&["fn", "get", "clash"]).failed();
    assert!(err.contains("not found"), "{err}");
    let err = gust
        .cli(&[
            "route",
            "create",
            "--fn",
            "items",
            "--url",
            "/bad/{id:[0-9}",
        ])
        .failed();
    assert!(err.contains("not a valid regex"), "{err}");
}

#[test]
fn the_cli_says_what_a_new_user_needs() {
    let gust = Gust::start(GUST, GustOptions::default());
    let version = gust.cli(&["version"]).ok().stdout;
    let lines: Vec<&str> = version.lines().collect();
    assert_eq!(lines.len(), 2, "{version}");
    assert!(lines[0].starts_with("client: gust 0."), "{version}");
    assert!(lines[1].starts_with("server: gust 0."), "{version}");
    // Both are this build: the same release and commit.
    assert_eq!(lines[0]["client: ".len()..], lines[1]["server: ".len()..]);
    let flag = gust.cli(&["--version"]).ok().stdout;
    assert!(flag.contains('('), "the commit is in --version: {flag}");

    gust.deploy(
        "hi",
        "python",
        "hi.py",
        "def main():\n    return 'hi'\n",
        &["--timeout", "5s"],
    );
    // Text ends its line; the body itself has none.
    assert_eq!(gust.cli(&["fn", "invoke", "hi"]).ok().stdout, "hi\n");
    assert_eq!(gust.get("/hi").text().unwrap(), "hi");
    // Durations read as the flags take them.
    let info = json(&gust.cli(&["fn", "get", "hi", "-o", "json"]).ok().stdout);
    assert_eq!(info["timeout"], "5s");
    assert!(info["scaling"]["idle_timeout"].is_string(), "{info}");

    // Revisions say what changed, even when the code did not.
    gust.cli(&["fn", "update", "hi", "--timeout", "9s"]).ok();
    gust.cli(&["fn", "update", "hi", "--env-var", "GREETING=hey"])
        .ok();
    let table = gust.cli(&["fn", "revisions", "hi"]).ok().stdout;
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].contains("CHANGED"), "{table}");
    assert!(rows[2].trim_end().ends_with("timeout"), "{table}");
    assert!(rows[3].trim_end().ends_with("env-var GREETING"), "{table}");
    assert!(!table.contains("hey"), "values stay out: {table}");
}

/// Written the way Fission's Python examples are: the request through Flask, every way of
/// answering Flask knows.
const FLASK_PY: &str = r#"
from flask import Response, abort, current_app, jsonify, request


def main():
    current_app.logger.info("flask logger: %s %s", request.method, request.path)
    case = request.args.get("case", "")
    if case == "json":
        return jsonify(got=request.get_json(), same=request.json == request.get_json())
    if case == "form":
        return "form " + request.form["name"] + " " + request.headers["X-Extra"]
    if case == "data":
        return request.data[::-1]
    if case == "status":
        return "made", 201
    if case == "headers":
        return "with headers", 202, {"X-Answer": "42"}
    if case == "response":
        return Response("custom", status=203, mimetype="text/x-custom")
    if case == "dict":
        return {"args": request.args.to_dict(flat=False)}
    if case == "missing":
        abort(404)
    if case == "boom":
        raise ValueError("flask function failed")
    return "plain " + request.method
"#;

#[test]
fn python_functions_read_their_request_through_flask() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("flasky", "python", "flasky.py", FLASK_PY, &[]);
    let url = |case: &str| gust.public_url(&format!("/flasky?case={case}"));
    let http = gust.http();

    let answer: Value = http
        .post(url("json"))
        .json(&serde_json::json!({"n": 1}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer, serde_json::json!({"got": {"n": 1}, "same": true}));
    let form = http
        .post(url("form"))
        .header("X-Extra", "extra")
        .form(&[("name", "ada")])
        .send()
        .unwrap();
    assert_eq!(form.text().unwrap(), "form ada extra");
    let data = http.put(url("data")).body("abc").send().unwrap();
    assert_eq!(data.bytes().unwrap().as_ref(), b"cba");
    let status = http.get(url("status")).send().unwrap();
    assert_eq!(status.status(), 201);
    assert_eq!(status.text().unwrap(), "made");
    let headers = http.get(url("headers")).send().unwrap();
    assert_eq!(headers.status(), 202);
    assert_eq!(headers.headers()["x-answer"], "42");
    let response = http.get(url("response")).send().unwrap();
    assert_eq!(response.status(), 203);
    assert_eq!(
        response.headers()["content-type"],
        "text/x-custom; charset=utf-8"
    );
    assert_eq!(response.text().unwrap(), "custom");
    let dict: Value = http
        .get(gust.public_url("/flasky?case=dict&a=1&a=2"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(dict["args"]["a"], serde_json::json!(["1", "2"]));
    assert_eq!(http.get(url("missing")).send().unwrap().status(), 404);
    assert_eq!(
        http.delete(url("")).send().unwrap().text().unwrap(),
        "plain DELETE"
    );

    // An exception is the function's error, not Flask's HTML page; the traceback is in its log.
    let boom = http.get(url("boom")).send().unwrap();
    assert_eq!(boom.status(), 502);
    assert_eq!(json(&boom.text().unwrap())["reason"], "function_error");
    let logged = gust_harness::eventually(std::time::Duration::from_secs(10), || {
        let logs = gust.cli(&["fn", "logs", "flasky"]).ok().stdout;
        (logs.contains("ValueError: flask function failed")
            && logs.contains("flask logger: GET /flasky"))
        .then_some(())
    });
    assert!(
        logged.is_some(),
        "{}",
        gust.cli(&["fn", "logs", "flasky"]).ok().stdout
    );
}

/// Written the way Fission's Node.js examples are: Express's request, its response, the
/// callback form.
const EXPRESS_JS: &str = r#"
module.exports = async function (context) {
  const req = context.request;
  return {
    status: 200,
    body: {
      method: req.method,
      type: req.get('Content-Type') || null,
      agent: req.header('x-agent'),
      query: req.query,
      params: req.params,
      body: Buffer.isBuffer(req.body) ? `buffer:${req.body.length}` : req.body,
      isJson: req.is('json'),
      path: req.path,
    },
  };
};
"#;

#[test]
fn node_functions_get_express_requests_responses_callbacks_and_es_modules() {
    let gust = Gust::start(GUST, GustOptions::default());
    let http = gust.http();
    gust.deploy("express", "node", "express.js", EXPRESS_JS, &[]);
    let answer: Value = http
        .post(gust.public_url("/express?tag=a&tag=b&one=1"))
        .header("X-Agent", "test")
        .json(&serde_json::json!({"n": 1}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["type"], "application/json");
    assert_eq!(answer["agent"], "test");
    assert_eq!(
        answer["query"],
        serde_json::json!({"tag": ["a", "b"], "one": "1"})
    );
    assert_eq!(answer["body"], serde_json::json!({"n": 1}));
    assert_eq!(answer["isJson"], "application/json");
    assert_eq!(answer["path"], "/express");
    let form: Value = http
        .post(gust.public_url("/express"))
        .form(&[("name", "ada")])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(form["body"], serde_json::json!({"name": "ada"}));
    let text: Value = http
        .post(gust.public_url("/express"))
        .header("Content-Type", "text/plain")
        .body("words")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(text["body"], "words");
    let binary: Value = http
        .post(gust.public_url("/express"))
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8, 1, 2])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(binary["body"], "buffer:3");

    // Answering through context.response, now or later.
    gust.deploy(
        "through-res",
        "node",
        "res.js",
        "module.exports = async (context) => {\n  const res = context.response;\n  setTimeout(() => res.status(201).set('X-Later', 'yes').send('later'), 50);\n};\n",
        &[],
    );
    let later = gust.get("/through-res");
    assert_eq!(later.status(), 201);
    assert_eq!(later.headers()["x-later"], "yes");
    assert_eq!(later.text().unwrap(), "later");
    gust.deploy(
        "res-json",
        "node",
        "json.js",
        "module.exports = (context) => { context.response.json({ ok: true }); };\n",
        &[],
    );
    assert_eq!(
        json(&gust.get("/res-json").text().unwrap()),
        serde_json::json!({"ok": true})
    );
    // The callback form.
    gust.deploy(
        "callback",
        "node",
        "cb.js",
        "module.exports = function (context, callback) {\n  callback(202, 'called back', { 'X-Cb': '1' });\n};\n",
        &[],
    );
    let called = gust.get("/callback");
    assert_eq!(called.status(), 202);
    assert_eq!(called.headers()["x-cb"], "1");
    assert_eq!(called.text().unwrap(), "called back");

    // ES modules: `export default` in .mjs and in a "type": "module" package, a named export,
    // and a directory's entry from its package.json `main`.
    gust.deploy(
        "esm",
        "node",
        "hello.mjs",
        "export default async function (context) {\n  return { status: 200, body: 'esm default' };\n}\n",
        &[],
    );
    assert_eq!(gust.get("/esm").text().unwrap(), "esm default");
    let module_dir = gust.scratch().join("module-pkg");
    std::fs::create_dir_all(module_dir.join("src")).unwrap();
    std::fs::write(
        module_dir.join("package.json"),
        r#"{"name": "m", "type": "module", "main": "src/app.js"}"#,
    )
    .unwrap();
    std::fs::write(
        module_dir.join("src/app.js"),
        "import { shout } from './util.js';\nexport default async () => ({ status: 200, body: shout('main entry') });\nexport const named = async () => ({ status: 200, body: shout('named export') });\n",
    )
    .unwrap();
    std::fs::write(
        module_dir.join("src/util.js"),
        "export const shout = (s) => s.toUpperCase();\n",
    )
    .unwrap();
    let dir = module_dir.to_str().unwrap();
    gust.deploy_path("pkg-main", "node", dir, &[]);
    assert_eq!(gust.get("/pkg-main").text().unwrap(), "MAIN ENTRY");
    gust.deploy_path("pkg-named", "node", dir, &["--entrypoint", "src/app.named"]);
    assert_eq!(gust.get("/pkg-named").text().unwrap(), "NAMED EXPORT");
}

#[test]
fn a_python_zip_with_several_modules_runs_from_main_main() {
    let gust = Gust::start(GUST, GustOptions::default());
    let zip_path = gust.scratch().join("app.zip");
    {
        use std::io::Write;
        let file = std::fs::File::create(&zip_path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("helpers/__init__.py", options).unwrap();
        zip.start_file("helpers/text.py", options).unwrap();
        zip.write_all(b"def title(s):\n    return s.title()\n")
            .unwrap();
        zip.start_file("main.py", options).unwrap();
        zip.write_all(
            b"from flask import request\nfrom helpers.text import title\n\ndef main():\n    return title(request.args.get('name', 'nobody'))\n",
        )
        .unwrap();
        zip.finish().unwrap();
    }
    gust.deploy_path(
        "zipped",
        "python",
        zip_path.to_str().unwrap(),
        &["--entrypoint", "main.main"],
    );
    assert_eq!(
        gust.get("/zipped?name=ada%20lovelace").text().unwrap(),
        "Ada Lovelace"
    );
}

/// A worker server that closes its connection after every answer, as many HTTP servers do.
const CLOSING_SERVER: &str = r#"
import http.server, os, socket, socketserver

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.requestline.split()[1]
        out = b"ok" if target in ("/healthz", "/v2/specialize") else b"closed:" + target.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(out)
        self.close_connection = True

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass

class Server(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("gust", 0)

server = Server(None, Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=int(os.environ["GUST_LISTEN_FD"]))
server.serve_forever()
"#;

#[test]
fn custom_environments_that_close_connections_or_cannot_start_say_so() {
    let gust = Gust::start(GUST, GustOptions::default());
    let server = gust.write_file("closing-env/server.py", CLOSING_SERVER);
    let env_dir = server.parent().unwrap().to_owned();
    use std::os::unix::fs::PermissionsExt;
    for dir in [gust.dir.path(), &gust.scratch(), &env_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let command = format!("/usr/bin/python3 {}", server.display());
    gust.cli(&[
        "env",
        "create",
        "closing",
        "--command",
        &command,
        "--mount",
        env_dir.to_str().unwrap(),
    ])
    .ok();
    gust.deploy("closer", "closing", "data.txt", "anything", &[]);
    for i in 0..3 {
        let answer = gust.get(&format!("/closer?i={i}"));
        assert_eq!(answer.status(), 200, "request {i}");
        assert_eq!(answer.text().unwrap(), format!("closed:/closer?i={i}"));
    }

    // An environment whose workers cannot start says why, and takes no function.
    gust.cli(&[
        "env",
        "create",
        "broken",
        "--command",
        "/usr/bin/false",
        "--pool-size",
        "1",
    ])
    .ok();
    let error = gust_harness::eventually(std::time::Duration::from_secs(10), || {
        let view = json(
            &gust
                .cli(&["env", "get", "broken", "-o", "json"])
                .ok()
                .stdout,
        );
        view["start_error"].as_str().map(str::to_owned)
    })
    .expect("env get shows why workers fail");
    assert!(error.contains("exited during start"), "{error}");
    let table = gust.cli(&["env", "get", "broken"]).ok().stdout;
    assert!(table.contains("workers fail to start"), "{table}");
    let code = gust.write_file("never/x.txt", "x");
    let err = gust.create_function("never", "broken", &code, &[]).failed();
    assert!(err.contains("cannot start workers"), "{err}");
}

/// An environment server written the way Fission's are: it listens on a TCP port (8888, or
/// `RUNTIME_PORT`), loads the code Fission's way (`/v2/specialize` with `filepath` and
/// `functionName`, or `/specialize` and `/userfunc/user`), serves its function at `/` only,
/// and closes every connection after its answer (HTTP/1.0).
const FISSION_STYLE_SERVER: &str = r#"
import http.server, importlib.machinery, importlib.util, json, os, sys

PORT = int(os.environ.get("RUNTIME_PORT", "8888"))
INSTANCE = os.urandom(4).hex()
userfunc = None


def load(path, entry):
    module_name, _, func = entry.rpartition(".")
    if os.path.isdir(path):
        sys.path.insert(0, path)
        module = __import__(module_name)
    else:
        loader = importlib.machinery.SourceFileLoader("user", path)
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader("user", loader))
        loader.exec_module(module)
    return getattr(module, func or "main")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        global userfunc
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/specialize":
            userfunc = load("/userfunc/user", "")
            return self.reply(202, "")
        if self.path == "/v2/specialize":
            request = json.loads(data)
            userfunc = load(request["filepath"], request["functionName"])
            return self.reply(202, "")
        self.call(data)

    def do_GET(self):
        self.call(b"")

    def call(self, data):
        if self.path.split("?")[0] != "/":
            return self.reply(404, "Fission's servers serve / only")
        with open("/userfunc/scratch", "w") as f:
            f.write("the server may write here")
        self.reply(200, userfunc(self.headers, data) + " instance=" + INSTANCE)


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"#;

#[test]
fn fission_environment_servers_run_as_custom_environments() {
    let gust = Gust::start(GUST, GustOptions::default());
    let server = gust.write_file("fission-env/server.py", FISSION_STYLE_SERVER);
    let env_dir = server.parent().unwrap().to_owned();
    use std::os::unix::fs::PermissionsExt;
    for dir in [gust.dir.path(), &gust.scratch(), &env_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let command = format!("/usr/bin/python3 {}", server.display());
    for (name, protocol) in [("fission-py", "fission"), ("fission-v1", "fission-v1")] {
        gust.cli(&[
            "env",
            "create",
            name,
            "--command",
            &command,
            "--mount",
            env_dir.to_str().unwrap(),
            "--protocol",
            protocol,
            "--pool-size",
            "2",
        ])
        .ok();
    }
    let info = json(
        &gust
            .cli(&["env", "get", "fission-py", "-o", "json"])
            .ok()
            .stdout,
    );
    assert_eq!(info["kind"]["port"], 8888, "{info}");

    // v2: a directory of modules, the entrypoint `module.function`.
    let app = gust.scratch().join("fission-app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("hello.py"),
        "import time\n\ndef main(headers, body):\n    time.sleep(float(headers.get('X-Sleep') or 0))\n    return 'v2 id=%s url=%s fn=%s' % (headers['X-Fission-Params-Id'], headers['X-Fission-Full-Url'], headers['X-Fission-Function-Name'])\n",
    )
    .unwrap();
    gust.create_function(
        "hello",
        "fission-py",
        &app,
        &["--entrypoint", "hello.main", "--url", "/hello/{id}"],
    )
    .ok();
    let answer = gust.get("/hello/7?q=1").text().unwrap();
    assert!(
        answer.starts_with("v2 id=7 url=/hello/7?q=1 fn=hello instance="),
        "{answer}"
    );
    // Two requests at once: two workers, both listening on 8888, each in its own namespace.
    let instances: std::collections::BTreeSet<String> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let answer = gust
                        .http()
                        .get(gust.public_url("/hello/1"))
                        .header("X-Sleep", "1")
                        .send()
                        .unwrap();
                    assert_eq!(answer.status(), 200);
                    let text = answer.text().unwrap();
                    text.rsplit("instance=").next().unwrap().to_owned()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(instances.len(), 2, "{instances:?}");

    // v1: one source file, loaded from /userfunc/user.
    let single = gust.write_file(
        "v1/legacy.py",
        "def main(headers, body):\n    return 'v1 says ' + body.decode()\n",
    );
    gust.create_function("legacy", "fission-v1", &single, &["--url", "/legacy"])
        .ok();
    let answer = gust
        .http()
        .post(gust.public_url("/legacy"))
        .body("hi")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(answer.starts_with("v1 says hi instance="), "{answer}");
    // Code that does not load in such a server is refused at deploy, as with Gust's own.
    let err = gust
        .create_function(
            "wrong",
            "fission-py",
            &app,
            &["--entrypoint", "hello.nothing"],
        )
        .failed();
    assert!(err.contains("was not deployed"), "{err}");
}

#[test]
fn function_logs_outlive_a_restart_and_a_kill() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "chatty",
        "python",
        "c.py",
        "def main(req):\n    print('said ' + req.query.get('n', ''))\n    return 'ok'\n",
        &[],
    );
    let journal = gust.data_dir().join("function-logs/default.chatty.jsonl");
    let on_disk = |text: &str| {
        gust_harness::eventually(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(&journal)
                .is_ok_and(|kept| kept.contains(text))
                .then_some(())
        })
        .is_some()
    };
    assert_eq!(gust.get("/chatty?n=1").status(), 200);
    assert!(on_disk("said 1"));
    // Killed: the line is still there after the start.
    gust.restart();
    let logs = gust.cli(&["fn", "logs", "chatty"]).ok().stdout;
    assert!(logs.contains("said 1"), "{logs}");
    assert_eq!(gust.get("/chatty?n=2").status(), 200);
    assert!(on_disk("said 2"));
    // Stopped cleanly: both, in their order.
    assert!(gust.stop());
    gust.start_again();
    let logs = gust.cli(&["fn", "logs", "chatty"]).ok().stdout;
    let (first, second) = (logs.find("said 1"), logs.find("said 2"));
    assert!(first.is_some() && second > first, "{logs}");
    // A deleted function's lines go with it, on disk too.
    gust.cli(&["fn", "delete", "chatty"]).ok();
    let gone = gust_harness::eventually(std::time::Duration::from_secs(10), || {
        (!journal.exists()).then_some(())
    });
    assert!(gone.is_some(), "the journal file is deleted");
}

/// Starts the connection-closing server above, unless a file `off` lies beside it.
const SWITCHABLE_ENV: &str = "#!/bin/sh\ndir=$(dirname \"$0\")\nif [ -e \"$dir/off\" ]; then echo 'switched off' >&2; exit 3; fi\nexec /usr/bin/python3 \"$dir/server.py\"\n";

#[test]
fn a_request_that_finds_no_worker_is_refused_and_not_billed() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.write_file("switchable/server.py", CLOSING_SERVER);
    let script = gust.write_file("switchable/start.sh", SWITCHABLE_ENV);
    let env_dir = script.parent().unwrap().to_owned();
    use std::os::unix::fs::PermissionsExt;
    for dir in [gust.dir.path(), &gust.scratch(), &env_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    gust.cli(&[
        "env",
        "create",
        "switchable",
        "--command",
        script.to_str().unwrap(),
        "--mount",
        env_dir.to_str().unwrap(),
        "--pool-size",
        "0",
    ])
    .ok();
    gust.deploy(
        "lamp",
        "switchable",
        "data.txt",
        "anything",
        &["--idle-timeout", "1s"],
    );
    let records = || -> Vec<Value> {
        gust.api(
            gust_harness::reqwest::Method::GET,
            "/v1/usage/records?function=lamp",
        )
        .send()
        .unwrap()
        .json()
        .unwrap()
    };
    let served = gust.get("/lamp");
    assert_eq!(served.status(), 200);
    let first = served.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let wait = std::time::Duration::from_secs(15);
    assert!(gust_harness::eventually(wait, || (records().len() == 1).then_some(())).is_some());

    // No worker can start now: once the warm one is gone, a request gets 503 and no code runs.
    std::fs::write(env_dir.join("off"), "").unwrap();
    let idle_gone = gust_harness::eventually(wait, || {
        let info = json(&gust.cli(&["fn", "get", "lamp", "-o", "json"]).ok().stdout);
        (info["instances"]["idle"] == 0).then_some(())
    });
    assert!(idle_gone.is_some());
    let refused = gust.get("/lamp");
    assert_eq!(refused.status(), 503);
    let refused_id = refused.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(json(&refused.text().unwrap())["reason"], "start_failed");
    // Gust's own log says why, and, written to a file, has no terminal colour codes.
    let log = gust.log();
    assert!(
        log.contains("WARN") && log.contains("switched off"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "{log}");

    // Switched on again: the next request is billed; the refused one never was.
    std::fs::remove_file(env_dir.join("off")).unwrap();
    let again = gust.get("/lamp");
    assert_eq!(again.status(), 200);
    let last = again.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let ids = gust_harness::eventually(wait, || {
        let found = records();
        (found.len() >= 2).then_some(found)
    })
    .expect("the second served request is recorded");
    let ids: Vec<&str> = ids
        .iter()
        .map(|r| r["invocation_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![first.as_str(), last.as_str()],
        "{refused_id} has no record"
    );
    let metrics = gust.metrics();
    assert!(
        metrics.contains(
            r#"gust_function_start_failures_total{namespace="default",function="lamp",trigger="http"} 1"#
        ),
        "{metrics}"
    );
}
