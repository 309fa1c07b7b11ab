//! Foundation checks: generated files match the code, examples are valid, and the dependency
//! tree holds one version of the Kubernetes type crates and one TLS crypto provider.

mod common;

use common::manifests::repo_root;
use quorate::api::validation::validate_manifest;
use serde_json::Value;

const CRD_FILE: &str = "replicagroups.quorate.dev.yaml";

#[test]
fn committed_crds_match_the_code() {
    let generated = quorate::api::crd_yaml().expect("CRD serializes");
    for dir in ["crds", "charts/quorate/files/crds"] {
        let path = repo_root().join(dir).join(CRD_FILE);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            committed == generated,
            "{} differs from the code: run `make crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn examples_are_valid_replica_groups() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example readable");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs.iter().filter(|d| d["kind"] == "ReplicaGroup") {
            let errors = validate_manifest(doc, None);
            assert!(
                errors.is_empty(),
                "{} is invalid: {errors:?}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the primary-backup and active-active examples, checked {checked}"
    );
}

/// Versions of a package in Cargo.lock (the whole resolve, dev-dependencies included).
fn locked_versions(package: &str) -> Vec<String> {
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).expect("Cargo.lock");
    let mut versions = Vec::new();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"")
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            versions.push(v.trim_end_matches('"').to_owned());
        }
    }
    versions
}

#[test]
fn one_version_of_the_kubernetes_type_crates() {
    // Two versions would mean two incompatible sets of Kubernetes types (the gateway-api crate
    // on kube 4 is the known way to get there).
    for package in ["kube-core", "k8s-openapi", "kube-client"] {
        let versions = locked_versions(package);
        assert_eq!(
            versions.len(),
            1,
            "{package} must appear once in Cargo.lock, found {versions:?}"
        );
    }
}

#[test]
fn one_tls_crypto_provider() {
    assert_eq!(
        locked_versions("ring").len(),
        1,
        "ring is the project's crypto provider"
    );
    assert!(
        locked_versions("aws-lc-rs").is_empty(),
        "aws-lc-rs must not be in the tree: rustls would see two providers"
    );
}
