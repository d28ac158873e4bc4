//! Asynchronous invocations end to end: accepted only once stored, delivered with stable ids
//! and attempt numbers, retried by status class, dead-lettered, re-driven, purged; and what
//! a kill -9 in the middle of a thousand of them does (R-10, R-13, R-14, R-17).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// Answers with the status asked for in `?status=`, or misbehaves as asked: `?do=hang`
/// sleeps past any timeout, `?do=exit` kills its own process mid-request. The body tells
/// which delivery this was.
const STATUS_PY: &str = r#"
import os, time

def main(req):
    action = req.query.get("do")
    if action == "hang":
        time.sleep(30)
    if action == "exit":
        os._exit(3)
    body = "%s attempt=%s from=%s" % (
        req.headers.get("x-gust-request-id"),
        req.headers.get("x-gust-attempt"),
        req.headers.get("x-gust-redriven-from"),
    )
    return (body, int(req.query.get("status", "200")))
"#;

fn invocation(gust: &Gust, id: &str) -> Value {
    let response = gust
        .api(Method::GET, &format!("/v1/invocations/{id}"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "invocation {id}");
    response.json().unwrap()
}

fn is_terminal(invocation: &Value) -> bool {
    matches!(
        invocation["state"].as_str(),
        Some("succeeded" | "dead" | "expired")
    )
}

/// Waits until every id is in a terminal state; returns them by id.
fn wait_terminal(gust: &Gust, ids: &[String], timeout: Duration) -> HashMap<String, Value> {
    let mut done: HashMap<String, Value> = HashMap::new();
    eventually(timeout, || {
        for id in ids {
            if !done.contains_key(id) {
                let current = invocation(gust, id);
                if is_terminal(&current) {
                    done.insert(id.clone(), current);
                }
            }
        }
        (done.len() == ids.len()).then_some(())
    })
    .unwrap_or_else(|| {
        let waiting: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
        panic!(
            "{} of {} invocations never ended, e.g. {:?}\n{}",
            waiting.len(),
            ids.len(),
            waiting.first().map(|id| invocation(gust, id)),
            gust.log()
        )
    });
    done
}

/// Creates function `f` from [`STATUS_PY`] with `extra` flags (no route).
fn create_status_function(gust: &Gust, extra: &[&str]) {
    let code = gust.write_file("f/f.py", STATUS_PY);
    let mut args = vec![
        "fn",
        "create",
        "f",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    gust.cli(&args).ok();
}

fn invoke_async(gust: &Gust, function: &str, path: &str) -> String {
    gust.cli(&["fn", "invoke", function, "--async", "--path", path])
        .ok()
        .stdout
        .trim()
        .to_owned()
}

#[test]
fn accepted_invocations_run_with_their_id_and_attempt_on_every_async_entry_point() {
    let gust = Gust::start(GUST, GustOptions::default());
    create_status_function(&gust, &[]);
    gust.cli(&["route", "create", "--fn", "f", "--url", "/bg", "--async"])
        .ok();
    gust.cli(&[
        "route",
        "create",
        "--fn",
        "f",
        "--url",
        "/either",
        "--allow-async",
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "f", "--url", "/sync"])
        .ok();

    let from_cli = invoke_async(&gust, "f", "/");
    let accepted = gust
        .http()
        .post(gust.public_url("/bg"))
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let header_id = accepted.headers()["x-gust-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = accepted.json().unwrap();
    assert_eq!(body["id"], header_id.as_str());
    let chosen = gust
        .http()
        .get(gust.public_url("/either"))
        .header("X-Gust-Invoke", "async")
        .send()
        .unwrap();
    assert_eq!(chosen.status(), 202);
    let chosen_id = chosen.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without the header, or on a route that does not allow it, the caller waits.
    let waited = gust.get("/either");
    assert_eq!(waited.status(), 200);
    let forged = gust
        .http()
        .get(gust.public_url("/sync"))
        .header("X-Gust-Invoke", "async")
        .send()
        .unwrap();
    assert_eq!(forged.status(), 200);
    assert!(
        forged.text().unwrap().contains("attempt=None"),
        "the header was stripped"
    );

    let ids = vec![from_cli, header_id, chosen_id];
    let done = wait_terminal(&gust, &ids, Duration::from_secs(30));
    for id in &ids {
        let invocation = &done[id];
        assert_eq!(invocation["state"], "succeeded", "{invocation}");
        assert_eq!(invocation["attempts"], 1);
        assert_eq!(invocation["last_status"], 200);
        assert_eq!(
            invocation["response"]["body"],
            format!("{id} attempt=1 from=None").as_str()
        );
    }
    assert_eq!(done[&ids[1]]["source"]["kind"], "http");
    assert_eq!(done[&ids[0]]["source"]["kind"], "api");

    // The CLI shows the same.
    let shown = gust.cli(&["invocation", "get", &ids[0]]).ok().stdout;
    assert!(shown.contains("succeeded"), "{shown}");
    let unknown = gust
        .cli(&["invocation", "get", "0123456789abcdef"])
        .failed();
    assert!(unknown.contains("not found"), "{unknown}");
}

#[test]
fn each_outcome_is_retried_or_final_as_classified() {
    let gust = Gust::start(GUST, GustOptions::default());
    create_status_function(&gust, &["--timeout", "2s", "--max-attempts", "2"]);
    // (query, expected state, reason, attempts)
    let cases = [
        ("status=200", "succeeded", None, 1),
        ("status=201", "succeeded", None, 1),
        ("status=400", "dead", Some("final_status"), 1),
        ("status=404", "dead", Some("final_status"), 1),
        ("status=409", "dead", Some("final_status"), 1),
        ("status=408", "dead", Some("attempts_exhausted"), 2),
        ("status=429", "dead", Some("attempts_exhausted"), 2),
        ("status=500", "dead", Some("attempts_exhausted"), 2),
        ("status=502", "dead", Some("attempts_exhausted"), 2),
        ("status=503", "dead", Some("attempts_exhausted"), 2),
        ("do=hang", "dead", Some("attempts_exhausted"), 2),
        ("do=exit", "dead", Some("attempts_exhausted"), 2),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(query, ..)| invoke_async(&gust, "f", &format!("/?{query}")))
        .collect();
    let done = wait_terminal(&gust, &ids, Duration::from_secs(60));
    for ((query, state, reason, attempts), id) in cases.iter().zip(&ids) {
        let invocation = &done[id];
        assert_eq!(invocation["state"], *state, "{query}: {invocation}");
        assert_eq!(
            invocation["reason"].as_str(),
            *reason,
            "{query}: {invocation}"
        );
        assert_eq!(invocation["attempts"], *attempts, "{query}: {invocation}");
    }
    let hung = &done[&ids[10]];
    assert_eq!(hung["last_status"], 504, "{hung}");
    assert!(hung["last_error"].as_str().unwrap().starts_with("timeout"));
    let reset = &done[&ids[11]];
    assert_eq!(reset["last_status"], 502, "{reset}");
    // A retried invocation waited its backoff (at least half a second) before attempt 2.
    let retried = &done[&ids[9]];
    let took =
        retried["finished_at_ms"].as_u64().unwrap() - retried["accepted_at_ms"].as_u64().unwrap();
    assert!(took >= 500, "503 retried after {took} ms");
    assert!(
        retried["response"]["body"]
            .as_str()
            .unwrap()
            .contains("attempt=2"),
        "{retried}"
    );
}

#[test]
fn dead_letters_are_listed_shown_redriven_and_purged() {
    let gust = Gust::start(GUST, GustOptions::default());
    create_status_function(&gust, &[]);
    gust.cli(&["route", "create", "--fn", "f", "--url", "/bg", "--async"])
        .ok();
    // R-17: a thousand invocations fail for good (400), then the function is fixed and all
    // of them are re-driven.
    let ids: Vec<String> = (0..1000)
        .map(|i| {
            let response = gust
                .http()
                .post(gust.public_url(&format!("/bg?status=400&n={i}")))
                .header("x-caller", format!("c{i}"))
                .body(format!("payload {i}"))
                .send()
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    eventually(Duration::from_secs(120), || {
        let listed: Vec<Value> =
            serde_json::from_str(&gust.cli(&["dlq", "list", "-o", "json"]).ok().stdout).unwrap();
        (listed.len() == 1000).then_some(())
    })
    .expect("a thousand dead letters");
    let counts = |gust: &Gust| -> Value {
        serde_json::from_str(
            &gust
                .cli(&["invocation", "counts", "-o", "json"])
                .ok()
                .stdout,
        )
        .unwrap()
    };
    assert_eq!(
        counts(&gust),
        serde_json::json!({"namespace": "default", "open": 0, "running": 0, "dead_letters": 1000,
            "succeeded": 0, "failed": 1000})
    );

    let shown: Value = serde_json::from_str(
        &gust
            .cli(&["dlq", "show", &ids[7], "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["reason"], "final_status");
    assert_eq!(shown["last_status"], 400);
    assert_eq!(shown["request"]["method"], "POST");
    assert_eq!(shown["request"]["uri"], "/bg?status=400&n=7");
    assert!(
        shown["request"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-caller" && h[1] == "c7"),
        "{shown}"
    );
    assert_eq!(shown["request"]["body_base64"], "cGF5bG9hZCA3"); // "payload 7"

    // Purge two by id; the rest are re-driven after the fix.
    let purged = gust.cli(&["dlq", "purge", &ids[0], &ids[1]]).ok();
    assert!(
        purged.stderr.contains("2 dead letters purged"),
        "{}",
        purged.stderr
    );
    assert_eq!(counts(&gust)["dead_letters"], 998);
    // Purged dead letters still failed once.
    assert_eq!(counts(&gust)["failed"], 1000);
    let fixed = STATUS_PY.replace("int(req.query.get(\"status\", \"200\"))", "200");
    gust.cli(&[
        "fn",
        "update",
        "f",
        "--code",
        gust.write_file("f2/f.py", fixed).to_str().unwrap(),
    ])
    .ok();
    let redriven = gust.cli(&["dlq", "redrive", "--fn", "f"]).ok();
    assert!(
        redriven.stderr.contains("998 dead letters re-driven"),
        "{}",
        redriven.stderr
    );
    let pairs: Vec<(String, String)> = redriven
        .stdout
        .lines()
        .skip(1)
        .map(|line| {
            let mut cells = line.split_whitespace();
            (
                cells.next().unwrap().to_owned(),
                cells.next().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(pairs.len(), 998);
    let new_ids: Vec<String> = pairs.iter().map(|(_, id)| id.clone()).collect();
    let done = wait_terminal(&gust, &new_ids, Duration::from_secs(180));
    for (from, id) in &pairs {
        let invocation = &done[id];
        assert_eq!(invocation["state"], "succeeded", "{invocation}");
        assert_eq!(invocation["redriven_from"], from.as_str());
        assert_eq!(
            invocation["response"]["body"],
            format!("{id} attempt=1 from={from}").as_str()
        );
        assert_eq!(self::invocation(&gust, from)["redriven_to"], id.as_str());
    }
    let left: Vec<Value> =
        serde_json::from_str(&gust.cli(&["dlq", "list", "-o", "json"]).ok().stdout).unwrap();
    assert!(
        left.is_empty(),
        "re-driven letters leave the list: {left:?}"
    );

    // Purging everything of a function, and what is not a dead letter.
    let again = invoke_async(&gust, "f", "/");
    wait_terminal(&gust, std::slice::from_ref(&again), Duration::from_secs(30));
    let refused = gust.cli(&["dlq", "redrive", &again]).failed();
    assert!(refused.contains("not a dead letter"), "{refused}");
    assert!(
        gust.cli(&["dlq", "purge", "--all"])
            .ok()
            .stderr
            .contains("0 dead letters purged")
    );
}

#[test]
fn a_kill_9_under_async_load_loses_no_accepted_invocation() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "slow",
        "python",
        "slow.py",
        "import time\ndef main():\n    time.sleep(0.02)\n    return 'done'\n",
        &[],
    );
    gust.cli(&["route", "create", "--fn", "slow", "--url", "/bg", "--async"])
        .ok();
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = gust.public_url("/bg");
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (accepted, url) = (accepted.clone(), url.clone());
            std::thread::spawn(move || {
                let client = gust_harness::reqwest::blocking::Client::new();
                let mut mine = 0;
                // Each sender gets 250 accepted; requests refused or cut by the kill were
                // never accepted and are sent again once Gust is back.
                while mine < 250 {
                    match client.post(&url).body("x").send() {
                        Ok(response) if response.status() == 202 => {
                            if let Ok(body) = response.json::<Value>() {
                                accepted
                                    .lock()
                                    .unwrap()
                                    .push(body["id"].as_str().unwrap().to_owned());
                                mine += 1;
                            }
                        }
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(60), || {
        (accepted.lock().unwrap().len() >= 500).then_some(())
    })
    .expect("500 accepted before the kill");
    gust.kill9();
    std::thread::sleep(Duration::from_millis(300));
    gust.start_again();
    for sender in senders {
        sender.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1000);
    let done = wait_terminal(&gust, &accepted, Duration::from_secs(180));
    let mut repeated = 0;
    for (id, invocation) in &done {
        assert_eq!(invocation["state"], "succeeded", "{id}: {invocation}");
        let attempts = invocation["attempts"].as_u64().unwrap();
        assert!(attempts <= 2, "{invocation}");
        if attempts == 2 {
            repeated += 1;
        }
    }
    // Only attempts in flight at the kill run twice: at most as many as are delivered at once.
    assert!(repeated <= 256, "{repeated} invocations ran twice");
    eprintln!(
        "accepted {}, all succeeded, {repeated} re-run after the kill",
        accepted.len()
    );
}

#[test]
fn invocations_past_their_max_age_expire_without_running() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "busy",
        "python",
        "busy.py",
        "import time\ndef main(req):\n    if req.query.get('hold'):\n        time.sleep(4)\n    return 'ran'\n",
        &["--max-instances", "1", "--queue-depth", "0", "--max-age", "1s"],
    );
    // The only instance is busy for four seconds: the async invocation cannot start before
    // its max age (1 s) has passed.
    let holder = {
        let url = gust.public_url("/busy?hold=1");
        std::thread::spawn(move || gust_harness::reqwest::blocking::get(url).unwrap().status())
    };
    std::thread::sleep(Duration::from_millis(500));
    let id = invoke_async(&gust, "busy", "/");
    let done = wait_terminal(&gust, std::slice::from_ref(&id), Duration::from_secs(30));
    let invocation = &done[&id];
    assert_eq!(invocation["state"], "expired", "{invocation}");
    assert_eq!(invocation["reason"], "max_age_exceeded");
    assert_eq!(invocation["attempts"], 0, "never ran: {invocation}");
    assert!(invocation.get("response").is_none());
    assert_eq!(holder.join().unwrap(), 200);
    let letters = gust.cli(&["dlq", "list"]).ok().stdout;
    assert!(
        letters.contains(&id) && letters.contains("max_age_exceeded"),
        "{letters}"
    );
}

#[test]
fn bad_async_input_is_refused_and_a_deleted_function_dead_letters_its_work() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "busy",
        "python",
        "busy.py",
        "import time\ndef main(req):\n    if req.query.get('hold'):\n        time.sleep(3)\n    return 'ran'\n",
        &["--max-instances", "1", "--queue-depth", "0"],
    );
    gust.cli(&["route", "create", "--fn", "busy", "--url", "/bg", "--async"])
        .ok();

    // Over the async limit (256 KB): 413 before the body is read in full; the sync limit is
    // larger, so the same body is fine synchronously.
    let big = vec![b'x'; 300 * 1024];
    let refused = gust
        .http()
        .post(gust.public_url("/bg"))
        .body(big.clone())
        .send()
        .unwrap();
    assert_eq!(refused.status(), 413);
    assert_eq!(refused.json::<Value>().unwrap()["reason"], "body_too_large");
    let big_file = gust.write_file("big.bin", &big);
    let cli = gust
        .cli(&[
            "fn",
            "invoke",
            "busy",
            "--async",
            "-d",
            &format!("@{}", big_file.display()),
        ])
        .failed();
    assert!(cli.contains("larger than 262144 bytes"), "{cli}");
    assert_eq!(
        gust.http()
            .post(gust.public_url("/busy"))
            .body(big)
            .send()
            .unwrap()
            .status(),
        200
    );

    // Routes and invokes for missing functions, bad flags: clear errors, nothing stored.
    let missing = gust
        .cli(&[
            "route", "create", "--fn", "nope", "--url", "/nope", "--async",
        ])
        .failed();
    assert!(missing.contains("\"nope\" not found"), "{missing}");
    let missing = gust.cli(&["fn", "invoke", "nope", "--async"]).failed();
    assert!(missing.contains("\"nope\" not found"), "{missing}");
    for (flag, value) in [
        ("--max-attempts", "0"),
        ("--max-age", "10ms"),
        ("--max-age", "soon"),
    ] {
        let err = gust.cli(&["fn", "update", "busy", flag, value]).failed();
        assert!(
            err.contains(flag.trim_start_matches("--")),
            "{flag} {value}: {err}"
        );
    }
    let routes = gust.cli(&["route", "list", "-o", "json"]).ok().stdout;
    assert!(!routes.contains("/nope"), "{routes}");

    // A function deleted while its invocation waits: dead with function_not_found.
    let holder = {
        let url = gust.public_url("/busy?hold=1");
        std::thread::spawn(move || gust_harness::reqwest::blocking::get(url).unwrap().status())
    };
    std::thread::sleep(Duration::from_millis(500));
    let id = invoke_async(&gust, "busy", "/");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(invocation(&gust, &id)["state"], "pending");
    gust.cli(&["fn", "delete", "busy"]).ok();
    let done = wait_terminal(&gust, std::slice::from_ref(&id), Duration::from_secs(30));
    assert_eq!(done[&id]["state"], "dead", "{}", done[&id]);
    assert_eq!(done[&id]["reason"], "function_not_found");
    let _ = holder.join();
}

/// Unmounts a tmpfs when dropped, so a failing test leaves no mount behind.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_store_that_cannot_write_answers_503_never_202_and_recovers_when_space_returns() {
    // R-11 needs a small full filesystem under the data directory: a tmpfs, mounted as root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("f", "python", "f.py", STATUS_PY, &[]);
    gust.cli(&["route", "create", "--fn", "f", "--url", "/bg", "--async"])
        .ok();
    assert!(gust.stop());
    let data = gust.data_dir();
    let saved = gust.dir.path().join("data.saved");
    std::fs::rename(&data, &saved).unwrap();
    std::fs::create_dir(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    let _unmount = Tmpfs(data.clone());
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&data)
        .status()
        .unwrap();
    assert!(copied.success());
    gust.start_again();

    let post = |body: Vec<u8>| {
        gust.http()
            .post(gust.public_url("/bg"))
            .body(body)
            .send()
            .unwrap()
    };
    let mut accepted = Vec::new();
    let mut take = |response: gust_harness::reqwest::blocking::Response| -> u16 {
        let status = response.status().as_u16();
        if status == 202 {
            accepted.push(
                response.json::<Value>().unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        status
    };
    assert_eq!(take(post(b"before".to_vec())), 202);

    // Fill the filesystem to the last byte.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    let mut refused = 0;
    for _ in 0..10 {
        match take(post(vec![b'x'; 200 * 1024])) {
            503 => refused += 1,
            202 => {}
            other => panic!("answered {other} with a full disk"),
        }
    }
    assert!(refused >= 1, "a full disk refused nothing");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        take(post(b"after".to_vec())),
        202,
        "writes work again once space is back"
    );
    let done = wait_terminal(&gust, &accepted, Duration::from_secs(60));
    assert!(done.values().all(|i| i["state"] == "succeeded"), "{done:?}");
    assert!(gust.stop(), "{}", gust.log());
}
