//! Replays the in-tree fuzz corpus through the fuzz harnesses on the stable
//! toolchain, so the seeds and every input that once crashed a target run in
//! CI without nightly, libFuzzer or cargo-fuzz (`scripts/fuzz` runs the
//! fuzzers themselves).
//!
//! Layout: `tests/fuzz/corpus/<target>/<file>`, one directory per entry of
//! [`pacs_mirror_agent::fuzzing::TARGETS`]. A missing or empty directory, or
//! a directory no target reads, fails the test: a corpus that silently
//! stopped being replayed would look like a pass.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use pacs_mirror_agent::fuzzing::TARGETS;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus")
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading the corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_passes_its_harness() {
    let root = corpus_root();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, harness) in TARGETS {
        let files = files_of(&root.join(target));
        assert!(
            !files.is_empty(),
            "corpus directory {}/{target} is empty",
            root.display()
        );
        for file in files {
            let data = std::fs::read(&file).expect("reading a corpus file");
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| harness(&data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", file.display()));
            }
            replayed += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} corpus inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_corpus_directory_has_a_target() {
    let dirs: BTreeSet<String> = std::fs::read_dir(corpus_root())
        .expect("the corpus root tests/fuzz/corpus")
        .map(|e| e.expect("reading the corpus root"))
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let targets: BTreeSet<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(dirs, targets, "corpus directories and fuzz targets differ");
    let bins: BTreeSet<String> = std::fs::read_dir(corpus_root().join("../fuzz_targets"))
        .expect("tests/fuzz/fuzz_targets")
        .map(|e| e.expect("reading fuzz_targets").path())
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .collect();
    assert_eq!(bins, targets, "cargo-fuzz targets and harnesses differ");
}
