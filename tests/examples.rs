//! End-to-end: every example in `examples/` deployed as its README section says, through the
//! CLI, answering real requests. `ml-inference`, `webhook` and `rest-api` install their
//! dependencies from the registries this machine's pip and npm are set up for.

use std::time::{Duration, Instant};

use gust_harness::brokers::{Broker, BrokerKind};
use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

fn example(path: &str) -> String {
    format!("{}/examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn gust() -> Gust {
    Gust::start(GUST, GustOptions::default())
}

fn post_json(gust: &Gust, path: &str, body: &Value) -> (u16, Value) {
    let response = gust.post_json(path, body);
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn ml_inference_predicts_iris_species() {
    let gust = gust();
    let created = gust
        .cli(&[
            "fn",
            "create",
            "iris",
            "--env",
            "python",
            "--code",
            &example("ml-inference"),
            "--memory",
            "512",
        ])
        .ok();
    assert!(created.stderr.contains("built in"), "{}", created.stderr);
    gust.cli(&[
        "route", "create", "--fn", "iris", "--url", "/predict", "--method", "POST",
    ])
    .ok();
    for (features, species) in [
        ([5.1, 3.5, 1.4, 0.2], "setosa"),
        ([6.0, 2.7, 4.1, 1.0], "versicolor"),
        ([6.7, 3.0, 5.2, 2.3], "virginica"),
    ] {
        let (status, answer) = post_json(&gust, "/predict", &json!({ "features": features }));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["class"], species, "{answer}");
        let total: f64 = answer["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 0.01, "{answer}");
    }
    let (status, answer) = post_json(&gust, "/predict", &json!({ "features": [1, 2] }));
    assert_eq!(status, 400, "{answer}");
}

fn signature(secret: &str, body: &str) -> String {
    let output = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("openssl runs");
    let text = String::from_utf8(output.stdout).unwrap();
    format!("sha256={}", text.split_whitespace().next().unwrap())
}

#[test]
fn webhook_accepts_signed_payloads_and_rejects_forged_ones() {
    let gust = gust();
    gust.cli(&[
        "fn",
        "create",
        "webhook",
        "--env",
        "node",
        "--code",
        &example("webhook"),
        "--request-body",
        "stream",
        "--env-var",
        "WEBHOOK_SECRET=s3cret",
    ])
    .ok();
    let log = gust.cli(&["fn", "build-logs", "webhook"]).ok().stdout;
    assert!(
        log.contains("$ npm ci --omit=dev"),
        "with its lockfile: {log}"
    );
    gust.cli(&[
        "route", "create", "--fn", "webhook", "--url", "/webhook", "--method", "POST",
    ])
    .ok();
    let body = r#"{"action":"opened","issue":{"number":7}}"#;
    let send = |sig: &str| {
        gust.http()
            .post(gust.public_url("/webhook"))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "issues")
            .header("X-Hub-Signature-256", sig)
            .body(body)
            .send()
            .unwrap()
    };
    let accepted = send(&signature("s3cret", body));
    assert_eq!(accepted.status(), 200);
    assert_eq!(
        accepted.json::<Value>().unwrap(),
        json!({"accepted": "issues", "action": "opened"})
    );
    for forged in [
        signature("guess", body),
        "sha256=00".to_owned(),
        String::new(),
    ] {
        assert_eq!(send(&forged).status(), 401, "{forged}");
    }
}

#[test]
fn rest_api_creates_reads_updates_and_deletes_notes() {
    let redis = Broker::start(BrokerKind::Redis);
    let gust = gust();
    let redis_url = format!("REDIS_URL={}/0", redis.url());
    let allow = format!("*://127.0.0.1:{}", redis.port);
    gust.cli(&[
        "fn",
        "create",
        "notes",
        "--env",
        "python",
        "--code",
        &example("rest-api"),
        "--env-var",
        &redis_url,
        "--allow-outbound",
        &allow,
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "notes", "--url", "/notes", "--method", "GET,POST",
    ])
    .ok();
    gust.cli(&[
        "route",
        "create",
        "--fn",
        "notes",
        "--url",
        "/notes/{id}",
        "--method",
        "GET,PUT,DELETE",
    ])
    .ok();
    let (status, created) = post_json(&gust, "/notes", &json!({"text": "buy milk"}));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    post_json(&gust, "/notes", &json!({"text": "call home"}));
    let listed: Value = gust.get("/notes").json().unwrap();
    let texts: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["buy milk", "call home"]);
    let updated: Value = gust
        .http()
        .put(gust.public_url(&format!("/notes/{id}")))
        .body(json!({"text": "buy oat milk"}).to_string())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(updated["text"], "buy oat milk");
    let read: Value = gust.get(&format!("/notes/{id}")).json().unwrap();
    assert_eq!(read["text"], "buy oat milk");
    let deleted = gust
        .http()
        .delete(gust.public_url(&format!("/notes/{id}")))
        .send()
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(gust.get(&format!("/notes/{id}")).status(), 404);
    let (status, _) = post_json(&gust, "/notes", &json!({"text": ""}));
    assert_eq!(status, 400);
}

#[test]
fn background_orders_are_retried_and_the_report_has_a_nightly_timer() {
    let gust = gust();
    gust.cli(&[
        "fn",
        "create",
        "order",
        "--env",
        "python",
        "--code",
        &example("background/order.py"),
        "--max-attempts",
        "3",
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "order", "--url", "/orders", "--method", "POST", "--async",
    ])
    .ok();
    let (status, accepted) = post_json(&gust, "/orders", &json!({"id": "A-1", "flaky": true}));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let invocation = loop {
        let shown: Value = serde_json::from_str(
            &gust
                .cli(&["invocation", "get", &id, "-o", "json"])
                .ok()
                .stdout,
        )
        .unwrap();
        if shown["state"] == "succeeded" {
            break shown;
        }
        assert!(Instant::now() < deadline, "not done: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(invocation["attempts"], 2, "{invocation}");
    let logs = gust.cli(&["fn", "logs", "order"]).ok().stdout;
    assert!(logs.contains("order A-1 processed on attempt 2"), "{logs}");

    gust.cli(&[
        "fn",
        "create",
        "report",
        "--env",
        "python",
        "--code",
        &example("background/report.py"),
    ])
    .ok();
    gust.cli(&[
        "timer",
        "create",
        "nightly",
        "--fn",
        "report",
        "--cron",
        "0 0 2 * * *",
        "--tz",
        "UTC",
    ])
    .ok();
    let timer: Value = serde_json::from_str(
        &gust
            .cli(&["timer", "get", "nightly", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let next_ms = timer["next_fire_ms"].as_u64().unwrap();
    assert_eq!((next_ms / 1000) % 86_400, 2 * 3600, "02:00 UTC: {timer}");
    let report = gust.cli(&["fn", "invoke", "report"]).ok().stdout;
    assert!(report.contains("\"report\": \"nightly\""), "{report}");
}

/// Waits until queue trigger `name` is connected to its broker.

#[test]
fn iot_mqtt_alerts_only_on_readings_over_the_threshold() {
    let broker = Broker::start(BrokerKind::Mqtt);
    let gust = gust();
    gust.cli(&[
        "fn",
        "create",
        "thermo",
        "--env",
        "python",
        "--code",
        &example("iot-mqtt/main.py"),
        "--env-var",
        "ALERT_ABOVE_CELSIUS=30",
    ])
    .ok();
    let mut alerts = broker.collector("alerts");
    gust.cli(&[
        "mqt",
        "create",
        "sensors",
        "--fn",
        "thermo",
        "--kind",
        "mqtt",
        "--url",
        &broker.url(),
        "--topic",
        "sensors/+/temp",
        "--resp-topic",
        "alerts",
    ])
    .ok();
    gust.wait_trigger_connected("sensors");
    for (sensor, celsius) in [("kitchen", 21.5), ("oven", 240.0), ("hall", 19.0)] {
        broker.publish(
            &format!("sensors/{sensor}/temp"),
            &[json!({"sensor": sensor, "celsius": celsius})
                .to_string()
                .into_bytes()],
        );
    }
    // All three handled, one alert published.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let trigger: Value = gust
            .api(Method::GET, "/v1/mqtriggers/sensors")
            .send()
            .unwrap()
            .json()
            .unwrap();
        if trigger["status"]["succeeded"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{trigger}");
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.collect(&mut alerts);
    let published: Vec<Value> = alerts
        .messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(
        published,
        [json!({"alert": "too hot", "sensor": "oven", "celsius": 240.0, "threshold": 30.0})]
    );
}

#[test]
fn stream_aggregates_event_windows_into_the_results_subject() {
    let broker = Broker::start(BrokerKind::Nats);
    let gust = gust();
    gust.cli(&[
        "fn",
        "create",
        "views",
        "--env",
        "python",
        "--code",
        &example("stream/main.py"),
    ])
    .ok();
    gust.cli(&[
        "mqt",
        "create",
        "views",
        "--fn",
        "views",
        "--kind",
        "nats",
        "--url",
        &broker.url(),
        "--topic",
        "views.batch",
        "--resp-topic",
        "views.stats",
    ])
    .ok();
    gust.wait_trigger_connected("views");
    let mut stats = broker.collector("views.stats");
    broker.publish(
        "views.batch",
        &[json!([
            {"page": "/", "ms": 120},
            {"page": "/", "ms": 80},
            {"page": "/docs", "ms": 300}
        ])
        .to_string()
        .into_bytes()],
    );
    assert!(
        broker.collect_until(&mut stats, Duration::from_secs(30), |m| !m.is_empty()),
        "{}",
        gust.log()
    );
    let answer: Value = serde_json::from_slice(&stats.messages[0].payload).unwrap();
    assert_eq!(
        answer,
        json!({"events": 3, "pages": {
            "/": {"views": 2, "mean_ms": 100.0, "slowest_ms": 120},
            "/docs": {"views": 1, "mean_ms": 300.0, "slowest_ms": 300}
        }})
    );
}
