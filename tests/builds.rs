//! End-to-end: dependency builds. Python packages come from a package index this test serves
//! on loopback (`tests/packages/index.py`), so these tests are hermetic; Node.js builds here
//! have no dependencies to fetch, only the package's own install scripts. One test, named
//! `real_packages_...`, uses the registries this machine's pip and npm are set up for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gust_harness::{Gust, GustOptions, free_port};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// The test's package index; stopped when dropped.
struct Index {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Index {
    fn start(dir: &Path, packages: &[&str]) -> Self {
        let port = free_port();
        let log = dir.join(format!("index-{port}.log"));
        let child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/packages/index.py"
            ))
            .arg(port.to_string())
            .arg(&log)
            .args(packages)
            .spawn()
            .expect("python3 runs");
        let url = format!("http://127.0.0.1:{port}/simple/");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the package index did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::write(&log, "").unwrap();
        Self { child, url, log }
    }

    /// How many times a wheel of `package` was downloaded.
    fn downloads(&self, package: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with(&format!("/packages/{package}-")))
            .count()
    }
}

fn gust_with(extra: &[&str]) -> Gust {
    Gust::start(
        GUST,
        GustOptions {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..GustOptions::default()
        },
    )
}

/// Writes `files` into a fresh directory of the scratch space; returns its path.
fn code(gust: &Gust, dir: &str, files: &[(&str, &str)]) -> String {
    for (name, content) in files {
        gust.write_file(&format!("{dir}/{name}"), content);
    }
    gust.scratch().join(dir).to_string_lossy().into_owned()
}

fn function(gust: &Gust, name: &str) -> Value {
    serde_json::from_str(&gust.cli(&["fn", "get", name, "-o", "json"]).ok().stdout).unwrap()
}

fn invoke(gust: &Gust, name: &str) -> String {
    gust.cli(&["fn", "invoke", name]).ok().stdout
}

const GREETER: &str = "import gustdemo\n\ndef main():\n    return gustdemo.greet()\n";

#[test]
fn python_requirements_are_built_cached_and_shared() {
    let scratch = tempfile::tempdir().unwrap();
    let index = Index::start(scratch.path(), &["gustdemo==1.0"]);
    let gust = gust_with(&["--pip-index-url", &index.url]);
    let dir = code(
        &gust,
        "greeter",
        &[
            ("main.py", GREETER),
            ("requirements.txt", "gustdemo==1.0\n"),
            // Sources that would shadow the build's own tool never reach the build.
            (
                "pip/__main__.py",
                "raise SystemExit('a shadowing pip ran')\n",
            ),
        ],
    );
    let created = gust
        .cli(&["fn", "create", "greeter", "--env", "python", "--code", &dir])
        .ok();
    assert!(
        created
            .stderr
            .contains("function greeter created (revision 1: built in"),
        "{}",
        created.stderr
    );
    assert_eq!(invoke(&gust, "greeter"), "hello from gustdemo 1.0\n");
    let view = function(&gust, "greeter");
    let build = &view["builds"][0];
    assert_eq!(build["state"], "ready", "{view:#}");
    assert_eq!(build["cached"], false);
    assert!(build["package_bytes"].as_u64().unwrap() > 0);
    let log = gust.cli(&["fn", "build-logs", "greeter"]).ok().stdout;
    assert!(log.contains("Successfully installed gustdemo-1.0"), "{log}");
    assert!(log.contains("revision 1 is live"), "{log}");
    assert_eq!(index.downloads("gustdemo"), 1);

    // A code-only change reuses the dependencies: no download, and live at once.
    gust.write_file(
        "greeter/main.py",
        "import gustdemo\n\ndef main():\n    return 'v2: ' + gustdemo.greet()\n",
    );
    let updated = gust.cli(&["fn", "update", "greeter", "--code", &dir]).ok();
    assert!(
        updated.stderr.contains("dependencies from the build cache"),
        "{}",
        updated.stderr
    );
    assert_eq!(invoke(&gust, "greeter"), "v2: hello from gustdemo 1.0\n");

    // Built code that does not load fails its build; the revision before keeps serving.
    gust.write_file(
        "greeter/main.py",
        "import gustdemo\n\ndef other():\n    return 1\n",
    );
    let err = gust
        .cli(&["fn", "update", "greeter", "--code", &dir])
        .failed();
    assert!(err.contains("did not load"), "{err}");
    assert!(err.contains("LookupError"), "{err}");
    assert_eq!(invoke(&gust, "greeter"), "v2: hello from gustdemo 1.0\n");
    let log = gust.cli(&["fn", "build-logs", "greeter"]).ok().stdout;
    assert!(log.contains("the built code did not load"), "{log}");

    // The same requirements in another function are not built again.
    let other = code(
        &gust,
        "other",
        &[
            ("main.py", GREETER),
            ("requirements.txt", "gustdemo==1.0\n"),
        ],
    );
    gust.cli(&["fn", "create", "other", "--env", "python", "--code", &other])
        .ok();
    assert_eq!(function(&gust, "other")["builds"][0]["cached"], true);
    assert_eq!(index.downloads("gustdemo"), 1, "built once for both");

    // Another namespace never gets what this one's builds made.
    gust.cli(&["ns", "create", "team-b"]).ok();
    gust.cli(&[
        "fn", "create", "other", "-n", "team-b", "--env", "python", "--code", &other,
    ])
    .ok();
    let view: Value = serde_json::from_str(
        &gust
            .cli(&["fn", "get", "other", "-n", "team-b", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(view["builds"][0]["cached"], false, "{view:#}");
    assert_eq!(index.downloads("gustdemo"), 2);
}

#[test]
fn a_failed_build_reports_pips_error_and_the_previous_revision_keeps_serving() {
    let scratch = tempfile::tempdir().unwrap();
    let index = Index::start(scratch.path(), &["gustdemo==1.0"]);
    let gust = gust_with(&["--pip-index-url", &index.url]);
    let dir = code(
        &gust,
        "f",
        &[
            ("main.py", GREETER),
            ("requirements.txt", "gustdemo==1.0\n"),
        ],
    );
    gust.cli(&["fn", "create", "f", "--env", "python", "--code", &dir])
        .ok();
    gust.cli(&["route", "create", "--fn", "f", "--url", "/f"])
        .ok();
    assert_eq!(gust.get("/f").text().unwrap(), "hello from gustdemo 1.0");

    gust.write_file("f/requirements.txt", "no-such-package==9.9\n");
    let err = gust.cli(&["fn", "update", "f", "--code", &dir]).failed();
    assert!(
        err.contains("revision 2 failed to build; revision 1 keeps serving"),
        "{err}"
    );
    assert!(
        err.contains("No matching distribution found for no-such-package==9.9"),
        "pip's own error: {err}"
    );
    let view = function(&gust, "f");
    assert_eq!(view["revision"], 1);
    assert_eq!(view["latest_revision"], 2);
    assert_eq!(view["builds"][1]["state"], "build_failed", "{view:#}");
    assert_eq!(gust.get("/f").text().unwrap(), "hello from gustdemo 1.0");
    let shown = gust.cli(&["fn", "get", "f"]).ok().stdout;
    assert!(shown.contains("revision 2: build_failed"), "{shown}");
    assert!(shown.contains("revision 1 (current): ready"), "{shown}");

    // A build log goes with its revision when the revision is pruned.
    gust.write_file("f/requirements.txt", "gustdemo==1.0\n");
    gust.cli(&["fn", "update", "f", "--code", &dir, "--keep-revisions", "1"])
        .ok();
    let logs = gust.data_dir().join("build-logs/default/f");
    assert!(!logs.join("2.log").exists(), "revision 2 was pruned");
    assert!(logs.join("3.log").exists());
    assert_eq!(gust.get("/f").text().unwrap(), "hello from gustdemo 1.0");

    // A first revision that fails leaves a function that answers 503, saying why.
    let bad = code(
        &gust,
        "g",
        &[
            ("main.py", GREETER),
            ("requirements.txt", "no-such-package\n"),
        ],
    );
    gust.cli(&["fn", "create", "g", "--env", "python", "--code", &bad])
        .failed();
    let answer = gust
        .api(
            gust_harness::reqwest::Method::POST,
            "/v1/functions/g/invoke",
        )
        .send()
        .unwrap();
    assert_eq!(answer.status(), 503);
    let body: Value = answer.json().unwrap();
    assert_eq!(body["reason"], "not_ready", "{body}");
}

#[test]
fn no_wait_returns_while_building_and_build_logs_follow_to_the_end() {
    let scratch = tempfile::tempdir().unwrap();
    let index = Index::start(scratch.path(), &["gustdemo==1.0"]);
    let gust = gust_with(&["--pip-index-url", &index.url]);
    // A Node.js package whose own install script takes a moment.
    let dir = code(
        &gust,
        "slow",
        &[
            (
                "package.json",
                r#"{"name":"slow","version":"1.0.0","scripts":{"postinstall":"echo installing; sleep 2; echo installed"}}"#,
            ),
            (
                "index.js",
                "module.exports = async () => ({ status: 200, body: 'built' });\n",
            ),
        ],
    );
    let started = Instant::now();
    let created = gust
        .cli(&[
            "fn",
            "create",
            "slow",
            "--env",
            "node",
            "--code",
            &dir,
            "--no-wait",
        ])
        .ok();
    assert!(
        created.stderr.contains("revision 1 is building"),
        "{}",
        created.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "--no-wait returned at once"
    );
    assert_eq!(function(&gust, "slow")["builds"][0]["state"], "building");
    // New settings wait for the code being built: they would otherwise go live without it.
    let err = gust
        .cli(&["fn", "update", "slow", "--memory", "256"])
        .failed();
    assert!(
        err.contains("revision 1 of \"slow\" is still building"),
        "{err}"
    );
    let followed = gust.cli(&["fn", "build-logs", "slow", "-f"]).ok().stdout;
    assert!(
        followed.contains("installing") && followed.contains("installed"),
        "{followed}"
    );
    assert!(followed.contains("revision 1 is live"), "{followed}");
    assert_eq!(invoke(&gust, "slow"), "built\n");
}

#[test]
fn bad_manifests_are_refused_before_anything_is_stored() {
    let gust = gust_with(&[]);
    let cases = [
        (
            "node",
            "package.json",
            "{ not json",
            "package.json is not valid JSON",
        ),
        (
            "node",
            "package.json",
            "[1, 2]",
            "package.json must hold a JSON object",
        ),
        (
            "python",
            "requirements.txt",
            "requests\n<script>\n",
            "requirements.txt line 2",
        ),
    ];
    for (index, (env, manifest, content, expected)) in cases.iter().enumerate() {
        let dir = code(
            &gust,
            &format!("bad{index}"),
            &[
                (manifest, content),
                ("main.py", "def main():\n    return 1\n"),
            ],
        );
        let err = gust
            .cli(&["fn", "create", "bad", "--env", env, "--code", &dir])
            .failed();
        assert!(err.contains(expected), "{err}");
    }
    let functions: Value =
        serde_json::from_str(&gust.cli(&["fn", "list", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(functions, serde_json::json!([]));
}

/// S-09 and S-06 for builds: a build that loops is stopped at its timeout, a fork bomb stays
/// inside its pids limit, and a build sees only its own sources, never Gust's data.
#[test]
fn hostile_builds_are_stopped_and_see_only_their_own_sources() {
    let gust = gust_with(&["--build-timeout", "8s"]);
    let node_fn = |name: &str, script: &str| {
        let package = serde_json::json!({
            "name": name, "version": "1.0.0", "scripts": {"postinstall": script}
        });
        code(
            &gust,
            name,
            &[
                ("package.json", &package.to_string()),
                (
                    "index.js",
                    "const fs = require('fs');\nmodule.exports = async () => ({ status: 200, body: fs.readFileSync(__dirname + '/node_modules/report.txt', 'utf8') });\n",
                ),
            ],
        )
    };
    let looping = node_fn("loops", "while :; do :; done");
    let err = gust
        .cli(&["fn", "create", "loops", "--env", "node", "--code", &looping])
        .failed();
    assert!(err.contains("ran longer than its 8s limit"), "{err}");

    let bomb = node_fn("bomb", "b() { b | b; }; b");
    let err = gust
        .cli(&["fn", "create", "bomb", "--env", "node", "--code", &bomb])
        .failed();
    assert!(err.contains("failed to build"), "{err}");
    // The host still starts processes, and the API still answers.
    assert!(Command::new("true").status().unwrap().success());
    gust.cli(&["fn", "list"]).ok();

    // A line without end is cut in the log, not gathered in Gust's memory.
    let shouts = node_fn(
        "shouts",
        "head -c 20000000 /dev/zero | tr '\\0' x >&2; mkdir -p node_modules; echo quiet > node_modules/report.txt",
    );
    gust.cli(&["fn", "create", "shouts", "--env", "node", "--code", &shouts])
        .ok();
    let log = gust.cli(&["fn", "build-logs", "shouts"]).ok().stdout;
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 4096 && log.contains("xxxx [...]"),
        "longest line {longest}"
    );

    let data_dir = gust.data_dir();
    let snoop = node_fn(
        "snoop",
        &format!(
            "mkdir -p node_modules; {{ echo \"src: $(ls $SRC_PKG | tr '\\n' ' ')\"; \
             echo \"whoami: $(id -u)\"; \
             test -e {data} && echo 'data dir: visible' || echo 'data dir: absent'; \
             cat {data}/admin.token 2>/dev/null && echo 'token: read' || echo 'token: unreadable'; \
             ls /run 2>/dev/null | grep gust && echo 'workers: visible' || echo 'workers: absent'; \
             node -e \"require('net').connect({api}, '127.0.0.1').on('connect', () => {{ console.log('api: reachable'); process.exit(0) }}).on('error', () => {{ console.log('api: unreachable'); process.exit(0) }})\"; \
             }} > node_modules/report.txt",
            data = data_dir.display(),
            api = gust.api_port,
        ),
    );
    gust.cli(&["fn", "create", "snoop", "--env", "node", "--code", &snoop])
        .ok();
    let report = invoke(&gust, "snoop");
    // Only the files its cache key covers: the code itself stays out of the build.
    assert!(report.contains("src: package.json \n"), "{report}");
    assert!(report.contains("whoami: 65534"), "{report}");
    assert!(report.contains("data dir: absent"), "{report}");
    assert!(report.contains("token: unreadable"), "{report}");
    assert!(report.contains("workers: absent"), "{report}");
    // Its own network: the host's loopback (Gust's API there) is out of reach.
    assert!(report.contains("api: unreachable"), "{report}");
}

/// S-10 and S-09 for what a build installs: its output is checked like an upload (a link out
/// of the package is refused), and a build that fills its disk is stopped by its limits.
#[test]
fn what_a_build_installs_is_checked_and_bounded() {
    let gust = gust_with(&["--build-memory", "256", "--build-timeout", "60s"]);
    let node_fn = |name: &str, script: &str| {
        let package = serde_json::json!({
            "name": name, "version": "1.0.0", "scripts": {"postinstall": script}
        });
        code(
            &gust,
            name,
            &[
                ("package.json", &package.to_string()),
                ("index.js", "module.exports = async () => 'unreachable';\n"),
            ],
        )
    };
    let escaping = node_fn(
        "escapes",
        "mkdir -p node_modules && ln -s /etc/shadow node_modules/shadow",
    );
    let err = gust
        .cli(&[
            "fn", "create", "escapes", "--env", "node", "--code", &escaping,
        ])
        .failed();
    assert!(
        err.contains("what the build installed was refused")
            && err.contains("points to /etc/shadow, outside the code"),
        "{err}"
    );

    let filling = node_fn(
        "fills",
        "mkdir -p node_modules && dd if=/dev/zero of=node_modules/fill bs=1M count=4096",
    );
    let started = Instant::now();
    let err = gust
        .cli(&["fn", "create", "fills", "--env", "node", "--code", &filling])
        .failed();
    assert!(
        err.contains("ran out of its 256 MB of memory") || err.contains("No space left on device"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopped by a limit, not the timeout"
    );
    // Nothing of either build was kept: neither function serves.
    for name in ["escapes", "fills"] {
        let view = function(&gust, name);
        assert_eq!(view["builds"][0]["state"], "build_failed", "{view:#}");
    }
}

/// A custom environment's `--build-cmd` builds every upload the way a Fission builder does:
/// it reads and may write `$SRC_PKG`, and what it leaves in `$DEPLOY_PKG` is the package.
#[test]
fn a_custom_build_command_makes_the_package_as_a_fission_builder_does() {
    let gust = gust_with(&[]);
    // The workers' uid must be able to read the environment's server and builder.
    let server = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/environments/python/server.py"
    ))
    .unwrap();
    let server = gust.write_file("env/server.py", server);
    let builder = gust.write_file(
        "env/build.sh",
        "#!/bin/sh\nset -e\necho \"building from $SRC_PKG\"\necho built-by-command > \"$SRC_PKG/marker.txt\"\ncp -r \"$SRC_PKG\" \"$DEPLOY_PKG\"\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&builder, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [
        gust.dir.path().to_path_buf(),
        gust.scratch(),
        gust.scratch().join("env"),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let env_dir = gust.scratch().join("env");
    gust.cli(&[
        "env",
        "create",
        "fissionish",
        "--command",
        &format!("/usr/bin/python3 {}", server.display()),
        "--mount",
        env_dir.to_str().unwrap(),
        "--build-cmd",
        &builder.display().to_string(),
        "--pool-size",
        "1",
    ])
    .ok();
    let dir = code(
        &gust,
        "marked",
        &[(
            "main.py",
            "import os\n\ndef main():\n    return open(os.path.join(os.path.dirname(__file__), 'marker.txt')).read()\n",
        )],
    );
    gust.cli(&[
        "fn",
        "create",
        "marked",
        "--env",
        "fissionish",
        "--code",
        &dir,
    ])
    .ok();
    assert_eq!(invoke(&gust, "marked"), "built-by-command\n");
    let log = gust.cli(&["fn", "build-logs", "marked"]).ok().stdout;
    assert!(log.contains("building from /tmp/src"), "{log}");

    // A build command that leaves nothing behind fails, saying so.
    let empty = gust.write_file("env/nothing.sh", "#!/bin/sh\necho done\n");
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
    gust.cli(&[
        "env",
        "create",
        "lazy",
        "--command",
        &format!("/usr/bin/python3 {}", server.display()),
        "--mount",
        env_dir.to_str().unwrap(),
        "--build-cmd",
        &empty.display().to_string(),
        "--pool-size",
        "0",
    ])
    .ok();
    let err = gust
        .cli(&["fn", "create", "lazy", "--env", "lazy", "--code", &dir])
        .failed();
    assert!(
        err.contains("the build command left nothing in $DEPLOY_PKG"),
        "{err}"
    );
}

/// From the registries this machine's pip and npm are set up for: a function's own Flask
/// installs and imports like any other package, and a lockfile that disagrees with its
/// package.json fails the build with npm's own reason.
#[test]
fn real_packages_install_and_a_lockfile_out_of_sync_is_refused_by_npm() {
    let gust = gust_with(&[]);
    let flask = code(
        &gust,
        "flasky",
        &[
            ("requirements.txt", "flask==3.0.3\n"),
            (
                "main.py",
                "import flask\n\napp = flask.Flask(__name__)\n\ndef main():\n    with app.test_request_context('/hi?name=gust'):\n        return 'flask says hi to ' + flask.request.args['name']\n",
            ),
        ],
    );
    gust.cli(&[
        "fn", "create", "flasky", "--env", "python", "--code", &flask,
    ])
    .ok();
    assert_eq!(invoke(&gust, "flasky"), "flask says hi to gust\n");

    let stale = code(
        &gust,
        "stale",
        &[
            (
                "package.json",
                r#"{"name":"stale","version":"1.0.0","dependencies":{"ms":"2.1.3"}}"#,
            ),
            (
                "package-lock.json",
                r#"{"name":"stale","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"stale","version":"1.0.0","dependencies":{"ms":"2.0.0"}},"node_modules/ms":{"version":"2.0.0"}}}"#,
            ),
            ("index.js", "module.exports = async () => 'never';\n"),
        ],
    );
    let err = gust
        .cli(&["fn", "create", "stale", "--env", "node", "--code", &stale])
        .failed();
    assert!(
        err.contains("npm ci --omit=dev failed") && err.contains("are in sync"),
        "{err}"
    );
}
