//! Secrets and configs through the binary: mounted at Fission's paths and as environment
//! variables, rotated, namespaced, and S-12: a canary secret value is searched for in every
//! API answer, log, error body, export and the data directory, and never found.

use std::path::Path;
use std::time::Duration;

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

const CANARY: &str = "canary-7f3a91c2-never-shown";
const FILE_CANARY: &str = "canary-file-0b44d2";

/// Answers what the function sees without showing it: a digest of each place a value may be.
const READER: &str = r#"
import hashlib, os
def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]
def main(req):
    with open('/secrets/default/db/password') as f:
        password = f.read()
    with open('/secrets/default/db/key.pem') as f:
        key = f.read()
    with open('/configs/default/flags/mode') as f:
        mode = f.read()
    print('read the secret, %d bytes' % len(password))
    return '%s %s %s %s' % (digest(password), digest(os.environ.get('password', '')), digest(key), mode)
"#;

fn digest(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_owned()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn s12_a_secret_reaches_its_function_and_nothing_else() {
    let gust = Gust::start(GUST, GustOptions::default());
    let key_file = gust.write_file("key.pem", FILE_CANARY);
    gust.cli(&[
        "secret",
        "create",
        "db",
        "--from-literal",
        &format!("password={CANARY}"),
        "--from-file",
        &format!("key.pem={}", key_file.display()),
    ])
    .ok();
    gust.cli(&["config", "create", "flags", "--from-literal", "mode=fast"])
        .ok();
    let code = gust.write_file("reader.py", READER);
    gust.cli(&[
        "fn",
        "create",
        "reader",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--secret",
        "db",
        "--config",
        "flags",
        "--secret-env",
        "--url",
        "/reader",
    ])
    .ok();
    let expected = format!(
        "{} {} {} fast",
        digest(CANARY),
        digest(CANARY),
        digest(FILE_CANARY)
    );
    assert_eq!(gust.get("/reader").text().unwrap(), expected);

    // Error bodies: a refused value names its key, never the value.
    let refused = gust.cli(&[
        "secret",
        "create",
        "bad",
        "--from-literal",
        &format!("no/slash={CANARY}"),
    ]);
    assert!(refused.stderr.contains("no/slash"), "{}", refused.stderr);
    let raw = gust
        .api(Method::POST, "/v1/secrets")
        .body(format!(r#"{{"name":"raw","data":{{"k":"{CANARY}"}}}}"#))
        .send()
        .unwrap();
    assert_eq!(raw.status(), 400);
    let raw = raw.text().unwrap();
    assert!(raw.contains("not base64") && !raw.contains(CANARY), "{raw}");

    // Every answer of the API's reads, in every format the CLI prints.
    let doc = gust.openapi();
    let mut answers = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() || path.contains("{id}") || path == "/v1/openapi.json" {
            continue;
        }
        for name in ["reader", "db", "flags", "default"] {
            let concrete = path.replace("{name}", name);
            let response = gust.api(Method::GET, &concrete).send().unwrap();
            answers.push((concrete, response.text().unwrap()));
        }
    }
    for args in [
        vec!["fn", "get", "reader", "-o", "json"],
        vec!["fn", "revisions", "reader", "-o", "yaml"],
        vec!["fn", "logs", "reader"],
        vec!["secret", "get", "db", "-o", "json"],
        vec!["secret", "list", "-o", "yaml"],
        vec!["usage", "--since", "1h", "-o", "csv"],
        vec!["audit", "list", "-o", "json"],
    ] {
        let output = gust.cli(&args).ok();
        answers.push((args.join(" "), output.stdout + &output.stderr));
    }
    let exported = gust.scratch().join("exported");
    gust.cli(&["export", "--fn", "reader", "-o", exported.to_str().unwrap()])
        .ok();
    answers.push((
        "export".into(),
        std::fs::read_to_string(exported.join("gust.yaml")).unwrap(),
    ));
    answers.push(("gust's log".into(), gust.log()));
    assert!(answers.len() > 100, "{} answers", answers.len());
    for canary in [CANARY, FILE_CANARY] {
        for (what, text) in &answers {
            assert!(!text.contains(canary), "{what} shows the secret: {text}");
        }
        // At rest: sealed in the store, nowhere in the data directory or the export, as
        // itself or in the base64 the API takes it in.
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(canary);
        for form in [canary, encoded.as_str()] {
            let found = files_containing(&gust.data_dir(), form);
            assert!(found.is_empty(), "stored in the clear: {found:?}");
            assert!(files_containing(&exported, form).is_empty());
            for (what, text) in &answers {
                assert!(!text.contains(form), "{what} shows the secret: {text}");
            }
        }
    }
    // The scan above does find what is stored as given: a config's value is.
    assert!(
        !files_containing(&gust.data_dir(), "ZmFzdA==").is_empty(),
        "the data directory scan finds nothing at all"
    );
    let secret: Value =
        serde_json::from_str(&gust.cli(&["secret", "get", "db", "-o", "json"]).ok().stdout)
            .unwrap();
    assert_eq!(secret["keys"], serde_json::json!(["key.pem", "password"]));
    assert_eq!(secret["mounted_by"], serde_json::json!(["reader"]));

    // Rotation with --restart: the next request sees the new value; the old one is gone
    // from the worker.
    gust.cli(&[
        "secret",
        "update",
        "db",
        "--from-literal",
        "password=rotated",
        "--from-file",
        &format!("key.pem={}", key_file.display()),
        "--restart",
    ])
    .ok();
    let rotated = format!(
        "{} {} {} fast",
        digest("rotated"),
        digest("rotated"),
        digest(FILE_CANARY)
    );
    eventually(Duration::from_secs(10), || {
        (gust.get("/reader").text().unwrap() == rotated).then_some(())
    })
    .expect("the function sees the rotated secret");

    // In use: not deleted. Another namespace cannot mount it.
    let in_use = gust.cli(&["secret", "delete", "db"]);
    assert!(
        in_use.stderr.contains("in use by function reader"),
        "{}",
        in_use.stderr
    );
    gust.cli(&["ns", "create", "team-b"]).ok();
    let elsewhere = gust.cli(&[
        "fn",
        "create",
        "reader",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--secret",
        "db",
        "-n",
        "team-b",
    ]);
    assert!(
        elsewhere.stderr.contains("secret \"db\" not found"),
        "{}",
        elsewhere.stderr
    );
}

#[test]
fn a_fission_function_spec_mounts_its_secret_at_fissions_path() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&[
        "secret",
        "create",
        "db",
        "--from-literal",
        &format!("password={CANARY}"),
    ])
    .ok();
    // As Fission's own Python environment reads a secret: a file at its fixed path.
    gust.write_file(
        "project/f.py",
        "import hashlib\ndef main():\n    with open('/secrets/default/db/password') as f:\n        return hashlib.sha256(f.read().encode()).hexdigest()[:16]\n",
    );
    gust.write_file(
        "project/specs/function-f.yaml",
        "include:\n- f.py\nkind: ArchiveUploadSpec\nname: f-py\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: f-pkg\n  namespace: default\nspec:\n  deployment:\n    type: url\n    url: archive://f-py\n  environment:\n    name: python\n    namespace: default\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: f\n  namespace: default\nspec:\n  environment:\n    name: python\n    namespace: default\n  package:\n    functionName: f.main\n    packageref:\n      name: f-pkg\n      namespace: default\n  secrets:\n  - name: db\n    namespace: default\n",
    );
    gust.write_file(
        "project/specs/route-f.yaml",
        "apiVersion: fission.io/v1\nkind: HTTPTrigger\nmetadata:\n  name: f\nspec:\n  functionref:\n    name: f\n    type: name\n  methods:\n  - GET\n  relativeurl: /f\n",
    );
    gust.write_file(
        "project/specs/env-python.yaml",
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: python\nspec:\n  runtime:\n    image: fission/python-env\n  version: 2\n",
    );
    let specs = gust.scratch().join("project/specs");
    gust.cli(&["apply", "-f", specs.to_str().unwrap()]).ok();
    assert_eq!(gust.get("/f").text().unwrap(), digest(CANARY));
    let shown = gust.cli(&["fn", "get", "f", "-o", "json"]).ok().stdout;
    assert!(
        shown.contains("\"secrets\"") && !shown.contains(CANARY),
        "{shown}"
    );
}

#[test]
fn a_secret_update_reaches_new_instances_and_restart_replaces_warm_ones() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["secret", "create", "api", "--from-literal", "key=v1"])
        .ok();
    // Holds each request a while, so that two at once need two instances.
    let code = gust.write_file(
        "slow.py",
        "import time\ndef main():\n    time.sleep(0.5)\n    with open('/secrets/default/api/key') as f:\n        return f.read()\n",
    );
    gust.cli(&[
        "fn",
        "create",
        "slow",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "--secret",
        "api",
        "--url",
        "/slow",
    ])
    .ok();
    assert_eq!(gust.get("/slow").text().unwrap(), "v1");
    let updated = gust
        .cli(&["secret", "update", "api", "--from-literal", "key=v2"])
        .ok();
    assert!(
        updated.stderr.contains("version 2; new instances of slow"),
        "{}",
        updated.stderr
    );
    // The warm instance keeps what it started with...
    assert_eq!(gust.get("/slow").text().unwrap(), "v1");
    // ...and one started now reads the new value.
    let answers: Vec<String> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| gust.get("/slow").text().unwrap()))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut sorted = answers.clone();
    sorted.sort();
    assert_eq!(sorted, ["v1", "v2"], "{answers:?}");
    // With --restart no instance keeps the old value.
    let restarted = gust
        .cli(&[
            "secret",
            "update",
            "api",
            "--from-literal",
            "key=v3",
            "--restart",
        ])
        .ok();
    assert!(
        restarted
            .stderr
            .contains("version 3; instances of slow restarted"),
        "{}",
        restarted.stderr
    );
    let answers: Vec<String> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| gust.get("/slow").text().unwrap()))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(answers, ["v3", "v3"]);
}
