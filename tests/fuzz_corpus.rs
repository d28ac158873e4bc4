//! Every committed fuzz input (`fuzz/corpus/<target>/`) through its target: what a fuzzing run
//! found, once fixed, stays fixed. The search itself is `cargo bench --bench fuzz`.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let dir = tempfile::tempdir().unwrap();
    let scratch = targets::Scratch {
        dir: dir.path().to_owned(),
        gust: PathBuf::from(env!("CARGO_BIN_EXE_gust")),
    };
    let mut inputs = 0;
    for (name, target) in targets::TARGETS {
        let corpus = targets::corpus(&root, name);
        assert!(!corpus.is_empty(), "no corpus for {name}");
        for (path, bytes) in corpus {
            inputs += 1;
            if let Err(why) = targets::run(target, &bytes, &scratch) {
                panic!("{}: {why}", path.display());
            }
        }
    }
    assert!(inputs >= 5 * 4, "{inputs} inputs");
}
