//! The OpenAPI document is generated from the API's own types and routes; this test calls
//! every operation it lists with a real request and checks each answer's status and body
//! against what the document says (schemas resolved, unknown and missing fields refused), and
//! that no operation is left uncalled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// Checks `value` against `schema`, resolving `$ref`s in `doc`. `extra_ok` lets an object
/// carry properties another branch of an `allOf` documents.
fn check(
    doc: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    extra_ok: bool,
) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: dangling reference {reference}"));
        }
        return check(doc, target, value, at, extra_ok);
    }
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            check(doc, part, value, at, true)?;
        }
        if !extra_ok {
            let known = properties(doc, schema);
            if let Some(object) = value.as_object() {
                for key in object.keys() {
                    if !known.contains(key) {
                        return Err(format!("{at}: {key:?} is not documented"));
                    }
                }
            }
        }
        return Ok(());
    }
    for keyword in ["oneOf", "anyOf"] {
        if let Some(options) = schema[keyword].as_array() {
            let errors: Vec<String> = options
                .iter()
                .filter_map(|option| check(doc, option, value, at, extra_ok).err())
                .collect();
            return if errors.len() < options.len() {
                Ok(())
            } else {
                Err(format!("{at}: matches no {keyword} branch: {errors:?}"))
            };
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let fits = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !fits {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(object), Some(props)) = (value.as_object(), schema["properties"].as_object()) {
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().unwrap_or_default();
            if !object.contains_key(key) {
                return Err(format!("{at}: required {key:?} is missing"));
            }
        }
        for (key, item) in object {
            match props.get(key) {
                Some(property) => check(doc, property, item, &format!("{at}.{key}"), false)?,
                None if extra_ok || schema["additionalProperties"].is_object() => {}
                None => return Err(format!("{at}: {key:?} is not documented")),
            }
        }
    } else if let (Some(object), Some(values)) = (
        value.as_object(),
        schema["additionalProperties"].as_object(),
    ) {
        let values = Value::Object(values.clone());
        for (key, item) in object {
            check(doc, &values, item, &format!("{at}.{key}"), false)?;
        }
    }
    if let (Some(items), Some(schema_items)) = (value.as_array(), schema.get("items"))
        && schema_items.is_object()
    {
        for (index, item) in items.iter().enumerate() {
            check(doc, schema_items, item, &format!("{at}[{index}]"), false)?;
        }
    }
    Ok(())
}

/// Every property an object schema documents, through `$ref` and `allOf`.
fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return properties(doc, &doc["components"]["schemas"][name]);
    }
    let mut known: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        known.extend(properties(doc, part));
    }
    known
}

struct Call {
    method: Method,
    /// The documented path, e.g. `/v1/functions/{name}`.
    template: &'static str,
    /// The path called, names filled in, with any query.
    path: String,
    body: Option<Value>,
    status: u16,
}

fn call(
    method: Method,
    template: &'static str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Call {
    Call {
        method,
        template,
        path: path.to_owned(),
        body,
        status,
    }
}

#[test]
fn every_documented_operation_answers_as_documented() {
    let gust = Gust::start(GUST, GustOptions::default());
    let doc: Value = gust.openapi();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch", "head"].contains(&k.as_str()))
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();

    // What the calls below need: a script for a custom environment, a function that answers
    // 400 so its asynchronous invocation becomes a dead letter, and an upload.
    let script = gust.write_file("env/server.py", "import time\ntime.sleep(3600)\n");
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        gust.dir.path().to_path_buf(),
        gust.scratch(),
        gust.scratch().join("env"),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let source = "def main(req):\n    if req.query.get('fail'):\n        return ('no', 400)\n    print('hello log')\n    return 'hi'\n";
    let uploaded: Value = gust
        .api(Method::POST, "/v1/uploads")
        .body(source)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let upload = uploaded["upload"].as_str().unwrap().to_owned();
    let accepted = gust
        .api(Method::POST, "/v1/functions")
        .json(&json!({"name": "hello", "env": "python", "max_attempts": 1, "timeout": "5s",
                      "code": {"filename": "hello.py", "content_base64": "ZGVmIG1haW4oKTpyZXR1cm4gMQ=="}}))
        .send()
        .unwrap();
    assert_eq!(accepted.status(), 201);
    gust.api(Method::DELETE, "/v1/functions/hello")
        .send()
        .unwrap();
    // A function whose code has a (dependency-free) package.json, so it has a build to show.
    gust.write_file(
        "built/package.json",
        r#"{"name": "built", "version": "1.0.0"}"#,
    );
    gust.write_file("built/index.js", "module.exports = async () => 'built';\n");
    let built_dir = gust.scratch().join("built");
    gust.cli(&[
        "fn",
        "create",
        "built",
        "--env",
        "node",
        "--code",
        built_dir.to_str().unwrap(),
    ])
    .ok();
    let build_calls = run(
        &gust,
        &doc,
        &[
            call(
                Method::GET,
                "/v1/functions/{name}/build",
                "/v1/functions/built/build",
                None,
                200,
            ),
            call(
                Method::GET,
                "/v1/functions/{name}/build/log",
                "/v1/functions/built/build/log?offset=0",
                None,
                200,
            ),
            call(
                Method::GET,
                "/v1/functions/{name}/code",
                "/v1/functions/built/code",
                None,
                200,
            ),
        ],
    );

    let dead_id = {
        let calls = [call(
            Method::POST,
            "/v1/functions",
            "/v1/functions",
            Some(json!({"name": "f", "env": "python", "max_attempts": 1,
                        "code": {"filename": "f.py", "upload": upload}})),
            201,
        )];
        run(&gust, &doc, &calls);
        let accepted = gust
            .api(
                Method::POST,
                "/v1/functions/f/invoke?async=true&path=/%3Ffail%3D1",
            )
            .send()
            .unwrap();
        assert_eq!(accepted.status(), 202);
        let id = accepted.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let started = Instant::now();
        loop {
            let state: Value = gust
                .api(Method::GET, &format!("/v1/invocations/{id}"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            if state["state"] == "dead" {
                break id;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{state}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let script = script.to_str().unwrap();
    let calls = vec![
        call(Method::GET, "/healthz", "/healthz", None, 200),
        call(Method::GET, "/readyz", "/readyz", None, 200),
        call(Method::GET, "/metrics", "/metrics", None, 200),
        call(Method::GET, "/v1/version", "/v1/version", None, 200),
        call(Method::GET, "/v1/whoami", "/v1/whoami", None, 200),
        call(Method::GET, "/v1/nodes", "/v1/nodes", None, 200),
        call(
            Method::GET,
            "/v1/openapi.json",
            "/v1/openapi.json",
            None,
            200,
        ),
        call(
            Method::POST,
            "/v1/environments",
            "/v1/environments",
            Some(
                json!({"name": "custom", "command": format!("/usr/bin/python3 {script}"), "pool_size": 0}),
            ),
            201,
        ),
        call(
            Method::GET,
            "/v1/environments",
            "/v1/environments",
            None,
            200,
        ),
        call(
            Method::GET,
            "/v1/environments/{name}",
            "/v1/environments/python",
            None,
            200,
        ),
        call(Method::GET, "/v1/functions", "/v1/functions", None, 200),
        call(
            Method::GET,
            "/v1/functions/{name}",
            "/v1/functions/f",
            None,
            200,
        ),
        call(
            Method::PUT,
            "/v1/functions/{name}",
            "/v1/functions/f",
            Some(json!({"memory_mb": 64, "idle_timeout": "30s", "env_vars": ["A=1"]})),
            200,
        ),
        call(
            Method::GET,
            "/v1/functions/{name}/revisions",
            "/v1/functions/f/revisions",
            None,
            200,
        ),
        call(
            Method::GET,
            "/v1/functions/{name}/stats",
            "/v1/functions/f/stats?since=30m",
            None,
            200,
        ),
        call(
            Method::POST,
            "/v1/functions/{name}/rollback",
            "/v1/functions/f/rollback",
            Some(json!({})),
            200,
        ),
        call(
            Method::GET,
            "/v1/functions/{name}/invoke",
            "/v1/functions/f/invoke",
            None,
            200,
        ),
        call(
            Method::POST,
            "/v1/functions/{name}/invoke",
            "/v1/functions/f/invoke",
            None,
            200,
        ),
        call(
            Method::PUT,
            "/v1/functions/{name}/invoke",
            "/v1/functions/f/invoke",
            None,
            200,
        ),
        call(
            Method::PATCH,
            "/v1/functions/{name}/invoke",
            "/v1/functions/f/invoke",
            None,
            200,
        ),
        call(
            Method::DELETE,
            "/v1/functions/{name}/invoke",
            "/v1/functions/f/invoke",
            None,
            200,
        ),
        call(
            Method::GET,
            "/v1/functions/{name}/logs",
            "/v1/functions/f/logs",
            None,
            200,
        ),
        call(
            Method::POST,
            "/v1/routes",
            "/v1/routes",
            Some(json!({"name": "r", "function": "f", "url": "/f/{id}", "methods": ["GET"]})),
            201,
        ),
        call(Method::GET, "/v1/routes", "/v1/routes", None, 200),
        call(Method::GET, "/v1/routes/{name}", "/v1/routes/r", None, 200),
        call(
            Method::POST,
            "/v1/timers",
            "/v1/timers",
            Some(json!({"name": "t", "function": "f", "cron": "0 0 1 1 *", "tz": "Europe/Paris"})),
            201,
        ),
        call(Method::GET, "/v1/timers", "/v1/timers", None, 200),
        call(Method::GET, "/v1/timers/{name}", "/v1/timers/t", None, 200),
        call(
            Method::POST,
            "/v1/mqtriggers",
            "/v1/mqtriggers",
            Some(json!({"name": "q", "function": "f", "kind": "nats",
                        "url": "nats://user:secret@127.0.0.1:9", "topic": "orders"})),
            201,
        ),
        call(Method::GET, "/v1/mqtriggers", "/v1/mqtriggers", None, 200),
        call(
            Method::GET,
            "/v1/mqtriggers/{name}",
            "/v1/mqtriggers/q",
            None,
            200,
        ),
        call(
            Method::GET,
            "/v1/invocations/{id}",
            &format!("/v1/invocations/{dead_id}"),
            None,
            200,
        ),
        call(Method::GET, "/v1/dlq", "/v1/dlq", None, 200),
        call(Method::GET, "/v1/async", "/v1/async", None, 200),
        call(
            Method::GET,
            "/v1/dlq/{id}",
            &format!("/v1/dlq/{dead_id}"),
            None,
            200,
        ),
        call(
            Method::POST,
            "/v1/dlq/redrive",
            "/v1/dlq/redrive",
            Some(json!({"ids": [dead_id]})),
            200,
        ),
        call(
            Method::POST,
            "/v1/dlq/purge",
            "/v1/dlq/purge",
            Some(json!({"all": true})),
            200,
        ),
        call(Method::POST, "/v1/uploads", "/v1/uploads", None, 201),
        call(Method::GET, "/v1/usage", "/v1/usage?by=hour", None, 200),
        call(
            Method::GET,
            "/v1/usage/records",
            "/v1/usage/records",
            None,
            200,
        ),
        // Documented failures answer with the documented error body.
        call(
            Method::GET,
            "/v1/functions/{name}",
            "/v1/functions/nothing",
            None,
            404,
        ),
        call(
            Method::PUT,
            "/v1/functions/{name}",
            "/v1/functions/f",
            Some(json!({"timeout": "soon"})),
            400,
        ),
        call(
            Method::POST,
            "/v1/routes",
            "/v1/routes",
            Some(json!({"name": "r", "function": "f", "url": "/f/{id}"})),
            409,
        ),
        call(
            Method::DELETE,
            "/v1/mqtriggers/{name}",
            "/v1/mqtriggers/q",
            None,
            204,
        ),
        call(
            Method::DELETE,
            "/v1/timers/{name}",
            "/v1/timers/t",
            None,
            204,
        ),
        call(
            Method::DELETE,
            "/v1/routes/{name}",
            "/v1/routes/r",
            None,
            204,
        ),
        call(
            Method::DELETE,
            "/v1/functions/{name}",
            "/v1/functions/f",
            None,
            204,
        ),
        call(
            Method::DELETE,
            "/v1/environments/{name}",
            "/v1/environments/custom",
            None,
            204,
        ),
        call(
            Method::POST,
            "/v1/namespaces",
            "/v1/namespaces",
            Some(json!({"name": "team-a"})),
            201,
        ),
        call(
            Method::POST,
            "/v1/namespaces",
            "/v1/namespaces",
            Some(json!({"name": "team-a"})),
            409,
        ),
        call(Method::GET, "/v1/namespaces", "/v1/namespaces", None, 200),
        call(
            Method::GET,
            "/v1/namespaces/{name}",
            "/v1/namespaces/team-a",
            None,
            200,
        ),
        call(
            Method::GET,
            "/v1/namespaces/{name}",
            "/v1/namespaces/team-z",
            None,
            404,
        ),
        call(
            Method::PUT,
            "/v1/namespaces/{name}",
            "/v1/namespaces/team-a",
            Some(json!({"quotas": {"max_functions": 10, "max_requests_per_second": 100}})),
            200,
        ),
        call(
            Method::POST,
            "/v1/tokens",
            "/v1/tokens?namespace=team-a",
            Some(json!({"role": "viewer", "name": "reader", "expires": "1h"})),
            201,
        ),
        call(
            Method::POST,
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"role": "boss"})),
            400,
        ),
        call(
            Method::GET,
            "/v1/tokens",
            "/v1/tokens?namespace=team-a",
            None,
            200,
        ),
        call(
            Method::DELETE,
            "/v1/tokens/{id}",
            "/v1/tokens/reader?namespace=team-a",
            None,
            204,
        ),
        call(
            Method::DELETE,
            "/v1/tokens/{id}",
            "/v1/tokens/reader?namespace=team-a",
            None,
            404,
        ),
        call(
            Method::DELETE,
            "/v1/namespaces/{name}",
            "/v1/namespaces/team-a",
            None,
            204,
        ),
        call(
            Method::POST,
            "/v1/secrets",
            "/v1/secrets",
            Some(json!({"name": "s", "data": {"k": "dg=="}})),
            201,
        ),
        call(
            Method::POST,
            "/v1/secrets",
            "/v1/secrets",
            Some(json!({"name": "t", "data": {"../k": "dg=="}})),
            400,
        ),
        call(Method::GET, "/v1/secrets", "/v1/secrets", None, 200),
        call(
            Method::GET,
            "/v1/secrets/{name}",
            "/v1/secrets/s",
            None,
            200,
        ),
        call(
            Method::PUT,
            "/v1/secrets/{name}",
            "/v1/secrets/s",
            Some(json!({"data": {"k": "dw==", "j": ""}})),
            200,
        ),
        call(
            Method::DELETE,
            "/v1/secrets/{name}",
            "/v1/secrets/s",
            None,
            204,
        ),
        call(
            Method::GET,
            "/v1/secrets/{name}",
            "/v1/secrets/s",
            None,
            404,
        ),
        call(
            Method::POST,
            "/v1/configs",
            "/v1/configs",
            Some(json!({"name": "s", "data": {"k": "dg=="}})),
            201,
        ),
        call(
            Method::POST,
            "/v1/configs",
            "/v1/configs",
            Some(json!({"name": "t", "data": {"../k": "dg=="}})),
            400,
        ),
        call(Method::GET, "/v1/configs", "/v1/configs", None, 200),
        call(
            Method::GET,
            "/v1/configs/{name}",
            "/v1/configs/s",
            None,
            200,
        ),
        call(
            Method::PUT,
            "/v1/configs/{name}",
            "/v1/configs/s",
            Some(json!({"data": {"k": "dw==", "j": ""}})),
            200,
        ),
        call(
            Method::DELETE,
            "/v1/configs/{name}",
            "/v1/configs/s",
            None,
            204,
        ),
        call(
            Method::GET,
            "/v1/configs/{name}",
            "/v1/configs/s",
            None,
            404,
        ),
        call(
            Method::GET,
            "/v1/audit",
            "/v1/audit?all=true&since=1h",
            None,
            200,
        ),
    ];
    let mut called = run(&gust, &doc, &calls);
    called.extend(build_calls);
    called.insert(("POST".to_owned(), "/v1/functions".to_owned()));
    let uncalled: Vec<_> = documented.difference(&called).collect();
    assert!(
        uncalled.is_empty(),
        "documented but never called: {uncalled:?}"
    );
    let undocumented: Vec<_> = called.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "called but not documented: {undocumented:?}"
    );
}

/// Makes each call and checks its answer against the document; returns what was called.
fn run(gust: &Gust, doc: &Value, calls: &[Call]) -> BTreeSet<(String, String)> {
    let mut called = BTreeSet::new();
    for c in calls {
        let what = format!("{} {}", c.method, c.path);
        let mut request = gust.api(c.method.clone(), &c.path);
        if let Some(body) = &c.body {
            request = request.json(body);
        } else if c.template == "/v1/uploads" {
            request = request.body("def main():\n    return 1\n");
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().unwrap();
        assert_eq!(status, c.status, "{what}: {text}");
        let operation = &doc["paths"][c.template][c.method.as_str().to_lowercase()];
        assert!(
            operation.is_object(),
            "{what}: {} is not documented",
            c.template
        );
        let documented = &operation["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{what}: status {status} is not documented"
        );
        // A function's answer is its own; the document is the document this test reads.
        let free_form = ["/v1/functions/{name}/invoke", "/v1/openapi.json"].contains(&c.template);
        if content_type.starts_with("application/json") && !free_form {
            let schema = &documented["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{what}: a JSON answer without a documented schema"
            );
            let body: Value = serde_json::from_str(&text).unwrap();
            if let Err(err) = check(doc, schema, &body, "body", false) {
                panic!("{what}: {err}\n{text}");
            }
        }
        called.insert((c.method.as_str().to_owned(), c.template.to_owned()));
    }
    called
}
