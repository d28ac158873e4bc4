//! Helpers for end-to-end tests: start the real `gust` binary in a temporary data directory
//! on free ports, wait until it is ready, drive it with its CLI and plain HTTP, and kill or
//! restart it like an operator would.

pub mod brokers;
pub mod nats_cluster;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use reqwest;
pub use reqwest::blocking::Response;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface can bind an ephemeral port")
}

/// Options for one Gust under test.
#[derive(Debug, Clone)]
pub struct GustOptions {
    pub pool_size: u32,
    pub extra_args: Vec<String>,
    /// A limit on `gust up`'s address space (RLIMIT_AS), in bytes.
    pub address_space_limit: Option<u64>,
    /// Environment variables of `gust up`.
    pub env: Vec<(String, String)>,
}

impl Default for GustOptions {
    fn default() -> Self {
        Self {
            pool_size: 1,
            extra_args: Vec::new(),
            address_space_limit: None,
            env: Vec::new(),
        }
    }
}

/// A running `gust up` and everything needed to talk to it.
pub struct Gust {
    binary: PathBuf,
    pub dir: tempfile::TempDir,
    pub public_port: u16,
    pub api_port: u16,
    options: GustOptions,
    child: Option<Child>,
    http: reqwest::blocking::Client,
}

/// The result of a CLI run.
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the command failed; returns its stderr.
    pub fn failed(self) -> String {
        assert_ne!(
            self.code, 0,
            "command unexpectedly succeeded\nstdout: {}",
            self.stdout
        );
        self.stderr
    }
}

impl Gust {
    /// Starts `gust up` from `binary` and waits until its API answers.
    pub fn start(binary: &str, options: GustOptions) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let mut gust = Self {
            binary: PathBuf::from(binary),
            dir,
            public_port: free_port(),
            api_port: free_port(),
            options,
            child: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client without TLS builds"),
        };
        // A port handed out by `free_port` can be taken again before Gust binds it: then try
        // other ports.
        for _ in 0..3 {
            match gust.try_launch() {
                Ok(()) => return gust,
                Err(log) if log.contains("cannot listen on") => {
                    gust.public_port = free_port();
                    gust.api_port = free_port();
                }
                Err(log) => panic!("gust exited during start:\n{log}"),
            }
        }
        panic!("gust found no free ports:\n{}", gust.log());
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_home(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// A scratch directory for test files, readable by everyone (workers read code from it
    /// only through uploads, but custom environment programs are bound in by path).
    pub fn scratch(&self) -> PathBuf {
        let path = self.dir.path().join("scratch");
        std::fs::create_dir_all(&path).expect("scratch directory");
        path
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn public_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public_port)
    }

    fn launch(&mut self) {
        if let Err(log) = self.try_launch() {
            panic!("gust exited during start:\n{log}");
        }
    }

    /// Starts `gust up` and waits until it is ready; `Err` with its log if it exited.
    fn try_launch(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("gust.log")).expect("log file");
        let mut command = Command::new(&self.binary);
        command
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.public_port))
            .arg("--api-listen")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--pool-size")
            .arg(self.options.pool_size.to_string())
            .args(&self.options.extra_args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .env("XDG_CONFIG_HOME", self.config_home())
            .env_remove("GUST_URL")
            .env_remove("GUST_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        if let Some(bytes) = self.options.address_space_limit {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            // SAFETY: setrlimit is async-signal-safe and `limit` is a plain value.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.child = Some(command.spawn().expect("the gust binary starts"));
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Another process may have taken a port between `free_port` and this start (two
        // tests can even be handed the same one): ready means *this* Gust said it is up on
        // its API port and answers there.
        let up = format!("API:           {}", self.api_url());
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exit status {status}:\n{}", self.log()));
            }
            let ready = self.log().contains(&up)
                && self
                    .http
                    .get(format!("{}/readyz", self.api_url()))
                    .send()
                    .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "gust did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything `gust up` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gust.log")).unwrap_or_default()
    }

    /// The admin token `gust up` created.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("gust up writes the admin token")
            .trim()
            .to_owned()
    }

    /// Runs the CLI as a user on this machine would (config from `gust up`, no flags).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_env(args, &[])
    }

    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let mut command = self.cli_command(args);
        for (key, value) in env {
            command.env(key, value);
        }
        CliOutput::from(command.output().expect("the gust binary runs"))
    }

    /// The CLI with `args`, pointed at this Gust by its config file alone (no `GUST_*`
    /// variables from the test's environment).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("XDG_CONFIG_HOME", self.config_home())
            .env_remove("GUST_URL")
            .env_remove("GUST_TOKEN")
            .env_remove("GUST_CA_CERT")
            .env_remove("GUST_NAMESPACE");
        command
    }

    /// Starts a long-running CLI command (such as `fn logs -f`) with its stdout piped.
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        self.cli_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gust binary runs")
    }

    /// Writes `content` to `name` in the scratch directory and returns its path.
    pub fn write_file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.scratch().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent directory");
        }
        std::fs::write(&path, content).expect("scratch file");
        path
    }

    /// `gust fn create NAME --env ENV --code CODE EXTRA...`, whatever it answers.
    pub fn create_function(&self, name: &str, env: &str, code: &Path, extra: &[&str]) -> CliOutput {
        let code = code.to_string_lossy();
        let mut args = vec!["fn", "create", name, "--env", env, "--code", &code];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// Creates a function from source text and a route to it at `/<name>`.
    pub fn deploy(&self, name: &str, env: &str, file_name: &str, source: &str, extra: &[&str]) {
        let path = self.write_file(&format!("{name}/{file_name}"), source);
        self.create_function(name, env, &path, extra).ok();
        let url = format!("/{name}");
        self.cli(&[
            "route", "create", "--fn", name, "--url", &url, "--name", name,
        ])
        .ok();
    }

    /// Creates function `name` from the code at `code` (a file, directory or archive) and a
    /// prefix route `/name` to it.
    pub fn deploy_path(&self, name: &str, env: &str, code: &str, extra: &[&str]) {
        self.create_function(name, env, Path::new(code), extra).ok();
        let url = format!("/{name}");
        self.cli(&["route", "create", "--fn", name, "--url", &url, "--prefix"])
            .ok();
    }

    pub fn get(&self, path: &str) -> Response {
        self.http
            .get(self.public_url(path))
            .send()
            .expect("the public listener answers")
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// The row of `gust usage --fn FUNCTION --since 2h -o json`; null until the function's
    /// first record is stored.
    pub fn usage_row(&self, function: &str) -> serde_json::Value {
        let output = self
            .cli(&["usage", "--fn", function, "--since", "2h", "-o", "json"])
            .ok();
        let report: serde_json::Value =
            serde_json::from_str(&output.stdout).expect("usage prints JSON");
        report["rows"][0].clone()
    }

    /// The API's OpenAPI document, as `GET /v1/openapi.json` serves it.
    pub fn openapi(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/v1/openapi.json", self.api_url()))
            .send()
            .and_then(|response| response.json())
            .expect("the API serves its OpenAPI document")
    }

    /// POSTs `body` as JSON to `path` on the public listener.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.http
            .post(self.public_url(path))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .expect("the public listener answers")
    }

    /// Waits up to 30 s for queue trigger `name` to report `connected`.
    pub fn wait_trigger_connected(&self, name: &str) {
        let status = || -> serde_json::Value {
            self.api(reqwest::Method::GET, &format!("/v1/mqtriggers/{name}"))
                .send()
                .and_then(|r| r.json())
                .unwrap_or_default()
        };
        eventually(Duration::from_secs(30), || {
            (status()["status"]["state"] == "connected").then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "trigger {name} never connected: {}\n{}",
                status(),
                self.log()
            )
        });
    }

    /// An API request with the admin token.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url()))
            .bearer_auth(self.token())
    }

    /// Where this Gust keeps its workers' host directories (as `gust up` printed it).
    pub fn worker_run_dir(&self) -> PathBuf {
        self.log()
            .lines()
            .find_map(|line| line.trim().strip_prefix("workers:"))
            .map(|dir| PathBuf::from(dir.trim()))
            .expect("gust up prints its workers' directory")
    }

    /// The API listener's `/metrics`, as text.
    pub fn metrics(&self) -> String {
        self.api(reqwest::Method::GET, "/metrics")
            .send()
            .and_then(|r| r.text())
            .expect("the API answers /metrics")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gust is running").id()
    }

    /// Worker processes of this Gust (its descendants) whose command line contains `needle`.
    pub fn worker_pids(&self, needle: &str) -> Vec<u32> {
        let Some(child) = self.child.as_ref() else {
            return Vec::new();
        };
        descendants_matching(child.id(), needle)
    }

    /// SIGKILL: no cleanup, no drain.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        self.terminate(Duration::from_secs(40))
    }

    /// SIGTERM, up to `grace` for a clean exit, then SIGKILL; whether it exited 0 in time.
    fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill with a valid pid of our own child and a valid signal.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `gust up` again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Starts `gust up` again after a clean stop.
    pub fn start_again(&mut self) {
        self.launch();
    }
}

impl Drop for Gust {
    /// Stops Gust cleanly (so its workers stop with it); SIGKILL if that does not work.
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// Reads a raw HTTP/1.1 answer to its end and returns its status (0 when there was none) and
/// body (the headers skipped). For tests that must send requests byte for byte.
pub fn read_answer(stream: &mut impl std::io::Read) -> (u16, String) {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|ppid| ppid.trim().parse().ok())
}

/// Descendants of `ancestor` whose command line contains `needle` (from /proc).
pub fn descendants_matching(ancestor: u32, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(needle))
        })
        .filter(|pid| {
            let mut current = *pid;
            while let Some(parent) = parent_of(current) {
                if parent == ancestor {
                    return true;
                }
                if parent <= 1 {
                    return false;
                }
                current = parent;
            }
            false
        })
        .collect()
}

/// CPU time (user and system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .unwrap_or_default();
    // The command name (field 2) may contain spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        // utime and stime are fields 14 and 15; the state (field 3) comes first here.
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}
