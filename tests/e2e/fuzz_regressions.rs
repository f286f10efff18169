//! The fuzz corpus and every crash reproducer, replayed under `cargo test`: each file
//! of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same
//! `avbus::fuzzing` function the fuzz target calls (`docs/fuzzing.md`). The fuzzer
//! itself does not run here; `scripts/fuzz` runs it.
//!
//! Both directories of every target must exist and hold files, so that a renamed
//! target or a lost corpus fails here instead of testing nothing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use avbus::fuzzing::TARGETS;

const KINDS: [&str; 2] = ["corpus", "regressions"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>`; panics if there are none.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target needs one)", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no inputs: nothing would be tested",
        dir.display()
    );
    files
}

/// Runs every input of `target` through its function; reports all that fail.
fn replay(target: &str) {
    let (_, run) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target} in avbus::fuzzing::TARGETS"));
    let mut failed = Vec::new();
    let mut count = 0;
    for kind in KINDS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).expect("a readable input");
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {count} inputs fail (the panic messages are above):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus_and_nothing_else_is_there() {
    for kind in KINDS {
        let dir = fuzz_dir().join(kind);
        let mut found: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        found.sort();
        let mut expected: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
        expected.sort();
        assert_eq!(found, expected, "the directories of {}", dir.display());
        for (name, _) in TARGETS {
            inputs(kind, name);
        }
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_replayed_here() {
            let here = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(here.contains(name), "add {name} to targets! in {}", file!());
            }
        }
    };
}

targets!(frame, datagram, config, pjlink, extron, qrc, visca, osc);
