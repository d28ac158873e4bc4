//! Fuzzing on stable Rust, for a bounded time: `cargo bench --bench fuzz -- [--seconds N]
//! [--target NAME]`. Each target (see `fuzz/targets.rs`) first replays its committed corpus
//! (`fuzz/corpus/<target>/`), then runs random inputs, half of them fresh and half the corpus's
//! inputs with bytes flipped, for its share of the time. A failing input is written to
//! `fuzz/corpus/<target>/finding-<hash>` (to be kept as a regression once fixed) and the run
//! ends with a non-zero status. Prints a table: target, executions, seconds, findings.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, RngExt, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds: u64 = value("--seconds").map_or(60, |s| s.parse().expect("--seconds N"));
    let only = value("--target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let dir = tempfile::tempdir().expect("a scratch directory");
    let scratch = targets::Scratch {
        dir: dir.path().to_owned(),
        gust: PathBuf::from(env!("CARGO_BIN_EXE_gust")),
    };
    let chosen: Vec<_> = targets::TARGETS
        .iter()
        .filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name))
        .collect();
    let share = Duration::from_secs(seconds) / chosen.len().max(1) as u32;
    let seed: u64 = value("--seed").map_or_else(|| rand::rng().random(), |s| s.parse().unwrap());
    println!("seed {seed}, {share:?} per target");
    println!("| target | executions | seconds | per second | findings |");
    println!("|---|---|---|---|---|");
    let mut findings = 0;
    for (name, target) in chosen {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let corpus = targets::corpus(&root, name);
        let started = Instant::now();
        let mut executions = 0u64;
        let mut found = 0;
        let failed = |bytes: &[u8], why: String| {
            use sha2::Digest;
            let hash = hex::encode(&sha2::Sha256::digest(bytes)[..8]);
            let path = root.join(name).join(format!("finding-{hash}"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            eprintln!("{name}: {why}\n  input kept in {}", path.display());
        };
        for (_, bytes) in &corpus {
            executions += 1;
            if let Err(why) = targets::run(*target, bytes, &scratch) {
                found += 1;
                failed(bytes, why);
            }
        }
        while started.elapsed() < share && found == 0 {
            let bytes = match (rng.random_bool(0.5), corpus.is_empty()) {
                (true, false) => {
                    let mut bytes = corpus[rng.random_range(0..corpus.len())].1.clone();
                    for _ in 0..rng.random_range(1..8) {
                        if bytes.is_empty() {
                            break;
                        }
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] ^= 1 << rng.random_range(0..8);
                    }
                    bytes
                }
                _ => {
                    let mut bytes = vec![0u8; rng.random_range(0..2048)];
                    rng.fill_bytes(&mut bytes);
                    bytes
                }
            };
            executions += 1;
            if let Err(why) = targets::run(*target, &bytes, &scratch) {
                found += 1;
                failed(&bytes, why);
            }
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "| {name} | {executions} | {took:.1} | {:.0} | {found} |",
            executions as f64 / took
        );
        findings += found;
    }
    if findings > 0 {
        std::process::exit(1);
    }
}
