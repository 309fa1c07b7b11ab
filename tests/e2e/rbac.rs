//! Least privilege, proven: what the operator's ServiceAccount did during the cluster suites,
//! from the API server's audit log, against what the chart grants it. A grant nobody used fails
//! the test (remove it, or say here why the log cannot show it), and so does a request for
//! something not granted (the operator would have been refused).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::operator::{OPERATOR_NAMESPACE, RELEASE};
use crate::support::Ctx;
use crate::tests;

pub fn tests() -> Vec<crate::support::Test> {
    tests![the_operator_used_every_verb_the_chart_grants_and_no_other]
}

/// Set by the harness when every phase ran (no filter): only then must every grant show up.
pub static EVERY_SUITE_RAN: AtomicBool = AtomicBool::new(false);

/// When the suites started: earlier requests in the log (a kept test bed) are not this run's.
pub static STARTED: std::sync::OnceLock<jiff::Timestamp> = std::sync::OnceLock::new();

/// (API group, resource, verb): a resource with its subresource as `replicagroups/status`.
type Grant = (String, String, String);

/// Grants the audit log cannot show, and why they are needed anyway.
const NOT_IN_THE_AUDIT_LOG: &[(&str, &str, &str, &str)] = &[
    (
        "coordination.k8s.io",
        "leases",
        "create",
        "the leader-election Lease is created once, by the first operator that starts on a \
         cluster; a test bed kept from an earlier run already has it",
    ),
    (
        "quorate.dev",
        "replicagroups/finalizers",
        "update",
        "the owner references the operator sets (blockOwnerDeletion) need it where the \
         OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened \
         clusters); the API server checks it without a request of its own",
    ),
];

/// The chart's ClusterRole and Role rules, rendered as `make test` installs the chart.
fn granted(ctx: &Ctx) -> Result<BTreeSet<Grant>> {
    let chart = ctx.root.join("charts/quorate");
    let rendered = ctx.helm(&[
        "template",
        RELEASE,
        &chart.to_string_lossy(),
        "--namespace",
        OPERATOR_NAMESPACE,
    ])?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&rendered).context("the rendered chart is not YAML")?;
    let mut out = BTreeSet::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        out.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    ensure!(!out.is_empty(), "the chart renders no RBAC rules");
    Ok(out)
}

/// What the operator's ServiceAccount requested since `since`, with a count each, from every
/// file of the audit log (it is rotated at 200 MB).
fn used(
    audit_log: &str,
    since: jiff::Timestamp,
    earlier_pods: &BTreeSet<String>,
) -> Result<BTreeMap<Grant, usize>> {
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:");
    let log = std::path::Path::new(audit_log);
    let dir = log.parent().context("the audit log has no directory")?;
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("audit") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the audit log {}", path.display()))?;
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue; // a line being written
            };
            let ours = event["user"]["username"]
                .as_str()
                .is_some_and(|u| u.starts_with(&user));
            let at = event["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let earlier = event["user"]["extra"]["authentication.kubernetes.io/pod-name"]
                .as_array()
                .and_then(|p| p.first())
                .and_then(Value::as_str)
                .is_some_and(|pod| earlier_pods.contains(pod));
            if !ours
                || earlier
                || event["stage"] != "RequestReceived"
                || at.is_none_or(|at| at < since)
            {
                continue;
            }
            let object = &event["objectRef"];
            let Some(resource) = object["resource"].as_str() else {
                continue; // discovery and other non-resource requests
            };
            let resource = match object["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            };
            let group = object["apiGroup"].as_str().unwrap_or_default().to_owned();
            let verb = event["verb"].as_str().unwrap_or_default().to_owned();
            *out.entry((group, resource, verb)).or_default() += 1;
        }
    }
    Ok(out)
}

/// A grant is used when the log shows its verb, or, for `create`, a `patch`: a server-side
/// apply of an object that does not exist yet is logged as the patch it is, and the API server
/// checks `create` for it.
fn is_used(grant: &Grant, used: &BTreeMap<Grant, usize>) -> bool {
    let (group, resource, verb) = grant;
    let logged = |v: &str| used.contains_key(&(group.clone(), resource.clone(), v.to_owned()));
    logged(verb) || (verb == "create" && logged("patch"))
}

async fn the_operator_used_every_verb_the_chart_grants_and_no_other(ctx: Ctx) -> Result<()> {
    let Ok(audit_log) = std::env::var("QUORATE_AUDIT_LOG") else {
        println!(
            "    QUORATE_AUDIT_LOG is not set (a cluster without the test bed's audit log): nothing to compare"
        );
        return Ok(());
    };
    let since = *STARTED
        .get()
        .context("the harness did not record its start")?;
    let granted = granted(&ctx)?;
    // Earlier pods that the install of this run replaced (an unchanged image keeps its pods,
    // and their requests count).
    let now_running: BTreeSet<String> = crate::operator::operator_pods(&ctx)?.into_iter().collect();
    let earlier: BTreeSet<String> = crate::operator::EARLIER_OPERATOR_PODS
        .get()
        .into_iter()
        .flatten()
        .filter(|p| !now_running.contains(*p))
        .cloned()
        .collect();
    let used = used(&audit_log, since, &earlier)?;
    ensure!(
        !used.is_empty(),
        "the audit log {audit_log} shows no request of the operator since {since}"
    );
    let lacking: Vec<String> = used
        .iter()
        .filter(|((group, resource, verb), _)| {
            !granted.contains(&(group.clone(), resource.clone(), verb.clone()))
        })
        .map(|((g, r, v), n)| format!("{v} {g}/{r} ({n} requests)"))
        .collect();
    ensure!(
        lacking.is_empty(),
        "the operator requested what the chart does not grant: {}",
        lacking.join(", ")
    );
    let mut report: Vec<String> = used
        .iter()
        .map(|((g, r, v), n)| format!("{v} {g}/{r}={n}"))
        .collect();
    report.sort();
    println!(
        "    operator requests by verb and resource: {}",
        report.join(" ")
    );
    if !EVERY_SUITE_RAN.load(Ordering::SeqCst) {
        println!("    a filtered run: unused grants are not checked");
        return Ok(());
    }
    let excused: BTreeSet<Grant> = NOT_IN_THE_AUDIT_LOG
        .iter()
        .map(|(g, r, v, _)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        .collect();
    let unused: Vec<String> = granted
        .iter()
        .filter(|g| !excused.contains(*g) && !is_used(g, &used))
        .map(|(g, r, v)| format!("{v} {g}/{r}"))
        .collect();
    ensure!(
        unused.is_empty(),
        "the chart grants what the operator never used during the suites (remove it, or say in tests/e2e/rbac.rs why the audit log cannot show it): {}",
        unused.join(", ")
    );
    Ok(())
}
