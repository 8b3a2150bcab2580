//! Replays each target's corpus and reproducers; a panic names the target and the file.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

/// The inputs of `target` under `fuzz/<folder>/`, sorted (none when the folder is missing).
fn inputs(folder: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs every input of `folder` through its target; returns how many ran, and the failures.
fn replay(folder: &str) -> (usize, Vec<String>) {
    let (mut ran, mut failed) = (0, Vec::new());
    for (target, check) in gallop_fuzz::TARGETS {
        for path in inputs(folder, target) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failed.push(format!("{target}: {}: {message}", path.display()));
            }
            ran += 1;
        }
    }
    (ran, failed)
}

#[test]
fn every_corpus_input_passes_its_check() {
    let (ran, failed) = replay("corpus");
    assert!(failed.is_empty(), "{} of {ran} corpus inputs failed:\n{}", failed.len(), failed.join("\n"));
    // The committed corpora hold well over a thousand inputs: a run that found none read
    // the wrong folder.
    assert!(ran > 1_000, "only {ran} corpus inputs found");
}

#[test]
fn every_reproducer_of_a_fixed_finding_passes_its_check() {
    let (ran, failed) = replay("regressions");
    assert!(failed.is_empty(), "{} of {ran} reproducers failed:\n{}", failed.len(), failed.join("\n"));
    let expected: usize = gallop_fuzz::TARGETS.iter().map(|(target, _)| inputs("regressions", target).len()).sum();
    assert_eq!(ran, expected);
    assert!(ran >= 5, "the five reproducers of regressions/README.md: found {ran}");
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in gallop_fuzz::TARGETS {
        assert!(!inputs("corpus", target).is_empty(), "fuzz/corpus/{target} is empty or missing");
    }
}
