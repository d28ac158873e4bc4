//! Queue triggers against a minimal consumer, each figure measured in the same run on the
//! same broker with the same component.
//!
//! Run with `cargo bench --bench queue` (release build). Prints a Markdown table.
//!
//! For NATS JetStream and for MQTT: a backlog of 20,000 small messages waits at the broker
//! while the consumer is away; then the consumer starts (messages per second, and CPU time
//! per message of the consumer's and the broker's processes). Both consumers work on up to
//! 32 messages at once and run a fresh instance of the no-op probe component per message.
//! Each round starts a new broker, and the two consumers take turns going first.
//! - Gust: a queue trigger (`gust mqt create --concurrency 32`) into a wasm function; the
//!   count is `gust_mqt_messages_total{outcome="succeeded"}`, read every 50 ms, the rate
//!   taken between two readings made while messages flowed.
//! - Baseline: a minimal consumer in this process, timed from its first message to its last
//!   ack: the same client library, allocator and consumer settings (durable pull consumer
//!   with explicit ack, 64 unacknowledged; persistent MQTT 5 session with manual PUBACK),
//!   the component called directly through Gust's wasm runtime (same engine and pool
//!   settings), then the ack. No CloudEvents, no retries, no metering, no status.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gust_executor::{
    FunctionLogs, InstanceSpec, PreparedRevision, RequestBody, RequestId, Runtime,
};
use gust_harness::brokers::{Broker, BrokerKind};
use gust_harness::{Gust, GustOptions, cpu_time};
use gust_model::{BuiltinRuntime, Environment, Limits, Name, Namespace, Scaling};
use gust_runtime_wasm::{PoolSize, WasmRuntime};
use tokio::sync::Semaphore;

use common::{PROBE_WASM, deploy, metric, print_table, us};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const MESSAGES: usize = 20_000;
const CONCURRENCY: usize = 32;
/// Gust and the minimal consumer take turns this many times (each round on a new broker);
/// the table shows the round with the median ratio, the machine's speed drifts between
/// rounds more than it does within one.
const ROUNDS: usize = 9;

/// The same allocator as the `gust` binary, so that the comparison is of the work done.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The probe component, called the way Gust's executor calls it: a fresh instance each time.
struct DirectCall {
    runtime: WasmRuntime,
    spec: InstanceSpec,
    /// Prepared on the first call, as the executor keeps it for a revision.
    prepared: tokio::sync::OnceCell<Arc<dyn PreparedRevision>>,
    _dir: tempfile::TempDir,
}

impl DirectCall {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("probe.wasm"), PROBE_WASM).unwrap();
        let runtime = WasmRuntime::new(
            &dir.path().join("cache"),
            Arc::new(FunctionLogs::new(100)),
            PoolSize::default(),
        )
        .unwrap();
        let spec = InstanceSpec {
            namespace: Namespace::default(),
            function: Name::parse("function", "probe").unwrap(),
            function_uid: String::new(),
            revision: 1,
            environment: Environment::builtin(BuiltinRuntime::Wasm, 0),
            code_dir: dir.path().to_owned(),
            code_file: Some("probe.wasm".into()),
            entrypoint: None,
            env_vars: Default::default(),
            limits: Limits::default(),
            allow_outbound: Vec::new(),
            network: Default::default(),
            scaling: Scaling::default(),
            mounted: Vec::new(),
            secret_env: Vec::new(),
        };
        Self {
            runtime,
            spec,
            prepared: tokio::sync::OnceCell::new(),
            _dir: dir,
        }
    }

    async fn call(&self, body: Bytes) {
        let id = RequestId::generate();
        let prepared = self
            .prepared
            .get_or_init(|| async { self.runtime.prepare(&self.spec).await.unwrap() })
            .await;
        let mut instance = prepared.start(&id).await.unwrap();
        let request = http::Request::post("/")
            .body(RequestBody::full(body))
            .unwrap();
        let response = instance
            .handle(&id, request, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// What one consumer achieved: messages per second over the timed interval, and the CPU time
/// its process and the broker spent per message meanwhile.
struct Run {
    rate: f64,
    consumer_cpu: Duration,
    broker_cpu: Duration,
}

/// CPU time of the consumer's and the broker's processes, read together.
#[derive(Clone, Copy)]
struct CpuMark {
    consumer: Duration,
    broker: Duration,
}

impl CpuMark {
    fn read(consumer: u32, broker: u32) -> Self {
        Self {
            consumer: cpu_time(consumer),
            broker: cpu_time(broker),
        }
    }

    fn run_since(self, start: Self, messages: usize, elapsed: Duration) -> Run {
        Run {
            rate: messages as f64 / elapsed.as_secs_f64(),
            consumer_cpu: (self.consumer - start.consumer) / messages as u32,
            broker_cpu: (self.broker - start.broker) / messages as u32,
        }
    }
}

/// Waits until Gust's trigger consumed the backlog, reading its count every 50 ms (reading
/// `/metrics` more often costs Gust CPU the minimal consumer does not pay). The rate is taken
/// between two readings made while messages were flowing, so the reading interval adds no
/// error at either end.
fn gust_run(gust: &Gust, broker: &Broker) -> Run {
    let read = || {
        let count = metric(gust, "gust_mqt_messages_total{kind=") as usize;
        (
            Instant::now(),
            count,
            CpuMark::read(gust.pid(), broker.pid()),
        )
    };
    let mut first = None;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let reading = read();
        let (at, count, _) = reading;
        if count >= MESSAGES {
            let (started, at_start, cpu_start) = first.expect("a reading while messages flowed");
            let (ended, at_end, cpu_end): (Instant, usize, CpuMark) =
                last.expect("a reading while messages flowed");
            return cpu_end.run_since(cpu_start, at_end - at_start, ended - started);
        }
        if count > 0 {
            first.get_or_insert(reading);
            last = Some(reading);
        }
        assert!(at < deadline, "Gust consumed {count} of {MESSAGES}");
        std::thread::sleep(Duration::from_millis(50));
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

/// Gust through a trigger on `topic`: the trigger is created (and its stream or session set
/// up), Gust stops, the backlog is published, Gust starts again and consumes it.
fn through_gust(broker: &Broker, topic: &str) -> Run {
    let gust = start_gust();
    create_trigger(&gust, broker, topic);
    wait_state(&gust, "connected");
    let mut stopped = gust;
    stopped.stop();
    broker.publish(topic, &payloads());
    stopped.start_again();
    gust_run(&stopped, broker)
}

/// One round on a new broker: Gust and the minimal consumer, in the order given (alternated
/// between rounds, so that neither always meets a fresh broker).
fn round(kind: BrokerKind, gust_first: bool, direct: impl FnOnce(&Broker) -> Run) -> (Run, Run) {
    let broker = Broker::start(kind);
    let topic = match kind {
        BrokerKind::Nats => "bench.gust",
        _ => "bench/gust",
    };
    if gust_first {
        let gust = through_gust(&broker, topic);
        (gust, direct(&broker))
    } else {
        let direct = direct(&broker);
        (through_gust(&broker, topic), direct)
    }
}

fn nats_direct(rt: &tokio::runtime::Runtime, broker: &Broker) -> Run {
    broker.publish("bench.direct", &payloads());
    let url = broker.url();
    let broker_pid = broker.pid();
    rt.block_on(async move {
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
                // Gust's settings for a trigger with this concurrency.
                max_ack_pending: gust_trigger_mq::window(CONCURRENCY as u32) as i64,
                ack_wait: Duration::from_secs(10),
                filter_subject: "bench.direct".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(gust_trigger_mq::window(CONCURRENCY as u32))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut first = None;
        for _ in 0..MESSAGES {
            let slot = slots.clone().acquire_owned().await.unwrap();
            let message = messages.next().await.unwrap().unwrap();
            first.get_or_insert_with(|| {
                (
                    Instant::now(),
                    CpuMark::read(std::process::id(), broker_pid),
                )
            });
            let call = call.clone();
            tokio::spawn(async move {
                call.call(message.payload.clone()).await;
                message.ack().await.unwrap();
                drop(slot);
            });
        }
        // Every message settled once every slot is free again.
        let _all = slots.acquire_many(CONCURRENCY as u32).await.unwrap();
        let (started, cpu_start) = first.unwrap();
        CpuMark::read(std::process::id(), broker_pid).run_since(
            cpu_start,
            MESSAGES - 1,
            started.elapsed(),
        )
    })
}

fn mqtt_direct(rt: &tokio::runtime::Runtime, broker: &Broker) -> Run {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let options = || {
        let mut options = rumqttc::v5::MqttOptions::new("direct", "127.0.0.1", broker.port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_manual_acks(true)
            // Gust's setting for a trigger with this concurrency.
            .set_receive_maximum(Some(gust_trigger_mq::mqtt_receive_maximum(
                CONCURRENCY as u32,
            )));
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
    let broker_pid = broker.pid();
    rt.block_on(async {
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
            (
                Instant::now(),
                CpuMark::read(std::process::id(), broker_pid),
            )
        });
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut first = None;
        for _ in 0..MESSAGES {
            let publish = received.recv().await.unwrap();
            first.get_or_insert_with(|| {
                (
                    Instant::now(),
                    CpuMark::read(std::process::id(), broker_pid),
                )
            });
            let slot = slots.clone().acquire_owned().await.unwrap();
            let (call, client) = (call.clone(), client.clone());
            tokio::spawn(async move {
                call.call(publish.payload.clone()).await;
                client.ack(&publish).await.unwrap();
                drop(slot);
            });
        }
        let (last_ack, cpu_end) = poller.await.unwrap();
        let (started, cpu_start) = first.unwrap();
        cpu_end.run_since(cpu_start, MESSAGES - 1, last_ack - started)
    })
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
    for (name, kind, direct) in [
        (
            "NATS JetStream",
            BrokerKind::Nats,
            nats_direct as fn(&_, &_) -> _,
        ),
        ("MQTT 5 (mosquitto)", BrokerKind::Mqtt, mqtt_direct),
    ] {
        let mut rounds: Vec<(Run, Run)> = (0..ROUNDS)
            .map(|n| {
                let (gust, direct) = round(kind, n % 2 == 0, |broker| direct(&rt, broker));
                eprintln!(
                    "{name}, round {}: {:.0}/s through Gust, {:.0}/s direct ({:.2})",
                    n + 1,
                    gust.rate,
                    direct.rate,
                    gust.rate / direct.rate
                );
                (gust, direct)
            })
            .collect();
        let ratio = |(gust, direct): &(Run, Run)| gust.rate / direct.rate;
        let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", ratio(r))).collect();
        rounds.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        let (gust, direct) = &rounds[ROUNDS / 2];
        rows.push([
            format!("{name}: messages/s, {MESSAGES} messages, {CONCURRENCY} at a time"),
            format!("{:.0}/s", gust.rate),
            format!(
                "{:.0}/s (minimal consumer, component called directly)",
                direct.rate
            ),
            format!(
                "{:.2} (rounds: {})",
                gust.rate / direct.rate,
                ratios.join(", ")
            ),
        ]);
        rows.push([
            format!("{name}: CPU per message, consumer process / broker"),
            format!("{} / {}", us(gust.consumer_cpu), us(gust.broker_cpu)),
            format!(
                "{} / {} (minimal consumer)",
                us(direct.consumer_cpu),
                us(direct.broker_cpu)
            ),
            format!(
                "{:.2}",
                gust.consumer_cpu.as_secs_f64() / direct.consumer_cpu.as_secs_f64()
            ),
        ]);
    }
    print_table("Queue triggers into a no-op wasm function", rows);
}
