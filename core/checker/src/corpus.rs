//! The committed fuzz inputs (`fuzz/corpus`, and the crashes the fuzzer found in
//! `fuzz/regressions`), read for the tests that replay them. Test data, like a proptest
//! seed; the checker itself reads no files.

use std::path::{Path, PathBuf};

/// The inputs of one target under `fuzz/<kind>/<target>` (kind: corpus or regressions),
/// with their paths, in name order; none when the directory does not exist.
#[allow(
    clippy::disallowed_methods,
    reason = "test data for the tests, not file access by the checker or the core"
)]
pub fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (file, data)
        })
        .collect()
}
