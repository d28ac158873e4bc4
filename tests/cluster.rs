//! Cluster mode end to end: three NATS servers with JetStream joined as a cluster on
//! loopback and three `gust up --cluster` nodes. A change made through any node is served by
//! every node within a second; a node with an empty data directory serves everything; two
//! nodes updating one function at once never lose an update (R-42); admin tokens work on
//! every node; a dead node leaves `gust nodes`; writes go on with one NATS server killed;
//! a timer fires once per tick for 20 s across the nodes and a node's kill (R-30, cluster);
//! 1,000 queue-trigger messages shared by three nodes, one killed mid-batch and started
//! again, none lost (R-21, cluster);
//! `gust usage` gives the same totals on every node, a new one included, and `gust fn logs`
//! merges every node's lines; a node joins NATS over TLS trusting `--nats-ca`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gust_harness::brokers::{Broker, BrokerKind};
use gust_harness::nats_cluster::NatsCluster;
use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// One cluster at a time: each test runs NATS servers and several nodes, and two at once on a
/// small machine make the timings the tests check (propagation, failover) those of an
/// overloaded one.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn join(nats: &NatsCluster) -> Gust {
    join_with(nats, &[])
}

fn join_with(nats: &NatsCluster, args: &[&str]) -> Gust {
    let mut extra_args = vec!["--cluster".to_owned(), nats.urls()];
    extra_args.extend(args.iter().map(|a| a.to_string()));
    Gust::start(
        GUST,
        GustOptions {
            extra_args,
            ..GustOptions::default()
        },
    )
}

/// Polls `url` until it answers `status` with `body` (if given); returns how long that took.
fn until_served(gust: &Gust, path: &str, status: u16, body: Option<&str>) -> Duration {
    served_within(Duration::from_secs(20), gust, path, status, body)
}

/// [`until_served`] with its own limit.
fn served_within(
    limit: Duration,
    gust: &Gust,
    path: &str,
    status: u16,
    body: Option<&str>,
) -> Duration {
    let started = Instant::now();
    eventually(limit, || {
        let response = gust.http().get(gust.public_url(path)).send().ok()?;
        let got = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (got == status && body.is_none_or(|b| text == b)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{path} never answered {status} {body:?}; the node's log:\n{}",
            gust.log()
        )
    });
    started.elapsed()
}

fn nodes(gust: &Gust) -> Vec<Value> {
    serde_json::from_str(&gust.cli(&["nodes", "-o", "json"]).ok().stdout).unwrap()
}

#[test]
fn every_node_serves_what_any_node_changed_and_a_dead_node_leaves_the_list() {
    let _alone = alone();
    let mut nats = NatsCluster::start(3);
    let mut gusts: Vec<Gust> = (0..3).map(|_| join(&nats)).collect();

    // Created through node 0, served by node 2 within a second of the 2xx.
    gusts[0].deploy(
        "hello",
        "python",
        "hello.py",
        "def main():\n    return 'one'\n",
        &[],
    );
    let took = until_served(&gusts[2], "/hello", 200, Some("one"));
    assert!(took < Duration::from_secs(1), "route served after {took:?}");

    // Updated through node 1 with node 0's token: every node's token works everywhere.
    let code = gusts[1].write_file("hello/v2.py", "def main():\n    return 'two'\n");
    let token = gusts[0].token();
    let code = code.to_str().unwrap();
    gusts[1]
        .cli(&["--token", &token, "fn", "update", "hello", "--code", code])
        .ok();
    let took = until_served(&gusts[0], "/hello", 200, Some("two"));
    assert!(
        took < Duration::from_secs(1),
        "update served after {took:?}"
    );
    until_served(&gusts[2], "/hello", 200, Some("two"));

    // A node that starts with an empty data directory has lost nothing: metadata and code
    // come from the cluster.
    let fresh = join(&nats);
    until_served(&fresh, "/hello", 200, Some("two"));
    let listed = fresh.cli(&["fn", "list", "-o", "json"]).ok().stdout;
    assert!(listed.contains("\"hello\""), "{listed}");
    drop(fresh);

    // Deleted through node 2, gone from node 0.
    gusts[2].cli(&["route", "delete", "hello"]).ok();
    let took = until_served(&gusts[0], "/hello", 404, None);
    assert!(
        took < Duration::from_secs(1),
        "delete served after {took:?}"
    );

    // Every live node is listed; one killed leaves within the heartbeat timeout (10 s).
    eventually(Duration::from_secs(10), || {
        (nodes(&gusts[1]).len() == 3).then_some(())
    })
    .expect("three nodes listed");
    let listed = nodes(&gusts[1]);
    for node in &listed {
        assert!(node["heartbeat_at_ms"].as_u64().unwrap() > 0, "{node}");
        assert!(
            node["api"].as_str().unwrap().starts_with("http://"),
            "{node}"
        );
    }
    gusts[2].kill9();
    let started = Instant::now();
    eventually(Duration::from_secs(20), || {
        (nodes(&gusts[1]).len() == 2).then_some(())
    })
    .expect("the killed node leaves the list");
    assert!(
        started.elapsed() < Duration::from_secs(13),
        "left after {:?}",
        started.elapsed()
    );

    // One NATS server of three killed: what was acknowledged is still there, and writes go
    // on (a write in flight at the kill may answer 503; it is retried as a client would).
    nats.kill9(0);
    let created = eventually(Duration::from_secs(30), || {
        let output = gusts[1].cli(&[
            "route", "create", "--fn", "hello", "--url", "/again", "--name", "again",
        ]);
        (output.code == 0).then_some(())
    });
    assert!(
        created.is_some(),
        "no write succeeded with a NATS server down"
    );
    // A watch whose consumer went with the server is started again once the node notices
    // (about 3 s); the stream's new leader may take longer to answer on a busy machine.
    served_within(
        Duration::from_secs(60),
        &gusts[0],
        "/again",
        200,
        Some("two"),
    );
    nats.restart(0);
    served_within(
        Duration::from_secs(60),
        &gusts[1],
        "/again",
        200,
        Some("two"),
    );
}

#[test]
fn two_nodes_writing_at_once_never_lose_an_update_nor_store_a_conflict() {
    let _alone = alone();
    let nats = NatsCluster::start(1);
    let gusts: Vec<Gust> = (0..2).map(|_| join(&nats)).collect();
    gusts[0].deploy(
        "counter",
        "python",
        "counter.py",
        "def main():\n    return 'ok'\n",
        &[],
    );
    let rounds = 15;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut revisions = Vec::new();
    for round in 0..rounds {
        let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let calls: Vec<_> = gusts
                .iter()
                .enumerate()
                .map(|(node, gust)| {
                    scope.spawn(move || {
                        let response = gust
                            .api(Method::PUT, "/v1/functions/counter")
                            .json(&json!({"env_vars": [format!("SET_BY=node{node}-round{round}")]}))
                            .send()
                            .unwrap();
                        let status = response.status().as_u16();
                        (status, response.json::<Value>().unwrap_or(Value::Null))
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (status, body) in answers {
            *statuses.entry(status).or_default() += 1;
            match status {
                200 => revisions.push(body["revision"].as_u64().unwrap()),
                409 => assert!(
                    body["message"]
                        .as_str()
                        .unwrap()
                        .contains("changed by another request"),
                    "{body}"
                ),
                other => panic!("update answered {other}: {body}"),
            }
        }
    }
    // Every update that was answered 200 made its own revision, one after the other from
    // the first: none wrote over another.
    revisions.sort_unstable();
    let expected: Vec<u64> = (2..2 + revisions.len() as u64).collect();
    assert_eq!(revisions, expected, "statuses {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), rounds * 2, "{statuses:?}");
    eprintln!("concurrent updates answered: {statuses:?}");
    let current: Value = gusts[1]
        .api(Method::GET, "/v1/functions/counter")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        current["revision"].as_u64().unwrap(),
        1 + revisions.len() as u64,
        "{current}"
    );

    // Two nodes creating conflicting routes at once: the check and the write are one step,
    // so exactly one of each pair is stored.
    for round in 0..10 {
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let calls: Vec<_> = gusts
                .iter()
                .enumerate()
                .map(|(node, gust)| {
                    scope.spawn(move || {
                        gust.api(Method::POST, "/v1/routes")
                            .json(
                                &json!({"function": "counter", "url": format!("/same-{round}"),
                                          "name": format!("r{round}-node{node}")}),
                            )
                            .send()
                            .unwrap()
                            .status()
                            .as_u16()
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [201, 409], "round {round}: {statuses:?}");
    }
    let routes: Vec<Value> =
        serde_json::from_str(&gusts[1].cli(&["route", "list", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(routes.len(), 1 + 10, "{routes:?}");
}

#[test]
fn with_nats_gone_writes_answer_503_routes_keep_serving_and_nodes_catch_up_after() {
    let _alone = alone();
    let mut nats = NatsCluster::start(1);
    let gusts: Vec<Gust> = (0..2).map(|_| join(&nats)).collect();
    gusts[0].deploy(
        "steady",
        "python",
        "steady.py",
        "def main():\n    return 'up'\n",
        &[],
    );
    until_served(&gusts[1], "/steady", 200, Some("up"));

    nats.kill9(0);
    eventually(Duration::from_secs(10), || {
        let answer = gusts[1]
            .api(Method::PUT, "/v1/functions/steady")
            .json(&json!({"env_vars": ["A=1"]}))
            .send()
            .unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().unwrap();
        (status == 503).then(|| {
            assert_eq!(body["reason"], "unavailable", "{body}");
            assert!(body["message"].as_str().unwrap().contains("NATS"), "{body}");
        })
    })
    .expect("a write without NATS answers 503");
    // Reads and routes are served from what each node knows.
    for gust in &gusts {
        assert_eq!(gust.get("/steady").text().unwrap(), "up");
        gust.cli(&["fn", "get", "steady"]).ok();
    }

    nats.restart(0);
    let written = eventually(Duration::from_secs(30), || {
        let output = gusts[1].cli(&[
            "route", "create", "--fn", "steady", "--url", "/back", "--name", "back",
        ]);
        (output.code == 0).then_some(())
    });
    assert!(
        written.is_some(),
        "writes did not resume after NATS came back"
    );
    until_served(&gusts[0], "/back", 200, Some("up"));
}

/// A queue trigger consumed by three nodes at once: every message is processed (its reply
/// reaches the response topic), the nodes share the work as competing consumers (MQTT through
/// a shared subscription, Redis as consumers of one group, NATS through one durable
/// consumer), and duplicates are counted and reported.
fn queue_trigger_on_three_nodes(kind: BrokerKind) {
    let broker = Broker::start(kind);
    let nats = NatsCluster::start(1);
    let mut gusts: Vec<Gust> = (0..3).map(|_| join(&nats)).collect();
    let code = gusts[0].write_file("echo/main.py", "def main(req):\n    return req.body\n");
    gusts[0]
        .cli(&[
            "fn",
            "create",
            "echo",
            "--env",
            "python",
            "--code",
            code.to_str().unwrap(),
        ])
        .ok();
    let (topic, replies) = (kind.topic(&["jobs", "in"]), kind.topic(&["jobs", "out"]));
    let mut collector = broker.collector(&replies);
    let url = broker.url();
    gusts[1]
        .cli(&[
            "mqt",
            "create",
            "jobs",
            "--fn",
            "echo",
            "--kind",
            kind.as_str(),
            "--url",
            &url,
            "--topic",
            &topic,
            "--resp-topic",
            &replies,
            "--concurrency",
            "4",
        ])
        .ok();
    for gust in &gusts {
        // The trigger reaches the other nodes within a second: until then `get` there fails.
        eventually(Duration::from_secs(30), || {
            let shown = gust.cli(&["mqt", "get", "jobs", "-o", "json"]);
            let shown: Value = serde_json::from_str(&shown.stdout).ok()?;
            (shown["status"]["state"] == "connected").then_some(())
        })
        .unwrap_or_else(|| panic!("{}: a node never connected:\n{}", kind.as_str(), gust.log()));
    }
    let count = 1000;
    let payloads: Vec<Vec<u8>> = (0..count)
        .map(|i| format!("job-{i}").into_bytes())
        .collect();
    broker.publish(&topic, &payloads);
    // R-21 in a cluster: one node killed with kill -9 mid-batch and started again (same data
    // directory, so the same consumer identity): nothing is lost.
    let started = broker.collect_until(&mut collector, Duration::from_secs(60), |messages| {
        messages.len() >= 150
    });
    assert!(
        started,
        "{}: the nodes did not start consuming",
        kind.as_str()
    );
    gusts[2].restart();
    let expected: std::collections::BTreeSet<String> =
        (0..count).map(|i| format!("job-{i}")).collect();
    let complete = broker.collect_until(&mut collector, Duration::from_secs(120), |messages| {
        let seen: std::collections::BTreeSet<String> = messages.iter().map(|m| m.text()).collect();
        expected.is_subset(&seen)
    });
    let seen: std::collections::BTreeSet<String> =
        collector.messages.iter().map(|m| m.text()).collect();
    assert!(
        complete,
        "{}: {} messages lost",
        kind.as_str(),
        expected.difference(&seen).count()
    );
    let mut per_node = Vec::new();
    for gust in &gusts {
        let shown: Value =
            serde_json::from_str(&gust.cli(&["mqt", "get", "jobs", "-o", "json"]).ok().stdout)
                .unwrap();
        per_node.push(shown["status"]["succeeded"].as_u64().unwrap());
    }
    let replies = collector.messages.len();
    // The restarted node counts from its restart.
    eprintln!(
        "{}: {count} messages, {replies} replies ({} duplicates), succeeded per node {per_node:?} (the last one since its restart)",
        kind.as_str(),
        replies - count
    );
    assert!(
        per_node[0] > 0 && per_node[1] > 0,
        "the messages were not shared: {per_node:?}"
    );
}

#[test]
fn an_mqtt_trigger_on_three_nodes_shares_its_messages() {
    let _alone = alone();
    queue_trigger_on_three_nodes(BrokerKind::Mqtt);
}

#[test]
fn a_redis_trigger_on_three_nodes_shares_its_messages() {
    let _alone = alone();
    queue_trigger_on_three_nodes(BrokerKind::Redis);
}

#[test]
fn a_nats_trigger_on_three_nodes_shares_its_messages() {
    let _alone = alone();
    queue_trigger_on_three_nodes(BrokerKind::Nats);
}

/// R-40: 2,000 asynchronous invocations sent to three nodes while one node and then one NATS
/// server of three are killed with kill -9: every accepted id ends in exactly one terminal
/// state, and attempts run more than once only for invocations whose attempt was in flight at
/// a kill (JetStream gives the dead node's messages to another node after the ack wait).
#[test]
fn async_work_survives_a_node_and_a_nats_server_killed_under_load() {
    let _alone = alone();
    let mut nats = NatsCluster::start(3);
    // Each node runs at most 32 attempts at once: what can run twice is what was in flight.
    let in_flight = 32;
    let mut gusts: Vec<Gust> = (0..3)
        .map(|_| join_with(&nats, &["--async-in-flight", &in_flight.to_string()]))
        .collect();
    let code = gusts[0].write_file(
        "job/main.py",
        "import time\n\ndef main(req):\n    time.sleep(0.02)\n    return 'done'\n",
    );
    gusts[0]
        .cli(&[
            "fn",
            "create",
            "job",
            "--env",
            "python",
            "--code",
            code.to_str().unwrap(),
        ])
        .ok();
    gusts[0]
        .cli(&["route", "create", "--fn", "job", "--url", "/job", "--async"])
        .ok();
    for gust in &gusts {
        until_served(gust, "/nothing-here", 404, None);
    }
    eventually(Duration::from_secs(10), || {
        gusts
            .iter()
            .all(|g| {
                g.http()
                    .post(g.public_url("/job"))
                    .send()
                    .is_ok_and(|r| r.status() == 202)
            })
            .then_some(())
    })
    .expect("every node accepts asynchronous work");

    let total = 2_000;
    let accepted = std::sync::Mutex::new(Vec::new());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let ports: Vec<u16> = gusts.iter().map(|g| g.public_port).collect();
    let client = gusts[0].http().clone();
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let (accepted, sent, ports, client) = (&accepted, &sent, &ports, &client);
            scope.spawn(move || {
                let mut node = worker % 3;
                loop {
                    let n = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n >= total {
                        return;
                    }
                    // Past the first third node 2 is gone: send to the others.
                    if n > total / 3 {
                        node = (node + 1) % 2;
                    } else {
                        node = (node + 1) % 3;
                    }
                    let url = format!("http://127.0.0.1:{}/job", ports[node]);
                    if let Ok(response) = client.post(url).body(format!("job-{n}")).send()
                        && response.status() == 202
                    {
                        let id: Value = response.json().unwrap();
                        accepted
                            .lock()
                            .unwrap()
                            .push(id["id"].as_str().unwrap().to_owned());
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        gusts[2].kill9();
        std::thread::sleep(Duration::from_millis(1500));
        nats.kill9(0);
    });
    // The killed server comes back, as an operator would bring it back.
    nats.restart(0);
    let accepted = accepted.into_inner().unwrap();
    assert!(
        accepted.len() > total / 2,
        "only {} accepted",
        accepted.len()
    );

    // Every accepted id ends once, read from the nodes still up.
    let mut states: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while states.len() < accepted.len() {
        if Instant::now() > deadline {
            let stuck: Vec<String> = accepted
                .iter()
                .filter(|id| !states.contains_key(*id))
                .take(3)
                .map(|id| {
                    gusts[0]
                        .api(Method::GET, &format!("/v1/invocations/{id}"))
                        .send()
                        .unwrap()
                        .text()
                        .unwrap()
                })
                .collect();
            panic!(
                "{} of {} invocations did not end, e.g. {stuck:?}\nnode 0's log:\n{}",
                accepted.len() - states.len(),
                accepted.len(),
                gusts[0].log()
            );
        }
        for id in &accepted {
            if states.contains_key(id) {
                continue;
            }
            let answer = gusts[0]
                .api(Method::GET, &format!("/v1/invocations/{id}"))
                .send()
                .unwrap();
            if answer.status() != 200 {
                continue;
            }
            let invocation: Value = answer.json().unwrap();
            if ["succeeded", "dead", "expired"].contains(&invocation["state"].as_str().unwrap()) {
                states.insert(id.clone(), invocation);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let not_succeeded: Vec<_> = states
        .values()
        .filter(|i| i["state"] != "succeeded")
        .take(3)
        .collect();
    assert!(not_succeeded.is_empty(), "{not_succeeded:?}");
    // All ended: nothing open in the work stream, no dead letter; which run is not told.
    eventually(Duration::from_secs(10), || {
        let counts: Value = gusts[0]
            .api(Method::GET, "/v1/async")
            .send()
            .ok()?
            .json()
            .ok()?;
        (counts == json!({"namespace": "default", "open": 0, "dead_letters": 0})).then_some(())
    })
    .expect("the cluster counts no open invocation and no dead letter");
    let again = states
        .values()
        .filter(|i| i["attempts"].as_u64().unwrap() > 1)
        .count();
    eprintln!(
        "R-40: {} accepted of {total} sent, all succeeded; {again} attempted more than once",
        accepted.len()
    );
    // Attempts are counted when claimed, so `attempts > 1` counts the attempts in flight on
    // the killed node, and those claimed or finished on the others while the NATS server was
    // gone (a claim or an outcome that could not be stored is released and claimed again). A
    // bound, not an exact figure: a tenth of what was accepted.
    assert!(
        again <= accepted.len() / 10,
        "{again} of {} invocations were attempted more than once",
        accepted.len()
    );
}

/// Timer invocations of `function` a node ran: tick time → count.
fn ticks_run(gust: &Gust, function: &str, into: &mut HashMap<u64, usize>) {
    let records: Value = gust
        .api(
            Method::GET,
            &format!("/v1/usage/records?function={function}&limit=10000"),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for record in records.as_array().unwrap() {
        let id = record["invocation_id"].as_str().unwrap();
        if record["trigger"] != "timer" || !seen.insert(id.to_owned()) {
            continue;
        }
        let invocation: Value = gust
            .api(Method::GET, &format!("/v1/invocations/{id}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        *into
            .entry(invocation["source"]["tick_ms"].as_u64().unwrap())
            .or_default() += 1;
    }
}

#[test]
fn a_timer_fires_once_per_tick_across_three_nodes_and_a_node_kill() {
    let _alone = alone();
    let nats = NatsCluster::start(1);
    let mut gusts: Vec<Gust> = (0..3).map(|_| join(&nats)).collect();
    gusts[0].deploy(
        "tick",
        "python",
        "tick.py",
        "def main():\n    return 'ok'\n",
        &[],
    );
    gusts[1]
        .cli(&[
            "timer",
            "create",
            "everysecond",
            "--fn",
            "tick",
            "--cron",
            "* * * * * *",
        ])
        .ok();
    // 20 s of a 1 s timer, one node killed after 8.
    let started_ms = now_ms();
    std::thread::sleep(Duration::from_secs(8));
    gusts[2].kill9();
    std::thread::sleep(Duration::from_secs(12));
    // The timer's status counts each tick once, whichever nodes published it and ran it.
    let view: serde_json::Value = serde_json::from_str(
        &gusts[1]
            .cli(&["timer", "get", "everysecond", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let status = &view["status"];
    let seconds = (now_ms() - started_ms) / 1000;
    let fired = status["fired"].as_u64().unwrap();
    assert!(
        (seconds.saturating_sub(4)..=seconds + 1).contains(&fired),
        "{fired} ticks counted in {seconds} s: {status}"
    );
    assert!(status["succeeded"].as_u64().unwrap() <= fired, "{status}");
    assert!(
        status["succeeded"].as_u64().unwrap() >= fired / 2,
        "{status}"
    );
    gusts[0].cli(&["timer", "delete", "everysecond"]).ok();
    let stopped_ms = now_ms();
    // The killed node runs what it had accepted when it comes back.
    gusts[2].start_again();
    std::thread::sleep(Duration::from_secs(3));

    // Every node holds every node's usage records: one node's view has every run, and a tick
    // run twice shows as two invocations of the same tick.
    let mut ticks: HashMap<u64, usize> = HashMap::new();
    ticks_run(&gusts[0], "tick", &mut ticks);
    let twice: Vec<_> = ticks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks fired more than once: {twice:?}");
    // Every whole second between the timer's first tick and its delete fired.
    let first = started_ms.div_ceil(1000) * 1000 + 1000;
    let expected: Vec<u64> = (first..stopped_ms.saturating_sub(1000))
        .step_by(1000)
        .collect();
    let missing: Vec<_> = expected.iter().filter(|t| !ticks.contains_key(t)).collect();
    assert!(
        missing.is_empty(),
        "ticks that never fired: {missing:?} (fired: {:?})",
        {
            let mut fired: Vec<_> = ticks.keys().collect();
            fired.sort();
            fired
        }
    );
    let mut seen_elsewhere = HashMap::new();
    ticks_run(&gusts[1], "tick", &mut seen_elsewhere);
    assert_eq!(seen_elsewhere, ticks, "two nodes report different runs");
    eprintln!("{} ticks fired once each", ticks.len());
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `gust usage` totals of one function as a node reports them: (invocations, billed ms,
/// GB-seconds in millionths).
fn usage_totals(gust: &Gust, function: &str) -> (u64, u64, u64) {
    let row = gust.usage_row(function);
    (
        row["invocations"].as_u64().unwrap_or(0),
        row["billed_ms"].as_u64().unwrap_or(0),
        (row["gb_seconds"].as_f64().unwrap_or(0.0) * 1e6).round() as u64,
    )
}

#[test]
fn usage_totals_and_function_logs_are_the_same_from_every_node() {
    let _alone = alone();
    let nats = NatsCluster::start(3);
    let gusts: Vec<Gust> = (0..3).map(|_| join(&nats)).collect();
    gusts[0].deploy(
        "metered",
        "python",
        "metered.py",
        "def main(req):\n    print('ran', req.query.get('n'), flush=True)\n    return 'counted'\n",
        &[],
    );
    // A different number of requests through each node: 5, 10 and 15.
    let mut sent = 0;
    for (index, gust) in gusts.iter().enumerate() {
        until_served(gust, "/metered", 200, Some("counted"));
        sent += 1;
        for n in 0..(5 * (index + 1) - 1) {
            let path = format!("/metered?n={index}-{n}");
            let response = gust.http().get(gust.public_url(&path)).send().unwrap();
            assert_eq!(response.status().as_u16(), 200);
            sent += 1;
        }
    }
    assert_eq!(sent, 30);

    // Every node reports all 30 invocations, and the same totals to the millisecond.
    let totals: Vec<_> = gusts
        .iter()
        .map(|gust| {
            eventually(Duration::from_secs(20), || {
                let totals = usage_totals(gust, "metered");
                (totals.0 == sent).then_some(totals)
            })
            .unwrap_or_else(|| {
                panic!(
                    "a node never reported {sent} invocations: {:?}",
                    usage_totals(gust, "metered")
                )
            })
        })
        .collect();
    assert!(totals[0].1 >= sent, "{totals:?}");
    assert!(
        totals.iter().all(|t| *t == totals[0]),
        "totals differ between nodes: {totals:?}"
    );
    // Each attempt is one raw record on every node, once.
    for gust in &gusts {
        let records: Vec<Value> = gust
            .api(Method::GET, "/v1/usage/records?function=metered&limit=1000")
            .send()
            .unwrap()
            .json()
            .unwrap();
        let ids: std::collections::HashSet<_> = records
            .iter()
            .map(|r| r["invocation_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!((records.len(), ids.len()), (30, 30));
    }

    // `gust fn logs` on any node merges every node's lines in time order, each with its node.
    let ids: std::collections::BTreeSet<String> = nodes(&gusts[0])
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    for gust in &gusts {
        let lines: Vec<Value> = serde_json::from_str(
            &gust
                .cli(&["fn", "logs", "metered", "-o", "json"])
                .ok()
                .stdout,
        )
        .unwrap();
        let ran: Vec<&Value> = lines
            .iter()
            .filter(|l| l["text"].as_str().unwrap().starts_with("ran "))
            .collect();
        let texts: std::collections::BTreeSet<&str> =
            ran.iter().map(|l| l["text"].as_str().unwrap()).collect();
        // 27 numbered requests and the 3 first ones (`ran None`).
        assert_eq!((ran.len(), texts.len()), (30, 28), "{lines:?}");
        let from: std::collections::BTreeSet<String> = ran
            .iter()
            .map(|l| l["node"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(from, ids, "lines come from every node");
        let times: Vec<u64> = lines
            .iter()
            .map(|l| l["time_ms"].as_u64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        // A cursor of every node's last line gives nothing more.
        let mut last: HashMap<String, u64> = HashMap::new();
        for line in &lines {
            last.insert(
                line["node"].as_str().unwrap().to_owned(),
                line["seq"].as_u64().unwrap(),
            );
        }
        let cursor: Vec<String> = last.iter().map(|(n, s)| format!("{n}={s}")).collect();
        let after: Vec<Value> = gust
            .api(
                Method::GET,
                &format!("/v1/functions/metered/logs?cursor={}", cursor.join(",")),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(after, Vec::<Value>::new());
    }

    // A node that starts with an empty data directory reads the same totals from the stream.
    let fresh = join(&nats);
    let fresh_totals = eventually(Duration::from_secs(20), || {
        let got = usage_totals(&fresh, "metered");
        (got == totals[0]).then_some(got)
    });
    assert_eq!(
        fresh_totals,
        Some(totals[0]),
        "the new node reports {:?}",
        usage_totals(&fresh, "metered")
    );
}

#[test]
fn a_node_joins_nats_over_tls_trusting_the_given_ca_and_refuses_an_unknown_certificate() {
    let _alone = alone();
    let nats = NatsCluster::start_tls();
    let ca = nats.ca().unwrap().to_str().unwrap().to_owned();
    assert!(nats.urls().starts_with("tls://"), "{}", nats.urls());
    let gust = join_with(&nats, &["--nats-ca", &ca]);
    gust.deploy(
        "secure",
        "python",
        "secure.py",
        "def main():\n    return 'over tls'\n",
        &[],
    );
    until_served(&gust, "/secure", 200, Some("over tls"));
    assert_eq!(nodes(&gust).len(), 1);

    // Without the CA the server's certificate is not trusted: the node does not start (its
    // error says NATS did not answer, not that the certificate was refused).
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(GUST)
        .args(["up", "--no-sandbox", "--listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0", "--cluster", &nats.urls()])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot join the cluster"), "{stderr}");
    eprintln!(
        "without the CA: {}",
        stderr.lines().last().unwrap_or_default()
    );
}

#[test]
fn an_app_applied_on_one_node_is_unchanged_from_another_and_exports_there() {
    let _alone = alone();
    let nats = NatsCluster::start(1);
    let gusts: Vec<Gust> = (0..2).map(|_| join(&nats)).collect();
    gusts[0].write_file("app/hello.py", "def main():\n    return 'from the app'\n");
    gusts[0].write_file(
        "app/gust.yaml",
        "app: shared\nfunctions:\n  hello:\n    code: hello.py\n    env: python\nroutes:\n  hello:\n    function: hello\n    url: /hello\n",
    );
    let app = gusts[0].scratch().join("app");
    gusts[0].cli(&["apply", "-f", app.to_str().unwrap()]).ok();
    until_served(&gusts[1], "/hello", 200, Some("from the app"));
    // The other node plans from the same state: nothing to do.
    let again = gusts[1]
        .cli(&["apply", "-f", app.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(again.contains("no changes"), "{again}");
    // Exported from a node that has not run the function yet: the code comes from the
    // cluster's object store, and applying the export on the first node changes nothing.
    let fresh = join(&nats);
    let exported = fresh.scratch().join("exported");
    fresh
        .cli(&[
            "export",
            "--app",
            "shared",
            "-o",
            exported.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(
        std::fs::read_to_string(exported.join("hello/hello.py")).unwrap(),
        "def main():\n    return 'from the app'\n"
    );
    let applied = gusts[0]
        .cli(&["apply", "-f", exported.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(applied.contains("no changes"), "{applied}");
}

#[test]
fn namespaces_and_tokens_made_on_one_node_hold_on_every_node() {
    let _alone = alone();
    let nats = NatsCluster::start(1);
    let gusts: Vec<Gust> = (0..2).map(|_| join(&nats)).collect();
    gusts[0].cli(&["ns", "create", "team-a"]).ok();
    let token = gusts[0]
        .cli(&[
            "token", "create", "--role", "deployer", "-n", "team-a", "--name", "ci",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let as_ci = |gust: &Gust, args: &[&str]| gust.cli_with_env(args, &[("GUST_TOKEN", &token)]);
    // The other node knows the namespace and the token as soon as its copy has them.
    eventually(Duration::from_secs(5), || {
        (as_ci(&gusts[1], &["fn", "list", "-n", "team-a"]).code == 0).then_some(())
    })
    .expect("the token works on the other node");
    let refused = as_ci(&gusts[1], &["fn", "list", "-n", "default"]);
    assert!(
        refused.stderr.contains("does not reach namespace default"),
        "{}",
        refused.stderr
    );
    // Revoked on the second node: refused on the first.
    gusts[1]
        .cli(&["token", "revoke", "ci", "-n", "team-a"])
        .ok();
    eventually(Duration::from_secs(5), || {
        as_ci(&gusts[0], &["fn", "list", "-n", "team-a"])
            .stderr
            .contains("unauthorized")
            .then_some(())
    })
    .expect("the revoked token is refused on the first node");
    // A namespace holding a function on one node cannot be deleted from the other.
    let code = gusts[0].write_file("f.py", "def main():\n    return 1\n");
    gusts[0]
        .cli(&[
            "fn",
            "create",
            "f",
            "--env",
            "python",
            "--code",
            code.to_str().unwrap(),
            "-n",
            "team-a",
        ])
        .ok();
    let busy = gusts[1].cli(&["ns", "delete", "team-a"]);
    assert!(busy.stderr.contains("function f"), "{}", busy.stderr);
    // The audit log is the cluster's: each node lists the writes made through the other.
    let actions = |gust: &Gust| -> Vec<(String, u64)> {
        let listed = gust.cli(&["audit", "list", "--all", "-o", "json"]).ok();
        let entries: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
        entries
            .iter()
            .map(|e| {
                (
                    format!("{} {}", e["action"].as_str().unwrap(), e["resource"]),
                    e["status"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let expected = [
        (r#"POST /v1/namespaces "/v1/namespaces""#.to_owned(), 201),
        (r#"DELETE /v1/tokens/{id} "/v1/tokens/ci""#.to_owned(), 204),
        (r#"POST /v1/functions "/v1/functions""#.to_owned(), 201),
        (
            r#"DELETE /v1/namespaces/{name} "/v1/namespaces/team-a""#.to_owned(),
            409,
        ),
    ];
    for gust in &gusts {
        let seen = eventually(Duration::from_secs(5), || {
            let seen = actions(gust);
            expected
                .iter()
                .all(|wanted| seen.contains(wanted))
                .then_some(seen)
        });
        assert!(seen.is_some(), "{:?}", actions(gust));
    }
}

#[test]
fn a_namespace_s_async_queue_quota_counts_the_work_of_every_node() {
    let _alone = alone();
    let nats = NatsCluster::start(1);
    let gusts: Vec<Gust> = (0..2).map(|_| join(&nats)).collect();
    gusts[0]
        .cli(&["ns", "create", "team-a", "--max-async-queue", "2"])
        .ok();
    let code = gusts[0].write_file(
        "slow.py",
        "import time\ndef main():\n    time.sleep(3)\n    return 'done'\n",
    );
    gusts[0]
        .cli(&[
            "fn",
            "create",
            "slow",
            "--env",
            "python",
            "--code",
            code.to_str().unwrap(),
            "-n",
            "team-a",
        ])
        .ok();
    eventually(Duration::from_secs(5), || {
        (gusts[1].cli(&["fn", "get", "slow", "-n", "team-a"]).code == 0).then_some(())
    })
    .expect("the other node knows the function");
    // Two taken through the first node (each runs 3 s); the third, through the second node,
    // is refused: the count is JetStream's, not a node's.
    for _ in 0..2 {
        gusts[0]
            .cli(&["fn", "invoke", "slow", "--async", "-n", "team-a"])
            .ok();
    }
    let third = gusts[1].cli(&["fn", "invoke", "slow", "--async", "-n", "team-a"]);
    assert!(
        third
            .stderr
            .contains("2 asynchronous invocations waiting or running, its quota")
            && third.stderr.contains("(quota, request"),
        "{}",
        third.stderr
    );
    // Once they end, the namespace queues again; the default namespace never stopped.
    gusts[1]
        .cli(&[
            "fn",
            "create",
            "slow",
            "--env",
            "python",
            "--code",
            code.to_str().unwrap(),
        ])
        .ok();
    gusts[1].cli(&["fn", "invoke", "slow", "--async"]).ok();
    eventually(Duration::from_secs(20), || {
        (gusts[1]
            .cli(&["fn", "invoke", "slow", "--async", "-n", "team-a"])
            .code
            == 0)
            .then_some(())
    })
    .expect("the namespace takes work again once its invocations ended");
}

/// Dead letters, their counts and timers' statuses are listed per namespace from the
/// cluster's buckets: each namespace sees its own, from any node, and nothing of another's.
#[test]
fn dead_letters_and_timer_statuses_are_listed_per_namespace_from_any_node() {
    let _alone = alone();
    let nats = NatsCluster::start(1);
    let gusts: Vec<Gust> = (0..2).map(|_| join(&nats)).collect();
    gusts[0].cli(&["ns", "create", "team-a"]).ok();
    let refuses = "def main():\n    return ('no', 400)\n";
    let code = gusts[0].write_file("refuses/refuses.py", refuses);
    let code = code.to_str().unwrap();
    for (namespace, invocations) in [("default", 3), ("team-a", 2)] {
        gusts[0]
            .cli(&[
                "fn", "create", "refuses", "--env", "python", "--code", code, "-n", namespace,
            ])
            .ok();
        gusts[0]
            .cli(&[
                "timer",
                "create",
                "hourly",
                "--fn",
                "refuses",
                "--cron",
                "0 0 * * * *",
                "-n",
                namespace,
            ])
            .ok();
        for _ in 0..invocations {
            gusts[0]
                .cli(&["fn", "invoke", "refuses", "--async", "-n", namespace])
                .ok();
        }
    }
    let json_of = |gust: &Gust, args: &[&str]| -> Value {
        serde_json::from_str(&gust.cli(args).ok().stdout).unwrap()
    };
    for (namespace, invocations) in [("default", 3), ("team-a", 2)] {
        // A 400 is final: each invocation becomes a dead letter after its one attempt.
        let listed = eventually(Duration::from_secs(30), || {
            let listed = json_of(&gusts[1], &["dlq", "list", "-n", namespace, "-o", "json"]);
            (listed.as_array().unwrap().len() >= invocations).then_some(listed)
        })
        .unwrap_or_else(|| panic!("{namespace}'s dead letters"));
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), invocations, "{listed:?}");
        assert!(
            listed.iter().all(|dead| dead["namespace"] == namespace),
            "{listed:?}"
        );
        let counts = json_of(
            &gusts[1],
            &["invocation", "counts", "-n", namespace, "-o", "json"],
        );
        assert_eq!(counts["dead_letters"], invocations, "{counts}");
        let timers = json_of(&gusts[1], &["timer", "list", "-n", namespace, "-o", "json"]);
        let timers = timers.as_array().unwrap();
        assert_eq!(timers.len(), 1, "{timers:?}");
        assert_eq!(timers[0]["status"]["fired"], 0, "{timers:?}");
    }
    // A purged dead letter leaves only its marker in the bucket: no longer listed or counted.
    let listed = json_of(&gusts[1], &["dlq", "list", "-n", "team-a", "-o", "json"]);
    let id = listed[0]["id"].as_str().unwrap();
    gusts[0].cli(&["dlq", "purge", id, "-n", "team-a"]).ok();
    let listed = json_of(&gusts[1], &["dlq", "list", "-n", "team-a", "-o", "json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_ne!(listed[0]["id"], id, "{listed}");
    let counts = json_of(
        &gusts[1],
        &["invocation", "counts", "-n", "team-a", "-o", "json"],
    );
    assert_eq!(counts["dead_letters"], 1, "{counts}");
    // A timer deleted in one namespace leaves the other's status alone.
    gusts[1]
        .cli(&["timer", "delete", "hourly", "-n", "team-a"])
        .ok();
    let timers = json_of(&gusts[0], &["timer", "list", "-o", "json"]);
    assert!(timers[0]["status"].is_object(), "{timers}");
}
