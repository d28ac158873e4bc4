//! End-to-end: every `gust new` template, written, deployed with `gust apply` and used as its
//! README says. One Gust serves them all (each app names its own function and route).

use std::time::{Duration, Instant};

use gust_harness::brokers::{Broker, BrokerKind};
use gust_harness::{Gust, GustOptions};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// `gust new TEMPLATE DIR` then `gust apply -f DIR`, with `env` for the apply.
fn deploy(gust: &Gust, template: &str, app: &str, env: &[(&str, &str)]) {
    let dir = gust.scratch().join(app);
    let dir = dir.to_str().unwrap();
    let said = gust.cli(&["new", template, dir]).ok().stdout;
    assert!(said.contains(&format!("wrote app {app}")), "{said}");
    let readme = std::fs::read_to_string(gust.scratch().join(app).join("README.md")).unwrap();
    assert!(
        readme.contains(app) && !readme.contains("{{app}}"),
        "{readme}"
    );
    gust.cli_with_env(&["apply", "-f", dir], env).ok();
}

fn post(gust: &Gust, path: &str, body: &Value) -> (u16, String) {
    let response = gust.post_json(path, body);
    (response.status().as_u16(), response.text().unwrap())
}

#[test]
fn every_template_deploys_and_answers_as_its_readme_says() {
    let gust = Gust::start(GUST, GustOptions::default());
    let listed = gust.cli(&["new", "--list"]).ok().stdout;
    for name in [
        "python-http",
        "node-http",
        "python-ml",
        "mqtt-python",
        "timer-python",
    ] {
        assert!(listed.contains(name), "{listed}");
    }

    deploy(&gust, "python-http", "py-web", &[]);
    assert_eq!(gust.get("/py-web?name=you").text().unwrap(), "hello, you\n");
    assert_eq!(
        post(&gust, "/py-web", &json!({"n": 1})),
        (200, r#"{"received": {"n": 1}}"#.to_owned())
    );

    deploy(&gust, "node-http", "node-web", &[]);
    assert_eq!(
        gust.get("/node-web?name=you").text().unwrap(),
        "hello, you\n"
    );
    assert_eq!(
        post(&gust, "/node-web", &json!({"n": 1})),
        (200, r#"{"received":{"n":1}}"#.to_owned())
    );

    // numpy from the registry this machine's pip is set up for.
    deploy(&gust, "python-ml", "line", &[]);
    let (status, answer) = post(&gust, "/line", &json!({"x": [1, 2]}));
    assert_eq!(status, 200, "{answer}");
    let y: Vec<f64> = serde_json::from_str::<Value>(&answer).unwrap()["y"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        (y[0] - 3.0).abs() < 0.2 && (y[1] - 5.0).abs() < 0.2,
        "{answer}"
    );
    assert_eq!(post(&gust, "/line", &json!({"z": 1})).0, 422);

    let broker = Broker::start(BrokerKind::Mqtt);
    let mut answers = broker.collector("thermo/out");
    deploy(
        &gust,
        "mqtt-python",
        "thermo",
        &[("MQTT_URL", &broker.url())],
    );
    gust.wait_trigger_connected("thermo");
    broker.publish("thermo/in", &[br#"{"celsius": 35}"#.to_vec()]);
    let answered =
        broker.collect_until(&mut answers, Duration::from_secs(20), |got| !got.is_empty());
    assert!(answered, "no answer on thermo/out");
    let answer: Value = serde_json::from_slice(&answers.messages[0].payload).unwrap();
    assert_eq!(answer, json!({"celsius": 35.0, "too_hot": true}));

    // Every 10 s: the first tick comes within 10 s of the apply.
    deploy(&gust, "timer-python", "ticker", &[]);
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let logs = gust.cli(&["fn", "logs", "ticker"]).ok().stdout;
        if logs.contains("tick at ") {
            break;
        }
        assert!(Instant::now() < deadline, "no tick: {logs}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // A template is written only into a new or empty directory.
    let refused = gust
        .cli(&[
            "new",
            "python-http",
            gust.scratch().join("py-web").to_str().unwrap(),
        ])
        .failed();
    assert!(refused.contains("is not empty"), "{refused}");
    let unknown = gust.cli(&["new", "cobol-http"]).failed();
    assert!(unknown.contains("no template \"cobol-http\""), "{unknown}");
}

/// The component templates run their build command at apply: componentize-py from
/// `scripts/setup.sh`'s tools, componentize-js from the npm registry.
#[test]
fn the_component_templates_build_and_answer() {
    let gust = Gust::start(GUST, GustOptions::default());
    let tools =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/componentize-py/bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    deploy(&gust, "wasm-python", "wasm-py", &[("PATH", &path)]);
    assert_eq!(
        gust.get("/wasm-py/hi").text().unwrap(),
        "hello from a python component: /wasm-py/hi\n"
    );
    // Builds are not reproducible (componentize-py's output differs each time): an unchanged
    // app is not built again, so it makes no new revision.
    let again = gust
        .cli_with_env(
            &[
                "apply",
                "-f",
                gust.scratch().join("wasm-py").to_str().unwrap(),
            ],
            &[("PATH", &path)],
        )
        .ok();
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);
    assert!(!again.stderr.contains("building"), "{}", again.stderr);
    deploy(&gust, "wasm-js", "wasm-js", &[]);
    assert_eq!(
        gust.get("/wasm-js/hi").text().unwrap(),
        "hello from a javascript component: /wasm-js/hi\n"
    );
    // A build that fails stops the apply before anything changes.
    let dir = gust.scratch().join("wasm-js");
    std::fs::write(dir.join("app.js"), "this is not javascript(").unwrap();
    let failed = gust.cli(&["apply", "-f", dir.to_str().unwrap()]).failed();
    assert!(failed.contains("the build command failed"), "{failed}");
    assert_eq!(
        gust.get("/wasm-js/hi").text().unwrap(),
        "hello from a javascript component: /wasm-js/hi\n"
    );
}
