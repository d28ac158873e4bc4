//! Teams on one Gust: namespaces, tokens with a role in some of them, and what a token of one
//! namespace can do to another's (nothing). S-01 for every role against every route: the
//! routes come from the OpenAPI document, so a new route is checked as soon as it exists.

use std::time::Duration;

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

const ROLES: [&str; 4] = ["viewer", "invoker", "deployer", "admin"];

/// What an operation needs, written from the roles' definitions (not from the server's table).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    /// No token at all.
    Nothing,
    /// Any valid token.
    AnyToken,
    /// At least this role in the namespace the call names.
    Role(usize),
    /// The admin role in every namespace.
    ClusterAdmin,
}

fn needs(method: &str, template: &str) -> Needs {
    let read = method == "GET";
    match template {
        "/healthz" | "/readyz" | "/v1/openapi.json" => Needs::Nothing,
        "/v1/version" | "/v1/whoami" | "/metrics" => Needs::AnyToken,
        "/v1/environments" | "/v1/environments/{name}" | "/v1/namespaces" if read => {
            Needs::AnyToken
        }
        "/v1/environments" | "/v1/environments/{name}" | "/v1/nodes" | "/v1/namespaces" => {
            Needs::ClusterAdmin
        }
        "/v1/namespaces/{name}" if read => Needs::Role(0),
        "/v1/namespaces/{name}" => Needs::ClusterAdmin,
        "/v1/tokens" | "/v1/tokens/{id}" | "/v1/audit" => Needs::Role(3),
        "/v1/functions/{name}/invoke" => Needs::Role(1),
        _ if read => Needs::Role(0),
        _ => Needs::Role(2),
    }
}

/// `template` with its parameters filled in and `?namespace=`; the namespace of
/// `/v1/namespaces/{name}` is in its path.
fn concrete(template: &str, namespace: &str) -> String {
    let path = template
        .replace(
            "/v1/namespaces/{name}",
            &format!("/v1/namespaces/{namespace}"),
        )
        .replace("{name}", "hello")
        .replace("{id}", "0123456789abcdef0123456789abcdef");
    format!("{path}?namespace={namespace}")
}

fn operations(gust: &Gust) -> Vec<(String, String)> {
    let doc: Value = gust.openapi();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

fn send(gust: &Gust, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = gust
        .http()
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", gust.api_url()),
        )
        .header("content-type", "application/json")
        .body("{}");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

/// `gust token create` as the admin; the token's text.
fn token(gust: &Gust, role: &str, namespaces: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--role", role];
    for namespace in namespaces {
        args.extend(["-n", namespace]);
    }
    args.extend_from_slice(extra);
    gust.cli(&args).ok().stdout.trim().to_owned()
}

fn as_token(gust: &Gust, token: &str, args: &[&str]) -> gust_harness::CliOutput {
    gust.cli_with_env(args, &[("GUST_TOKEN", token)])
}

#[test]
fn s01_every_role_against_every_route_in_its_namespace_and_another() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a"]).ok();
    gust.cli(&["ns", "create", "team-b"]).ok();
    // Something to refuse access to in team-b.
    let code = gust.write_file("hello.py", "def main():\n    return 'b'\n");
    gust.cli(&[
        "fn",
        "create",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "-n",
        "team-b",
    ])
    .ok();
    let tokens: Vec<String> = ROLES
        .iter()
        .map(|role| token(&gust, role, &["team-a"], &[]))
        .collect();
    let operations = operations(&gust);
    assert!(operations.len() > 45, "{operations:?}");

    let mut checked = 0;
    for (method, template) in &operations {
        let needed = needs(method, template);
        // No token: 401 on everything but the open paths.
        let (status, body) = send(&gust, method, &concrete(template, "team-b"), None);
        if needed == Needs::Nothing {
            assert_ne!(status, 401, "{method} {template} without a token: {body}");
            continue;
        }
        assert_eq!(status, 401, "{method} {template} without a token: {body}");
        for (rank, token) in tokens.iter().enumerate() {
            let role = ROLES[rank];
            // Another namespace: refused whatever the role, before anything is looked up.
            let (status, body) = send(&gust, method, &concrete(template, "team-b"), Some(token));
            let refused = !matches!(needed, Needs::AnyToken);
            if refused {
                assert_eq!(
                    status, 403,
                    "{role} of team-a, {method} {template} in team-b: {body}"
                );
                assert!(body.contains("\"reason\":\"forbidden\""), "{body}");
            } else {
                assert!(
                    status != 401 && status != 403,
                    "{role}, {method} {template}: {status} {body}"
                );
            }
            // Its own namespace: refused exactly where the role is not enough.
            let (status, body) = send(&gust, method, &concrete(template, "team-a"), Some(token));
            let allowed = match needed {
                Needs::Nothing | Needs::AnyToken => true,
                Needs::Role(least) => rank >= least,
                Needs::ClusterAdmin => false,
            };
            if allowed {
                assert!(
                    status != 401 && status != 403,
                    "{role} of team-a, {method} {template} in team-a: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 403,
                    "{role} of team-a, {method} {template} in team-a: {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 180, "{checked} checks");
    // team-b's function is untouched by everything above.
    let listed = gust.cli(&["fn", "list", "-n", "team-b", "-o", "json"]).ok();
    let functions: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(functions.len(), 1);
}

#[test]
fn two_namespaces_cannot_see_invoke_meter_or_redrive_each_other() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a"]).ok();
    gust.cli(&["ns", "create", "team-b"]).ok();
    let a = token(&gust, "deployer", &["team-a"], &["--name", "deploy-a"]);
    let b = token(&gust, "deployer", &["team-b"], &["--name", "deploy-b"]);
    assert!(a.starts_with("gust_") && b.starts_with("gust_"), "{a} {b}");
    // The same function name in both, each behind its own path; the one that fails makes a
    // dead letter in team-a.
    let code = gust.write_file(
        "hello.py",
        "def main(req):\n    if req.query.get('fail'):\n        return ('no', 400)\n    return 'from ' + req.headers.get('X-Fission-Function-Namespace', '?')\n",
    );
    for (token, ns, url) in [(&a, "team-a", "/a/hello"), (&b, "team-b", "/b/hello")] {
        as_token(
            &gust,
            token,
            &[
                "fn",
                "create",
                "hello",
                "--env",
                "python",
                "--code",
                code.to_str().unwrap(),
                "--url",
                url,
                "--max-attempts",
                "1",
                "-n",
                ns,
            ],
        )
        .ok();
    }
    assert_eq!(gust.get("/a/hello").text().unwrap(), "from team-a");
    assert_eq!(gust.get("/b/hello").text().unwrap(), "from team-b");
    // A path is one namespace's: team-b cannot claim team-a's.
    let claimed = as_token(
        &gust,
        &b,
        &[
            "route", "create", "--fn", "hello", "--url", "/a/hello", "-n", "team-b",
        ],
    );
    assert!(claimed.code != 0);
    assert!(claimed.stderr.contains("conflict"), "{}", claimed.stderr);
    // A host is one namespace's too, whatever the path: team-a owns its domain.
    let host_route = |token: &str, ns: &str, host: Option<&str>, url: &str| {
        let mut args = vec!["route", "create", "--fn", "hello", "--url", url, "-n", ns];
        if let Some(host) = host {
            args.extend(["--host", host]);
        }
        as_token(&gust, token, &args)
    };
    // Hosts are granted by an admin of every namespace, to one namespace each; a deployer
    // cannot claim one first.
    let ungranted = host_route(&a, "team-a", Some("api.team-a.example"), "/hello");
    assert!(
        ungranted
            .stderr
            .contains("namespace team-a was not granted host api.team-a.example"),
        "{}",
        ungranted.stderr
    );
    gust.cli(&[
        "ns",
        "update",
        "team-a",
        "--hosts",
        "*.team-a.example,api.team-a.example",
    ])
    .ok();
    let overlapping = gust.cli(&["ns", "update", "team-b", "--hosts", "x.team-a.example"]);
    assert!(
        overlapping
            .stderr
            .contains("overlaps *.team-a.example, granted to namespace team-a"),
        "{}",
        overlapping.stderr
    );
    host_route(&a, "team-a", Some("api.team-a.example"), "/hello").ok();
    let claimed = host_route(&b, "team-b", Some("API.team-a.example"), "/other");
    assert!(
        claimed
            .stderr
            .contains("namespace team-b was not granted host api.team-a.example"),
        "{}",
        claimed.stderr
    );
    host_route(&b, "team-b", None, "/hello").ok();
    host_route(&b, "team-b", None, "/login").ok();
    let for_host = |host: &str| {
        gust.http()
            .get(gust.public_url("/hello"))
            .header("host", host)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    assert_eq!(for_host("api.team-a.example"), "from team-a");
    assert_eq!(for_host("API.Team-A.example:8080"), "from team-a");
    assert_eq!(for_host("api.team-b.example"), "from team-b");
    assert_eq!(gust.get("/hello").text().unwrap(), "from team-b");
    // Another namespace's routes of every host do not answer on team-a's host.
    let login = |host: &str| {
        gust.http()
            .get(gust.public_url("/login"))
            .header("host", host)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(login("api.team-a.example"), 404);
    assert_eq!(login("api.team-b.example"), 200);
    let listed = as_token(&gust, &a, &["route", "list", "-n", "team-a"]).ok();
    assert!(
        listed.stdout.contains("api.team-a.example"),
        "{}",
        listed.stdout
    );

    // An asynchronous invocation of team-a that fails: a dead letter of team-a.
    let accepted = as_token(
        &gust,
        &a,
        &[
            "fn", "invoke", "hello", "--async", "--path", "/?fail=1", "-n", "team-a",
        ],
    )
    .ok();
    let id = accepted.stdout.trim().to_owned();
    eventually(Duration::from_secs(30), || {
        let shown = as_token(
            &gust,
            &a,
            &["invocation", "get", &id, "-n", "team-a", "-o", "json"],
        );
        shown.stdout.contains("\"dead\"").then_some(())
    })
    .expect("team-a's invocation becomes a dead letter");

    // team-b's token, pointed at team-a: refused everywhere, and it learns nothing.
    for args in [
        vec!["fn", "get", "hello"],
        vec!["fn", "list"],
        vec!["fn", "invoke", "hello"],
        vec!["fn", "logs", "hello"],
        vec!["fn", "delete", "hello"],
        vec!["route", "list"],
        vec!["usage"],
        vec!["dlq", "list"],
        vec!["dlq", "redrive", &id],
        vec!["dlq", "purge", "--all"],
        vec!["invocation", "get", &id],
        vec!["token", "list"],
        vec!["audit", "list"],
    ] {
        let mut args = args.clone();
        args.extend(["-n", "team-a"]);
        let refused = as_token(&gust, &b, &args);
        assert!(refused.code != 0, "{args:?} succeeded");
        assert!(
            refused.stderr.contains("does not reach namespace team-a"),
            "{args:?}: {}",
            refused.stderr
        );
    }
    // In its own namespace, team-a's invocation id is nobody's: 404, as any unknown id.
    let unknown = as_token(&gust, &b, &["invocation", "get", &id, "-n", "team-b"]);
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);
    // Its own namespace's lists hold only its own.
    let dead = as_token(&gust, &b, &["dlq", "list", "-n", "team-b", "-o", "json"]).ok();
    assert_eq!(dead.stdout.trim(), "[]");
    // Metrics: each token sees its own namespace's series only.
    let metrics = |token: &str| {
        gust.http()
            .get(format!("{}/metrics", gust.api_url()))
            .bearer_auth(token)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let seen_by_b = metrics(&b);
    assert!(seen_by_b.contains("namespace=\"team-b\""), "{seen_by_b}");
    assert!(!seen_by_b.contains("namespace=\"team-a\""), "{seen_by_b}");
    assert!(metrics(&gust.token()).contains("namespace=\"team-a\""));
    // Usage: team-a's two invocations are team-a's.
    let usage = as_token(
        &gust,
        &a,
        &["usage", "-n", "team-a", "--since", "1h", "-o", "json"],
    )
    .ok();
    let report: Value = serde_json::from_str(&usage.stdout).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 1, "{report}");

    // The audit log holds the writes with who made them, and the refused ones too.
    let audit = as_token(
        &gust,
        &gust.token(),
        &["audit", "list", "-n", "team-a", "-o", "json"],
    )
    .ok();
    let entries: Vec<Value> = serde_json::from_str(&audit.stdout).unwrap();
    let by = |token: &str, action: &str, status: u16| {
        entries
            .iter()
            .any(|e| e["token"] == token && e["action"] == action && e["status"] == status)
    };
    assert!(by("deploy-a", "POST /v1/functions", 201), "{entries:?}");
    assert!(
        by("deploy-b", "DELETE /v1/functions/{name}", 403),
        "{entries:?}"
    );
    assert!(by("deploy-b", "POST /v1/dlq/redrive", 403), "{entries:?}");
    assert!(!entries.iter().any(|e| e["namespace"] == "team-b"));
}

#[test]
fn expired_and_revoked_tokens_are_refused_and_a_deleted_namespace_takes_its_tokens() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a"]).ok();
    let short = token(&gust, "viewer", &["team-a"], &["--expires", "1s"]);
    let kept = token(&gust, "viewer", &["team-a"], &["--name", "kept"]);
    // A token can ask who it is.
    let me: serde_json::Value =
        serde_json::from_str(&as_token(&gust, &kept, &["whoami", "-o", "json"]).stdout).unwrap();
    assert_eq!(
        me,
        serde_json::json!({"name": "kept", "role": "viewer", "namespaces": ["team-a"]})
    );
    let admin = gust.cli(&["whoami"]).ok().stdout;
    assert!(admin.contains("admin") && admin.contains('*'), "{admin}");
    assert!(as_token(&gust, &short, &["fn", "list", "-n", "team-a"]).code == 0);
    std::thread::sleep(Duration::from_millis(1_500));
    let expired = as_token(&gust, &short, &["fn", "list", "-n", "team-a"]);
    assert!(
        expired.stderr.contains("unauthorized"),
        "{}",
        expired.stderr
    );

    // Revoked by name: refused from the next call on.
    assert!(as_token(&gust, &kept, &["fn", "list", "-n", "team-a"]).code == 0);
    gust.cli(&["token", "revoke", "kept", "-n", "team-a"]).ok();
    let revoked = as_token(&gust, &kept, &["fn", "list", "-n", "team-a"]);
    assert!(
        revoked.stderr.contains("unauthorized"),
        "{}",
        revoked.stderr
    );
    // A token that is not one (right shape, wrong secret) is refused the same way.
    let forged = format!("{}{}", &short[..short.len() - 1], "0");
    assert!(
        as_token(&gust, &forged, &["fn", "list"])
            .stderr
            .contains("unauthorized")
    );

    // Only the secret is shown, once: listings never carry it.
    let admin_a = token(&gust, "admin", &["team-a"], &["--name", "admin-a"]);
    let listed = gust
        .cli(&["token", "list", "-n", "team-a", "-o", "json"])
        .ok();
    let secret = admin_a.rsplit('_').next().unwrap();
    assert!(!listed.stdout.contains(secret));
    assert!(listed.stdout.contains("admin-a"));
    // A namespace's admin makes tokens for it, not for others nor for every namespace.
    let made = as_token(
        &gust,
        &admin_a,
        &["token", "create", "--role", "deployer", "-n", "team-a"],
    );
    assert!(made.code == 0, "{}", made.stderr);
    let beyond = as_token(
        &gust,
        &admin_a,
        &[
            "token", "create", "--role", "viewer", "-n", "team-a", "-n", "default",
        ],
    );
    assert!(beyond.stderr.contains("forbidden"), "{}", beyond.stderr);
    let everywhere = as_token(
        &gust,
        &admin_a,
        &[
            "token",
            "create",
            "--role",
            "viewer",
            "--all-namespaces",
            "-n",
            "team-a",
        ],
    );
    assert!(
        everywhere.stderr.contains("forbidden"),
        "{}",
        everywhere.stderr
    );
    let namespace = as_token(&gust, &admin_a, &["ns", "create", "team-c"]);
    assert!(
        namespace.stderr.contains("forbidden"),
        "{}",
        namespace.stderr
    );

    // A namespace holding a function is not deleted; once empty it is, with its tokens, and a
    // new namespace of the same name is not reached by them.
    let code = gust.write_file("f.py", "def main():\n    return 'a'\n");
    as_token(
        &gust,
        &admin_a,
        &[
            "fn",
            "create",
            "f",
            "--env",
            "python",
            "--code",
            code.to_str().unwrap(),
            "-n",
            "team-a",
        ],
    )
    .ok();
    let busy = gust.cli(&["ns", "delete", "team-a"]);
    assert!(busy.stderr.contains("function f"), "{}", busy.stderr);
    gust.cli(&["fn", "delete", "f", "-n", "team-a"]).ok();
    gust.cli(&["ns", "delete", "team-a"]).ok();
    gust.cli(&["ns", "create", "team-a"]).ok();
    let gone = as_token(&gust, &admin_a, &["fn", "list", "-n", "team-a"]);
    assert!(gone.stderr.contains("unauthorized"), "{}", gone.stderr);
    // Writes into a namespace that does not exist say so.
    let missing = gust.cli(&["fn", "list", "-n", "team-z"]);
    assert!(
        missing.stderr.contains("namespace \"team-z\" not found"),
        "{}",
        missing.stderr
    );
}

#[test]
fn tokens_and_namespaces_survive_a_restart() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a"]).ok();
    let viewer = token(&gust, "viewer", &["team-a"], &[]);
    gust.restart();
    let listed = as_token(&gust, &viewer, &["ns", "list", "-o", "json"]).ok();
    let namespaces: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        namespaces.len(),
        1,
        "a team-a token sees team-a only: {namespaces:?}"
    );
    assert_eq!(namespaces[0]["name"], json!("team-a"));
}

#[test]
fn creates_at_once_never_pass_the_function_quota_together() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-c", "--max-functions", "2"])
        .ok();
    let code = gust.write_file("c.py", "def main():\n    return 'c'\n");
    let code = code.to_str().unwrap();
    // Eight creates at once: each passes the first check (none stored yet), and only the
    // check repeated where the function is stored keeps the namespace at its quota.
    let created = std::thread::scope(|scope| {
        let creates: Vec<_> = (0..8)
            .map(|n| {
                let (gust, name) = (&gust, format!("c{n}"));
                scope.spawn(move || {
                    gust.cli(&[
                        "fn", "create", &name, "--env", "python", "--code", code, "-n", "team-c",
                    ])
                })
            })
            .collect();
        creates
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let succeeded = created.iter().filter(|c| c.code == 0).count();
    let errors: Vec<&str> = created.iter().map(|c| c.stderr.as_str()).collect();
    assert_eq!(succeeded, 2, "{errors:?}");
    for refused in created.iter().filter(|c| c.code != 0) {
        assert!(refused.stderr.contains("(quota)"), "{}", refused.stderr);
    }
    let listed = gust.cli(&["fn", "list", "-n", "team-c", "-o", "json"]).ok();
    let functions: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(functions.len(), 2);
}

#[test]
fn quotas_refuse_with_their_reasons_and_leave_other_namespaces_alone() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&[
        "ns",
        "create",
        "team-a",
        "--max-functions",
        "1",
        "--max-rps",
        "5",
    ])
    .ok();
    gust.cli(&["ns", "create", "team-b"]).ok();
    let code = gust.write_file("q.py", "def main():\n    return 'q'\n");
    let code = code.to_str().unwrap();
    for (ns, url) in [("team-a", "/a/q"), ("team-b", "/b/q")] {
        gust.cli(&[
            "fn", "create", "q", "--env", "python", "--code", code, "--url", url, "-n", ns,
        ])
        .ok();
    }
    // Functions: the second is refused, naming the quota.
    let second = gust.cli(&[
        "fn", "create", "r", "--env", "python", "--code", code, "-n", "team-a",
    ]);
    assert!(
        second
            .stderr
            .contains("holds 1 functions, its quota (quota)"),
        "{}",
        second.stderr
    );
    let shown = gust.cli(&["ns", "get", "team-a"]).ok().stdout;
    assert!(shown.contains("1/1"), "use against quota: {shown}");

    // Requests per second on its public routes: a burst past 5 is refused with 429, reason
    // quota and Retry-After; team-b, without a quota, is served throughout.
    let started = std::time::Instant::now();
    let (mut served, mut refused) = (0u32, 0u32);
    for _ in 0..20 {
        let response = gust.get("/a/q");
        match response.status().as_u16() {
            200 => served += 1,
            429 => {
                assert_eq!(response.headers()["x-gust-error"], "quota");
                let retry: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                refused += 1;
            }
            other => panic!("status {other}: {}", response.text().unwrap()),
        }
        assert_eq!(gust.get("/b/q").status(), 200);
    }
    // At most the bucket (5) and what refilled while the burst lasted.
    let refill = (started.elapsed().as_secs_f64() * 5.0).ceil() as u32;
    assert!(
        served >= 1 && served <= 5 + refill,
        "{served} served in {:?}",
        started.elapsed()
    );
    assert!(refused >= 20 - 5 - refill, "{refused} refused");

    // Quotas lifted: both go through again.
    gust.cli(&["ns", "update", "team-a"]).ok();
    gust.cli(&[
        "fn", "create", "r", "--env", "python", "--code", code, "-n", "team-a",
    ])
    .ok();
    for _ in 0..20 {
        assert_eq!(gust.get("/a/q").status(), 200);
    }
}

#[test]
fn instance_and_memory_quotas_refuse_what_would_pass_them_and_leave_others_alone() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a", "--max-instances", "1"])
        .ok();
    gust.cli(&["ns", "create", "team-m", "--max-memory", "200"])
        .ok();
    let code = gust.write_file(
        "slow.py",
        "import time\ndef main():\n    time.sleep(1.5)\n    return 'done'\n",
    );
    let code = code.to_str().unwrap();
    for (ns, url) in [
        ("team-a", "/a/slow"),
        ("team-m", "/m/slow"),
        ("default", "/d/slow"),
    ] {
        gust.cli(&[
            "fn", "create", "slow", "--env", "python", "--code", code, "--url", url, "--memory",
            "128", "-n", ns,
        ])
        .ok();
    }
    // Two requests at once to each: the quota lets one run; the other is refused at once.
    // Each call notes when it was sent and answered, from one clock.
    type Answer = (u16, String, Option<String>, Duration, Duration);
    let burst = |path: &'static str| -> Vec<Answer> {
        let url = gust.public_url(path);
        let http = gust.http().clone();
        let clock = std::time::Instant::now();
        std::thread::scope(|scope| {
            let calls: Vec<_> = (0..2u64)
                .map(|n| {
                    let (http, url) = (http.clone(), url.clone());
                    scope.spawn(move || {
                        std::thread::sleep(Duration::from_millis(400 * n));
                        let sent = clock.elapsed();
                        let response = http.get(url).send().unwrap();
                        let retry = response
                            .headers()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let status = response.status().as_u16();
                        let body = response.text().unwrap();
                        (status, body, retry, sent, clock.elapsed())
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        })
    };
    for (path, quota) in [("/a/slow", "1 instances"), ("/m/slow", "200 MB of memory")] {
        let answers = burst(path);
        let (first, second) = (&answers[0], &answers[1]);
        assert_eq!(first.0, 200, "{path}: {answers:?}");
        // The second was sent while the first ran (it sleeps 1.5 s): refused, at once.
        assert!(
            second.3 < first.4,
            "{path}: the second was sent after the first ended"
        );
        assert_eq!(second.0, 429, "{path}: {answers:?}");
        assert!(
            second.1.contains("\"reason\":\"quota\"") && second.1.contains(quota),
            "{}",
            second.1
        );
        assert_eq!(second.2.as_deref(), Some("1"));
    }
    // No quota: both run.
    let answers = burst("/d/slow");
    assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
    // What runs now is shown against the quota, and given back after.
    let shown = gust.cli(&["ns", "get", "team-a"]).ok().stdout;
    assert!(shown.contains("0/1"), "{shown}");
}

#[test]
fn an_async_queue_quota_bounds_the_namespace_s_waiting_work() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a", "--max-async-queue", "2"])
        .ok();
    let code = gust.write_file(
        "slow.py",
        "import time\ndef main():\n    time.sleep(3)\n    return 'done'\n",
    );
    let code = code.to_str().unwrap();
    for ns in ["team-a", "default"] {
        gust.cli(&[
            "fn",
            "create",
            "slow",
            "--env",
            "python",
            "--code",
            code,
            "--url",
            &format!("/{ns}/slow"),
            "-n",
            ns,
        ])
        .ok();
        gust.cli(&[
            "fn", "create", "other", "--env", "python", "--code", code, "-n", ns,
        ])
        .ok();
    }
    // Two are taken (waiting or running: each sleeps 3 s), the third is refused, whichever
    // function of the namespace it is for.
    for function in ["slow", "other"] {
        gust.cli(&["fn", "invoke", function, "--async", "-n", "team-a"])
            .ok();
    }
    let third = gust.cli(&["fn", "invoke", "slow", "--async", "-n", "team-a"]);
    assert!(
        third
            .stderr
            .contains("2 asynchronous invocations waiting or running, its quota")
            && third.stderr.contains("(quota, request"),
        "{}",
        third.stderr
    );
    // Another namespace queues as before.
    for _ in 0..3 {
        gust.cli(&["fn", "invoke", "slow", "--async"]).ok();
    }
}

#[test]
fn a_code_quota_refuses_the_upload_that_would_pass_it() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a", "--max-code", "1"])
        .ok();
    // 600 KB each: one fits in 1 MB, two do not.
    let padding = format!("# {}\n", "x".repeat(600 * 1024));
    let big = gust.write_file(
        "big.py",
        format!("{padding}def main():\n    return 'big'\n"),
    );
    let big = big.to_str().unwrap();
    gust.cli(&[
        "fn", "create", "one", "--env", "python", "--code", big, "-n", "team-a",
    ])
    .ok();
    let second = gust.cli(&[
        "fn", "create", "two", "--env", "python", "--code", big, "-n", "team-a",
    ]);
    assert!(
        second.stderr.contains("past its quota of 1 MB (quota)"),
        "{}",
        second.stderr
    );
    let listed = gust
        .cli(&["fn", "list", "-n", "team-a", "-o", "json"])
        .ok()
        .stdout;
    assert!(!listed.contains("\"two\""), "nothing stored: {listed}");
    // Elsewhere, no quota.
    gust.cli(&["fn", "create", "two", "--env", "python", "--code", big])
        .ok();
}
