//! Records the commit the binary is built from, for `gust version` and `GET /v1/version`.

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .is_some_and(|out| !out.stdout.is_empty());
    let commit = if dirty && commit != "unknown" {
        format!("{commit}-modified")
    } else {
        commit
    };
    println!("cargo:rustc-env=GUST_COMMIT={commit}");
    // Built again when HEAD moves: to another branch, or to a new commit on this one (its ref
    // is a file of its own, or a line of packed-refs), or when the index changes (what the
    // `-modified` mark reads; edits not yet added do not rebuild). Only files
    // that exist are named: cargo would take a missing one as changed on every build.
    let mut watched = vec![
        ".git/HEAD".to_owned(),
        ".git/index".to_owned(),
        ".git/packed-refs".to_owned(),
    ];
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        watched.push(format!(".git/{reference}"));
    }
    for path in watched.iter().filter(|path| Path::new(path).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    // Without a .git directory (a source archive) nothing is watched but this script.
    println!("cargo:rerun-if-changed=build.rs");
}
