//! NATS servers with JetStream for cluster tests: one, or several joined as a cluster on
//! loopback, each with its own ports, routes and store directory, from Debian's
//! `nats-server`. A server can be killed and started again with its data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

struct Server {
    name: String,
    port: u16,
    cluster_port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

pub struct NatsCluster {
    _dir: tempfile::TempDir,
    servers: Vec<Server>,
    /// Clients connect with TLS (`tls://` URLs), trusting this CA (PEM).
    tls: Option<PathBuf>,
}

impl NatsCluster {
    /// Starts `size` servers (a cluster when more than one) and waits until JetStream
    /// answers on each.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, false)
    }

    /// One server whose clients must connect with TLS, its certificate (for 127.0.0.1) signed
    /// by a test CA: [`NatsCluster::ca`].
    pub fn start_tls() -> Self {
        Self::start_with(1, true)
    }

    fn start_with(size: usize, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tls = tls.then(|| {
            crate::tls::certificates(dir.path(), "IP:127.0.0.1");
            dir.path().join("ca.pem")
        });
        let servers: Vec<Server> = (0..size)
            .map(|index| Server {
                name: format!("n{}", index + 1),
                port: free_port(),
                cluster_port: free_port(),
                dir: dir.path().join(format!("n{}", index + 1)),
                process: None,
            })
            .collect();
        let mut cluster = Self {
            _dir: dir,
            servers,
            tls,
        };
        for index in 0..size {
            cluster.write_config(index);
        }
        for index in 0..size {
            cluster.launch(index);
        }
        for index in 0..size {
            cluster.wait_ready(index);
        }
        cluster
    }

    /// Every server's client URL, comma-separated: what `gust up --cluster` takes.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = (0..self.servers.len()).map(|i| self.url(i)).collect();
        urls.join(",")
    }

    pub fn url(&self, index: usize) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.servers[index].port)
    }

    /// The CA (PEM) the servers' certificates were signed by, when they use TLS.
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.tls.as_deref()
    }

    fn write_config(&self, index: usize) {
        let server = &self.servers[index];
        std::fs::create_dir_all(server.dir.join("store")).expect("store directory");
        let mut config = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{store}\"\n}}\n",
            name = server.name,
            port = server.port,
            store = server.dir.join("store").display(),
        );
        if let Some(ca) = &self.tls {
            let dir = ca.parent().expect("the CA's directory");
            config.push_str(&format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ));
        }
        if self.servers.len() > 1 {
            let routes: Vec<String> = self
                .servers
                .iter()
                .map(|s| format!("nats://127.0.0.1:{}", s.cluster_port))
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: gust-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                server.cluster_port,
                routes.join(", ")
            ));
        }
        std::fs::write(server.dir.join("nats.conf"), config).expect("nats config");
    }

    fn launch(&mut self, index: usize) {
        let server = &mut self.servers[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(server.dir.join("nats.log"))
            .expect("nats log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(server.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server ({e}); run ./scripts/setup.sh"));
        server.process = Some(child);
    }

    /// Waits until JetStream answers on server `index` (in a cluster: once its meta leader
    /// is elected).
    fn wait_ready(&self, index: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let url = self.url(index);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = runtime.block_on(async {
                let mut options = async_nats::ConnectOptions::new();
                if let Some(ca) = &self.tls {
                    options = options.add_root_certificates(ca.clone());
                }
                let client = options.connect(&url).await.ok()?;
                let reply = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request("$JS.API.INFO", "".into()),
                )
                .await
                .ok()?
                .ok()?;
                let reply: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
                reply.get("error").is_none().then_some(())
            });
            if ready.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NATS server {index} did not become ready:\n{}",
                self.log(index)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.servers[index].dir.join("nats.log")).unwrap_or_default()
    }

    /// SIGKILL to server `index`.
    pub fn kill9(&mut self, index: usize) {
        if let Some(mut child) = self.servers[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `index` again with its data, and waits until it serves.
    pub fn restart(&mut self, index: usize) {
        self.kill9(index);
        self.launch(index);
        self.wait_ready(index);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            self.kill9(index);
        }
    }
}
