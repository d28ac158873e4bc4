//! Timers end to end: a six-field cron fires at its seconds, each tick once, also across a
//! kill -9 (R-30, single node); a deleted timer stops; bad schedules are refused.

use std::collections::HashSet;
use std::time::Duration;

use gust_harness::reqwest::Method;
use gust_harness::{Gust, GustOptions, eventually};
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const TICK_PY: &str =
    "def main(req):\n    print('tick from', req.headers.get('x-gust-timer'))\n    return 'ok'\n";

fn get_json(gust: &Gust, path: &str) -> Value {
    let response = gust.api(Method::GET, path).send().unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().unwrap()
}

/// Every timer invocation of `function` so far (through its usage records), by id.
fn tick_invocations(gust: &Gust, function: &str) -> Vec<Value> {
    let records = get_json(
        gust,
        &format!("/v1/usage/records?function={function}&limit=10000"),
    );
    let ids: HashSet<String> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "timer")
        .map(|r| r["invocation_id"].as_str().unwrap().to_owned())
        .collect();
    ids.iter()
        .map(|id| get_json(gust, &format!("/v1/invocations/{id}")))
        .collect()
}

#[test]
fn a_six_field_cron_fires_each_tick_once_across_a_kill_and_stops_when_deleted() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("job", "python", "job.py", TICK_PY, &[]);
    let created = gust
        .cli(&[
            "timer",
            "create",
            "every2s",
            "--fn",
            "job",
            "--cron",
            "*/2 * * * * *",
        ])
        .ok();
    assert_eq!(created.stdout.trim(), "every2s");
    let listed: Vec<Value> =
        serde_json::from_str(&gust.cli(&["timer", "list", "-o", "json"]).ok().stdout).unwrap();
    let next = listed[0]["next_fire_ms"].as_u64().unwrap();
    assert_eq!(
        next % 2000,
        0,
        "the next tick is on an even second: {listed:?}"
    );

    eventually(Duration::from_secs(20), || {
        (tick_invocations(&gust, "job").len() >= 3).then_some(())
    })
    .expect("three ticks");
    gust.restart(); // kill -9, then start again
    std::thread::sleep(Duration::from_secs(5));
    let ticks = tick_invocations(&gust, "job");
    assert!(ticks.len() >= 4, "ticks after the restart: {}", ticks.len());
    let mut seen = HashSet::new();
    for invocation in &ticks {
        let tick = invocation["source"]["tick_ms"].as_u64().unwrap();
        assert_eq!(invocation["source"]["timer"], "every2s");
        assert_eq!(tick % 2000, 0, "fires at the cron's seconds: {invocation}");
        assert!(seen.insert(tick), "tick {tick} fired twice");
        let started = invocation["accepted_at_ms"].as_u64().unwrap();
        assert!(
            started >= tick && started - tick < 1000,
            "enqueued on time: {invocation}"
        );
    }
    let logs = gust.cli(&["fn", "logs", "job"]).ok().stdout;
    assert!(logs.contains("tick from every2s"), "{logs}");

    gust.cli(&["timer", "delete", "every2s"]).ok();
    std::thread::sleep(Duration::from_millis(500));
    let before = tick_invocations(&gust, "job").len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        tick_invocations(&gust, "job").len(),
        before,
        "a deleted timer stops"
    );
    assert!(
        gust.cli(&["timer", "get", "every2s"])
            .failed()
            .contains("not found")
    );
}

#[test]
fn bad_schedules_zones_and_functions_are_refused_and_nothing_is_stored() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("job", "python", "job.py", TICK_PY, &[]);
    for (cron, tz, function, expected) in [
        ("61 * * * *", None, "job", "invalid schedule \"61 * * * *\""),
        ("* * * *", None, "job", "expected 5 fields"),
        ("@every 0s", None, "job", "invalid schedule"),
        ("@sometimes", None, "job", "invalid schedule"),
        (
            "* * * * *",
            Some("Mars/Olympus"),
            "job",
            "unknown time zone \"Mars/Olympus\"",
        ),
        ("* * * * *", None, "nope", "function \"nope\" not found"),
    ] {
        let mut args = vec!["timer", "create", "--fn", function, "--cron", cron];
        if let Some(tz) = tz {
            args.extend(["--tz", tz]);
        }
        let err = gust.cli(&args).failed();
        assert!(err.contains(expected), "{cron} {tz:?} {function}: {err}");
    }
    let listed: Vec<Value> =
        serde_json::from_str(&gust.cli(&["timer", "list", "-o", "json"]).ok().stdout).unwrap();
    assert!(listed.is_empty(), "{listed:?}");

    // A valid one in a zone shows its next tick; a generated name is printed.
    let name = gust
        .cli(&[
            "timer",
            "create",
            "--fn",
            "job",
            "--cron",
            "0 9 * * 1-5",
            "--tz",
            "Europe/Paris",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert!(name.starts_with("job-"), "{name}");
    let shown: Value =
        serde_json::from_str(&gust.cli(&["timer", "get", &name, "-o", "json"]).ok().stdout)
            .unwrap();
    assert_eq!(shown["schedule"]["tz"], "Europe/Paris");
    assert!(shown["next_fire_ms"].as_u64().is_some());
    let table = gust.cli(&["timer", "list"]).ok().stdout;
    assert!(
        table.contains("Europe/Paris") && table.contains(&name),
        "{table}"
    );
}

/// A timer's status as `gust timer get` reports it.
fn timer_status(gust: &Gust, name: &str) -> Value {
    let view: Value =
        serde_json::from_str(&gust.cli(&["timer", "get", name, "-o", "json"]).ok().stdout).unwrap();
    view["status"].clone()
}

#[test]
fn a_timers_counts_and_last_error_are_kept_across_a_kill_and_the_namespace_counts_its_ends() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    gust.deploy("job", "python", "job.py", TICK_PY, &[]);
    let failing = "def main(req):\n    raise RuntimeError('the nightly report failed')\n";
    gust.deploy(
        "broken",
        "python",
        "broken.py",
        failing,
        &["--max-attempts", "1"],
    );
    for (name, function) in [("good", "job"), ("bad", "broken")] {
        gust.cli(&[
            "timer",
            "create",
            name,
            "--fn",
            function,
            "--cron",
            "* * * * * *",
        ])
        .ok();
    }
    let (good, bad) = eventually(Duration::from_secs(20), || {
        let (good, bad) = (timer_status(&gust, "good"), timer_status(&gust, "bad"));
        (good["succeeded"].as_u64()? >= 2 && bad["failed"].as_u64()? >= 2).then_some((good, bad))
    })
    .expect("both timers' ticks ended twice");
    assert_eq!(good["failed"], 0, "{good}");
    assert!(good.get("last_error").is_none(), "{good}");
    assert_eq!(bad["succeeded"], 0, "{bad}");
    let error = bad["last_error"].as_str().unwrap();
    assert!(
        error.contains("\"broken\" raised an error"),
        "the last error says what went wrong: {bad}"
    );
    for status in [&good, &bad] {
        let fired = status["fired"].as_u64().unwrap();
        let ended = status["succeeded"].as_u64().unwrap() + status["failed"].as_u64().unwrap();
        assert!(fired >= ended, "no tick ends that was not fired: {status}");
        assert_eq!(
            status["last_fired_ms"].as_u64().unwrap() % 1000,
            0,
            "{status}"
        );
    }
    let listed = gust.cli(&["timer", "list"]).ok().stdout;
    assert!(
        listed.contains("LAST ERROR") && listed.contains("raised an error"),
        "{listed}"
    );
    let counts: Value = serde_json::from_str(
        &gust
            .cli(&["invocation", "counts", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(counts["succeeded"].as_u64().unwrap() >= 2, "{counts}");
    assert!(counts["failed"].as_u64().unwrap() >= 2, "{counts}");
    assert!(counts["dead_letters"].as_u64().unwrap() >= 2, "{counts}");

    gust.cli(&["timer", "delete", "good"]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    let bad_before = timer_status(&gust, "bad");
    gust.restart(); // kill -9, then start again
    let bad_after = timer_status(&gust, "bad");
    for field in ["fired", "failed"] {
        assert!(
            bad_after[field].as_u64() >= bad_before[field].as_u64(),
            "{field} survives a kill: {bad_before} then {bad_after}"
        );
    }
    assert_eq!(bad_after["last_error"], bad_before["last_error"]);
    // A timer made again under a deleted one's name starts from nothing.
    gust.cli(&[
        "timer",
        "create",
        "good",
        "--fn",
        "job",
        "--cron",
        "0 0 1 1 *",
    ])
    .ok();
    let fresh = timer_status(&gust, "good");
    assert_eq!(
        (fresh["fired"].as_u64(), fresh["succeeded"].as_u64()),
        (Some(0), Some(0)),
        "{fresh}"
    );
}
