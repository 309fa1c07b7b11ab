//! The table of invalid ReplicaGroup manifests under `tests/invalid/`: one file per case, each
//! starting with `# expect: <message>` lines. A file with two YAML documents is an update: the
//! first document is the existing object, the second the change. The same table is checked
//! client-side (`tests/invalid_manifests.rs`) and against a real API server (cluster suite).

use std::path::{Path, PathBuf};

use serde_json::Value;

pub struct InvalidCase {
    pub name: String,
    /// Substrings the rejection must contain.
    pub expects: Vec<String>,
    /// The existing object, for update cases.
    pub old: Option<Value>,
    pub object: Value,
}

/// The checkout under test. Cargo sets `CARGO_MANIFEST_DIR` for the test run as well, and the
/// run's value is the right one: cargo reuses a test binary built in another checkout that
/// shares the target directory (its fingerprints are relative to the workspace), and the
/// compile-time value would then name that other checkout.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

pub fn invalid_cases() -> Vec<InvalidCase> {
    let dir = repo_root().join("tests/invalid");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_case(p)).collect()
}

fn load_case(path: &Path) -> InvalidCase {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let expects: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|s| s.trim().to_owned())
        .collect();
    assert!(
        !expects.is_empty(),
        "{} has no `# expect:` line",
        path.display()
    );
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    assert!(
        matches!(docs.len(), 1 | 2),
        "{} must hold one document, or two for an update",
        path.display()
    );
    let object = docs.pop().expect("one document");
    InvalidCase {
        name: path
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .into_owned(),
        expects,
        old: docs.pop(),
        object,
    }
}
