//! The built-in worker servers (Python and Node.js) on their own, spoken to byte for byte the
//! way a hostile request would reach them: control paths in every spelling, a specialization
//! that fails, a second specialization, a status outside 200-599.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PYTHON_SERVER: &str = include_str!("../../../environments/python/server.py");
const NODE_SERVER: &str = include_str!("../../../environments/node/server.js");

/// Spellings of the control paths a lenient server might resolve to one of them.
const CONTROL_SPELLINGS: [&str; 9] = [
    "//v2/specialize",
    "///v2/specialize",
    "/x/../v2/specialize",
    "/x/%2e%2e/v2/specialize",
    "/v2/./specialize",
    "/v2%2fspecialize",
    "/v2/specialize?x=1",
    "/V2/specialize",
    "/v2/specialize/",
];

struct Server {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `interpreter source` with a listening socket as descriptor 3, as Gust does.
    fn start(interpreter: &str, file: &str, source: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let server = dir.path().join(file);
        std::fs::write(&server, source).unwrap();
        let socket = dir.path().join("worker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let fd = listener.as_raw_fd();
        let mut command = Command::new(interpreter);
        command
            .arg(&server)
            .env_clear()
            .env("GUST_LISTEN_FD", "3")
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", dir.path());
        // SAFETY: dup and dup2 are async-signal-safe; `fd` stays open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                let copy = libc::dup(fd);
                if copy < 0 || libc::dup2(copy, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A copy that landed on 3 itself (3 was free) is the descriptor the server
                // reads: closing it would leave the server none.
                if copy != 3 {
                    libc::close(copy);
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("the interpreter runs");
        drop(listener);
        let mut server = Self { child, socket, dir };
        let started = Instant::now();
        loop {
            let (status, body) = server.request("GET", "/healthz", b"");
            if status == 200 {
                break;
            }
            // Generous: a loaded machine starts an interpreter slowly; what it said and whether
            // it is still running tell a slow start from a broken one.
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{interpreter} server never got ready: last answer {status} {body:?}, process {:?}",
                server.child.try_wait()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// Sends one request with `target` exactly as given; returns status and body.
    fn request(&self, method: &str, target: &str, body: &[u8]) -> (u16, String) {
        let Ok(mut stream) = UnixStream::connect(&self.socket) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: gust-worker\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
            return (0, String::new());
        }
        gust_harness::read_answer(&mut stream)
    }

    fn specialize(&self, target: &str, code: &Path, env: serde_json::Value) -> (u16, String) {
        let body = serde_json::json!({"filepath": code, "functionName": "", "env": env});
        self.request("POST", target, body.to_string().as_bytes())
    }

    fn write(&self, name: &str, source: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, source).unwrap();
        path
    }

    fn exited_within(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Language {
    interpreter: &'static str,
    server_file: &'static str,
    server: &'static str,
    code_file: &'static str,
    /// Answers its path and the `HTTP_PROXY` it sees; a query `status=N` answers status N.
    code: &'static str,
}

const LANGUAGES: [Language; 2] = [
    Language {
        interpreter: "/usr/bin/python3",
        server_file: "server.py",
        server: PYTHON_SERVER,
        code_file: "fn.py",
        code: "import os\n\
               def main(req):\n    \
                   status = int(req.query.get('status', '200'))\n    \
                   return {'path': req.path, 'proxy': os.environ.get('HTTP_PROXY')}, status\n",
    },
    Language {
        interpreter: "/usr/bin/node",
        server_file: "server.js",
        server: NODE_SERVER,
        code_file: "fn.js",
        code: "module.exports = async (c) => ({ status: Number(c.request.query.status || 200), \
               body: { path: c.request.path, proxy: process.env.HTTP_PROXY || null } });\n",
    },
];

#[test]
fn control_paths_answer_only_their_exact_spelling_in_both_servers() {
    for language in LANGUAGES {
        let mut server = Server::start(language.interpreter, language.server_file, language.server);
        let poison = serde_json::json!({"HTTP_PROXY": "http://attacker.invalid"});
        // A generic worker: no other spelling specializes it, poisons it or ends it.
        for spelling in CONTROL_SPELLINGS {
            let (status, body) =
                server.specialize(spelling, Path::new("/nonexistent"), poison.clone());
            assert_eq!(status, 503, "{} {spelling}: {body}", language.interpreter);
            assert!(body.contains("NotSpecialized"), "{spelling}: {body}");
        }
        assert!(!server.exited_within(Duration::from_millis(100)));
        let code = server.write(language.code_file, language.code);
        let (status, body) = server.specialize("/v2/specialize", &code, serde_json::json!({}));
        assert_eq!(status, 200, "{}: {body}", language.interpreter);
        // Specialized: every other spelling is an ordinary invocation of the function, which
        // sees no poisoned environment; the exact one is refused and changes nothing.
        for spelling in CONTROL_SPELLINGS {
            let (status, body) =
                server.specialize(spelling, Path::new("/nonexistent"), poison.clone());
            assert_eq!(status, 200, "{} {spelling}: {body}", language.interpreter);
            let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(seen["proxy"], serde_json::Value::Null, "{spelling}");
        }
        let (status, body) = server.specialize("/v2/specialize", Path::new("/nonexistent"), poison);
        assert_eq!(status, 409, "{}: {body}", language.interpreter);
        let (status, body) = server.request("GET", "/after", b"");
        assert_eq!(status, 200, "{}: {body}", language.interpreter);
        assert!(
            body.contains(r#""proxy":null"#) || body.contains(r#""proxy": null"#),
            "{body}"
        );
    }
}

#[test]
fn a_failed_specialization_ends_the_worker() {
    for language in LANGUAGES {
        let mut server = Server::start(language.interpreter, language.server_file, language.server);
        let broken = server.write(
            language.code_file,
            "this is not valid code in any language (\n",
        );
        let (status, body) = server.specialize(
            "/v2/specialize",
            &broken,
            serde_json::json!({"HTTP_PROXY": "http://attacker.invalid"}),
        );
        assert_eq!(status, 500, "{}: {body}", language.interpreter);
        assert!(
            server.exited_within(Duration::from_secs(5)),
            "{} lives on after a failed specialization",
            language.interpreter
        );
    }
}

#[test]
fn a_status_outside_200_to_599_is_a_function_error() {
    for language in LANGUAGES {
        let server = Server::start(language.interpreter, language.server_file, language.server);
        let code = server.write(language.code_file, language.code);
        assert_eq!(
            server
                .specialize("/v2/specialize", &code, serde_json::json!({}))
                .0,
            200
        );
        for status in [100, 150, 199, 600, 999] {
            let (answered, body) = server.request("GET", &format!("/s?status={status}"), b"");
            assert_eq!(
                answered, 500,
                "{} status {status}: {body}",
                language.interpreter
            );
        }
        assert_eq!(server.request("GET", "/s?status=201", b"").0, 201);
    }
}
