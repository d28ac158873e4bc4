//! Queue triggers end to end, one conformance suite run against every broker kind (NATS
//! JetStream, MQTT, RabbitMQ, Redis Streams), each a real broker process on a free port:
//! no loss over 1,000 messages with responses on the response topic and CloudEvents
//! attributes (R-21 without a crash); a poison message among 10,000 ends in the error topic
//! and blocks nothing (R-20); an error topic that refuses writes leaves the message
//! unacknowledged until it accepts them (R-25); a deleted function's messages wait and run
//! once it is back (R-22); `kill -9` of Gust mid-stream loses nothing (R-21); order is kept
//! with concurrency 1 across a restart (R-26); the broker killed and restarted: the trigger
//! reports it, reconnects and drains the backlog (R-23).

use std::collections::BTreeSet;
use std::time::Duration;

use gust_harness::brokers::{Broker, BrokerKind, BrokerMessage, Collector};
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// Echoes the message with the CloudEvents attributes and attempt it came with; fails (500)
/// for bodies starting with `poison`, sleeps 20 ms for `slow` and 11 s for `long`.
const WORK_PY: &str = r#"
import json, time

CE = ["ce-id", "ce-source", "ce-type", "ce-subject", "ce-specversion", "ce-time",
      "content-type", "x-gust-attempt", "x-gust-request-id"]

def main(req):
    body = req.body.decode()
    if body.startswith("poison"):
        return ("poisoned", 500)
    if body.startswith("slow"):
        time.sleep(0.02)
    if body.startswith("long"):
        time.sleep(11)
    reply = {name: req.headers.get(name) for name in CE}
    reply["body"] = body
    return json.dumps(reply)
"#;

struct Suite {
    kind: BrokerKind,
    broker: Broker,
    gust: Gust,
}

impl Suite {
    fn start(kind: BrokerKind) -> Self {
        let broker = Broker::start(kind);
        let gust = Gust::start(
            GUST,
            GustOptions {
                pool_size: 2,
                ..GustOptions::default()
            },
        );
        let suite = Self { kind, broker, gust };
        suite.deploy("work");
        suite
    }

    fn deploy(&self, name: &str) {
        let code = self.gust.write_file(&format!("{name}/main.py"), WORK_PY);
        self.gust
            .cli(&[
                "fn",
                "create",
                name,
                "--env",
                "python",
                "--code",
                code.to_str().unwrap(),
            ])
            .ok();
    }

    fn topic(&self, parts: &[&str]) -> String {
        self.kind.topic(parts)
    }

    /// `gust mqt create NAME --fn FN --kind K --url U --topic T` plus `extra`.
    fn create_trigger(&self, name: &str, function: &str, topic: &str, extra: &[&str]) {
        let url = self.broker.url();
        let mut args = vec![
            "mqt",
            "create",
            name,
            "--fn",
            function,
            "--kind",
            self.kind.as_str(),
            "--url",
            &url,
            "--topic",
            topic,
        ];
        args.extend_from_slice(extra);
        let created = self.gust.cli(&args).ok();
        assert_eq!(created.stdout.trim(), name);
    }

    /// Creates trigger `name` of `function` on topic `<name> in`, answering on `<name> out`,
    /// and waits until it is connected; returns its topic and a collector of its answers.
    fn replying_trigger(&self, name: &str, function: &str, extra: &[&str]) -> (String, Collector) {
        let (topic, replies) = (self.topic(&[name, "in"]), self.topic(&[name, "out"]));
        let collector = self.broker.collector(&replies);
        let mut args = vec!["--resp-topic", replies.as_str()];
        args.extend_from_slice(extra);
        self.create_trigger(name, function, &topic, &args);
        self.wait_connected(name);
        (topic, collector)
    }

    fn status(&self, name: &str) -> Value {
        let shown = self.gust.cli(&["mqt", "get", name, "-o", "json"]).ok();
        serde_json::from_str(&shown.stdout).expect("mqt get prints JSON")
    }

    fn wait_connected(&self, name: &str) {
        eventually(Duration::from_secs(30), || {
            (self.status(name)["status"]["state"] == "connected").then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "trigger {name} never connected: {}\n{}",
                self.status(name),
                self.gust.log()
            )
        });
    }

    /// Reads `collector` until it holds every body in `expected` (duplicates allowed).
    fn expect_bodies(
        &self,
        collector: &mut Collector,
        expected: &BTreeSet<String>,
        timeout: Duration,
    ) {
        let complete = self.broker.collect_until(collector, timeout, |messages| {
            expected.is_subset(&bodies(messages))
        });
        if !complete {
            let seen = bodies(&collector.messages);
            let missing: Vec<&String> = expected.difference(&seen).take(5).collect();
            panic!(
                "{}: {} of {} expected messages never arrived on {}, e.g. {missing:?}\n{}",
                self.kind.as_str(),
                expected.difference(&seen).count(),
                expected.len(),
                collector_topic(collector),
                self.gust.log()
            );
        }
    }
}

fn collector_topic(collector: &Collector) -> String {
    collector
        .messages
        .first()
        .map(|m| {
            format!(
                "a topic with {} messages (first {:?})",
                collector.messages.len(),
                m.text()
            )
        })
        .unwrap_or_else(|| "an empty topic".into())
}

/// The `body` of each JSON response the function published.
fn bodies(messages: &[BrokerMessage]) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .filter_map(|v| v["body"].as_str().map(str::to_owned))
        .collect()
}

fn payloads(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

fn names(prefix: &str, count: usize) -> BTreeSet<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

fn conformance(kind: BrokerKind) {
    let mut suite = Suite::start(kind);
    no_loss_with_responses_and_cloudevents(&suite);
    poison_goes_to_the_error_topic_and_blocks_nothing(&suite);
    refused_error_topic_write_leaves_the_message_unacked(&suite);
    deleted_function_keeps_messages_until_it_is_back(&suite);
    kill_nine_mid_stream_loses_nothing(&mut suite);
    order_is_kept_with_concurrency_one_across_a_restart(&mut suite);
    broker_killed_and_restarted_backlog_drains(&mut suite);
    failure_without_an_error_topic_becomes_a_dead_letter(&suite);
    // The kinds whose broker delivers again after 10 s without news (NATS's ack wait, the
    // trigger's own reclaim of idle Redis entries).
    if matches!(kind, BrokerKind::Nats | BrokerKind::Redis) {
        long_work_is_not_delivered_again(&suite);
    }
    if kind == BrokerKind::Nats {
        created_again_the_trigger_applies_its_settings_to_its_consumer(&suite);
    }
}

/// 1,000 messages, four at a time: every one answered on the response topic, as a
/// CloudEvent with the trigger's source, type and subject.
fn no_loss_with_responses_and_cloudevents(suite: &Suite) {
    let (topic, mut collector) = suite.replying_trigger("a", "work", &["--concurrency", "4"]);
    suite.broker.publish(&topic, &payloads("m", 1000));
    suite.expect_bodies(&mut collector, &names("m", 1000), Duration::from_secs(120));

    let reply: Value = serde_json::from_slice(&collector.messages[0].payload).unwrap();
    assert_eq!(reply["ce-specversion"], "1.0");
    assert_eq!(reply["ce-source"], "gust:default/mqt/a");
    assert_eq!(
        reply["ce-type"],
        format!("dev.gust.mqt.{}", suite.kind.as_str())
    );
    assert_eq!(reply["ce-subject"], topic.as_str());
    assert!(
        reply["ce-id"].as_str().is_some_and(|id| !id.is_empty()),
        "{reply}"
    );
    assert!(
        reply["ce-time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{reply}"
    );
    assert_eq!(reply["x-gust-attempt"], "1");
    let ids: BTreeSet<String> = collector
        .messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .filter_map(|v| v["ce-id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 1000, "every message has its own id");

    let listed = suite.gust.cli(&["mqt", "list"]).ok().stdout;
    assert!(listed.contains("connected"), "{listed}");
    let status = suite.status("a");
    assert!(
        status["status"]["succeeded"].as_u64().unwrap() >= 1000,
        "{status}"
    );
    if suite.kind == BrokerKind::Amqp {
        // The URL holds RabbitMQ's default credentials: never shown.
        assert_eq!(
            status["url"],
            suite.broker.url().replace("guest:guest", "guest:***")
        );
        assert!(!listed.contains("guest:guest"), "{listed}");
    }
    suite.gust.cli(&["mqt", "delete", "a"]).ok();
}

/// One poison message among 10,000 (R-20): the others all succeed, the poison one reaches
/// the error topic after its retries with its payload and why it failed.
fn poison_goes_to_the_error_topic_and_blocks_nothing(suite: &Suite) {
    let (topic, errors) = (suite.topic(&["b", "in"]), suite.topic(&["b", "errors"]));
    let mut collector = suite.broker.collector(&errors);
    suite.create_trigger(
        "b",
        "work",
        &topic,
        &[
            "--error-topic",
            &errors,
            "--max-retries",
            "1",
            "--concurrency",
            "8",
        ],
    );
    suite.wait_connected("b");
    let mut messages = payloads("good", 10_000);
    messages.insert(1234, b"poison-pill".to_vec());
    suite.broker.publish(&topic, &messages);
    let settled = eventually(Duration::from_secs(300), || {
        let status = suite.status("b")["status"].clone();
        (status["succeeded"].as_u64() == Some(10_000) && status["failed"].as_u64() == Some(1))
            .then_some(status)
    });
    assert!(
        settled.is_some(),
        "{}: {}\n{}",
        suite.kind.as_str(),
        suite.status("b"),
        suite.gust.log()
    );
    assert!(
        suite
            .broker
            .collect_until(&mut collector, Duration::from_secs(10), |m| !m.is_empty())
    );
    assert_eq!(collector.messages.len(), 1, "only the poison message fails");
    let poison = &collector.messages[0];
    assert_eq!(poison.text(), "poison-pill");
    assert_eq!(poison.headers["x-gust-attempts"], "2");
    assert!(
        poison.headers["x-gust-error"].starts_with("attempts_exhausted"),
        "{poison:?}"
    );
    assert_eq!(poison.headers["ce-source"], "gust:default/mqt/b");
    suite.gust.cli(&["mqt", "delete", "b"]).ok();
}

/// R-25: the error topic refuses the failed message, so it is not acknowledged; the
/// trigger says why, and once the error topic accepts writes the message arrives there.
fn refused_error_topic_write_leaves_the_message_unacked(suite: &Suite) {
    let (topic, errors) = (suite.topic(&["c", "in"]), suite.topic(&["c", "errors"]));
    let mut collector = suite.broker.collector(&errors);
    suite.broker.refuse_publishing(&errors);
    suite.create_trigger(
        "c",
        "work",
        &topic,
        &["--error-topic", &errors, "--max-retries", "0"],
    );
    suite.wait_connected("c");
    suite.broker.publish(&topic, &[b"poison-c".to_vec()]);
    let reported = eventually(Duration::from_secs(30), || {
        let status = suite.status("c")["status"].clone();
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not be written to the error topic"))
            .then_some(status)
    });
    let status = reported.unwrap_or_else(|| panic!("{}\n{}", suite.status("c"), suite.gust.log()));
    assert_eq!(status["failed"], 0, "nothing was acknowledged: {status}");
    // Still refused a while later: the message keeps coming back and is never dropped.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(suite.status("c")["status"]["failed"], 0);

    suite.broker.allow_publishing(&errors);
    let delivered = suite
        .broker
        .collect_until(&mut collector, Duration::from_secs(60), |m| {
            m.iter().any(|m| m.text() == "poison-c")
        });
    assert!(
        delivered,
        "{}: the refused message never reached the error topic\n{}",
        suite.kind.as_str(),
        suite.gust.log()
    );
    eventually(Duration::from_secs(10), || {
        (suite.status("c")["status"]["failed"] == 1).then_some(())
    })
    .expect("acknowledged once written");
    suite.gust.cli(&["mqt", "delete", "c"]).ok();
}

/// R-22: while the function is deleted, messages wait unacknowledged (the trigger says so);
/// once it is created again they all run. None is dropped or dead-lettered.
fn deleted_function_keeps_messages_until_it_is_back(suite: &Suite) {
    suite.deploy("gone");
    let (topic, mut collector) = suite.replying_trigger("d", "gone", &[]);
    suite.gust.cli(&["fn", "delete", "gone"]).ok();
    suite.broker.publish(&topic, &payloads("d", 20));
    eventually(Duration::from_secs(30), || {
        (suite.status("d")["status"]["state"] == "waiting_for_function").then_some(())
    })
    .unwrap_or_else(|| panic!("{}", suite.status("d")));
    std::thread::sleep(Duration::from_secs(2));
    suite.broker.collect(&mut collector);
    assert!(
        collector.messages.is_empty(),
        "nothing runs without the function"
    );
    suite.deploy("gone");
    suite.expect_bodies(&mut collector, &names("d", 20), Duration::from_secs(60));
    let dead = suite.gust.cli(&["dlq", "list", "-o", "json"]).ok().stdout;
    assert_eq!(dead.trim(), "[]", "nothing dead-lettered: {dead}");
    suite.gust.cli(&["mqt", "delete", "d"]).ok();
}

/// Work longer than the broker's redelivery timeout, two at a time: the message being worked
/// on and (NATS, which sends twice the concurrency) the one waiting for a worker are both
/// reported in progress, so each is answered once.
fn long_work_is_not_delivered_again(suite: &Suite) {
    let (topic, mut collector) = suite.replying_trigger("l", "work", &["--concurrency", "2"]);
    suite.broker.publish(&topic, &payloads("long-l", 4));
    suite.expect_bodies(&mut collector, &names("long-l", 4), Duration::from_secs(90));
    // A repeat would be a further answer, at the latest one run (11 s) after the last.
    std::thread::sleep(Duration::from_secs(12));
    suite.broker.collect(&mut collector);
    let answered: Vec<String> = collector.messages.iter().map(|m| m.text()).collect();
    assert_eq!(answered.len(), 4, "{}: {answered:#?}", suite.kind.as_str());
    suite.gust.cli(&["mqt", "delete", "l"]).ok();
}

/// R-21: Gust killed with SIGKILL while messages are in flight; after the restart every
/// message is answered (some twice: at least once).
fn kill_nine_mid_stream_loses_nothing(suite: &mut Suite) {
    let (topic, mut collector) = suite.replying_trigger("e", "work", &["--concurrency", "4"]);
    suite.broker.publish(&topic, &payloads("slow-e", 1000));
    let started = suite
        .broker
        .collect_until(&mut collector, Duration::from_secs(60), |m| m.len() >= 100);
    assert!(started, "{}", suite.gust.log());
    suite.gust.restart();
    suite.expect_bodies(
        &mut collector,
        &names("slow-e", 1000),
        Duration::from_secs(180),
    );
    suite.gust.cli(&["mqt", "delete", "e"]).ok();
}

/// R-26: with concurrency 1, responses come in publishing order, also across a restart of
/// Gust in the middle (a redelivered message may repeat, never jump ahead).
fn order_is_kept_with_concurrency_one_across_a_restart(suite: &mut Suite) {
    let (topic, mut collector) = suite.replying_trigger("f", "work", &[]);
    suite.broker.publish(&topic, &payloads("slow-f", 200));
    assert!(
        suite
            .broker
            .collect_until(&mut collector, Duration::from_secs(60), |m| m.len() >= 30)
    );
    suite.gust.restart();
    suite.expect_bodies(
        &mut collector,
        &names("slow-f", 200),
        Duration::from_secs(120),
    );
    let mut highest_seen: Option<usize> = None;
    for message in &collector.messages {
        let reply: Value = serde_json::from_slice(&message.payload).unwrap();
        let index: usize = reply["body"].as_str().unwrap()["slow-f-".len()..]
            .parse()
            .unwrap();
        if let Some(highest) = highest_seen {
            assert!(
                index <= highest + 1,
                "{}: message {index} arrived before {} was answered",
                suite.kind.as_str(),
                highest + 1
            );
        }
        highest_seen = Some(highest_seen.map_or(index, |h| h.max(index)));
    }
    suite.gust.cli(&["mqt", "delete", "f"]).ok();
}

/// R-23: the broker dies (SIGKILL; RabbitMQ stops) under a backlog; the trigger reports it and reconnects when the
/// broker is back, and the backlog drains with nothing lost.
fn broker_killed_and_restarted_backlog_drains(suite: &mut Suite) {
    let (topic, mut collector) = suite.replying_trigger("g", "work", &[]);
    suite.broker.publish(&topic, &payloads("slow-g", 300));
    assert!(
        suite
            .broker
            .collect_until(&mut collector, Duration::from_secs(60), |m| m.len() >= 20)
    );
    if suite.kind == BrokerKind::Amqp {
        // RabbitMQ 3.10 killed with SIGKILL came back with its (confirmed, persistent)
        // messages lost from classic queues and its quorum queues unavailable: that is the
        // broker's durability, not the trigger's; a clean stop tests the trigger.
        suite.broker.stop();
    } else {
        // Mosquitto writes its state to disk once a second: let it save the backlog.
        std::thread::sleep(Duration::from_millis(1500));
        suite.broker.kill9();
    }
    let reported = eventually(Duration::from_secs(30), || {
        let status = suite.status("g")["status"].clone();
        (status["state"] != "connected" && status["last_error"].is_string()).then_some(status)
    });
    assert!(
        reported.is_some(),
        "{}: the lost broker is not reported: {}",
        suite.kind.as_str(),
        suite.status("g")
    );
    std::thread::sleep(Duration::from_secs(5));
    suite.broker.restart();
    suite.expect_bodies(
        &mut collector,
        &names("slow-g", 300),
        Duration::from_secs(120),
    );
    suite.wait_connected("g");
}

/// Bad input is refused with the field named and nothing stored; a broker that cannot be
/// reached is reported (state and last error) without ever showing the URL's password.
#[test]
fn bad_input_and_unreachable_brokers() {
    let gust = Gust::start(GUST, GustOptions::default());
    let code = gust.write_file("work/main.py", WORK_PY);
    gust.cli(&[
        "fn",
        "create",
        "work",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ])
    .ok();
    let create = |extra: &[&str]| {
        let mut args = vec!["mqt", "create", "bad", "--fn", "work"];
        args.extend_from_slice(extra);
        gust.cli(&args)
    };
    let cases: [(&[&str], &str); 7] = [
        (
            &[
                "--kind",
                "nats",
                "--url",
                "mqtt://127.0.0.1:1883",
                "--topic",
                "t",
            ],
            "url",
        ),
        (
            &[
                "--kind",
                "mqtt",
                "--url",
                "mqtt://127.0.0.1:1883",
                "--topic",
                "a/#/b",
            ],
            "topic",
        ),
        (
            &[
                "--kind",
                "nats",
                "--url",
                "nats://127.0.0.1:4222",
                "--topic",
                "a..b",
            ],
            "topic",
        ),
        (
            &[
                "--kind",
                "redis",
                "--url",
                "redis://h:1",
                "--topic",
                "in",
                "--resp-topic",
                "in",
            ],
            "resp_topic",
        ),
        (
            &[
                "--kind",
                "redis",
                "--url",
                "redis://h:1",
                "--topic",
                "in",
                "--concurrency",
                "0",
            ],
            "concurrency",
        ),
        (
            &[
                "--kind",
                "redis",
                "--url",
                "redis://h:1",
                "--topic",
                "in",
                "--max-retries",
                "101",
            ],
            "max_retries",
        ),
        (
            &[
                "--kind",
                "amqp",
                "--url",
                "amqp://u:hunter2@h",
                "--topic",
                "q",
                "--content-type",
                "json",
            ],
            "content_type",
        ),
    ];
    for (extra, field) in cases {
        let error = create(extra).failed();
        assert!(error.contains(field), "{extra:?}: {error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
    let kafka = create(&["--kind", "kafka", "--url", "k://h", "--topic", "t"]).failed();
    assert!(kafka.contains("kafka"), "{kafka}");
    let missing = gust
        .cli(&[
            "mqt",
            "create",
            "bad",
            "--fn",
            "nope",
            "--kind",
            "redis",
            "--url",
            "redis://h:1",
            "--topic",
            "t",
        ])
        .failed();
    assert!(missing.contains("nope"), "{missing}");
    assert_eq!(
        gust.cli(&["mqt", "list", "-o", "json"]).ok().stdout.trim(),
        "[]"
    );

    // Nothing listens on this port: the trigger keeps trying and says why.
    let url = format!(
        "amqp://app:s3cret-pw@127.0.0.1:{}/%2f",
        gust_harness::free_port()
    );
    gust.cli(&[
        "mqt", "create", "down", "--fn", "work", "--kind", "amqp", "--url", &url, "--topic", "q",
    ])
    .ok();
    let shown = eventually(Duration::from_secs(30), || {
        let shown = gust.cli(&["mqt", "get", "down", "-o", "json"]).ok().stdout;
        let trigger: Value = serde_json::from_str(&shown).unwrap();
        trigger["status"]["last_error"].is_string().then_some(shown)
    })
    .expect("the unreachable broker is reported");
    let trigger: Value = serde_json::from_str(&shown).unwrap();
    assert!(
        matches!(
            trigger["status"]["state"].as_str(),
            Some("connecting" | "reconnecting")
        ),
        "{shown}"
    );
    assert!(
        trigger["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{shown}"
    );
    assert_eq!(trigger["url"], url.replace("s3cret-pw", "***"));
    let everything = [
        shown,
        gust.cli(&["mqt", "list"]).ok().stdout,
        gust.cli(&["mqt", "list", "-o", "yaml"]).ok().stdout,
        gust.log(),
    ];
    for text in everything {
        assert!(!text.contains("s3cret-pw"), "the password leaked: {text}");
    }
    gust.cli(&["mqt", "delete", "down"]).ok();
    assert!(
        gust.cli(&["mqt", "get", "down"])
            .failed()
            .contains("not found")
    );
}

/// Without an error topic, a message that keeps failing is stored as a dead letter (with
/// the request the function got) before it is acknowledged, and can be re-driven.
fn failure_without_an_error_topic_becomes_a_dead_letter(suite: &Suite) {
    let topic = suite.topic(&["h", "in"]);
    suite.create_trigger("h", "work", &topic, &["--max-retries", "0"]);
    suite.wait_connected("h");
    suite.broker.publish(&topic, &[b"poison-h".to_vec()]);
    let dead = eventually(Duration::from_secs(30), || {
        let listed = suite.gust.cli(&["dlq", "list", "-o", "json"]).ok().stdout;
        let letters: Vec<Value> = serde_json::from_str(&listed).ok()?;
        letters.into_iter().find(|l| l["source"]["trigger"] == "h")
    })
    .unwrap_or_else(|| {
        panic!(
            "no dead letter: {}\n{}",
            suite.status("h"),
            suite.gust.log()
        )
    });
    assert_eq!(dead["source"]["kind"], "mq");
    assert_eq!(dead["reason"], "attempts_exhausted");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["last_status"], 500);
    let id = dead["id"].as_str().unwrap();
    let shown = suite
        .gust
        .cli(&["dlq", "show", id, "-o", "json"])
        .ok()
        .stdout;
    assert!(
        shown.contains("ce-subject") && shown.contains(&topic),
        "{shown}"
    );
    eventually(Duration::from_secs(10), || {
        (suite.status("h")["status"]["failed"] == 1).then_some(())
    })
    .expect("acknowledged once stored");
    suite.gust.cli(&["mqt", "delete", "h"]).ok();
}

/// A trigger deleted and created again resumes from its durable consumer, which takes the
/// trigger's new settings: with the old ones a trigger raised from concurrency 1 to 8 would
/// still get one message at a time.
fn created_again_the_trigger_applies_its_settings_to_its_consumer(suite: &Suite) {
    let topic = suite.topic(&["k", "in"]);
    let durable = "gust-default-k";
    for concurrency in [1, 8] {
        suite.create_trigger(
            "k",
            "work",
            &topic,
            &["--concurrency", &concurrency.to_string()],
        );
        suite.wait_connected("k");
        assert_eq!(
            suite.broker.nats_max_ack_pending(&topic, durable),
            gust_trigger_mq::window(concurrency) as i64,
            "at concurrency {concurrency}"
        );
        suite.gust.cli(&["mqt", "delete", "k"]).ok();
    }
}

#[test]
fn nats_jetstream_conformance() {
    conformance(BrokerKind::Nats);
}

#[test]
fn mqtt_conformance() {
    conformance(BrokerKind::Mqtt);
}

#[test]
fn redis_streams_conformance() {
    conformance(BrokerKind::Redis);
}

#[test]
fn rabbitmq_conformance() {
    conformance(BrokerKind::Amqp);
}
