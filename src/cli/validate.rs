//! `kubectl quorate validate`: offline checks of ReplicaGroup manifests with the CRD's schema and
//! CEL rules ([`crate::api::validation::validate_manifest`]), one report per input file.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::api::validation::validate_manifest;

/// The API group and version this build knows.
const GROUP: &str = "quorate.dev";
const VERSION: &str = "v1alpha1";
const KIND: &str = "ReplicaGroup";

/// Where a problem is: the document (numbered from 1 in its file), the item of a `List`
/// document, and the group's name when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub document: usize,
    pub item: Option<usize>,
    pub name: Option<String>,
}

/// One problem found in an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file, or `<stdin>`.
    pub source: String,
    /// None for problems with the whole input (unreadable, not YAML).
    pub location: Option<Location>,
    /// `field: message`, or a message.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        if let Some(loc) = &self.location {
            write!(f, "document {}", loc.document)?;
            if let Some(item) = loc.item {
                write!(f, ", item {item}")?;
            }
            write!(f, " ({}): ", loc.name.as_deref().unwrap_or("unnamed"))?;
        }
        // One problem per line, whatever the message holds.
        let message: String = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        f.write_str(&message)
    }
}

/// The outcome for one input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileReport {
    pub source: String,
    /// Names of the ReplicaGroups checked (`unnamed` when they have none), in order.
    pub groups: Vec<String>,
    pub problems: Vec<Problem>,
}

impl FileReport {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// The lines printed for this input: every problem, or one line saying what was valid.
    pub fn render(&self) -> String {
        if !self.problems.is_empty() {
            return self.problems.iter().map(|p| format!("{p}\n")).collect();
        }
        match self.groups.len() {
            0 => format!(
                "{}: no ReplicaGroup documents (nothing to check)\n",
                self.source
            ),
            1 => format!("{}: valid (ReplicaGroup {})\n", self.source, self.groups[0]),
            n => format!(
                "{}: valid ({n} ReplicaGroups: {})\n",
                self.source,
                self.groups.join(", ")
            ),
        }
    }
}

/// Checks manifests in order. A ReplicaGroup that was already seen (same namespace and name,
/// in this or an earlier input) is checked as an update of its previous version, as
/// `kubectl apply -f` would apply it, so that rules on changes (`spec.mode` is immutable) apply.
#[derive(Default)]
pub struct ManifestChecker {
    seen: HashMap<(Option<String>, String), Value>,
}

impl ManifestChecker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the documents of one input (YAML, one or more documents; JSON is YAML too).
    pub fn check_text(&mut self, source: &str, text: &str) -> FileReport {
        let mut report = FileReport {
            source: source.to_owned(),
            ..FileReport::default()
        };
        let documents: Vec<Value> = match serde_saphyr::from_multiple(text) {
            Ok(docs) => docs,
            Err(e) => {
                // The first line says where and what; the rest is a source snippet.
                let text = e.to_string();
                let first = text
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                report.problems.push(Problem {
                    source: source.to_owned(),
                    location: None,
                    message: format!("not valid YAML: {first}"),
                });
                return report;
            }
        };
        for (index, document) in documents.iter().enumerate() {
            let number = index + 1;
            if is_list(document) {
                let items = document
                    .get("items")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                for (item_index, item) in items.iter().enumerate() {
                    self.check_document(&mut report, item, number, Some(item_index + 1));
                }
            } else {
                self.check_document(&mut report, document, number, None);
            }
        }
        report
    }

    fn check_document(
        &mut self,
        report: &mut FileReport,
        document: &Value,
        number: usize,
        item: Option<usize>,
    ) {
        let name = document
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let problem = |message: String| Problem {
            source: report.source.clone(),
            location: Some(Location {
                document: number,
                item,
                name: name.clone(),
            }),
            message,
        };
        let Some(object) = document.as_object() else {
            report.problems.push(problem(
                "not a Kubernetes object (expected a mapping with apiVersion, kind and metadata)"
                    .to_owned(),
            ));
            return;
        };
        let api_version = object.get("apiVersion").and_then(Value::as_str);
        let kind = object.get("kind").and_then(Value::as_str);
        let group = api_version.map(|v| v.split_once('/').map_or("", |(g, _)| g));
        match (group, kind) {
            (Some(GROUP), Some(KIND)) | (None, Some(KIND)) => {}
            (Some(GROUP), other) => {
                let kind = other.map_or_else(
                    || "kind: Required value".to_owned(),
                    |k| format!("kind: {GROUP} has no kind {k:?}"),
                );
                report
                    .problems
                    .push(problem(format!("{kind}; expected {KIND}")));
                return;
            }
            // Another kind, or a ReplicaGroup of another API group: not ours.
            _ => return,
        }
        report
            .groups
            .push(name.clone().unwrap_or_else(|| "unnamed".to_owned()));
        let expected = format!("{GROUP}/{VERSION}");
        match api_version {
            None => report.problems.push(problem(format!("apiVersion: Required value: set it to {expected}"))),
            Some(v) if v != expected => {
                report.problems.push(problem(format!("apiVersion: Unsupported value: {v:?}: this version of kubectl-quorate knows {expected}")))
            }
            Some(_) => {}
        }
        let generate_name = document
            .pointer("/metadata/generateName")
            .and_then(Value::as_str);
        match (&name, generate_name) {
            (None, None) => report.problems.push(problem("metadata.name: Required value: name or generateName is required".to_owned())),
            (Some(n), _) if !is_dns_subdomain(n) => report.problems.push(problem(format!(
                "metadata.name: Invalid value: {n:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ))),
            _ => {}
        }
        let key = name.clone().map(|n| {
            (
                document
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                n,
            )
        });
        let old = key.as_ref().and_then(|k| self.seen.get(k));
        for error in validate_manifest(document, old) {
            // CEL messages often start with their field already: do not say it twice.
            let text = if !error.path.is_empty()
                && error.message.starts_with(&format!("{}:", error.path))
            {
                error.message
            } else {
                error.to_string()
            };
            report.problems.push(problem(text));
        }
        if let Some(key) = key {
            self.seen.insert(key, document.clone());
        }
    }
}

fn is_list(document: &Value) -> bool {
    document
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && document.get("items").is_some_and(Value::is_array)
}

fn is_dns_subdomain(name: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
            .expect("valid regex")
    });
    name.len() <= 253 && RE.is_match(name)
}

/// The inputs named by `-f`: `-` (standard input), files, and the `.yaml`, `.yml` and `.json`
/// files of directories (sorted, not recursive).
pub fn expand_inputs(paths: &[PathBuf]) -> Vec<Result<PathBuf, Problem>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.is_file()
                                && p.extension()
                                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                        })
                        .collect();
                    files.sort();
                    out.extend(files.into_iter().map(Ok));
                }
                Err(e) => out.push(Err(unreadable(path, &e))),
            }
        } else {
            out.push(Ok(path.clone()));
        }
    }
    out
}

fn unreadable(path: &Path, error: &std::io::Error) -> Problem {
    Problem {
        source: path.display().to_string(),
        location: None,
        message: format!("cannot read: {error}"),
    }
}

/// Reads one input (`-` is standard input) and checks it.
pub fn check_path(checker: &mut ManifestChecker, path: &Path) -> FileReport {
    let (source, text) = if path == Path::new("-") {
        let mut text = String::new();
        let read = std::io::stdin().read_to_string(&mut text);
        ("<stdin>".to_owned(), read.map(|_| text))
    } else {
        (path.display().to_string(), std::fs::read_to_string(path))
    };
    match text {
        Ok(text) => checker.check_text(&source, &text),
        Err(e) => FileReport {
            source: source.clone(),
            groups: vec![],
            problems: vec![Problem {
                source,
                location: None,
                message: format!("cannot read: {e}"),
            }],
        },
    }
}

/// Checks every input named by `-f` and returns the reports in order.
pub fn check_inputs(paths: &[PathBuf]) -> Vec<FileReport> {
    let mut checker = ManifestChecker::new();
    expand_inputs(paths)
        .into_iter()
        .map(|input| match input {
            Ok(path) => check_path(&mut checker, &path),
            Err(problem) => FileReport {
                source: problem.source.clone(),
                groups: vec![],
                problems: vec![problem],
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "apiVersion: quorate.dev/v1alpha1
kind: ReplicaGroup
metadata: {name: cache}
spec:
  mode: PrimaryBackup
  replicas: 3
  template: {spec: {containers: [{name: app, image: app:1}]}}
";

    fn check(text: &str) -> FileReport {
        ManifestChecker::new().check_text("g.yaml", text)
    }

    fn lines(report: &FileReport) -> Vec<String> {
        report.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_group_passes() {
        let report = check(VALID);
        assert!(report.is_valid(), "{:?}", report.problems);
        assert_eq!(report.render(), "g.yaml: valid (ReplicaGroup cache)\n");
    }

    #[test]
    fn problems_name_the_file_document_group_and_field() {
        let text = format!(
            "{VALID}---\n{}",
            VALID
                .replace("name: cache", "name: one")
                .replace("replicas: 3", "replicas: 1")
        );
        let report = check(&text);
        assert_eq!(report.groups, ["cache", "one"]);
        assert_eq!(
            lines(&report),
            [
                "g.yaml: document 2 (one): spec.replicas: a PrimaryBackup group needs at least 2 replicas so that it survives the loss of one member (use mode ActiveActive for a single member)"
            ]
        );
    }

    #[test]
    fn other_kinds_and_empty_documents_are_ignored() {
        let text = format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n---\n{VALID}"
        );
        let report = check(&text);
        assert!(report.is_valid(), "{:?}", report.problems);
        assert_eq!(report.groups, ["cache"]);
        let none = check("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n");
        assert_eq!(
            none.render(),
            "g.yaml: no ReplicaGroup documents (nothing to check)\n"
        );
    }

    #[test]
    fn broken_yaml_is_one_problem_on_one_line() {
        let report = check("kind: ReplicaGroup\nspec: [unclosed\n");
        assert_eq!(report.problems.len(), 1);
        let line = report.problems[0].to_string();
        assert!(line.starts_with("g.yaml: not valid YAML: "), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            "g.yaml: not valid YAML: line 2 column 7: unclosed bracket '['"
        );
    }

    #[test]
    fn wrong_api_versions_kinds_and_names_are_reported() {
        let v1 = check(&VALID.replace("v1alpha1", "v1"));
        assert_eq!(
            lines(&v1),
            [
                "g.yaml: document 1 (cache): apiVersion: Unsupported value: \"quorate.dev/v1\": this version of kubectl-quorate knows quorate.dev/v1alpha1"
            ]
        );
        let kind = check(&VALID.replace("kind: ReplicaGroup", "kind: ReplicaGroups"));
        assert_eq!(
            lines(&kind),
            [
                "g.yaml: document 1 (cache): kind: quorate.dev has no kind \"ReplicaGroups\"; expected ReplicaGroup"
            ]
        );
        let unnamed = check(&VALID.replace("metadata: {name: cache}", "metadata: {}"));
        assert_eq!(
            lines(&unnamed),
            [
                "g.yaml: document 1 (unnamed): metadata.name: Required value: name or generateName is required"
            ]
        );
        let upper = check(&VALID.replace("name: cache", "name: Cache"));
        assert_eq!(upper.problems.len(), 1);
        assert!(
            upper.problems[0]
                .message
                .starts_with("metadata.name: Invalid value: \"Cache\"")
        );
        let scalar = check("just a string\n");
        assert_eq!(
            lines(&scalar),
            [
                "g.yaml: document 1 (unnamed): not a Kubernetes object (expected a mapping with apiVersion, kind and metadata)"
            ]
        );
        // A ReplicaGroup of another API group is someone else's resource.
        assert!(
            check(&VALID.replace("quorate.dev/v1alpha1", "example.com/v1"))
                .groups
                .is_empty()
        );
    }

    #[test]
    fn a_group_seen_again_is_checked_as_an_update() {
        let changed = VALID.replace("mode: PrimaryBackup", "mode: ActiveActive");
        let report = check(&format!("{VALID}---\n{changed}"));
        assert_eq!(
            lines(&report),
            [
                "g.yaml: document 2 (cache): spec.mode: spec.mode is immutable: delete and re-create the group to change between PrimaryBackup and ActiveActive"
            ]
        );
        // The same name in another namespace is another group.
        let elsewhere = changed.replace(
            "metadata: {name: cache}",
            "metadata: {name: cache, namespace: other}",
        );
        assert!(check(&format!("{VALID}---\n{elsewhere}")).is_valid());
    }

    #[test]
    fn list_items_are_checked() {
        let text = "apiVersion: v1
kind: List
items:
- apiVersion: quorate.dev/v1alpha1
  kind: ReplicaGroup
  metadata: {name: a}
  spec: {mode: ActiveActive, replicas: 1, template: {spec: {containers: [{name: app, image: app:1}]}}}
- apiVersion: quorate.dev/v1alpha1
  kind: ReplicaGroup
  metadata: {name: b}
  spec: {mode: ActiveActive, replicas: 1, witnesses: 1, template: {spec: {containers: [{name: app, image: app:1}]}}}
";
        let report = check(text);
        assert_eq!(report.groups, ["a", "b"]);
        assert_eq!(
            lines(&report),
            [
                "g.yaml: document 1, item 2 (b): spec.witnesses: witnesses are only allowed in PrimaryBackup groups; set witnesses to 0 or leave it unset for ActiveActive"
            ]
        );
    }

    #[test]
    fn dns_subdomains() {
        for good in ["cache", "a", "web-1", "a.b-c.d"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
