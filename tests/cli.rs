//! `kubectl quorate` (`src/cli/`, `src/bin/kubectl-quorate.rs`): snapshots of the status views
//! on hand-built groups, the `--to` checks and the switchover wait condition, `validate` on the
//! table of invalid manifests and on the examples, and the binary itself — `validate`, `--help`,
//! flag errors. The cluster commands (status, switchover, pause, resume) run against the real
//! API server in the cluster suite (tests/e2e/operator.rs).

mod common;

use common::manifests::repo_root;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use jiff::Timestamp;
use quorate::api::ReplicaGroup;
use quorate::cli::CliError;
use quorate::cli::args::OutputFormat;
use quorate::cli::format::{format_list, format_status, raw_list, raw_status};
use quorate::cli::switchover::{Progress, check_switchover, describe_waiting, switchover_progress};
use quorate::cli::validate::{ManifestChecker, check_inputs};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Hand-built groups

/// The fixed "now" of the snapshots.
fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().expect("valid timestamp")
}

fn group(value: Value) -> ReplicaGroup {
    serde_json::from_value(value).expect("a valid ReplicaGroup")
}

fn template() -> Value {
    json!({"spec": {"containers": [{"name": "redis", "image": "redis:7.4-alpine"}]}})
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at})
}

fn member(name: &str, role: &str, healthy: bool, weight: i32, lease: Option<&str>) -> Value {
    let mut m =
        json!({"name": name, "role": role, "healthy": healthy, "voter": true, "weight": weight});
    if let Some(lease) = lease {
        m["lease"] = json!(lease);
    }
    m
}

/// Three members, cache-1 primary, everything converged.
fn healthy_primary_backup() -> ReplicaGroup {
    group(json!({
        "apiVersion": "quorate.dev/v1alpha1",
        "kind": "ReplicaGroup",
        "metadata": {"name": "cache", "namespace": "shop", "generation": 4, "creationTimestamp": "2025-05-30T09:00:00Z"},
        "spec": {"mode": "PrimaryBackup", "replicas": 3, "template": template()},
        "status": {
            "phase": "Ready", "replicas": 3, "readyReplicas": 3, "primary": "cache-1", "leader": "cache-0",
            "epoch": 7, "routedEpoch": 7, "observedGeneration": 4,
            "members": [
                member("cache-0", "Backup", true, 0, None),
                member("cache-1", "Primary", true, 100, Some("Live")),
                member("cache-2", "Backup", true, 0, None),
            ],
            "conditions": [
                condition("Ready", "True", "GroupReady", "3 of 3 members healthy, primary cache-1 routed", "2025-06-01T11:55:00Z"),
                condition("Available", "True", "PrimaryRouted", "cache-rw routes to cache-1 (epoch 7)", "2025-06-01T11:55:00Z"),
                condition("Quorum", "True", "MajorityReachable", "3 of 3 voters reachable", "2025-05-30T09:01:10Z"),
                condition("RoutingConverged", "True", "Converged", "", "2025-06-01T11:55:00Z"),
                condition("Degraded", "False", "AsExpected", "", "2025-05-30T09:01:10Z"),
            ],
        },
    }))
}

/// Two of three members left, a failover from cache-1 to cache-0 a minute ago, paused, and a
/// switchover request pending; the status is one generation behind.
fn degraded_after_failover() -> ReplicaGroup {
    let mut crashed = member("cache-1", "Unknown", false, 0, None);
    crashed["voter"] = json!(true);
    let mut learner = member("cache-2", "Backup", true, 0, None);
    learner["voter"] = json!(false);
    group(json!({
        "apiVersion": "quorate.dev/v1alpha1",
        "kind": "ReplicaGroup",
        "metadata": {
            "name": "cache", "namespace": "shop", "generation": 6, "creationTimestamp": "2025-05-30T09:00:00Z",
            "annotations": {"quorate.dev/switchover-to": "cache-2"},
        },
        "spec": {"mode": "PrimaryBackup", "replicas": 3, "paused": true, "template": template()},
        "status": {
            "phase": "Degraded", "replicas": 3, "readyReplicas": 2, "primary": "cache-0", "leader": "cache-2",
            "epoch": 8, "routedEpoch": 7, "observedGeneration": 5,
            "members": [member("cache-0", "Primary", true, 100, Some("Live")), crashed, learner],
            "conditions": [
                condition("Ready", "False", "MemberUnhealthy", "cache-1 is unreachable", "2025-06-01T11:59:00Z"),
                condition("Available", "True", "PrimaryRouted", "cache-rw routes to cache-0 (epoch 8)", "2025-06-01T11:59:02Z"),
                condition("Quorum", "True", "MajorityReachable", "2 of 3 voters reachable", "2025-06-01T11:59:00Z"),
                condition("RoutingConverged", "False", "Pending", "cache-rw still carries epoch 7\nupdate in flight", "2025-06-01T11:59:01Z"),
                condition("Degraded", "True", "MemberUnreachable", "cache-1: connection refused", "2025-06-01T11:59:00Z"),
            ],
            "lastFailover": {
                "detectedAt": "2025-06-01T11:59:00Z", "appointedAt": "2025-06-01T11:59:01Z", "routedAt": "2025-06-01T11:59:02Z",
                "durationMillis": 1840, "from": "cache-1", "to": "cache-0", "epoch": 8, "reason": "LeaseExpired",
            },
        },
    }))
}

/// Three weighted web servers.
fn active_active_weighted() -> ReplicaGroup {
    let active = |name: &str, weight: i32, load: f64, latency: f64| {
        let mut m = member(name, "Active", true, weight, None);
        m["load"] = json!(load);
        m["latencyMillis"] = json!(latency);
        m
    };
    let mut drained = active("web-2", 0, 0.0, 0.0);
    drained["healthy"] = json!(false);
    drained
        .as_object_mut()
        .expect("object")
        .remove("latencyMillis");
    group(json!({
        "apiVersion": "quorate.dev/v1alpha1",
        "kind": "ReplicaGroup",
        "metadata": {"name": "web", "namespace": "front", "generation": 2, "creationTimestamp": "2025-04-01T00:00:00Z"},
        "spec": {
            "mode": "ActiveActive", "replicas": 3, "template": template(),
            "traffic": {"policy": "WeightedRoundRobin", "weights": {"web-0": 60, "web-1": 30, "web-2": 10}},
        },
        "status": {
            "phase": "Ready", "replicas": 3, "readyReplicas": 2, "leader": "web-1", "epoch": 3, "observedGeneration": 2,
            "members": [active("web-0", 666_667, 0.42, 3.25), active("web-1", 333_333, 0.2, 12.0), drained],
            "conditions": [
                condition("Ready", "True", "GroupReady", "2 of 3 members serving", "2025-06-01T10:00:00Z"),
                condition("RoutingConverged", "True", "Converged", "HTTPRoute web accepted", "2025-06-01T10:00:05Z"),
            ],
        },
    }))
}

/// Just created: no status yet, two replicas (so one automatic witness).
fn pending_group() -> ReplicaGroup {
    group(json!({
        "apiVersion": "quorate.dev/v1alpha1",
        "kind": "ReplicaGroup",
        "metadata": {"name": "queue", "namespace": "shop", "generation": 1, "creationTimestamp": "2025-06-01T11:59:30Z"},
        "spec": {"mode": "PrimaryBackup", "replicas": 2, "template": template()},
    }))
}

// ---------------------------------------------------------------------------------------------
// Status views

#[test]
fn status_of_a_healthy_primary_backup_group() {
    insta::assert_snapshot!(
        "status_primary_backup_healthy",
        format_status(&healthy_primary_backup(), now())
    );
}

#[test]
fn status_events_are_the_latest_ten_oldest_first_with_age_type_and_count() {
    use quorate::cli::format::{GroupEvent, events_section};
    let at = |secs_ago: i64| Some(now() - jiff::SignedDuration::from_secs(secs_ago));
    let mut events: Vec<GroupEvent> = (0..11)
        .map(|i| GroupEvent {
            at: at(600 - i * 30),
            warning: false,
            reason: "RoutingChanged".into(),
            message: format!(
                "cache-rw routes to cache-{} (10.88.1.{i}) at epoch {i}",
                i % 3
            ),
            count: 1,
        })
        .collect();
    events.push(GroupEvent {
        at: at(5),
        warning: true,
        reason: "Failover".into(),
        message: "cache-1 appointed primary with epoch 12\nafter cache-0's lease expired".into(),
        count: 3,
    });
    insta::assert_snapshot!("status_events", events_section(&events, now()));
    assert_eq!(events_section(&[], now()), "Events: none\n");
}

#[test]
fn status_of_a_degraded_group_after_a_failover() {
    insta::assert_snapshot!(
        "status_primary_backup_degraded",
        format_status(&degraded_after_failover(), now())
    );
}

#[test]
fn status_of_an_active_active_group_with_weights() {
    insta::assert_snapshot!(
        "status_active_active",
        format_status(&active_active_weighted(), now())
    );
}

#[test]
fn status_of_a_group_without_status() {
    insta::assert_snapshot!("status_pending", format_status(&pending_group(), now()));
}

#[test]
fn status_lists() {
    let groups = [
        healthy_primary_backup(),
        pending_group(),
        active_active_weighted(),
    ];
    insta::assert_snapshot!(
        "list_namespace",
        format_list(&groups[..2], false, "shop", now())
    );
    insta::assert_snapshot!(
        "list_all_namespaces",
        format_list(&groups, true, "shop", now())
    );
    assert_eq!(
        format_list(&[], false, "shop", now()),
        "No ReplicaGroups found in namespace \"shop\".\n"
    );
    assert_eq!(
        format_list(&[], true, "shop", now()),
        "No ReplicaGroups found.\n"
    );
}

#[test]
fn raw_status_as_json_and_yaml() {
    let g = degraded_after_failover();
    let json_text = raw_status(&g, OutputFormat::Json).expect("json");
    let parsed: Value = serde_json::from_str(&json_text).expect("valid JSON");
    assert_eq!(parsed, serde_json::to_value(&g.status).expect("status"));
    assert_eq!(parsed["lastFailover"]["durationMillis"], 1840);
    let yaml_text = raw_status(&g, OutputFormat::Yaml).expect("yaml");
    let parsed: Value = serde_saphyr::from_str(&yaml_text).expect("valid YAML");
    assert_eq!(parsed, serde_json::to_value(&g.status).expect("status"));
    // No status yet: null, not an error.
    assert_eq!(
        raw_status(&pending_group(), OutputFormat::Json)
            .expect("json")
            .trim(),
        "null"
    );

    let list = raw_list(
        &[healthy_primary_backup(), pending_group()],
        OutputFormat::Json,
    )
    .expect("json");
    let parsed: Value = serde_json::from_str(&list).expect("valid JSON");
    assert_eq!(parsed[0]["namespace"], "shop");
    assert_eq!(parsed[0]["name"], "cache");
    assert_eq!(parsed[0]["status"]["epoch"], 7);
    assert_eq!(parsed[1]["status"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// switchover --to

fn target_error(g: &ReplicaGroup, to: &str) -> String {
    match check_switchover(g, Some(to)) {
        Err(e) => e.to_string(),
        Ok(notes) => panic!("--to {to} was accepted (notes: {notes:?})"),
    }
}

#[test]
fn switchover_targets_are_checked_locally() {
    let g = healthy_primary_backup();
    assert_eq!(
        check_switchover(&g, Some("cache-2")).expect("valid"),
        Vec::<String>::new()
    );
    assert_eq!(
        check_switchover(&g, Some("cache-0")).expect("valid"),
        Vec::<String>::new()
    );
    assert_eq!(
        check_switchover(&g, None).expect("best candidate"),
        Vec::<String>::new()
    );
    let errors: Vec<String> = [
        "cache-3",
        "cache-1",
        "web-0",
        "cache-01",
        "cache-witness-0",
        "cache",
        "",
    ]
    .iter()
    .map(|to| target_error(&g, to))
    .collect();
    insta::assert_snapshot!("switchover_target_errors", errors.join("\n"));
}

#[test]
fn switchover_notes_and_refusals() {
    // An unhealthy target, a learner, and a pending request are worth a note, not a refusal.
    let g = degraded_after_failover();
    let notes = check_switchover(&g, Some("cache-1")).expect("allowed");
    assert_eq!(
        notes,
        [
            "the last status reports cache-1 unhealthy; the group may refuse to appoint it",
            "a switchover to cache-2 was still pending; this request replaces it",
        ]
    );
    let notes = check_switchover(&g, Some("cache-2")).expect("allowed");
    assert!(notes[0].contains("not (yet) a voting member"), "{notes:?}");
    // The primary of the degraded group is cache-0.
    assert!(target_error(&g, "cache-0").contains("cache-0 is already the primary (epoch 8)"));

    // ActiveActive groups have no primary.
    let err = check_switchover(&active_active_weighted(), None).expect_err("no primary");
    assert!(matches!(err, CliError::NoPrimaryMode { .. }));
    assert_eq!(
        err.to_string(),
        "replicagroup \"web\" is ActiveActive: it has no primary to switch over (switchover applies to PrimaryBackup groups)"
    );

    // Without a status every in-range member is fine.
    assert!(check_switchover(&pending_group(), Some("queue-1")).is_ok());
    assert!(
        target_error(&pending_group(), "queue-2")
            .contains("has 2 replicas, so the members are queue-0 to queue-1")
    );
}

#[test]
fn switchover_wait_condition() {
    let before = healthy_primary_backup();
    // Just requested: annotation set, epoch unchanged.
    let mut requested = before.clone();
    requested.metadata.annotations =
        Some([("quorate.dev/switchover-to".to_owned(), "cache-2".to_owned())].into());
    let waiting = switchover_progress(&requested, Some(7));
    assert_eq!(
        waiting,
        Progress::Waiting {
            annotation: Some("cache-2".to_owned()),
            primary: Some("cache-1".to_owned()),
            epoch: Some(7)
        }
    );
    assert_eq!(
        describe_waiting(&waiting, Some(7)),
        "the annotation quorate.dev/switchover-to is still set (is the operator running? `kubectl get pods -n quorate-system`); primary cache-1, epoch 7 (before: 7)"
    );
    // New epoch, annotation still there: not yet.
    let mut appointed = requested.clone();
    let status = appointed.status.as_mut().expect("status");
    status.epoch = Some(8);
    status.primary = Some("cache-2".to_owned());
    assert!(matches!(
        switchover_progress(&appointed, Some(7)),
        Progress::Waiting { .. }
    ));
    // Annotation removed, epoch unchanged: refused, still waiting.
    let refused = switchover_progress(&before, Some(7));
    assert!(
        describe_waiting(&refused, Some(7))
            .starts_with("the operator removed the annotation but no new primary was appointed")
    );
    // Annotation removed and a new epoch, but no primary named yet (its lease is not live in
    // that status): still waiting, not "appointed none".
    appointed.metadata.annotations = Some(Default::default());
    let mut vacant = appointed.clone();
    vacant.status.as_mut().expect("status").primary = None;
    assert!(matches!(
        switchover_progress(&vacant, Some(7)),
        Progress::Waiting { primary: None, .. }
    ));
    // All three: done.
    assert_eq!(
        switchover_progress(&appointed, Some(7)),
        Progress::Done {
            primary: Some("cache-2".to_owned()),
            epoch: 8
        }
    );
    // A group that had no epoch yet: any epoch counts.
    assert_eq!(
        switchover_progress(&appointed, None),
        Progress::Done {
            primary: Some("cache-2".to_owned()),
            epoch: 8
        }
    );
}

// ---------------------------------------------------------------------------------------------
// validate

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{dir} holds no YAML files");
    files
}

#[test]
fn every_invalid_manifest_is_reported_with_its_expected_message() {
    let mut failures = Vec::new();
    for path in yaml_files("tests/invalid") {
        let text = std::fs::read_to_string(&path).expect("readable");
        let report = ManifestChecker::new().check_text(&path.display().to_string(), &text);
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        if lines.is_empty() {
            failures.push(format!("{}: reported valid", path.display()));
        }
        for expect in text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
        {
            if !lines.iter().any(|l| l.contains(expect)) {
                failures.push(format!(
                    "{}: no problem contains {expect:?}: {lines:?}",
                    path.display()
                ));
            }
        }
        for line in &lines {
            if !line.starts_with(&format!("{}: document ", path.display())) || line.contains('\n') {
                failures.push(format!("{}: badly formed line {line:?}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_examples_are_valid() {
    let files = yaml_files("examples");
    let reports = check_inputs(&files);
    assert_eq!(reports.len(), files.len());
    for report in &reports {
        assert!(report.is_valid(), "{}", report.render());
        assert!(
            !report.groups.is_empty(),
            "{} holds no ReplicaGroup",
            report.source
        );
    }
    // A directory is its YAML files.
    assert_eq!(check_inputs(&[repo_root().join("examples")]), reports);
}

#[test]
fn validate_lines_for_a_few_cases() {
    let lines: Vec<String> = [
        "tests/invalid/01-replicas-above-15.yaml",
        "tests/invalid/34-mode-changed-on-update.yaml",
        "tests/invalid/33-unknown-field.yaml",
    ]
    .iter()
    .flat_map(|f| {
        let text = std::fs::read_to_string(repo_root().join(f)).expect("readable");
        ManifestChecker::new()
            .check_text(f, &text)
            .problems
            .into_iter()
            .map(|p| p.to_string())
    })
    .collect();
    insta::assert_snapshot!("validate_lines", lines.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The binary

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-quorate"));
    cmd.current_dir(repo_root()).env_remove("KUBECONFIG").env(
        "HOME",
        std::env::temp_dir().join("kubectl-quorate-test-home"),
    );
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("kubectl-quorate runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn binary_validate_exit_codes_and_lines() {
    let ok = run(&[
        "validate",
        "-f",
        "examples/redis.yaml",
        "-f",
        "examples/active-active.yaml",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}{}", stdout(&ok), stderr(&ok));
    assert_eq!(
        stdout(&ok),
        "examples/redis.yaml: valid (ReplicaGroup cache)\nexamples/active-active.yaml: valid (ReplicaGroup web)\n"
    );

    let bad = run(&["validate", "-f", "tests/invalid/01-replicas-above-15.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(
        !text.is_empty()
            && text.lines().all(|l| l.starts_with(
                "tests/invalid/01-replicas-above-15.yaml: document 1 (cache): spec.replicas: "
            )),
        "{text}"
    );
    assert!(
        text.contains("spec.replicas must be between 1 and 15"),
        "{text}"
    );

    // One invalid input among valid ones still fails the whole run.
    let mixed = run(&["validate", "-f", "examples", "-f", "tests/invalid"]);
    assert_eq!(mixed.status.code(), Some(1));
    assert!(stdout(&mixed).contains("examples/redis.yaml: valid"));
    assert_eq!(
        stdout(&mixed)
            .lines()
            .filter(|l| l.starts_with("tests/invalid/"))
            .map(|l| l.split(':').next())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        yaml_files("tests/invalid").len()
    );

    let missing = run(&["validate", "-f", "no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stdout(&missing).starts_with("no/such/file.yaml: cannot read: "),
        "{}",
        stdout(&missing)
    );
}

#[test]
fn binary_validate_reads_standard_input() {
    use std::io::Write;
    let text =
        std::fs::read_to_string(repo_root().join("tests/invalid/34-mode-changed-on-update.yaml"))
            .expect("readable");
    let mut child = bin()
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "<stdin>: document 2 (cache): spec.mode: spec.mode is immutable: delete and re-create the group to change between PrimaryBackup and ActiveActive\n"
    );
}

#[test]
fn binary_help_and_version() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    for word in [
        "Usage: kubectl quorate",
        "status",
        "switchover",
        "pause",
        "resume",
        "validate",
        "fence",
        "unfence",
        "version",
        "--kubeconfig",
        "--context",
        "--namespace",
    ] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
    let pause = stdout(&run(&["pause", "--help"]));
    assert!(
        pause.contains("no new primary is appointed automatically")
            && pause.contains("Routing still follows member health"),
        "{pause}"
    );
    for (command, what) in [
        ("fence", "never appointed primary"),
        ("unfence", "a candidate for primary"),
    ] {
        let help = stdout(&run(&[command, "--help"]));
        for word in [
            what,
            "Examples:",
            "kubectl quorate fence cache cache-2",
            "--no-wait",
            "--timeout",
        ] {
            assert!(
                help.contains(word),
                "{command} --help lacks {word:?}:\n{help}"
            );
        }
    }
    let fence = stdout(&run(&["fence", "cache"]));
    assert!(
        fence.is_empty(),
        "fence without a member must fail: {fence}"
    );
    let status = stdout(&run(&["status", "--help"]));
    assert!(
        status.contains("--watch") && status.contains("kubectl quorate status cache --watch"),
        "{status}"
    );
    let logs = stdout(&run(&["logs", "--help"]));
    for word in [
        "--since <DURATION>",
        "[default: 10m]",
        "--follow",
        "--of <WHOSE>",
        "kubectl quorate logs cache -f",
    ] {
        assert!(logs.contains(word), "logs --help lacks {word:?}:\n{logs}");
    }
    let report = stdout(&run(&["report", "--help"]));
    for word in [
        "--output-dir <DIR>",
        "--since <DURATION>",
        "[default: 1h]",
        "<redacted>",
    ] {
        assert!(
            report.contains(word),
            "report --help lacks {word:?}:\n{report}"
        );
    }
    let restart = stdout(&run(&["restart", "--help"]));
    for word in [
        "--timeout <DURATION>",
        "[default: 5m]",
        "one planned switchover",
        "kubectl quorate restart cache",
    ] {
        assert!(
            restart.contains(word),
            "restart --help lacks {word:?}:\n{restart}"
        );
    }
    let bad = run(&["logs", "cache", "--since", "0s"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--since must be at least 1s"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let switchover = stdout(&run(&["switchover", "--help"]));
    for word in [
        "--to <MEMBER>",
        "--no-wait",
        "--timeout <DURATION>",
        "[default: 60s]",
        "quorate.dev/switchover-to",
    ] {
        assert!(
            switchover.contains(word),
            "switchover --help lacks {word:?}:\n{switchover}"
        );
    }
    let version = run(&["version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        stdout(&version),
        format!(
            "kubectl-quorate {} (ReplicaGroup API quorate.dev/v1alpha1)\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn binary_bad_flags_name_the_flag() {
    for (args, needle) in [
        (&["status", "--bogus"][..], "--bogus"),
        (
            &["status", "-o", "xml"][..],
            "'xml' for '--output <FORMAT>'",
        ),
        (
            &["switchover", "cache", "--timeout", "soon"][..],
            "--timeout <DURATION>",
        ),
        (
            &["status", "cache", "-A"][..],
            "'[NAME]' cannot be used with '--all-namespaces'",
        ),
        (&["validate"][..], "--filename <FILE>"),
        (&["switchover"][..], "<NAME>"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: expected {needle:?} in {}",
            stderr(&out)
        );
    }
}

#[test]
fn binary_without_a_kubeconfig_says_so() {
    let out = run(&["--kubeconfig", "/no/such/kubeconfig", "status", "cache"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: cannot load the kubeconfig"),
        "{err}"
    );
    assert!(
        err.contains("/no/such/kubeconfig") && !err.contains("panicked"),
        "{err}"
    );
}
