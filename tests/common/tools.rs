//! The test bed's pinned tools (hack/build-tools.sh) for the tests that run them outside a
//! cluster: `$ENV` when set, else the project's tool cache,
//! `$QUORATE_CACHE/tools/<component>-<version>/bin/<binary>` (`QUORATE_CACHE` defaults to
//! `~/.cache/quorate`; the version is read from `hack/versions.env`).

use std::path::PathBuf;

use super::manifests::repo_root;

/// The value of `KEY=value` in `hack/versions.env` (`#` comments).
pub fn pinned_version(key: &str) -> String {
    let path = repo_root().join("hack/versions.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, value)| {
            value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_owned()
        })
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| panic!("{} has no {key}=... line", path.display()))
}

fn non_empty_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A pinned tool: `env` overrides; else `component`'s cached build at the version `version_key`
/// names; `component` is also the hack/build-tools.sh argument that builds it.
pub fn tool(env: &str, component: &str, version_key: &str, binary: &str) -> PathBuf {
    if let Some(path) = non_empty_env(env) {
        return path;
    }
    let version = pinned_version(version_key);
    let cache = non_empty_env("QUORATE_CACHE").unwrap_or_else(|| {
        non_empty_env("HOME")
            .expect("neither QUORATE_CACHE nor HOME is set")
            .join(".cache/quorate")
    });
    let path = cache.join(format!("tools/{component}-{version}/bin/{binary}"));
    assert!(
        path.is_file(),
        "{binary} {version} not found at {}: run `hack/build-tools.sh {component}` (or `make tools`) \
         to build it, or set {env}",
        path.display()
    );
    path
}
