//! Replays every committed corpus input (`fuzz/corpus/<target>/*`) through its target on
//! stable: what the fuzzers found interesting stays covered in every gate run, and a fixed
//! finding (its input kept in the corpus) stays fixed.

use std::path::Path;

#[test]
fn every_corpus_input_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in mrr_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target keeps a corpus)", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: empty corpus");
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            // A panic names the input: replay it with `cargo +nightly fuzz run <target> <file>`.
            eprintln!("{name}: {}", input.display());
            target(&bytes);
        }
    }
}

#[test]
fn the_seeds_run_through_their_targets() {
    for (name, file, bytes) in mrr_fuzz::seeds() {
        let target = mrr_fuzz::TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| t).expect("a target");
        eprintln!("{name}: seed {file}");
        target(&bytes);
    }
}

/// `MRR_FUZZ_SEEDS=$PWD/fuzz/corpus cargo test -p mrr-fuzz -- --ignored write_seeds` writes the
/// seeds into the corpus.
#[test]
#[ignore = "writes files; run by hand to refresh the corpus seeds"]
fn write_seeds() {
    let root =
        std::path::PathBuf::from(std::env::var("MRR_FUZZ_SEEDS").expect("MRR_FUZZ_SEEDS names the corpus directory"));
    for (name, file, bytes) in mrr_fuzz::seeds() {
        std::fs::create_dir_all(root.join(name)).expect("create");
        std::fs::write(root.join(name).join(file), bytes).expect("write");
    }
}
