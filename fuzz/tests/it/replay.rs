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
    // Each reproducer is a row of regressions/README.md (target, `file`, what failed, fix):
    // every row's file is there and ran, and no file runs that is not a row.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("regressions/README.md");
    let listed: Vec<(String, String)> = readme
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let file = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((cells[1].to_owned(), file.to_owned()))
        })
        .collect();
    for (target, file) in &listed {
        assert!(
            root.join(target).join(file).is_file(),
            "regressions/README.md lists {target}/{file}, which is missing"
        );
    }
    assert_eq!(ran, listed.len(), "the reproducers that ran are those regressions/README.md lists: {listed:?}");
}

/// The libFuzzer entry points (built only on nightly, outside the test suite) stay one line
/// each over the same checks, and `scripts/fuzz.sh` knows every target.
#[test]
fn every_target_has_its_libfuzzer_entry_point_and_a_place_in_the_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let script = std::fs::read_to_string(root.join("../scripts/fuzz.sh")).expect("scripts/fuzz.sh");
    let listed = script.lines().find(|l| l.starts_with("TARGETS=(")).expect("the script's TARGETS");
    for (target, _) in gallop_fuzz::TARGETS {
        let entry = std::fs::read_to_string(root.join(format!("fuzz_targets/{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{target}.rs: {e}"));
        let call = format!("fuzz_target!(|data: &[u8]| gallop_fuzz::{target}::check(data));");
        assert!(entry.contains(&call), "fuzz_targets/{target}.rs does not call its check:\n{entry}");
        assert!(
            manifest.contains(&format!("name = \"{target}\"\npath = \"fuzz_targets/{target}.rs\"")),
            "no [[bin]] {target}"
        );
        assert!(listed.split([' ', '(', ')']).any(|t| t == target), "scripts/fuzz.sh does not list {target}: {listed}");
    }
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in gallop_fuzz::TARGETS {
        assert!(!inputs("corpus", target).is_empty(), "fuzz/corpus/{target} is empty or missing");
    }
}
