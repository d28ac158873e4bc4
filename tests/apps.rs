//! End-to-end: apps as code. `gust apply` of a `gust.yaml` through the real binary: create,
//! apply again with no change, a dry run, an update, prune (and another app left alone),
//! export then apply, a partial failure completed by a second apply, and bad files refused
//! with their location while nothing is applied.

use gust_harness::{CliOutput, Gust, GustOptions};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");

fn apply(gust: &Gust, dir: &str, extra: &[&str]) -> CliOutput {
    let file = gust.scratch().join(dir);
    let mut args = vec!["apply", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    gust.cli_with_env(&args, &[("GREETING", "bonjour")])
}

fn body(gust: &Gust, path: &str) -> String {
    gust.get(path).text().unwrap()
}

fn function_names(gust: &Gust) -> Vec<String> {
    let listed: Value =
        serde_json::from_str(&gust.cli(&["fn", "list", "-o", "json"]).ok().stdout).unwrap();
    let mut names: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

const SHOP: &str = r#"
app: shop
functions:
  hello:
    code: hello.py
    env: python
    timeout: 5s
  api:
    code: api
    env: node
    memory: 256
    env_vars:
      GREETING: ${GREETING}
      PLACE: ${PLACE:-world}
routes:
  hello:
    function: hello
    url: /hello
    methods: [GET]
  api:
    function: api
    url: /api
timers:
  nightly:
    function: hello
    cron: "0 3 * * *"
"#;

fn write_shop(gust: &Gust, greeting: &str) {
    gust.write_file(
        "shop/hello.py",
        format!("def main():\n    return '{greeting}'\n"),
    );
    gust.write_file(
        "shop/api/index.js",
        "module.exports = async () => ({status: 200, body: `${process.env.GREETING} ${process.env.PLACE}`});\n",
    );
    gust.write_file("shop/gust.yaml", SHOP);
}

#[test]
fn apply_is_idempotent_plans_updates_prunes_only_its_own_app_and_exports() {
    let gust = Gust::start(GUST, GustOptions::default());
    write_shop(&gust, "hello v1");

    let first = apply(&gust, "shop", &[]).ok().stdout;
    assert!(first.contains("+ function hello: create"), "{first}");
    assert!(
        first.contains("5 to create, 0 to update, 0 to delete, 0 unchanged"),
        "{first}"
    );
    assert_eq!(body(&gust, "/hello"), "hello v1");
    assert_eq!(body(&gust, "/api"), "bonjour world");

    // Applied again, unchanged: nothing happens, and it says so.
    let again = apply(&gust, "shop", &[]).ok().stdout;
    assert!(
        again.contains("0 to create, 0 to update, 0 to delete, 5 unchanged"),
        "{again}"
    );
    assert!(again.contains("no changes"), "{again}");
    let revisions = |name: &str| {
        let view: Value =
            serde_json::from_str(&gust.cli(&["fn", "get", name, "-o", "json"]).ok().stdout)
                .unwrap();
        view["revisions"].as_u64().unwrap()
    };
    assert_eq!((revisions("hello"), revisions("api")), (1, 1));

    // A setting changed by hand goes back to the file's (an omitted setting is its default).
    gust.cli(&["fn", "update", "api", "--max-instances", "3"])
        .ok();
    let reset = apply(&gust, "shop", &["--dry-run"]).ok().stdout;
    assert!(
        reset.contains("~ function api: update max_instances"),
        "{reset}"
    );
    assert!(reset.contains("dry run: nothing changed"), "{reset}");

    // New code and a new timeout: the dry run names both and changes nothing.
    write_shop(&gust, "hello v2");
    gust.write_file("shop/gust.yaml", SHOP.replace("timeout: 5s", "timeout: 7s"));
    let plan = apply(&gust, "shop", &["--dry-run"]).ok().stdout;
    assert!(
        plan.contains("~ function hello: update code, timeout"),
        "{plan}"
    );
    assert!(plan.contains("= route hello: unchanged"), "{plan}");
    assert_eq!(body(&gust, "/hello"), "hello v1");
    apply(&gust, "shop", &[]).ok();
    assert_eq!(body(&gust, "/hello"), "hello v2");
    // api: the hand-made revision, then the file's settings again.
    assert_eq!((revisions("hello"), revisions("api")), (2, 3));

    // Another app with its own function and route.
    gust.write_file("other/f.py", "def main():\n    return 'other'\n");
    gust.write_file(
        "other/gust.yaml",
        "app: other\nfunctions:\n  other-fn:\n    code: f.py\n    env: python\nroutes:\n  other:\n    function: other-fn\n    url: /other\n",
    );
    apply(&gust, "other", &[]).ok();

    // The timer and the api route leave the file: kept without --prune, deleted with it;
    // the other app's resources stay.
    let trimmed = SHOP
        .replace("timeout: 5s", "timeout: 7s")
        .replace("  api:\n    function: api\n    url: /api\n", "")
        .replace(
            "timers:\n  nightly:\n    function: hello\n    cron: \"0 3 * * *\"\n",
            "",
        );
    gust.write_file("shop/gust.yaml", &trimmed);
    let kept = apply(&gust, "shop", &[]).ok().stdout;
    assert!(kept.contains("no changes"), "{kept}");
    assert!(
        kept.contains(
            "not in the file but kept (`--prune` deletes them): timer nightly, route api"
        ),
        "{kept}"
    );
    assert_eq!(gust.get("/api").status(), 200);
    let pruned = apply(&gust, "shop", &["--prune"]).ok().stdout;
    assert!(pruned.contains("- route api: delete: done"), "{pruned}");
    assert!(pruned.contains("- timer nightly: delete: done"), "{pruned}");
    assert!(!pruned.contains("other"), "{pruned}");
    assert_eq!(gust.get("/api").status(), 404);
    assert_eq!(body(&gust, "/other"), "other");
    assert_eq!(function_names(&gust), ["api", "hello", "other-fn"]);
    let timers = gust.cli(&["timer", "list"]).ok().stdout;
    assert!(!timers.contains("nightly"), "{timers}");

    // Exported, then applied: nothing changes; the code came out as it went in.
    let exported = gust.scratch().join("exported");
    gust.cli(&["export", "--app", "shop", "-o", exported.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(exported.join("hello/hello.py")).unwrap(),
        "def main():\n    return 'hello v2'\n"
    );
    let yaml = std::fs::read_to_string(exported.join("gust.yaml")).unwrap();
    assert!(yaml.contains("GREETING: bonjour"), "{yaml}");
    let after_export = apply(&gust, "exported", &[]).ok().stdout;
    assert!(after_export.contains("no changes"), "{after_export}");
    // A second export refuses to overwrite the first.
    let refused = gust
        .cli(&["export", "--app", "shop", "-o", exported.to_str().unwrap()])
        .failed();
    assert!(refused.contains("exists already"), "{refused}");

    // The JSON Schema describes the file: every function field, nothing else accepted.
    let schema: Value = serde_json::from_str(&gust.cli(&["schema"]).ok().stdout).unwrap();
    let entry = &schema["$defs"]["FunctionEntry"];
    assert_eq!(entry["additionalProperties"], false);
    for field in [
        "code",
        "env",
        "timeout",
        "memory",
        "env_vars",
        "max_instances",
        "keep_revisions",
    ] {
        assert!(
            entry["properties"][field].is_object(),
            "{field} missing from the schema"
        );
    }
}

#[test]
fn a_failed_apply_says_what_was_applied_and_a_second_apply_completes_it() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.write_file("app/a.py", "def main():\n    return 'a'\n");
    // Fails to load: the API refuses the function with its traceback.
    gust.write_file("app/b.py", "def main(:\n");
    gust.write_file("app/c.py", "def main():\n    return 'c'\n");
    gust.write_file(
        "app/gust.yaml",
        "app: abc\nfunctions:\n  a:\n    code: a.py\n    env: python\n  b:\n    code: b.py\n    env: python\n  c:\n    code: c.py\n    env: python\nroutes:\n  c:\n    function: c\n    url: /c\n",
    );
    let failed = apply(&gust, "app", &[]).failed();
    assert!(failed.contains("+ function b: create failed"), "{failed}");
    assert!(
        failed.contains("applied:\n  + function a: create"),
        "{failed}"
    );
    assert!(
        failed.contains(
            "not applied:\n  + function b: create\n  + function c: create\n  + route c: create"
        ),
        "{failed}"
    );
    assert_eq!(function_names(&gust), ["a"]);

    gust.write_file("app/b.py", "def main():\n    return 'b'\n");
    let completed = apply(&gust, "app", &[]).ok().stdout;
    assert!(completed.contains("= function a: unchanged"), "{completed}");
    assert!(
        completed.contains("+ function b: create: done"),
        "{completed}"
    );
    assert_eq!(body(&gust, "/c"), "c");
    assert_eq!(function_names(&gust), ["a", "b", "c"]);
}

#[test]
fn bad_files_are_refused_with_their_location_and_nothing_is_applied() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.write_file("taken/f.py", "def main():\n    return 'taken'\n");
    gust.write_file(
        "taken/gust.yaml",
        "app: first\nfunctions:\n  f:\n    code: f.py\n    env: python\nroutes:\n  f:\n    function: f\n    url: /taken\n",
    );
    apply(&gust, "taken", &[]).ok();
    gust.write_file("bad/g.py", "def main():\n    return 'g'\n");
    let file = gust.scratch().join("bad/gust.yaml");
    let cases: &[(&str, &str)] = &[
        (
            "app: second\nfunctions:\n  g:\n    code: g.py\n    env: python\n    memroy: 64\n",
            "gust.yaml:6:5: functions.g: unknown field `memroy`",
        ),
        (
            "app: second\nfunctions:\n  g:\n    code: g.py\n    env: python\n    memory: lots\n",
            "gust.yaml:6:13: functions.g.memory: invalid type: string \"lots\", expected u32",
        ),
        (
            "app: second\nfunctions:\n  g:\n    code: g.py\n    env: python\n  g:\n    code: g.py\n    env: python\n",
            "duplicate entry with key \"g\"",
        ),
        (
            "app: second\nfunctions:\n  g:\n    code: ../taken/f.py\n    env: python\n",
            "gust.yaml:4:5: code \"../taken/f.py\" is outside the file's directory",
        ),
        (
            "app: second\nfunctions:\n  g:\n    code: .\n    env: python\n",
            "points outside the code",
        ),
        (
            "app: second\nfunctions:\n  g:\n    code: g.py\n    env: python\n    timeout: 20m\n",
            "gust.yaml:6:5: invalid timeout",
        ),
        (
            "app: second\nfunctions:\n  g:\n    code: g.py\n    env: python\nroutes:\n  g:\n    function: g\n    url: /taken\n",
            "gust.yaml:9:5: route g (/taken) conflicts with route f (/taken, app first)",
        ),
        (
            "app: second\nfunctions:\n  f:\n    code: g.py\n    env: python\n",
            "gust.yaml:3:3: function f belongs to app first",
        ),
        (
            "app: second\nfunctions:\n  g:\n    code: g.py\n    env: ${NOT_SET_ANYWHERE}\n",
            "gust.yaml:5:10: ${NOT_SET_ANYWHERE} is not set",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(&file, yaml).unwrap();
        // A symlink out of the code directory, for the case that deploys the directory.
        let link = gust.scratch().join("bad/escape");
        let _ = std::fs::remove_file(&link);
        if yaml.contains("code: .\n") {
            std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        }
        let said = apply(&gust, "bad", &[]).failed();
        assert!(said.contains(expected), "expected {expected:?} in:\n{said}");
        assert_eq!(function_names(&gust), ["f"], "{yaml}");
    }
    // A link in a code directory must stay in that directory (the server refuses others).
    std::fs::create_dir_all(gust.scratch().join("bad/sub")).unwrap();
    let _ = std::fs::remove_file(gust.scratch().join("bad/escape"));
    std::os::unix::fs::symlink("../g.py", gust.scratch().join("bad/sub/up")).unwrap();
    std::fs::write(
        &file,
        "app: second\nfunctions:\n  g:\n    code: sub\n    env: python\n",
    )
    .unwrap();
    let up = apply(&gust, "bad", &[]).failed();
    assert!(
        up.contains("gust.yaml:4:5: symlink") && up.contains("points outside the code"),
        "{up}"
    );
    std::fs::remove_dir_all(gust.scratch().join("bad/sub")).unwrap();

    // A variable's value is text inside a value, never YAML that adds keys.
    std::fs::write(
        &file,
        "app: second\nfunctions:\n  g:\n    code: g.py\n    env: python\n    env_vars:\n      TAG: ${TAG}\n",
    )
    .unwrap();
    let injected = gust
        .cli_with_env(
            &["apply", "-f", file.to_str().unwrap()],
            &[("TAG", "x\n      build: touch /tmp/injected")],
        )
        .failed();
    assert!(injected.contains("gust.yaml:"), "{injected}");
    let cut = gust
        .cli_with_env(
            &["apply", "-f", file.to_str().unwrap()],
            &[("TAG", "pa #ss")],
        )
        .failed();
    assert!(
        cut.contains("gust.yaml:7:7: a ${VAR} here changed the file's structure"),
        "{cut}"
    );
    // A route to a function that exists nowhere; a function made by hand is not taken over
    // unless asked.
    std::fs::write(
        &file,
        "app: second\nfunctions:\n  g:\n    code: g.py\n    env: python\nroutes:\n  g:\n    function: nowhere\n    url: /g\n",
    )
    .unwrap();
    let nowhere = apply(&gust, "bad", &[]).failed();
    assert!(
        nowhere.contains(
            "gust.yaml:8:5: function \"nowhere\" is neither in this file nor on the server"
        ),
        "{nowhere}"
    );
    gust.deploy(
        "byhand",
        "python",
        "b.py",
        "def main():\n    return 'b'\n",
        &[],
    );
    std::fs::write(
        &file,
        "app: second\nfunctions:\n  byhand:\n    code: g.py\n    env: python\n",
    )
    .unwrap();
    let adopt = apply(&gust, "bad", &[]).failed();
    assert!(
        adopt.contains("function byhand exists and belongs to no app"),
        "{adopt}"
    );
    assert_eq!(body(&gust, "/byhand"), "b");
    let adopted = apply(&gust, "bad", &["--adopt"]).ok().stdout;
    assert!(
        adopted.contains("~ function byhand: update code, app"),
        "{adopted}"
    );
    assert_eq!(body(&gust, "/byhand"), "g");

    // The same file checked offline says the same, without a server.
    std::fs::write(&file, cases[0].0).unwrap();
    let offline = gust
        .cli_with_env(
            &["validate", "-f", file.to_str().unwrap()],
            &[("GUST_URL", "http://127.0.0.1:9")],
        )
        .failed();
    assert!(offline.contains(cases[0].1), "{offline}");
}

#[test]
fn dev_applies_each_save_streams_logs_and_keeps_the_last_good_revision() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let gust = Gust::start(GUST, GustOptions::default());
    let dir = gust.scratch().join("loop");
    gust.cli(&["new", "python-http", dir.to_str().unwrap()])
        .ok();
    let mut dev = gust
        .cli_command(&["dev", "-f", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both streams, line by line, into one list the test reads.
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stdout = dev.stdout.take().unwrap();
    let stderr = dev.stderr.take().unwrap();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let said = said.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                said.lock().unwrap().push(line);
            }
        });
    }
    let wait_for = |what: &dyn Fn() -> bool, why: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !what() {
            assert!(
                Instant::now() < deadline,
                "{why}; gust dev said:\n{}",
                said.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let answers = |expected: &str| gust.get("/loop").text().unwrap() == expected;
    let has = |needle: &str| said.lock().unwrap().iter().any(|l| l.contains(needle));
    wait_for(&|| has("watching"), "never started watching");
    assert!(answers("hello, world\n"));
    assert!(has("live in"), "{:?}", said.lock().unwrap());

    // A save goes live, and what the function prints shows under its name.
    std::fs::write(
        dir.join("main.py"),
        "def main(req):\n    print('saw a request')\n    return 'saved'\n",
    )
    .unwrap();
    wait_for(&|| answers("saved"), "the saved code never went live");
    wait_for(&|| has("loop | saw a request"), "the log line never showed");
    assert!(
        has("live in") && has("http://127.0.0.1:"),
        "{:?}",
        said.lock().unwrap()
    );

    // Code that does not load is shown; the last good revision keeps serving.
    std::fs::write(dir.join("main.py"), "def main(:\n").unwrap();
    wait_for(&|| has("SyntaxError"), "the load error was not shown");
    assert!(answers("saved"));
    // A file that does not validate, likewise.
    std::fs::write(
        dir.join("gust.yaml"),
        "app: loop\nfunctions:\n  loop:\n    code: main.py\n    env: python\n    memory: lots\n",
    )
    .unwrap();
    wait_for(
        &|| has("gust.yaml:6:13"),
        "the validation error was not shown",
    );
    assert!(answers("saved"));

    // Ctrl-C stops watching and leaves everything deployed.
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(dev.id() as i32, libc::SIGINT) };
    let status = dev.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(answers("saved"));
}

#[test]
fn fission_spec_directories_apply_as_they_are() {
    let gust = Gust::start(GUST, GustOptions::default());
    let specs = |app: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fission-specs")
            .join(app)
            .join("specs")
    };
    let python = specs("python-app");
    let said = gust.cli(&["apply", "-f", python.to_str().unwrap()]).ok();
    assert!(
        said.stdout.contains("applied 4 changes of app pyshop"),
        "{}",
        said.stdout
    );
    // A field Gust has no use for is named, not silently dropped.
    assert!(
        said.stderr.contains("function-report.yaml:38:7: Function report: spec.InvokeStrategy.ExecutionStrategy.TargetCPUPercent is ignored"),
        "{}",
        said.stderr
    );
    assert_eq!(body(&gust, "/hello"), "hello from a fission spec\n");
    let report: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "report", "-o", "json"]).ok().stdout)
            .unwrap();
    assert_eq!(report["timeout"], "30s");
    assert_eq!(report["app"], "pyshop");
    assert_eq!(
        (
            &report["scaling"]["min_instances"],
            &report["scaling"]["max_instances"]
        ),
        (&Value::from(1), &Value::from(2))
    );
    let hello: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "hello", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(hello["memory_mb"], 256);
    // The TimeTrigger (`@every 1s`) runs the report.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !gust
        .cli(&["fn", "logs", "report"])
        .ok()
        .stdout
        .contains("report ran at")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the time trigger never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let again = gust
        .cli(&["apply", "-f", python.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(again.contains("no changes"), "{again}");

    let node = specs("node-app");
    gust.cli(&["apply", "-f", node.to_str().unwrap()]).ok();
    assert_eq!(body(&gust, "/items/42"), "item 42 from node\n");
    let items: Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "items", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(
        (&items["timeout"], &items["scaling"]["concurrency"]),
        (&Value::from("10s"), &Value::from(4))
    );
    // Its TimeTrigger (six fields, seconds first) runs the ticker.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !gust
        .cli(&["fn", "logs", "ticker"])
        .ok()
        .stdout
        .contains("node tick")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the node time trigger never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let again = gust
        .cli(&["apply", "-f", node.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(again.contains("no changes"), "{again}");

    // What would change behaviour if ignored is refused, with its place; nothing is applied.
    let bad = gust.scratch().join("bad-fission");
    std::fs::create_dir_all(bad.join("specs")).unwrap();
    std::fs::write(bad.join("f.py"), "def main():\n    return 'x'\n").unwrap();
    std::fs::write(
        bad.join("specs/function-f.yaml"),
        "include:\n- f.py\nkind: ArchiveUploadSpec\nname: f-py\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: f-pkg\nspec:\n  deployment:\n    type: url\n    url: archive://f-py\n  environment:\n    name: python\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: f\nspec:\n  environment:\n    name: python\n  package:\n    packageref:\n      name: f-pkg\n  secrets:\n  - name: db\n    namespace: elsewhere\n---\napiVersion: fission.io/v1\nkind: KubernetesWatchTrigger\nmetadata:\n  name: watch\nspec:\n  namespace: default\n",
    )
    .unwrap();
    std::fs::write(
        bad.join("specs/env-python.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: python\nspec:\n  runtime:\n    image: fission/python-env\n  version: 2\n",
    )
    .unwrap();
    let refused = gust
        .cli(&["apply", "-f", bad.join("specs").to_str().unwrap()])
        .failed();
    assert!(
        refused.contains("function-f.yaml:27:3: Function f: secret \"db\" of namespace \"elsewhere\": Gust mounts only the function's own namespace's"),
        "{refused}"
    );
    assert!(
        refused.contains("function-f.yaml:32:1: KubernetesWatchTrigger watch: kind \"KubernetesWatchTrigger\" is not supported"),
        "{refused}"
    );
    assert_eq!(
        function_names(&gust),
        ["hello", "items", "report", "ticker"]
    );

    // An archive's name is one plain name, and its files come from inside the project.
    let escape = gust.scratch().join("escape");
    std::fs::create_dir_all(escape.join("project/specs")).unwrap();
    std::fs::write(escape.join("secret.txt"), "not yours\n").unwrap();
    std::fs::write(escape.join("project/f.py"), "def main():\n    return 'x'\n").unwrap();
    let spec = |name: &str, rootdir: &str, include: &str| {
        format!(
            "kind: ArchiveUploadSpec\nname: {name}\nrootdir: {rootdir}\ninclude:\n- {include}\n---\napiVersion: fission.io/v1\nkind: Package\nmetadata:\n  name: p\nspec:\n  deployment:\n    url: archive://{name}\n  environment:\n    name: python\n---\napiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: leak\nspec:\n  environment:\n    name: python\n  package:\n    packageref:\n      name: p\n"
        )
    };
    for (name, rootdir, include, expected) in [
        (
            "../../written-here",
            "\"\"",
            "f.py",
            "archive name \"../../written-here\" must be",
        ),
        (
            "a",
            "..",
            "secret.txt",
            "specs/all.yaml:3:1: ArchiveUploadSpec a: rootdir",
        ),
    ] {
        std::fs::write(
            escape.join("project/specs/all.yaml"),
            spec(name, rootdir, include),
        )
        .unwrap();
        let refused = gust
            .cli(&[
                "validate",
                "-f",
                escape.join("project/specs").to_str().unwrap(),
            ])
            .failed();
        assert!(refused.contains(expected), "{refused}");
    }
    assert!(!gust.scratch().join("written-here").exists());
    assert!(!function_names(&gust).contains(&"leak".to_owned()));
}
