//! End-to-end: bad input gets a one-line error naming the problem, a non-zero exit, and
//! leaves what is stored untouched. The CLI and the API refuse the same things.

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

fn one_line_error(err: String, expected: &str) {
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
}

fn state(gust: &Gust) -> (Value, Value) {
    let functions: Value =
        serde_json::from_str(&gust.cli(&["fn", "list", "-o", "json"]).ok().stdout).unwrap();
    let routes: Value =
        serde_json::from_str(&gust.cli(&["route", "list", "-o", "json"]).ok().stdout).unwrap();
    (functions, routes)
}

/// A Gust with one function, `keep`, that no refused request may change.
fn with_a_function_to_keep() -> Gust {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "keep",
        "python",
        "k.py",
        "def main():\n    return 'kept'\n",
        &[],
    );
    gust
}

#[test]
fn function_mistakes_are_refused_and_nothing_is_stored() {
    let gust = with_a_function_to_keep();
    let before = state(&gust);
    let code = gust.write_file("ok.py", "def main():\n    return 1\n");
    let code = code.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "fn", "create", "Bad_Name", "--env", "python", "--code", code,
            ],
            "invalid function name",
        ),
        (
            vec!["fn", "create", "-x", "--env", "python", "--code", code],
            "error",
        ),
        (
            vec!["fn", "create", "ok", "--env", "cobol", "--code", code],
            "environment \"cobol\" does not exist",
        ),
        (
            vec![
                "fn",
                "create",
                "ok",
                "--env",
                "python",
                "--code",
                "/no/such/file.py",
            ],
            "cannot read code at /no/such/file.py",
        ),
        (
            vec!["fn", "create", "ok", "--env", "python"],
            "code is required",
        ),
        (
            vec!["fn", "create", "ok", "--code", code],
            "env is required",
        ),
        (
            vec!["fn", "create", "keep", "--env", "python", "--code", code],
            "function \"keep\" already exists",
        ),
        (
            vec![
                "fn",
                "create",
                "ok",
                "--env",
                "python",
                "--code",
                code,
                "--timeout",
                "soon",
            ],
            "invalid duration \"soon\"",
        ),
        (
            vec![
                "fn", "create", "ok", "--env", "python", "--code", code, "--memory", "1",
            ],
            "memory",
        ),
        (
            vec![
                "fn",
                "create",
                "ok",
                "--env",
                "python",
                "--code",
                code,
                "--env-var",
                "NOVALUE",
            ],
            "expected KEY=VALUE",
        ),
        (
            vec![
                "fn",
                "create",
                "ok",
                "--env",
                "python",
                "--code",
                code,
                "--entrypoint",
                "../x",
            ],
            "entrypoint",
        ),
        (
            vec!["fn", "update", "ghost", "--timeout", "1s"],
            "function \"ghost\" not found",
        ),
        (
            vec!["fn", "update", "keep", "--env", "cobol"],
            "environment \"cobol\" does not exist",
        ),
        (vec!["fn", "get", "ghost"], "function \"ghost\" not found"),
        (
            vec!["fn", "delete", "ghost"],
            "function \"ghost\" not found",
        ),
        (vec!["fn", "invoke", "ghost"], "not found"),
        (vec!["fn", "logs", "ghost"], "not found"),
        (
            vec!["env", "create", "bad env", "--command", "/bin/true"],
            "invalid environment name",
        ),
        (
            vec!["env", "create", "rel", "--command", "python3 x.py"],
            "absolute path",
        ),
        (vec!["env", "delete", "ghost"], "not found"),
    ];
    for (args, expected) in cases {
        let err = gust.cli(&args).failed();
        if expected == "error" {
            assert!(err.contains("error"), "{args:?}: {err}");
        } else {
            one_line_error(err, expected);
        }
    }
    assert_eq!(state(&gust), before, "nothing changed");
    assert_eq!(gust.get("/keep").text().unwrap(), "kept");
}

#[test]
fn s11_route_mistakes_are_refused_the_same_way_by_cli_and_api() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy(
        "target",
        "python",
        "t.py",
        "def main():\n    return 't'\n",
        &[],
    );
    gust.cli(&[
        "route",
        "create",
        "--fn",
        "target",
        "--url",
        "/users/{id}",
        "--method",
        "GET",
        "--name",
        "users",
    ])
    .ok();
    let before = state(&gust);
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("/a/../b", vec![], "'.' and '..' segments"),
        ("/%2e%2e/x", vec![], "'%' is not allowed"),
        ("/healthz", vec![], "reserved"),
        ("/v2/specialize", vec![], "reserved"),
        ("/_gust/x", vec![], "reserved"),
        ("no-slash", vec![], "starts with '/'"),
        ("/a//b", vec![], "empty segment"),
        ("/{a}/{a}", vec![], "appears twice"),
        (
            "/users/{uid}",
            vec!["--method", "get"],
            "conflicts with route",
        ),
        ("/users/{uid}", vec![], "conflicts with route"),
        ("/ok", vec!["--method", "FETCH"], "invalid HTTP method"),
    ];
    for (url, extra, expected) in &cases {
        let mut args = vec!["route", "create", "--fn", "target", "--url", url];
        args.extend(extra);
        one_line_error(gust.cli(&args).failed(), expected);

        let methods: Vec<&str> = extra.iter().skip(1).copied().collect();
        let response = gust
            .api(Method::POST, "/v1/routes")
            .json(&json!({ "function": "target", "url": url, "methods": methods }))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap();
        assert!(status == 400 || status == 409, "{url}: {status}");
        assert!(
            body["message"].as_str().unwrap().contains(expected),
            "{url}: {body}"
        );
    }
    one_line_error(
        gust.cli(&["route", "create", "--fn", "ghost", "--url", "/ghost"])
            .failed(),
        "function \"ghost\" not found",
    );
    one_line_error(
        gust.cli(&[
            "route", "create", "--fn", "target", "--url", "/x", "--name", "users",
        ])
        .failed(),
        "route \"users\" already exists",
    );
    // Same path, other methods: no conflict.
    gust.cli(&[
        "route",
        "create",
        "--fn",
        "target",
        "--url",
        "/users/{uid}",
        "--method",
        "DELETE",
    ])
    .ok();
    let (_, routes) = state(&gust);
    assert_eq!(
        routes.as_array().unwrap().len(),
        before.1.as_array().unwrap().len() + 1
    );
    one_line_error(
        gust.cli(&["route", "delete", "ghost"]).failed(),
        "route \"ghost\" not found",
    );

    // Malformed API bodies get the JSON error too.
    let response = gust
        .api(Method::POST, "/v1/functions")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().unwrap();
    assert_eq!(body["reason"], "invalid_input");
    let response = gust
        .api(Method::POST, "/v1/routes")
        .json(&json!({"function": "target", "url": "/y", "surprise": true}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[test]
fn the_cli_finds_the_server_from_flags_environment_and_config() {
    let gust = Gust::start(GUST, GustOptions::default());
    // The config gust up wrote: no flags needed (also covered by every other test).
    gust.cli(&["fn", "list"]).ok();
    // GUST_URL alone: the token comes from the config entry for that URL.
    gust.cli_with_env(&["fn", "list"], &[("GUST_URL", &gust.api_url())])
        .ok();
    // A wrong token from the environment beats the config and is refused.
    one_line_error(
        gust.cli_with_env(&["fn", "list"], &[("GUST_TOKEN", "wrong")])
            .failed(),
        "a valid bearer token is required",
    );
    // --token beats GUST_TOKEN.
    let token = gust.token();
    gust.cli_with_env(
        &["--token", &token, "fn", "list"],
        &[("GUST_TOKEN", "wrong")],
    )
    .ok();
    // Nothing listening: the error says where it looked.
    one_line_error(
        gust.cli(&["--url", "http://127.0.0.1:9", "fn", "list"])
            .failed(),
        "cannot reach the Gust API at http://127.0.0.1:9",
    );
    let script = gust.cli(&["completion", "bash"]).ok().stdout;
    assert!(script.contains("gust"), "a completion script");
}

#[test]
fn api_bodies_name_the_field_at_fault_and_nothing_else_is_read_or_stored() {
    let gust = with_a_function_to_keep();
    let before = state(&gust);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"memory_mb": "x"}), "memory_mb: invalid type"),
        (
            json!({"timeout": "soon"}),
            "timeout: invalid duration \"soon\"",
        ),
        (json!({"idle_timeout": 5}), "idle_timeout: invalid type"),
        (json!({"timeout": "999us"}), "between 1ms and 15m"),
        (json!({"memory": 64}), "unknown field `memory`"),
        (
            json!({"code": {"filename": "a.py", "zz": 1}}),
            "unknown field `zz`",
        ),
        (json!({"name": "other"}), "cannot be renamed"),
        (json!({"env_vars": ["a\u{1b}[31m"]}), "\\u{1b}"),
    ];
    for (body, expected) in &cases {
        let response = gust
            .api(Method::PUT, "/v1/functions/keep")
            .json(body)
            .send()
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.headers()["x-gust-error"], "invalid_input");
        let answer: Value = response.json().unwrap();
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
        assert!(
            !message.contains('\n') && !message.contains('\u{1b}'),
            "{message:?}"
        );
    }
    // One JSON value and nothing after it.
    let trailing = gust
        .api(Method::PUT, "/v1/functions/keep")
        .header("content-type", "application/json")
        .body(r#"{"memory_mb": 64}{"memory_mb": 32}"#)
        .send()
        .unwrap();
    assert_eq!(trailing.status(), 400);
    // A message quoting a huge input stays small.
    let huge = format!(r#"{{"{}": 1}}"#, "\u{85}".repeat(1_000_000));
    let response = gust
        .api(Method::PUT, "/v1/functions/keep")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().unwrap().len() < 16 * 1024);
    // The framework's own refusals are Gust errors too: a query that does not parse, a body
    // over the API's limit, a method the path does not take.
    let over_limit = vec![b' '; 16 * 1024 * 1024 + 1];
    for (method, path, body, status) in [
        (Method::GET, "/v1/usage/records?limit=abc", Vec::new(), 400),
        (
            Method::GET,
            "/v1/functions/keep/logs?after=x",
            Vec::new(),
            400,
        ),
        (Method::PATCH, "/v1/functions", Vec::new(), 405),
        (Method::PUT, "/v1/functions/keep", over_limit, 413),
    ] {
        let response = gust.api(method.clone(), path).body(body).send().unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        assert!(
            response.headers().contains_key("x-gust-error"),
            "{method} {path}"
        );
        let answer: Value = response.json().unwrap();
        assert!(!answer["message"].as_str().unwrap().is_empty(), "{answer}");
    }
    assert_eq!(state(&gust), before, "nothing stored changed");
    // A function's own error answer through invoke is the function's, untouched.
    gust.deploy(
        "teapot",
        "python",
        "t.py",
        "def main():\n    return ('short and stout', 418)\n",
        &[],
    );
    let own = gust
        .api(Method::POST, "/v1/functions/teapot/invoke")
        .send()
        .unwrap();
    assert_eq!(own.status(), 418);
    assert!(!own.headers().contains_key("x-gust-error"));
    assert_eq!(own.text().unwrap(), "short and stout");
    // A timer interval that would overflow the tick arithmetic is refused, and timers work.
    let response = gust
        .api(Method::POST, "/v1/timers")
        .json(&json!({"name": "far", "function": "keep", "cron": "@every 2305843009213693952s"}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let listed = gust.api(Method::GET, "/v1/timers").send().unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.json::<Value>().unwrap(), json!([]));
}
