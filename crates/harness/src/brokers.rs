//! Message brokers for queue-trigger tests and benchmarks: each started from its Debian
//! package on a free port with its own data directory, killed (`SIGKILL`, the whole process
//! group) and restarted on the same port and data like an operator would, and stopped when
//! dropped. Small clients publish to and read from topics the way a user's producer and
//! consumer would.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::free_port;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Nats,
    Mqtt,
    Amqp,
    Redis,
}

impl BrokerKind {
    /// The `--kind` value of `gust mqt create`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Mqtt => "mqtt",
            Self::Amqp => "amqp",
            Self::Redis => "redis",
        }
    }

    /// A topic name in the broker's own style: `a.b` for NATS, `a/b` for MQTT, `a-b` else.
    pub fn topic(self, parts: &[&str]) -> String {
        parts.join(match self {
            Self::Nats => ".",
            Self::Mqtt => "/",
            Self::Amqp | Self::Redis => "-",
        })
    }
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct BrokerMessage {
    /// Headers, user properties, or (Redis) the entry's fields other than `data`.
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl BrokerMessage {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What has been read from one topic so far, and where reading stopped.
pub struct Collector {
    topic: String,
    /// NATS: the last stream sequence read; Redis: the last entry id.
    cursor: String,
    pub messages: Vec<BrokerMessage>,
}

pub struct Broker {
    pub kind: BrokerKind,
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Child>,
    runtime: tokio::runtime::Runtime,
}

impl Broker {
    pub fn start(kind: BrokerKind) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut broker = Self {
            kind,
            port: free_port(),
            dir,
            process: None,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
        };
        broker.configure();
        broker.launch();
        broker
    }

    /// The URL a trigger connects with (RabbitMQ's with its default user's credentials).
    pub fn url(&self) -> String {
        let port = self.port;
        match self.kind {
            BrokerKind::Nats => format!("nats://127.0.0.1:{port}"),
            BrokerKind::Mqtt => format!("mqtt://127.0.0.1:{port}"),
            BrokerKind::Amqp => format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            BrokerKind::Redis => format!("redis://127.0.0.1:{port}"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn configure(&self) {
        std::fs::create_dir_all(self.data()).expect("broker data directory");
        match self.kind {
            BrokerKind::Mqtt => {
                self.write_mosquitto_acl(&[]);
                let config = format!(
                    // `user root`: started as root, mosquitto would otherwise switch to its
                    // own user, which cannot write the persistence file in our directory.
                    "listener {port} 127.0.0.1\nuser root\nallow_anonymous true\nacl_file {acl}\n\
                     persistence true\npersistence_location {data}/\n\
                     autosave_interval 1\n\
                     max_queued_messages 0\nmax_inflight_messages 0\n\
                     persistent_client_expiration 1d\nlog_dest stderr\n",
                    port = self.port,
                    acl = self.dir.path().join("acl").display(),
                    data = self.data().display(),
                );
                std::fs::write(self.dir.path().join("mosquitto.conf"), config).unwrap();
            }
            BrokerKind::Amqp => {
                std::fs::write(self.dir.path().join("enabled_plugins"), "[].\n").unwrap();
            }
            BrokerKind::Nats | BrokerKind::Redis => {}
        }
    }

    /// Mosquitto's ACL: everything allowed except publishing to `denied`.
    fn write_mosquitto_acl(&self, denied: &[&str]) {
        let mut acl = String::from("topic readwrite #\n");
        for topic in denied {
            acl = format!("topic deny {topic}\n{acl}");
        }
        std::fs::write(self.dir.path().join("acl"), acl).unwrap();
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let data = self.data();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let mut command = match self.kind {
            BrokerKind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(&data);
                c
            }
            BrokerKind::Mqtt => {
                let mut c = Command::new(find_program("mosquitto"));
                c.arg("-c").arg(self.dir.path().join("mosquitto.conf"));
                c
            }
            BrokerKind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                ])
                .args(["--appendfsync", "always", "--dir"])
                .arg(&data);
                c
            }
            BrokerKind::Amqp => {
                let home = self.dir.path();
                let mut c = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
                c.env("HOME", home)
                    .env("RABBITMQ_NODENAME", format!("gust-test-{port}@localhost"))
                    .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                    .env("RABBITMQ_NODE_PORT", &port)
                    .env("RABBITMQ_DIST_PORT", free_port().to_string())
                    .env("RABBITMQ_MNESIA_BASE", &data)
                    .env("RABBITMQ_LOG_BASE", home.join("log"))
                    .env(
                        "RABBITMQ_ENABLED_PLUGINS_FILE",
                        home.join("enabled_plugins"),
                    )
                    .env("RABBITMQ_CONFIG_FILE", home.join("rabbitmq"))
                    .env(
                        "RABBITMQ_ADVANCED_CONFIG_FILE",
                        home.join("advanced.config"),
                    )
                    .env("RABBITMQ_PID_FILE", home.join("pid"));
                c
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so that a kill reaches every process it started.
            .process_group(0);
        self.process = Some(command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the {} broker ({e}); run ./scripts/setup.sh",
                self.kind.as_str()
            )
        }));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = self.runtime.block_on(self.probe());
            if probe.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the {} broker did not start ({probe:?}):\n{}",
                self.kind.as_str(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Succeeds once the broker serves clients (JetStream included for NATS).
    async fn probe(&self) -> anyhow::Result<()> {
        match self.kind {
            BrokerKind::Nats => {
                let client = async_nats::connect(self.url()).await?;
                let reply = client.request("$JS.API.INFO", "".into()).await?;
                anyhow::ensure!(!reply.payload.is_empty(), "JetStream is not ready");
            }
            BrokerKind::Redis => {
                let mut connection = self.redis().await?;
                let _: String = redis::cmd("PING").query_async(&mut connection).await?;
            }
            BrokerKind::Amqp => {
                lapin::Connection::connect(&self.url(), Default::default())
                    .await?
                    .close(200, "probe".into())
                    .await?;
            }
            BrokerKind::Mqtt => {
                tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            }
        }
        Ok(())
    }

    /// The broker's process id (RabbitMQ: its start script's).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("the broker is running").id()
    }

    /// The broker's own directory (configuration, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// SIGKILL to the broker and everything it started.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.process.take() {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM to the broker's process group, then waits for it to exit (SIGKILL after 30 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.process = Some(child);
            self.kill9();
        }
    }

    /// Starts the broker again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(
            async_nats::connect(self.url()).await?,
        ))
    }

    /// `max_ack_pending` of the JetStream durable consumer `durable` on the stream that
    /// captures `subject`.
    pub fn nats_max_ack_pending(&self, subject: &str, durable: &str) -> i64 {
        self.runtime
            .block_on(async {
                let js = self.jetstream().await?;
                let stream = js.get_stream(js.stream_by_subject(subject).await?).await?;
                anyhow::Ok(stream.consumer_info(durable).await?.config.max_ack_pending)
            })
            .unwrap_or_else(|e| panic!("consumer {durable} on {subject}: {e:#}"))
    }

    async fn redis(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Prepares `topic` to be read with [`Broker::collect`]: MQTT keeps messages only for
    /// sessions subscribed before they are published, so a persistent one subscribes now.
    pub fn collector(&self, topic: &str) -> Collector {
        if self.kind == BrokerKind::Mqtt {
            self.runtime
                .block_on(mqtt_collect(self.port, topic, Duration::ZERO))
                .expect("MQTT collector session");
        }
        if self.kind == BrokerKind::Amqp {
            self.runtime.block_on(async {
                let (connection, _channel) = amqp_channel(&self.url()).await;
                amqp_ensure_queue(&connection, topic)
                    .await
                    .expect("declare the queue");
            });
        }
        Collector {
            topic: topic.to_owned(),
            cursor: String::new(),
            messages: Vec::new(),
        }
    }

    /// Reads what arrived on the collector's topic since the last read.
    pub fn collect(&self, collector: &mut Collector) {
        let result = self.runtime.block_on(async {
            match self.kind {
                BrokerKind::Nats => nats_collect(&self.url(), collector).await,
                BrokerKind::Redis => redis_collect(&mut self.redis().await?, collector).await,
                BrokerKind::Amqp => amqp_collect(&self.url(), collector).await,
                BrokerKind::Mqtt => {
                    let messages =
                        mqtt_collect(self.port, &collector.topic, Duration::from_millis(300))
                            .await?;
                    collector.messages.extend(messages);
                    Ok(())
                }
            }
        });
        if let Err(err) = result {
            eprintln!(
                "reading {} failed (retried on the next read): {err:#}",
                collector.topic
            );
        }
    }

    /// Reads until `done` holds for what was read, or `timeout`; returns whether it held.
    pub fn collect_until(
        &self,
        collector: &mut Collector,
        timeout: Duration,
        mut done: impl FnMut(&[BrokerMessage]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.collect(collector);
            if done(&collector.messages) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Publishes `payloads` to `topic` and waits until the broker has stored every one.
    pub fn publish(&self, topic: &str, payloads: &[Vec<u8>]) {
        self.runtime
            .block_on(async {
                match self.kind {
                    BrokerKind::Nats => nats_publish(&self.url(), topic, payloads).await,
                    BrokerKind::Mqtt => mqtt_publish(self.port, topic, payloads).await,
                    BrokerKind::Amqp => amqp_publish(&self.url(), topic, payloads).await,
                    BrokerKind::Redis => {
                        let mut connection = self.redis().await?;
                        for chunk in payloads.chunks(500) {
                            let mut pipe = redis::pipe();
                            for payload in chunk {
                                pipe.cmd("XADD")
                                    .arg(topic)
                                    .arg("*")
                                    .arg("data")
                                    .arg(payload.as_slice());
                            }
                            let _: Vec<String> = pipe.query_async(&mut connection).await?;
                        }
                        Ok(())
                    }
                }
            })
            .unwrap_or_else(|e| panic!("publishing to {topic} failed: {e:#}"));
    }

    /// Makes publishing to `topic` fail until [`Broker::allow_publishing`]: a stream that
    /// is full (NATS), an ACL that denies it (MQTT), a queue that rejects new messages
    /// (AMQP), a key of the wrong type (Redis). Create the topic's collector before: MQTT
    /// cannot subscribe to a denied topic.
    pub fn refuse_publishing(&self, topic: &str) {
        match self.kind {
            BrokerKind::Mqtt => {
                self.write_mosquitto_acl(&[topic]);
                self.reload_mosquitto();
                // The reload takes effect a little later: wait until a publish is refused.
                let refused = (0..50).any(|_| {
                    let outcome =
                        self.runtime
                            .block_on(mqtt_publish(self.port, topic, &[b"probe".to_vec()]));
                    outcome.is_err() || {
                        std::thread::sleep(Duration::from_millis(100));
                        false
                    }
                });
                assert!(refused, "mosquitto never refused {topic}");
            }
            _ => self
                .runtime
                .block_on(async {
                    match self.kind {
                        BrokerKind::Nats => {
                            let js = self.jetstream().await?;
                            js.create_stream(async_nats::jetstream::stream::Config {
                                name: "refusing".into(),
                                subjects: vec![topic.to_owned()],
                                max_messages: 1,
                                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                                ..Default::default()
                            })
                            .await?;
                            js.publish(topic.to_owned(), "filler".into()).await?.await?;
                        }
                        BrokerKind::Amqp => {
                            let (_connection, channel) = amqp_channel(&self.url()).await;
                            channel
                                .queue_delete(topic.into(), Default::default())
                                .await?;
                            let mut arguments = lapin::types::FieldTable::default();
                            arguments
                                .insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
                            arguments.insert(
                                "x-overflow".into(),
                                lapin::types::AMQPValue::LongString("reject-publish".into()),
                            );
                            channel
                                .queue_declare(
                                    topic.into(),
                                    lapin::options::QueueDeclareOptions::durable(),
                                    arguments,
                                )
                                .await?;
                        }
                        BrokerKind::Redis => {
                            let mut connection = self.redis().await?;
                            let _: () = redis::cmd("SET")
                                .arg(topic)
                                .arg("not a stream")
                                .query_async(&mut connection)
                                .await?;
                        }
                        BrokerKind::Mqtt => unreachable!(),
                    }
                    anyhow::Ok(())
                })
                .expect("make publishing fail"),
        }
    }

    /// Undoes [`Broker::refuse_publishing`]; the topic is writable again (a NATS stream keeps
    /// the message that filled it).
    pub fn allow_publishing(&self, topic: &str) {
        match self.kind {
            BrokerKind::Mqtt => {
                self.write_mosquitto_acl(&[]);
                self.reload_mosquitto();
            }
            _ => self
                .runtime
                .block_on(async {
                    match self.kind {
                        BrokerKind::Nats => {
                            let js = self.jetstream().await?;
                            js.update_stream(async_nats::jetstream::stream::Config {
                                name: "refusing".into(),
                                subjects: vec![topic.to_owned()],
                                max_messages: -1,
                                ..Default::default()
                            })
                            .await?;
                        }
                        BrokerKind::Amqp => {
                            let (_connection, channel) = amqp_channel(&self.url()).await;
                            channel
                                .queue_delete(topic.into(), Default::default())
                                .await?;
                            channel
                                .queue_declare(
                                    topic.into(),
                                    lapin::options::QueueDeclareOptions::durable(),
                                    quorum_queue(),
                                )
                                .await?;
                        }
                        BrokerKind::Redis => {
                            let mut connection = self.redis().await?;
                            let _: () = redis::cmd("DEL")
                                .arg(topic)
                                .query_async(&mut connection)
                                .await?;
                        }
                        BrokerKind::Mqtt => unreachable!(),
                    }
                    anyhow::Ok(())
                })
                .expect("make publishing work again"),
        }
    }

    fn reload_mosquitto(&self) {
        if let Some(child) = &self.process {
            // SAFETY: plain kill(2) of our own child: SIGHUP makes mosquitto reload its ACL.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGHUP);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn find_program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(name)
}

/// Publishes through JetStream, creating a stream for `topic` when none captures it.
async fn nats_publish(url: &str, topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    if js.stream_by_subject(topic.to_owned()).await.is_err() {
        let name: String = topic
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("producer-{name}"),
            subjects: vec![topic.to_owned()],
            ..Default::default()
        })
        .await?;
    }
    for chunk in payloads.chunks(256) {
        let mut acks = Vec::with_capacity(chunk.len());
        for payload in chunk {
            acks.push(js.publish(topic.to_owned(), payload.clone().into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

async fn nats_collect(url: &str, collector: &mut Collector) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let Ok(name) = js.stream_by_subject(collector.topic.clone()).await else {
        return Ok(());
    };
    let mut stream = js.get_stream(&name).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut sequence: u64 = collector.cursor.parse().unwrap_or(0);
    while sequence < last {
        sequence += 1;
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        if message.subject.as_str() != collector.topic {
            continue;
        }
        let headers = message
            .headers
            .iter()
            .map(|(name, values)| {
                let value = values
                    .first()
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                (name.to_string(), value)
            })
            .collect();
        collector.messages.push(BrokerMessage {
            headers,
            payload: message.payload.to_vec(),
        });
        collector.cursor = sequence.to_string();
    }
    Ok(())
}

async fn redis_collect(
    connection: &mut redis::aio::MultiplexedConnection,
    collector: &mut Collector,
) -> anyhow::Result<()> {
    loop {
        let start = if collector.cursor.is_empty() {
            "-".to_owned()
        } else {
            format!("({}", collector.cursor)
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&collector.topic)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await?;
        if reply.ids.is_empty() {
            return Ok(());
        }
        for entry in reply.ids {
            let mut headers = BTreeMap::new();
            let mut payload = Vec::new();
            for (field, value) in &entry.map {
                let bytes: Vec<u8> = redis::from_redis_value_ref(value).unwrap_or_default();
                if field == "data" {
                    payload = bytes;
                } else {
                    headers.insert(field.clone(), String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            collector.messages.push(BrokerMessage { headers, payload });
            collector.cursor = entry.id;
        }
    }
}

/// Queues are declared as quorum queues, like Gust declares them.
fn quorum_queue() -> lapin::types::FieldTable {
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// Declares `queue` as a durable quorum queue unless it exists (as Gust would declare it).
async fn amqp_ensure_queue(connection: &lapin::Connection, queue: &str) -> anyhow::Result<()> {
    let probe = connection.create_channel().await?;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if probe
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .is_err()
    {
        connection
            .create_channel()
            .await?
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions::durable(),
                quorum_queue(),
            )
            .await?;
    }
    Ok(())
}

async fn amqp_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("an AMQP channel");
    (connection, channel)
}

async fn amqp_publish(url: &str, topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let (connection, channel) = amqp_channel(url).await;
    amqp_ensure_queue(&connection, topic).await?;
    channel.confirm_select(Default::default()).await?;
    let mut confirms = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let mandatory = lapin::options::BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    topic.into(),
                    mandatory,
                    payload,
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await?,
        );
    }
    for confirm in confirms {
        match confirm.await? {
            lapin::Confirmation::Ack(None) => {}
            other => anyhow::bail!("publish not confirmed: {other:?}"),
        }
    }
    Ok(())
}

async fn amqp_collect(url: &str, collector: &mut Collector) -> anyhow::Result<()> {
    let (_connection, channel) = amqp_channel(url).await;
    while let Some(message) = channel
        .basic_get(
            collector.topic.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await?
    {
        let delivery = message.delivery;
        let mut headers = BTreeMap::new();
        if let Some(table) = delivery.properties.headers() {
            for (name, value) in table.inner() {
                let text = match value {
                    lapin::types::AMQPValue::LongString(s) => {
                        String::from_utf8_lossy(s.as_bytes()).into_owned()
                    }
                    other => format!("{other:?}"),
                };
                headers.insert(name.to_string(), text);
            }
        }
        if let Some(content_type) = delivery.properties.content_type() {
            headers.insert("content-type".into(), content_type.to_string());
        }
        collector.messages.push(BrokerMessage {
            headers,
            payload: delivery.data,
        });
    }
    Ok(())
}

fn mqtt_options(client_id: &str, port: u16, clean: bool) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_start(clean)
        .set_keep_alive(Duration::from_secs(10));
    if !clean {
        options.set_session_expiry_interval(Some(24 * 3600));
    }
    options
}

async fn mqtt_publish(port: u16, topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::{QoS, v5::Packet};
    let client_id = format!("publisher-{}", std::process::id());
    let (client, mut eventloop) =
        rumqttc::v5::AsyncClient::new(mqtt_options(&client_id, port, true), 1024);
    let topic = topic.to_owned();
    let payloads = payloads.to_vec();
    let total = payloads.len();
    let sender = tokio::spawn(async move {
        for payload in payloads {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < total {
        if let rumqttc::v5::Event::Incoming(Packet::PubAck(ack)) = eventloop.poll().await? {
            use rumqttc::v5::mqttbytes::v5::PubAckReason;
            anyhow::ensure!(
                matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ),
                "the broker refused the message: {:?}",
                ack.reason
            );
            acked += 1;
        }
    }
    let client = sender.await??;
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}

/// Resumes the collector session of `topic` (subscribing it), reads for `listen` after the
/// last message, and leaves; what arrives later waits in the session.
async fn mqtt_collect(
    port: u16,
    topic: &str,
    listen: Duration,
) -> anyhow::Result<Vec<BrokerMessage>> {
    use rumqttc::v5::mqttbytes::{QoS, v5::Packet};
    let client_id: String = format!("collector-{topic}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let (client, mut eventloop) =
        rumqttc::v5::AsyncClient::new(mqtt_options(&client_id, port, false), 1024);
    client.subscribe(topic.to_owned(), QoS::AtLeastOnce).await?;
    let mut messages = Vec::new();
    let mut subscribed = false;
    loop {
        let wait = if subscribed {
            listen
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(wait.max(Duration::from_millis(1)), eventloop.poll()).await {
            Err(_) => break,
            Ok(event) => match event? {
                rumqttc::v5::Event::Incoming(Packet::SubAck(_)) => subscribed = true,
                rumqttc::v5::Event::Incoming(Packet::Publish(publish)) => {
                    let mut headers: BTreeMap<String, String> = BTreeMap::new();
                    if let Some(properties) = &publish.properties {
                        headers.extend(properties.user_properties.iter().cloned());
                        if let Some(content_type) = &properties.content_type {
                            headers.insert("content-type".into(), content_type.clone());
                        }
                    }
                    messages.push(BrokerMessage {
                        headers,
                        payload: publish.payload.to_vec(),
                    });
                }
                _ => {}
            },
        }
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    Ok(messages)
}

/// Reads everything from a stream of results until it ends or stalls (used by benchmarks).
pub async fn drain_stream<S, T, E>(mut stream: S, stall: Duration) -> Vec<T>
where
    S: futures_util::Stream<Item = Result<T, E>> + Unpin,
{
    let mut items = Vec::new();
    while let Ok(Some(Ok(item))) = tokio::time::timeout(stall, stream.next()).await {
        items.push(item);
    }
    items
}
