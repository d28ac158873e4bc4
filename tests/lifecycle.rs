//! End-to-end: what functions leave behind. Create, invoke and delete functions in both
//! tiers and check that their metric series, code, compiled components (files, descriptors,
//! mappings) and worker directories go with them, and that a clean stop leaves no workers'
//! directory and no cgroup.

use std::path::PathBuf;
use std::time::Duration;

use gust_harness::{Gust, GustOptions, eventually};

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/components/probe.wasm");

fn worker_dirs(gust: &Gust) -> usize {
    std::fs::read_dir(gust.worker_run_dir().join("workers")).map_or(0, |d| d.count())
}

/// The memory cgroup Gust made for its dependency builds: `<instance>-builds` beside its
/// workers' `<instance>`, under Gust's own cgroup. `None` where Gust runs without cgroups (not
/// as root: its run directory is then not `/run/<instance>`; or a host that gives it none: no
/// workers' cgroup either).
fn builds_cgroup(gust: &Gust) -> Option<PathBuf> {
    let instance = gust.worker_run_dir().file_name()?.to_str()?.to_owned();
    if !instance.starts_with("gust-") {
        return None;
    }
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", gust.pid())).ok()?;
    let line = |wanted: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            wanted(controllers).then(|| path.to_owned())
        })
    };
    let dir = match line(&|c| c.split(',').any(|c| c == "memory")) {
        Some(path) => format!("/sys/fs/cgroup/memory{path}"),
        None => format!("/sys/fs/cgroup{}", line(&str::is_empty)?),
    };
    let dir = PathBuf::from(dir);
    dir.join(&instance)
        .is_dir()
        .then(|| dir.join(format!("{instance}-builds")))
}

#[test]
fn r53_deleted_functions_leave_no_series_or_worker_directories_and_a_clean_stop_no_run_dir() {
    let mut gust = Gust::start(GUST, GustOptions::default());
    // The pools (one python, one node worker) fill first.
    let pooled = eventually(Duration::from_secs(30), || {
        let n = worker_dirs(&gust);
        (n >= 2).then_some(n)
    })
    .expect("the pools fill");
    for round in 0..3 {
        let py = format!("churn-py-{round}");
        let wasm = format!("churn-wasm-{round}");
        gust.deploy(&py, "python", "f.py", "def main():\n    return 'ok'\n", &[]);
        gust.cli(&["fn", "create", &wasm, "--env", "wasm", "--code", PROBE])
            .ok();
        gust.cli(&[
            "route",
            "create",
            "--fn",
            &wasm,
            "--url",
            &format!("/{wasm}"),
        ])
        .ok();
        for path in [&py, &wasm] {
            for status in ["", "?status=404"] {
                let _ = gust.get(&format!("/{path}{status}"));
            }
        }
        let metrics = gust.metrics();
        assert!(metrics.contains(&format!("function=\"{py}\"")));
        assert!(metrics.contains(&format!("function=\"{wasm}\"")));
        gust.cli(&["fn", "delete", &py]).ok();
        gust.cli(&["fn", "delete", &wasm]).ok();
        let metrics = gust.metrics();
        for gone in [&py, &wasm] {
            assert!(
                !metrics.contains(&format!("function=\"{gone}\"")),
                "{gone} still has series:\n{metrics}"
            );
        }
    }
    // Their code and compiled components are deleted soon after (nothing else refers to them).
    let code_dir = gust.data_dir().join("code");
    let cache_dir = gust.data_dir().join("wasm-cache");
    let leftovers = || {
        let trees = std::fs::read_dir(&code_dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        });
        let compiled = std::fs::read_dir(&cache_dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
                .count()
        });
        (trees, compiled)
    };
    assert!(
        eventually(Duration::from_secs(10), || (leftovers() == (0, 0))
            .then_some(()))
        .is_some(),
        "code trees and compiled components left: {:?}",
        leftovers()
    );
    // Nor does Gust hold them open or mapped.
    let held = || {
        let pid = gust.pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let mut held: Vec<String> = maps
            .lines()
            .filter(|l| l.contains("wasm-cache") || l.contains("/code/"))
            .map(str::to_owned)
            .collect();
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if target.contains("wasm-cache") || target.contains("/code/") {
                    held.push(target);
                }
            }
        }
        held
    };
    assert!(
        eventually(Duration::from_secs(10), || held().is_empty().then_some(())).is_some(),
        "deleted functions' files still held: {:?}",
        held()
    );
    // The deleted functions' workers and their directories are gone; the pools remain.
    let left = eventually(Duration::from_secs(15), || {
        let n = worker_dirs(&gust);
        (n <= pooled).then_some(n)
    });
    assert!(
        left.is_some(),
        "{} worker directories, {pooled} pooled",
        worker_dirs(&gust)
    );
    let run_dir = gust.worker_run_dir();
    assert!(run_dir.exists());
    let builds = builds_cgroup(&gust);
    if let Some(builds) = &builds {
        assert!(builds.is_dir(), "{} while running", builds.display());
    }
    assert!(gust.stop(), "a clean stop:\n{}", gust.log());
    assert!(
        !run_dir.exists(),
        "{} is left after a clean stop",
        run_dir.display()
    );
    if let Some(builds) = builds {
        assert!(
            !builds.exists(),
            "{} is left after a clean stop",
            builds.display()
        );
    }
}

#[test]
fn a_function_keeps_its_newest_revisions_ten_by_default_and_only_their_code() {
    let gust = Gust::start(GUST, GustOptions::default());
    let source = |i: usize| format!("def main():\n    return 'v{i}'\n");
    gust.deploy("many", "python", "f.py", &source(1), &[]);
    for i in 2..=13 {
        let path = gust.write_file(&format!("many-{i}/f.py"), source(i));
        gust.cli(&["fn", "update", "many", "--code", path.to_str().unwrap()])
            .ok();
    }
    assert_eq!(gust.get("/many").text().unwrap(), "v13");
    let revisions: serde_json::Value = gust
        .api(
            gust_harness::reqwest::Method::GET,
            "/v1/functions/many/revisions",
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let numbers: Vec<u64> = revisions
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers.len(), 10, "{numbers:?}");
    assert!(numbers.iter().all(|n| (4..=13).contains(n)), "{numbers:?}");
    let err = gust.cli(&["fn", "rollback", "many", "--to", "2"]).failed();
    assert!(err.contains("not found"), "{err}");
    // Only the kept revisions' code stays.
    let trees = || {
        std::fs::read_dir(gust.data_dir().join("code")).map_or(0, |d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || (trees() == 10).then_some(())).is_some(),
        "{} code trees",
        trees()
    );
    gust.cli(&["fn", "rollback", "many", "--to", "5"]).ok();
    assert_eq!(gust.get("/many").text().unwrap(), "v5");
    // A smaller --keep-revisions prunes at the next revision: 13 (v13), 14 and 15 (both v5).
    gust.cli(&["fn", "update", "many", "--keep-revisions", "3"])
        .ok();
    let shown: serde_json::Value =
        serde_json::from_str(&gust.cli(&["fn", "get", "many", "-o", "json"]).ok().stdout).unwrap();
    assert_eq!(shown["keep_revisions"], 3, "{shown}");
    let revisions: serde_json::Value = serde_json::from_str(
        &gust
            .cli(&["fn", "revisions", "many", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let mut numbers: Vec<u64> = revisions
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, [13, 14, 15]);
    assert!(
        eventually(Duration::from_secs(10), || (trees() == 2).then_some(())).is_some(),
        "{} code trees",
        trees()
    );
    let err = gust
        .cli(&["fn", "update", "many", "--keep-revisions", "0"])
        .failed();
    assert!(err.contains("keep-revisions"), "{err}");
    assert_eq!(gust.get("/many").text().unwrap(), "v5");
}
