//! Queue triggers against a minimal consumer, each figure measured in the same run on the
//! same broker with the same component.
//!
//! Run with `cargo bench --bench queue` (release build). Prints a Markdown table.
//!
//! For NATS JetStream and for MQTT: a backlog of 20,000 small messages waits at the broker
//! while the consumer is away; then the consumer starts and the clock runs from its first
//! settled message to its last (messages per second). Both consumers work on up to 32
//! messages at once and run a fresh instance of the no-op probe component per message.
//! - Gust: a queue trigger (`gust mqt create --concurrency 32`) into a wasm function; the
//!   count is `gust_mqt_messages_total{outcome="succeeded"}`, read every 10 ms.
//! - Baseline: a minimal consumer in this process: the same client library and consumer
//!   settings (durable pull consumer with explicit ack; persistent MQTT 5 session with manual
//!   PUBACK), the component called directly through Gust's wasm runtime (same engine and
//!   pool settings), then the ack. No CloudEvents, no retries, no metering, no status.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gust_executor::{FunctionLogs, InstanceSpec, RequestId, Runtime};
use gust_harness::brokers::{Broker, BrokerKind};
use gust_harness::{Gust, GustOptions};
use gust_model::{BuiltinRuntime, Environment, Limits, Name, Namespace, Scaling};
use gust_runtime_wasm::WasmRuntime;
use tokio::sync::Semaphore;

use common::{PROBE_WASM, deploy, metric, print_table};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const MESSAGES: usize = 20_000;
const CONCURRENCY: usize = 32;

/// The probe component, called the way Gust's executor calls it: a fresh instance each time.
struct DirectCall {
    runtime: WasmRuntime,
    spec: InstanceSpec,
    _dir: tempfile::TempDir,
}

impl DirectCall {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("probe.wasm"), PROBE_WASM).unwrap();
        let runtime =
            WasmRuntime::new(&dir.path().join("cache"), Arc::new(FunctionLogs::new(100))).unwrap();
        let spec = InstanceSpec {
            namespace: Namespace::default(),
            function: Name::parse("function", "probe").unwrap(),
            revision: 1,
            environment: Environment::builtin(BuiltinRuntime::Wasm, 0),
            code_dir: dir.path().to_owned(),
            code_file: Some("probe.wasm".into()),
            entrypoint: None,
            env_vars: Default::default(),
            limits: Limits::default(),
            allow_outbound: Vec::new(),
            scaling: Scaling::default(),
        };
        Self {
            runtime,
            spec,
            _dir: dir,
        }
    }

    async fn call(&self, body: Bytes) {
        let id = RequestId::generate();
        let mut instance = self.runtime.start_instance(&self.spec, &id).await.unwrap();
        let request = http::Request::post("/").body(body).unwrap();
        let response = instance
            .handle(&id, request, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

fn rate(count: f64, elapsed: Duration) -> f64 {
    count / elapsed.as_secs_f64()
}

/// Starts Gust with the probe function and waits until `trigger` (created by `create`)
/// consumed the backlog; messages per second from its first settled message to its last.
fn gust_rate(gust: &Gust) -> f64 {
    let succeeded = || metric(gust, "gust_mqt_messages_total{kind=") as usize;
    let mut first: Option<(Instant, usize)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = Instant::now();
        let count = succeeded();
        if first.is_none() && count > 0 {
            first = Some((now, count));
        }
        if count >= MESSAGES {
            let (started, at_start) = first.unwrap();
            return rate((count - at_start) as f64, now - started);
        }
        assert!(now < deadline, "Gust consumed {count} of {MESSAGES}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_gust() -> Gust {
    let gust = Gust::start(GUST, GustOptions::default());
    deploy(&gust, "probe", "wasm", "probe.wasm", PROBE_WASM);
    gust
}

fn create_trigger(gust: &Gust, broker: &Broker, topic: &str) {
    let concurrency = CONCURRENCY.to_string();
    gust.cli(&[
        "mqt",
        "create",
        "bench",
        "--fn",
        "probe",
        "--kind",
        broker.kind.as_str(),
        "--url",
        &broker.url(),
        "--topic",
        topic,
        "--concurrency",
        &concurrency,
    ])
    .ok();
}

fn payloads() -> Vec<Vec<u8>> {
    (0..MESSAGES)
        .map(|i| format!("message {i}").into_bytes())
        .collect()
}

fn nats(rt: &tokio::runtime::Runtime) -> (f64, f64) {
    let broker = Broker::start(BrokerKind::Nats);
    // Gust: the backlog first, then the trigger (its stream is created on demand here).
    let gust = start_gust();
    create_trigger(&gust, &broker, "bench.gust");
    wait_state(&gust, "connected");
    let mut stopped = gust;
    stopped.stop();
    broker.publish("bench.gust", &payloads());
    stopped.start_again();
    let gust_rate = gust_rate(&stopped);
    eprintln!("NATS through Gust: {gust_rate:.0} messages/s");
    drop(stopped);

    broker.publish("bench.direct", &payloads());
    let url = broker.url();
    let direct = rt.block_on(async move {
        let call = Arc::new(DirectCall::new());
        call.call(Bytes::from_static(b"warm")).await;
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let stream = js
            .get_stream(js.stream_by_subject("bench.direct").await.unwrap())
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("direct".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: CONCURRENCY as i64,
                filter_subject: "bench.direct".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(CONCURRENCY)
            .messages()
            .await
            .unwrap();
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut first = None;
        for _ in 0..MESSAGES {
            let slot = slots.clone().acquire_owned().await.unwrap();
            let message = messages.next().await.unwrap().unwrap();
            first.get_or_insert_with(Instant::now);
            let call = call.clone();
            tokio::spawn(async move {
                call.call(message.payload.clone()).await;
                message.ack().await.unwrap();
                drop(slot);
            });
        }
        // Every message settled once every slot is free again.
        let _all = slots.acquire_many(CONCURRENCY as u32).await.unwrap();
        rate((MESSAGES - 1) as f64, first.unwrap().elapsed())
    });
    (gust_rate, direct)
}

fn mqtt(rt: &tokio::runtime::Runtime) -> (f64, f64) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let broker = Broker::start(BrokerKind::Mqtt);
    let gust = start_gust();
    create_trigger(&gust, &broker, "bench/gust");
    wait_state(&gust, "connected");
    let mut stopped = gust;
    stopped.stop();
    broker.publish("bench/gust", &payloads());
    stopped.start_again();
    let gust_rate = gust_rate(&stopped);
    eprintln!("MQTT through Gust: {gust_rate:.0} messages/s");
    drop(stopped);

    let options = || {
        let mut options = rumqttc::v5::MqttOptions::new("direct", "127.0.0.1", broker.port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_manual_acks(true)
            .set_receive_maximum(Some(64));
        options
    };
    // Subscribe with a persistent session, leave, let the backlog build, come back.
    rt.block_on(async {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options(), 64);
        client
            .subscribe("bench/direct", QoS::AtLeastOnce)
            .await
            .unwrap();
        while !matches!(
            eventloop.poll().await.unwrap(),
            rumqttc::v5::Event::Incoming(Packet::SubAck(_))
        ) {}
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
    });
    broker.publish("bench/direct", &payloads());
    let direct = rt.block_on(async {
        let call = Arc::new(DirectCall::new());
        call.call(Bytes::from_static(b"warm")).await;
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options(), 1024);
        // A task polls the connection (as Gust's does): it must keep reading and sending
        // pings and acks while the workers are busy.
        let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            let mut acks_sent = 0;
            while acks_sent < MESSAGES {
                match eventloop.poll().await.unwrap() {
                    rumqttc::v5::Event::Incoming(Packet::Publish(publish)) => {
                        let _ = received_tx.send(publish);
                    }
                    rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::PubAck(_)) => acks_sent += 1,
                    _ => {}
                }
            }
            Instant::now()
        });
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut first = None;
        for _ in 0..MESSAGES {
            let publish = received.recv().await.unwrap();
            first.get_or_insert_with(Instant::now);
            let slot = slots.clone().acquire_owned().await.unwrap();
            let (call, client) = (call.clone(), client.clone());
            tokio::spawn(async move {
                call.call(publish.payload.clone()).await;
                client.ack(&publish).await.unwrap();
                drop(slot);
            });
        }
        let last_ack = poller.await.unwrap();
        rate((MESSAGES - 1) as f64, last_ack - first.unwrap())
    });
    (gust_rate, direct)
}

fn wait_state(gust: &Gust, state: &str) {
    gust_harness::eventually(Duration::from_secs(30), || {
        let shown = gust.cli(&["mqt", "get", "bench", "-o", "json"]).ok().stdout;
        let trigger: serde_json::Value = serde_json::from_str(&shown).ok()?;
        (trigger["status"]["state"] == state).then_some(())
    })
    .expect("the trigger connects");
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Like Gust: a multi-threaded runtime with a worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for (name, run) in [
        ("NATS JetStream", nats as fn(&_) -> _),
        ("MQTT 5 (mosquitto)", mqtt),
    ] {
        let (gust, direct) = run(&rt);
        rows.push([
            format!("{name}: messages/s, {MESSAGES} messages, {CONCURRENCY} at a time"),
            format!("{gust:.0}/s"),
            format!("{direct:.0}/s (minimal consumer, component called directly)"),
            format!("{:.2}", gust / direct),
        ]);
    }
    print_table("Queue triggers into a no-op wasm function", rows);
}
