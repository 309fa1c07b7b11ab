//! The monitoring the chart ships (`charts/quorate/files/`): promtool checks the alerting rules
//! and runs the unit tests of every alert (`tests/monitoring/alerts.test.yaml`); every query of
//! the Grafana dashboard is valid PromQL; every metric the rules and the dashboard read is one
//! the operator or the agent exports; every alert has a test that fires it and a runbook.
//!
//! promtool comes from `$PROMTOOL`, else from the project's tool cache (`hack/build-tools.sh
//! prometheus`, see tests/common/tools.rs).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::manifests::repo_root;
use serde_json::Value;

const RULES: &str = "charts/quorate/files/alerts.yaml";
const RULE_TESTS: &str = "tests/monitoring/alerts.test.yaml";
const DASHBOARD: &str = "charts/quorate/files/dashboard.json";

fn promtool(args: &[&str]) -> String {
    let promtool = common::tools::tool("PROMTOOL", "prometheus", "PROMETHEUS_VERSION", "promtool");
    let out = Command::new(&promtool)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

fn yaml(path: &str) -> Value {
    let path = repo_root().join(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    let path = repo_root().join(DASHBOARD);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule of the rule file: (alert name, expression).
fn alerts() -> Vec<(String, String)> {
    let rules = yaml(RULES);
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| {
            (
                r["alert"]
                    .as_str()
                    .expect("every rule is an alert")
                    .to_owned(),
                r["expr"].as_str().expect("expr").to_owned(),
            )
        })
        .collect()
}

/// Every query of the dashboard: the panels' targets and the template variables' queries.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "definition", Value::String(q)) => out.push(q.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}

/// A dashboard query as Prometheus gets it: Grafana's variables replaced (all namespaces and
/// groups, a rate window) and `label_values(expr, label)` reduced to its expression.
fn as_promql(query: &str) -> String {
    let q = query
        .replace("$namespace", ".*")
        .replace("$group", ".*")
        .replace("$__rate_interval", "1m");
    match q
        .strip_prefix("label_values(")
        .and_then(|rest| rest.rsplit_once(','))
    {
        Some((expr, _label)) => expr.trim().to_owned(),
        None => q,
    }
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bquorate_[a-z0-9_]+").expect("regex");
    re.find_iter(expr).map(|m| m.as_str().to_owned()).collect()
}

/// The sample names the operator and an agent export, with every family touched once.
fn exported() -> BTreeSet<String> {
    use quorate::api::ReplicaGroupStatus;
    let operator = quorate::operator::metrics::Metrics::new();
    let status: ReplicaGroupStatus = serde_json::from_value(serde_json::json!({
        "epoch": 2,
        "members": [{"name": "g-0", "role": "Primary", "healthy": true, "voter": true, "weight": 100}],
        "lastFailover": {"durationMillis": 900, "reason": "LeaseExpired", "epoch": 2},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                        "lastTransitionTime": "2026-12-07T10:00:00Z"}],
    }))
    .expect("fixture status");
    operator.record_group("ns", "g", &status, 0, Some(1_900_000_000));
    operator.record_phase("ns/g", status.phase);
    operator.count_failover("ns", "g", "LeaseExpired");
    operator.failover_duration.observe(0.9);
    operator.reconcile_duration.observe(0.01);
    operator
        .reconciles
        .get_or_create(&vec![("result".into(), "ok".into())])
        .inc();
    operator
        .reconcile_errors
        .get_or_create(&vec![("reason".into(), "kube_api".into())])
        .inc();
    operator.leader.set(1);
    let agent = quorate::agent::metrics::Metrics::new();
    agent.set_role("Primary");
    agent.lease_remaining_seconds.set(1.5);
    drop(agent.rpc("Status"));
    agent.rpc_refused("Status", "unidentified");
    for cause in [&agent.failovers, &agent.demotions] {
        cause
            .get_or_create(&quorate::agent::metrics::CauseLabels {
                cause: "LeaseExpired".into(),
            })
            .inc();
    }
    [operator.encode(), agent.encode()]
        .iter()
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

#[test]
fn promtool_checks_the_alerting_rules() {
    let out = promtool(&["check", "rules", "--lint=all", "--lint-fatal", RULES]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_passes_its_unit_tests() {
    let out = promtool(&["test", "rules", RULE_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_a_runbook() {
    let tests = yaml(RULE_TESTS);
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|case| {
            case["exp_alerts"]
                .as_array()
                .is_some_and(|alerts| !alerts.is_empty())
        })
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    let operations =
        std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("operations.md");
    let rules = yaml(RULES);
    let mut failures = Vec::new();
    for rule in rules["groups"][0]["rules"].as_array().expect("rules") {
        let alert = rule["alert"].as_str().expect("alert");
        if !fired.contains(alert) {
            failures.push(format!(
                "{alert}: no test in {RULE_TESTS} expects it to fire"
            ));
        }
        let anchor = format!("docs/operations.md#{}", alert.to_lowercase());
        if rule["annotations"]["runbook"].as_str() != Some(anchor.as_str()) {
            failures.push(format!("{alert}: its runbook annotation is not {anchor}"));
        }
        if !operations.contains(&format!("\n#### {alert}\n")) {
            failures.push(format!(
                "{alert}: docs/operations.md has no `#### {alert}` runbook"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    // promtool parses the expressions of a rule file: one recording rule per query.
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&as_promql(q)).expect("quoted")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, file).expect("writing the queries");
    promtool(&["check", "rules", path_str(&path)]);
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_read_is_exported() {
    let exported = exported();
    let mut failures = Vec::new();
    let mut read = 0;
    let sources = alerts()
        .into_iter()
        .map(|(alert, expr)| (format!("{RULES} {alert}"), expr))
        .chain(
            dashboard_queries()
                .into_iter()
                .map(|q| (DASHBOARD.to_owned(), q)),
        );
    for (source, expr) in sources {
        for name in metric_names(&expr) {
            read += 1;
            if !exported.contains(&name) {
                failures.push(format!("{source} reads {name}, which nothing exports"));
            }
        }
    }
    assert!(read >= 20, "only {read} metric uses found");
    assert!(
        failures.is_empty(),
        "{}\nexported: {exported:?}",
        failures.join("\n")
    );
}

#[test]
fn the_consistency_check_catches_an_unknown_metric() {
    // The check above must be able to fail: a misspelt metric is not in the exported set.
    let exported = exported();
    assert!(exported.contains("quorate_operator_group_epoch"));
    assert!(!exported.contains("quorate_operator_group_epochs"));
    assert_eq!(
        metric_names(
            r#"max by (g) (quorate_operator_group_condition{condition="Ready"}) / quorate_agent_epoch"#
        ),
        BTreeSet::from([
            "quorate_agent_epoch".to_owned(),
            "quorate_operator_group_condition".to_owned()
        ])
    );
}
