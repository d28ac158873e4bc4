//! `gust up --config FILE`: a node's settings in TOML, under environment variables and flags.

use gust_harness::{Gust, GustOptions};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// Starts Gust with `options`, runs a function that prints 10 lines, and counts the lines
/// `gust fn logs` still has (the `log-lines` setting).
fn log_lines_kept(options: GustOptions) -> usize {
    let gust = Gust::start(GUST, options);
    gust.deploy(
        "chatty",
        "python",
        "chatty.py",
        "def main():\n    for i in range(10):\n        print('chatty-line', i, flush=True)\n    return 'ok'\n",
        &[],
    );
    assert_eq!(gust.get("/chatty").status(), 200);
    let printed = gust_harness::eventually(std::time::Duration::from_secs(10), || {
        let logs = gust.cli(&["fn", "logs", "chatty"]).ok().stdout;
        // The last line is always kept; wait until it is there.
        logs.contains("chatty-line 9").then_some(logs)
    })
    .expect("the function's output reaches its logs");
    printed
        .lines()
        .filter(|l| l.contains("chatty-line"))
        .count()
}

#[test]
fn a_config_file_sets_defaults_that_environment_and_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gust-node.toml");
    std::fs::write(&file, "log_lines = 5\ndrain-deadline = \"5s\"\n").unwrap();
    let config = file.to_str().unwrap().to_owned();
    let with = |extra: &[&str], env: &[(&str, &str)]| GustOptions {
        extra_args: ["--config", config.as_str()]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..GustOptions::default()
    };
    assert_eq!(log_lines_kept(with(&[], &[])), 5, "from the file");
    assert_eq!(
        log_lines_kept(with(&[], &[("GUST_LOG_LINES", "7")])),
        7,
        "the environment over the file"
    );
    assert_eq!(
        log_lines_kept(with(&["--log-lines", "3"], &[("GUST_LOG_LINES", "7")])),
        3,
        "a flag over both"
    );
    // GUST_CONFIG names the file as --config does.
    assert_eq!(
        log_lines_kept(GustOptions {
            env: vec![("GUST_CONFIG".into(), config.clone())],
            ..GustOptions::default()
        }),
        5,
        "the file named by GUST_CONFIG"
    );
}

#[test]
fn a_config_file_with_an_unknown_setting_or_a_bad_value_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |text: &str| {
        let file = dir.path().join("node.toml");
        std::fs::write(&file, text).unwrap();
        let output = std::process::Command::new(GUST)
            .args(["up", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&file)
            .env_remove("GUST_CONFIG")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text}: gust up started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let err = refused("pool-sise = 3\n");
    assert!(err.contains("unknown setting \"pool-sise\""), "{err}");
    assert!(
        err.contains("pool-size"),
        "the known settings are listed: {err}"
    );
    let err = refused("log-lines = \"many\"\n");
    assert!(err.contains("many") && err.contains("--log-lines"), "{err}");
    let err = refused("log-lines = [1, 2]\n");
    assert!(err.contains("log-lines cannot be a TOML array"), "{err}");
    let err = refused("log-lines = \n");
    assert!(err.contains("not valid TOML"), "{err}");
    // The file's own name is not a setting in it.
    let err = refused("config = \"other.toml\"\n");
    assert!(err.contains("unknown setting \"config\""), "{err}");
}

/// The wasm tier's largest memory is a setting (here from the file): a function asking for
/// more is refused at deploy, naming the setting; one within it serves.
#[test]
fn the_wasm_memory_ceiling_is_a_node_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gust-node.toml");
    std::fs::write(&file, "wasm-max-memory = 64\nwasm-slots = 50\n").unwrap();
    let gust = Gust::start(
        GUST,
        GustOptions {
            extra_args: vec!["--config".into(), file.to_str().unwrap().into()],
            ..GustOptions::default()
        },
    );
    let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/components/hello.wasm");
    let err = gust
        .cli(&[
            "fn", "create", "big", "--env", "wasm", "--code", hello, "--memory", "128",
        ])
        .failed();
    assert!(err.contains("at most 64 MB"), "{err}");
    assert!(err.contains("--wasm-max-memory"), "{err}");
    gust.cli(&[
        "fn", "create", "small", "--env", "wasm", "--code", hello, "--memory", "64",
    ])
    .ok();
    gust.cli(&["route", "create", "--fn", "small", "--url", "/small"])
        .ok();
    let response = gust.get("/small");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "hello from wasm\n");
}

/// `--roles` (here from the config file, as a list) runs some of a node's roles: without the
/// router nothing listens for routes, and without the async dispatcher accepted invocations
/// wait in the queue instead of running; the API and the executor still serve `fn invoke`.
#[test]
fn roles_pick_what_a_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gust-node.toml");
    std::fs::write(&file, "roles = [\"api\", \"executor\"]\n").unwrap();
    let gust = Gust::start(
        GUST,
        GustOptions {
            extra_args: vec!["--config".into(), file.to_str().unwrap().into()],
            ..GustOptions::default()
        },
    );
    assert!(gust.log().contains("roles:         api,executor"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gust.public_port)).is_err(),
        "no public listener without the router role"
    );
    let path = gust.write_file(
        "ran.py",
        "def main():\n    print('ran', flush=True)\n    return 'ok'\n",
    );
    gust.cli(&[
        "fn",
        "create",
        "ran",
        "--env",
        "python",
        "--code",
        path.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(gust.cli(&["fn", "invoke", "ran"]).ok().stdout, "ok\n");
    // Accepted and stored, but nothing runs it: no dispatcher on this node.
    let accepted: serde_json::Value = gust
        .api(
            gust_harness::reqwest::Method::POST,
            "/v1/functions/ran/invoke?async=true",
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let invocation: serde_json::Value = gust
        .api(
            gust_harness::reqwest::Method::GET,
            &format!("/v1/invocations/{id}"),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(invocation["state"], "pending", "{invocation}");
    let logs = gust.cli(&["fn", "logs", "ran"]).ok().stdout;
    assert_eq!(
        logs.lines().filter(|l| l.ends_with("ran")).count(),
        1,
        "{logs}"
    );

    // A role that invokes functions without the executor beside it is refused by name.
    let output = std::process::Command::new(GUST)
        .args(["up", "--roles", "router", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("GUST_CONFIG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("router invokes functions and needs executor"),
        "{err}"
    );
}
