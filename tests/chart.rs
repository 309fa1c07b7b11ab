//! The Helm chart `charts/quorate`: `helm lint --strict`, rendered-output snapshots, the values
//! schema, the "restricted" Pod Security profile of every workload, and the agreement between
//! the RBAC templates and the table in the chart's README.
//!
//! helm comes from `$HELM`, else from the project's tool cache:
//! `$QUORATE_CACHE/tools/helm-<HELM_VERSION>/bin/helm` (`QUORATE_CACHE` defaults to
//! `~/.cache/quorate`; `HELM_VERSION` is read from `hack/versions.env`). Build it with
//! `hack/build-tools.sh helm` (or `make tools`).

mod common;

use common::manifests::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const RELEASE: &str = "quorate";
const NAMESPACE: &str = "quorate-system";
const CHART: &str = "charts/quorate";
/// The lowest Kubernetes version the chart supports (`kubeVersion` in Chart.yaml). Passed
/// explicitly: without a cluster, `helm template` assumes the version helm was built for, and a
/// `go install` build of helm assumes v1.20, which the chart rejects.
const KUBE_VERSION: &str = "1.33.0";
/// The values of the second snapshot.
const MONITORING_VALUES: &str =
    "serviceMonitor.enabled=true,podMonitor.enabled=true,replicaCount=3,logFormat=text";

// ---------------------------------------------------------------------------------------------
// helm

fn helm() -> PathBuf {
    common::tools::tool("HELM", "helm", "HELM_VERSION", "helm")
}

fn run_helm(args: &[&str]) -> Output {
    let helm = helm();
    Command::new(&helm)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", helm.display(), args.join(" ")))
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "helm {} ({})\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm template` of the chart with the given `--set` arguments.
fn template_output(sets: &[&str]) -> (Vec<String>, Output) {
    let mut args: Vec<String> = [
        "template",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ]
    .map(String::from)
    .to_vec();
    for set in sets {
        args.push("--set".into());
        args.push((*set).into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_helm(&refs);
    (args, out)
}

/// The rendered manifests; fails the test when helm fails.
fn render(sets: &[&str]) -> String {
    let (args, out) = template_output(sets);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(out.status.success(), "{}", describe(&refs, &out));
    String::from_utf8(out.stdout).expect("helm output is UTF-8")
}

fn documents(rendered: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(rendered)
        .unwrap_or_else(|e| panic!("rendered chart is not valid YAML: {e}\n{rendered}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("object without kind: {doc}"))
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("object without name: {doc}"))
}

fn find<'a>(docs: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == wanted).collect()
}

fn one<'a>(docs: &'a [Value], wanted: &str) -> &'a Value {
    let found = find(docs, wanted);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {wanted}, found {}",
        found.len()
    );
    found[0]
}

fn operator_args(docs: &[Value]) -> Vec<String> {
    let deployment = one(docs, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "operator");
    container["args"]
        .as_array()
        .expect("operator args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_owned())
        .collect()
}

fn arg_value(args: &[String], flag: &str) -> String {
    let prefix = format!("{flag}=");
    let found: Vec<&String> = args.iter().filter(|a| a.starts_with(&prefix)).collect();
    assert_eq!(found.len(), 1, "expected {flag} exactly once in {args:?}");
    found[0][prefix.len()..].to_owned()
}

// ---------------------------------------------------------------------------------------------
// lint, metadata, snapshots

#[test]
fn helm_lint_strict_passes() {
    let args = ["lint", "--strict", CHART];
    let out = run_helm(&args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    // --strict turns warnings into failures; make sure the chart was actually linted.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{}",
        describe(&args, &out)
    );
}

#[test]
fn chart_metadata() {
    let path = repo_root().join(CHART).join("Chart.yaml");
    let text = std::fs::read_to_string(&path).expect("Chart.yaml");
    let chart: Value = serde_saphyr::from_str(&text).expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "quorate");
    assert_eq!(chart["version"], "0.1.0");
    assert_eq!(chart["appVersion"], "0.1.0");
    assert_eq!(chart["kubeVersion"], ">=1.33.0-0");
    assert_eq!(chart["home"], "https://github.com/quorate-dev/quorate");
    assert_eq!(
        chart["sources"][0],
        "https://github.com/quorate-dev/quorate"
    );
    assert!(
        chart["description"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty())
    );
}

#[test]
fn chart_refuses_kubernetes_older_than_1_33() {
    let args = ["template", RELEASE, CHART, "--kube-version", "1.32.9"];
    let out = run_helm(&args);
    assert!(!out.status.success(), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kubeVersion"),
        "{}",
        describe(&args, &out)
    );
}

fn snapshot_settings(command: &str) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(true);
    settings.set_omit_expression(true);
    settings.set_description(command);
    settings
}

/// Renders twice and requires identical output: a snapshot of non-deterministic output would
/// fail at random.
fn render_deterministic(sets: &[&str]) -> String {
    let first = render(sets);
    let second = render(sets);
    assert_eq!(
        first, second,
        "helm template output differs between two runs"
    );
    // The CRD (660 kB) is the generated file plus Helm's labels: checked against that file by
    // `crd_is_the_generated_file_with_a_keep_policy`, not snapshotted a second time.
    first
        .split("\n---\n")
        .filter(|doc| !doc.contains("# Source: quorate/templates/crds.yaml"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Numbers as f64: the generated file spells bounds `1.0`, Helm's toYaml `1`.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn crd_is_the_generated_file_with_a_keep_policy() {
    let path = repo_root().join("charts/quorate/files/crds/replicagroups.quorate.dev.yaml");
    let mut file: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("CRD"))
        .expect("the CRD file is YAML");
    let docs = documents(&render(&[]));
    let mut crd = one(&docs, "CustomResourceDefinition").clone();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        crd["metadata"]["labels"]["app.kubernetes.io/instance"],
        RELEASE
    );
    let meta = crd["metadata"].as_object_mut().expect("metadata");
    meta.remove("labels");
    meta.remove("annotations");
    assert_eq!(numbers_as_floats(&crd), numbers_as_floats(&file));
    file["kind"] = Value::Null;
    assert_ne!(
        numbers_as_floats(&crd),
        numbers_as_floats(&file),
        "the comparison can fail"
    );

    let docs = documents(&render(&["crds.keep=false"]));
    let crd = one(&docs, "CustomResourceDefinition");
    assert!(
        crd["metadata"]["annotations"].is_null(),
        "{}",
        crd["metadata"]
    );
    let docs = documents(&render(&["crds.enabled=false"]));
    assert!(find(&docs, "CustomResourceDefinition").is_empty());
}

#[test]
fn snapshot_default_values() {
    let rendered = render_deterministic(&[]);
    snapshot_settings(&format!(
        "helm template {RELEASE} {CHART} --namespace {NAMESPACE}"
    ))
    .bind(|| insta::assert_snapshot!("default", rendered));
}

#[test]
fn snapshot_monitoring_three_replicas_text_logs() {
    let rendered = render_deterministic(&[MONITORING_VALUES]);
    snapshot_settings(&format!(
        "helm template {RELEASE} {CHART} --namespace {NAMESPACE} --set {MONITORING_VALUES}"
    ))
    .bind(|| insta::assert_snapshot!("monitoring_3_replicas_text", rendered));
}

// ---------------------------------------------------------------------------------------------
// values.schema.json

/// Each bad value must be rejected by the schema, naming the offending key; the paired good
/// value for the same key must be accepted, so a rejection cannot come from something else.
#[test]
fn schema_rejects_bad_values() {
    struct Case {
        bad: &'static str,
        good: Option<&'static str>,
        key: &'static str,
    }
    let cases = [
        // Unknown top-level key.
        Case {
            bad: "replicaCont=3",
            good: Some("replicaCount=3"),
            key: "replicaCont",
        },
        Case {
            bad: "foo=bar",
            good: None,
            key: "foo",
        },
        // Unknown nested keys.
        Case {
            bad: "image.tagg=v1",
            good: Some("image.tag=v1"),
            key: "tagg",
        },
        Case {
            bad: "agent.image.tagg=v1",
            good: Some("agent.image.tag=v1"),
            key: "tagg",
        },
        Case {
            bad: "serviceMonitor.enable=true",
            good: Some("serviceMonitor.enabled=true"),
            key: "enable",
        },
        Case {
            bad: "serviceAccount.annotation.a=b",
            good: Some("serviceAccount.annotations.a=b"),
            key: "annotation",
        },
        Case {
            bad: "resources.limit.cpu=1",
            good: Some("resources.limits.cpu=1"),
            key: "limit",
        },
        // Wrong types.
        Case {
            bad: "replicaCount=two",
            good: Some("replicaCount=2"),
            key: "replicaCount",
        },
        Case {
            bad: "serviceMonitor.enabled=yes-please",
            good: Some("serviceMonitor.enabled=false"),
            key: "enabled",
        },
        Case {
            bad: "podLabels.team=1",
            good: Some("podLabels.team=blue"),
            key: "team",
        },
        Case {
            bad: "extraArgs=--x",
            good: Some("extraArgs={--x}"),
            key: "extraArgs",
        },
        // Bounds and enums.
        Case {
            bad: "replicaCount=0",
            good: Some("replicaCount=1"),
            key: "replicaCount",
        },
        Case {
            bad: "logFormat=xml",
            good: Some("logFormat=text"),
            key: "logFormat",
        },
        Case {
            bad: "logLevel=verbose",
            good: Some("logLevel=trace"),
            key: "logLevel",
        },
        Case {
            bad: "image.pullPolicy=Sometimes",
            good: Some("image.pullPolicy=Always"),
            key: "pullPolicy",
        },
        Case {
            bad: "agent.image.pullPolicy=Sometimes",
            good: Some("agent.image.pullPolicy=Never"),
            key: "pullPolicy",
        },
        Case {
            bad: "serviceMonitor.interval=soon",
            good: Some("serviceMonitor.interval=1m"),
            key: "interval",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let (args, out) = template_output(&[case.bad]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!(
                "accepted `{}`:\n{}",
                case.bad,
                describe(&refs, &out)
            ));
        } else if !stderr.contains("schema") || !stderr.contains(case.key) {
            failures.push(format!(
                "`{}` was rejected, but not by the schema naming `{}`:\n{}",
                case.bad,
                case.key,
                describe(&refs, &out)
            ));
        }
        if let Some(good) = case.good {
            let (args, out) = template_output(&[good]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            if !out.status.success() {
                failures.push(format!(
                    "rejected the valid `{good}`:\n{}",
                    describe(&refs, &out)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn schema_is_draft_07_and_closed_at_every_level() {
    let path = repo_root().join(CHART).join("values.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("values.schema.json"))
            .expect("values.schema.json is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");

    // Every object with declared properties rejects undeclared ones, except where a
    // free-form Kubernetes type is meant (those declare no `properties`, or are listed here).
    const OPEN: &[&str] = &["/properties/topologySpreadConstraints/items"];
    fn walk(
        node: &Value,
        at: &str,
        open: &[&str],
        closed: &mut Vec<String>,
        failures: &mut Vec<String>,
    ) {
        match node {
            Value::Object(map) => {
                if map.contains_key("properties") && !open.contains(&at) {
                    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                        closed.push(at.to_owned());
                    } else {
                        failures.push(format!(
                            "{at}: declares properties but not additionalProperties: false"
                        ));
                    }
                }
                for (key, child) in map {
                    walk(child, &format!("{at}/{key}"), open, closed, failures);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), open, closed, failures);
                }
            }
            _ => {}
        }
    }
    let (mut closed, mut failures) = (Vec::new(), Vec::new());
    walk(&schema, "", OPEN, &mut closed, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for level in [
        "",
        "/properties/image",
        "/properties/agent",
        "/properties/agent/properties/image",
        "/properties/serviceAccount",
        "/properties/serviceMonitor",
        "/properties/resources",
    ] {
        assert!(
            closed.iter().any(|c| c == level),
            "{level:?} is not a closed object; closed: {closed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// restricted Pod Security

const WORKLOAD_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

fn pod_spec(doc: &Value) -> &Value {
    match kind(doc) {
        "Pod" => &doc["spec"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

/// Checks the Pod Security Standards "restricted" profile (and the chart's fixed ids) for one
/// workload; returns the violations.
fn restricted_violations(doc: &Value) -> Vec<String> {
    let object = format!("{} {}", kind(doc), name(doc));
    let spec = pod_spec(doc);
    let mut bad = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            bad.push(format!("{object}: {what}"));
        }
    };
    expect(spec.is_object(), "has no pod spec".into());
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        let value = &spec[host];
        expect(
            value.is_null() || *value == Value::Bool(false),
            format!("{host} = {value}"),
        );
    }
    let psc = &spec["securityContext"];
    expect(
        psc["runAsNonRoot"] == Value::Bool(true),
        format!("pod runAsNonRoot = {}", psc["runAsNonRoot"]),
    );
    expect(
        psc["runAsUser"] == 65532,
        format!("pod runAsUser = {}", psc["runAsUser"]),
    );
    expect(
        psc["runAsGroup"] == 65532,
        format!("pod runAsGroup = {}", psc["runAsGroup"]),
    );
    expect(
        psc["fsGroup"] == 65532,
        format!("pod fsGroup = {}", psc["fsGroup"]),
    );
    expect(
        psc["seccompProfile"]["type"] == "RuntimeDefault",
        format!("pod seccompProfile = {}", psc["seccompProfile"]),
    );

    // Volume types the restricted profile allows.
    const ALLOWED_VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        for key in volume.as_object().expect("volume is an object").keys() {
            expect(
                key == "name" || ALLOWED_VOLUMES.contains(&key.as_str()),
                format!("volume {} has type {key}", volume["name"]),
            );
        }
    }

    let mut containers = 0;
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            containers += 1;
            let at = format!("{list}[{}]", c["name"]);
            let sc = &c["securityContext"];
            expect(
                sc["allowPrivilegeEscalation"] == Value::Bool(false),
                format!(
                    "{at} allowPrivilegeEscalation = {}",
                    sc["allowPrivilegeEscalation"]
                ),
            );
            expect(
                sc["readOnlyRootFilesystem"] == Value::Bool(true),
                format!(
                    "{at} readOnlyRootFilesystem = {}",
                    sc["readOnlyRootFilesystem"]
                ),
            );
            expect(
                sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
                format!("{at} capabilities.drop = {}", sc["capabilities"]["drop"]),
            );
            let add = sc["capabilities"]["add"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            expect(
                add.iter().all(|cap| cap == "NET_BIND_SERVICE"),
                format!("{at} capabilities.add = {add:?}"),
            );
            expect(
                !sc["privileged"].as_bool().unwrap_or(false),
                format!("{at} is privileged"),
            );
            expect(
                sc["runAsNonRoot"] != Value::Bool(false),
                format!("{at} runAsNonRoot = false"),
            );
            expect(sc["runAsUser"] != 0, format!("{at} runs as root"));
            let seccomp = &sc["seccompProfile"]["type"];
            expect(
                seccomp.is_null() || seccomp == "RuntimeDefault" || seccomp == "Localhost",
                format!("{at} seccompProfile = {seccomp}"),
            );
            for port in c["ports"].as_array().into_iter().flatten() {
                expect(
                    port["hostPort"].is_null(),
                    format!("{at} uses hostPort {}", port["hostPort"]),
                );
            }
        }
    }
    expect(containers > 0, "has no containers".into());
    bad
}

#[test]
fn every_workload_meets_the_restricted_profile() {
    let renders: [&[&str]; 3] = [
        &[],
        &[MONITORING_VALUES],
        // Every optional pod-level value set at once.
        &[
            "replicaCount=1",
            "podLabels.team=blue",
            "podAnnotations.note=x",
            "priorityClassName=system-cluster-critical",
            "nodeSelector.kubernetes\\.io/os=linux",
            "tolerations[0].key=a,tolerations[0].operator=Exists",
            "topologySpreadConstraints[0].maxSkew=1,topologySpreadConstraints[0].topologyKey=zone,topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
            "imagePullSecrets[0].name=reg",
            "extraArgs={--a,--b}",
        ],
    ];
    let mut failures = Vec::new();
    for sets in renders {
        let docs = documents(&render(sets));
        let workloads: Vec<&Value> = docs
            .iter()
            .filter(|d| WORKLOAD_KINDS.contains(&kind(d)))
            .collect();
        assert!(!workloads.is_empty(), "no workload rendered with {sets:?}");
        for workload in workloads {
            failures.extend(
                restricted_violations(workload)
                    .into_iter()
                    .map(|v| format!("{sets:?}: {v}")),
            );
            // Only the operator talks to the API server.
            let token = &pod_spec(workload)["automountServiceAccountToken"];
            if kind(workload) == "Deployment" && name(workload) == RELEASE {
                if *token != Value::Bool(true) {
                    failures.push(format!("operator automountServiceAccountToken = {token}"));
                }
            } else if *token != Value::Bool(false) {
                failures.push(format!(
                    "{} {} mounts a token",
                    kind(workload),
                    name(workload)
                ));
            }
        }
        let account = one(&docs, "ServiceAccount");
        if account["automountServiceAccountToken"] != Value::Bool(false) {
            failures.push(
                "the ServiceAccount does not default automountServiceAccountToken to false".into(),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The checker must catch what it is meant to catch: a workload without the settings fails.
#[test]
fn restricted_check_rejects_an_unhardened_pod() {
    let docs = documents(&render(&[]));
    let mut deployment = one(&docs, "Deployment").clone();
    assert!(restricted_violations(&deployment).is_empty());
    let spec = &mut deployment["spec"]["template"]["spec"];
    spec["securityContext"]["runAsNonRoot"] = Value::Bool(false);
    spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = Value::Bool(false);
    spec["containers"][0]["securityContext"]["capabilities"]["add"] =
        serde_json::json!(["NET_ADMIN"]);
    spec["volumes"] = serde_json::json!([{"name": "host", "hostPath": {"path": "/"}}]);
    let violations = restricted_violations(&deployment);
    for needle in [
        "runAsNonRoot",
        "readOnlyRootFilesystem",
        "NET_ADMIN",
        "hostPath",
    ] {
        assert!(
            violations.iter().any(|v| v.contains(needle)),
            "{needle} not caught: {violations:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// objects and wiring

/// Every rendered object deserialises into its Kubernetes type (wrong field types fail here,
/// not at install time), and the chart renders no kind this test does not know about.
#[test]
fn rendered_objects_have_valid_kubernetes_types() {
    use k8s_openapi::api::{apps, core, networking, policy, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    fn check<T: serde::de::DeserializeOwned>(doc: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(doc.clone())
            .map(|_| ())
            .map_err(|e| format!("{} {}: {e}", kind(doc), name(doc)))
    }
    let mut failures = Vec::new();
    let alerts_and_dashboard = "prometheusRule.enabled=true,grafanaDashboard.enabled=true";
    for sets in [
        &[][..],
        &[MONITORING_VALUES][..],
        &[alerts_and_dashboard][..],
    ] {
        for doc in documents(&render(sets)) {
            let result = match kind(&doc) {
                "Deployment" => check::<apps::v1::Deployment>(&doc),
                "Service" => check::<core::v1::Service>(&doc),
                "ServiceAccount" => check::<core::v1::ServiceAccount>(&doc),
                "PodDisruptionBudget" => check::<policy::v1::PodDisruptionBudget>(&doc),
                "NetworkPolicy" => check::<networking::v1::NetworkPolicy>(&doc),
                "ClusterRole" => check::<rbac::v1::ClusterRole>(&doc),
                "ClusterRoleBinding" => check::<rbac::v1::ClusterRoleBinding>(&doc),
                "Role" => check::<rbac::v1::Role>(&doc),
                "RoleBinding" => check::<rbac::v1::RoleBinding>(&doc),
                "ConfigMap" => check::<core::v1::ConfigMap>(&doc),
                "CustomResourceDefinition" => check::<CustomResourceDefinition>(&doc),
                // Not in k8s-openapi: the checks are in servicemonitor_is_optional_and_selects_the_metrics_service.
                "ServiceMonitor" => Ok(()),
                // Likewise: podmonitor_selects_the_agents_of_every_group.
                "PodMonitor" => Ok(()),
                // Likewise: prometheus_rule_is_the_checked_rule_file.
                "PrometheusRule" => Ok(()),
                other => Err(format!("unexpected kind {other}: add it to this test")),
            };
            failures.extend(result.err());
            let labels = &doc["metadata"]["labels"];
            for (label, want) in [
                ("app.kubernetes.io/name", "quorate"),
                ("app.kubernetes.io/instance", RELEASE),
                ("app.kubernetes.io/version", "0.1.0"),
                ("app.kubernetes.io/managed-by", "Helm"),
                ("helm.sh/chart", "quorate-0.1.0"),
            ] {
                if labels[label] != want {
                    failures.push(format!(
                        "{} {}: label {label} = {}",
                        kind(&doc),
                        name(&doc),
                        labels[label]
                    ));
                }
            }
            let namespaced =
                !kind(&doc).starts_with("Cluster") && kind(&doc) != "CustomResourceDefinition";
            if namespaced && doc["metadata"]["namespace"] != NAMESPACE {
                failures.push(format!(
                    "{} {} is not in {NAMESPACE}",
                    kind(&doc),
                    name(&doc)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn operator_deployment_command_line() {
    let docs = documents(&render(&[]));
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/quorate-dev/quorate:0.1.0");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        container["command"],
        serde_json::json!(["/quorate-operator"])
    );
    assert_eq!(
        operator_args(&docs),
        [
            "run",
            "--metrics-addr=0.0.0.0:8080",
            "--health-addr=0.0.0.0:8081",
            "--agent-image=ghcr.io/quorate-dev/quorate:0.1.0",
            "--agent-image-pull-policy=IfNotPresent",
            "--leader-election-lease=quorate",
            "--log-format=json",
            "--log-level=info",
            "--network-policies=true",
            "--operator-pod-labels=app.kubernetes.io/component=operator,app.kubernetes.io/instance=quorate,app.kubernetes.io/name=quorate",
        ]
    );
    let env: BTreeMap<&str, &str> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        env,
        BTreeMap::from([
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace")
        ])
    );
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, BTreeMap::from([("health", 8081), ("metrics", 8080)]));
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        serde_json::json!({"path": "/healthz", "port": "health"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        serde_json::json!({"path": "/readyz", "port": "health"})
    );
    assert_eq!(
        container["resources"],
        serde_json::json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}})
    );
    // The two replicas prefer different nodes.
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert!(pod["topologySpreadConstraints"].is_null());
}

#[test]
fn agent_image_defaults_to_the_operator_image() {
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["image.tag=v9"],
            "ghcr.io/quorate-dev/quorate:v9",
            "IfNotPresent",
        ),
        (
            &["image.repository=reg.example/q,image.pullPolicy=Always"],
            "reg.example/q:0.1.0",
            "Always",
        ),
        (
            &["image.tag=v9,agent.image.repository=reg.example/agent"],
            "reg.example/agent:v9",
            "IfNotPresent",
        ),
        (
            &["agent.image.tag=a1,agent.image.pullPolicy=Never"],
            "ghcr.io/quorate-dev/quorate:a1",
            "Never",
        ),
    ];
    for (sets, image, policy) in cases {
        let args = operator_args(&documents(&render(sets)));
        assert_eq!(arg_value(&args, "--agent-image"), image, "{sets:?}");
        assert_eq!(
            arg_value(&args, "--agent-image-pull-policy"),
            policy,
            "{sets:?}"
        );
    }
}

#[test]
fn values_reach_the_command_line() {
    let args = operator_args(&documents(&render(&[
        "logFormat=text,logLevel=debug,fullnameOverride=qrt",
        "extraArgs={--requeue-seconds=30,--flag with space}",
    ])));
    assert_eq!(arg_value(&args, "--log-format"), "text");
    assert_eq!(arg_value(&args, "--log-level"), "debug");
    assert_eq!(arg_value(&args, "--leader-election-lease"), "qrt");
    assert_eq!(
        args[args.len() - 2..],
        ["--requeue-seconds=30", "--flag with space"]
    );
}

#[test]
fn topology_spread_constraints_get_the_operator_selector() {
    let docs = documents(&render(&[
        "topologySpreadConstraints[0].maxSkew=1,topologySpreadConstraints[0].topologyKey=zone,topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "topologySpreadConstraints[1].maxSkew=2,topologySpreadConstraints[1].topologyKey=kubernetes.io/hostname,topologySpreadConstraints[1].whenUnsatisfiable=DoNotSchedule,topologySpreadConstraints[1].labelSelector.matchLabels.custom=yes-mine",
    ]));
    let deployment = one(&docs, "Deployment");
    let constraints = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"];
    assert_eq!(
        constraints[0]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(constraints[0]["topologyKey"], "zone");
    // A constraint's own selector is kept as given, not merged.
    assert_eq!(
        constraints[1]["labelSelector"],
        serde_json::json!({"matchLabels": {"custom": "yes-mine"}})
    );
}

#[test]
fn pod_disruption_budget_only_with_several_replicas() {
    for (replicas, expect_pdb) in [("1", false), ("2", true), ("3", true)] {
        let set = format!("replicaCount={replicas}");
        let docs = documents(&render(&[set.as_str()]));
        let pdbs = find(&docs, "PodDisruptionBudget");
        assert_eq!(
            pdbs.len(),
            usize::from(expect_pdb),
            "replicaCount={replicas}"
        );
        if let Some(pdb) = pdbs.first() {
            assert_eq!(pdb["spec"]["minAvailable"], 1);
            let deployment = one(&docs, "Deployment");
            assert_eq!(
                pdb["spec"]["selector"]["matchLabels"],
                deployment["spec"]["selector"]["matchLabels"]
            );
        }
    }
}

/// A label selector (`matchLabels` map) selects an object when every one of its labels is on it.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("selector is a map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
}

#[test]
fn metrics_service_selects_the_operator_pods() {
    let docs = documents(&render(&[]));
    let service = one(&docs, "Service");
    let pod_labels = &one(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    assert_eq!(
        service["spec"]["ports"],
        serde_json::json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
}

#[test]
fn servicemonitor_is_optional_and_selects_the_metrics_service() {
    assert!(find(&documents(&render(&[])), "ServiceMonitor").is_empty());
    let docs = documents(&render(&[
        "serviceMonitor.enabled=true,serviceMonitor.interval=15s,serviceMonitor.scrapeTimeout=5s",
        "serviceMonitor.labels.release=prometheus",
    ]));
    let monitor = one(&docs, "ServiceMonitor");
    let service = one(&docs, "Service");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!([NAMESPACE])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    // The group series' own `namespace` label wins over the target's.
    assert_eq!(endpoint["honorLabels"], true);
    assert_eq!(endpoint["scrapeTimeout"], "5s");
}

#[test]
fn podmonitor_selects_the_agents_of_every_group() {
    use quorate::api::names::{
        AGENT_HTTP_PORT_NAME, COMPONENT_LABEL, COMPONENT_MEMBER, COMPONENT_WITNESS, GROUP_LABEL,
    };
    assert!(find(&documents(&render(&[])), "PodMonitor").is_empty());
    let docs = documents(&render(&[
        "podMonitor.enabled=true,podMonitor.interval=15s,podMonitor.scrapeTimeout=5s",
        "podMonitor.labels.release=prometheus",
    ]));
    let monitor = one(&docs, "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);
    // The labels and port the operator puts on member and witness pods (src/plan/members.rs).
    assert_eq!(
        monitor["spec"]["selector"]["matchExpressions"],
        serde_json::json!([{"key": COMPONENT_LABEL, "operator": "In",
                            "values": [COMPONENT_MEMBER, COMPONENT_WITNESS]}])
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], AGENT_HTTP_PORT_NAME);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    assert_eq!(endpoint["scrapeTimeout"], "5s");
    // Prometheus' names of pod labels: every character outside [a-zA-Z0-9_] becomes `_`.
    let meta = |label: &str| {
        format!(
            "__meta_kubernetes_pod_label_{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        )
    };
    let relabel: Vec<(String, String)> = endpoint["relabelings"]
        .as_array()
        .expect("relabelings")
        .iter()
        .map(|r| {
            (
                r["sourceLabels"][0].as_str().unwrap_or_default().to_owned(),
                r["targetLabel"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(relabel, [(meta(GROUP_LABEL), "group".to_owned())]);
}

#[test]
fn prometheus_rule_is_the_checked_rule_file() {
    assert!(find(&documents(&render(&[])), "PrometheusRule").is_empty());
    let docs = documents(&render(&[
        "prometheusRule.enabled=true",
        "prometheusRule.labels.release=prometheus",
    ]));
    let rule = one(&docs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    // The very rules promtool checks and unit-tests (tests/monitoring.rs).
    let path = repo_root().join("charts/quorate/files/alerts.yaml");
    let file: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("alerts.yaml"))
        .expect("alerts.yaml is YAML");
    assert_eq!(rule["spec"], file);
}

#[test]
fn grafana_dashboard_configmap_carries_the_dashboard_for_the_sidecar() {
    assert!(
        find(&documents(&render(&[])), "ConfigMap")
            .iter()
            .all(|c| !name(c).ends_with("-dashboard"))
    );
    let docs = documents(&render(&[
        "grafanaDashboard.enabled=true,grafanaDashboard.namespace=monitoring",
        "grafanaDashboard.annotations.grafana_folder=Quorate",
    ]));
    let map = find(&docs, "ConfigMap")
        .into_iter()
        .find(|c| name(c) == "quorate-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Quorate");
    let path = repo_root().join("charts/quorate/files/dashboard.json");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
        .expect("dashboard.json is JSON");
    let shipped: Value = serde_json::from_str(
        map["data"]["quorate-groups.json"]
            .as_str()
            .expect("the dashboard as text"),
    )
    .expect("the ConfigMap's dashboard is JSON");
    assert_eq!(shipped, file);
}

#[test]
fn service_account_name_is_overridable_and_never_the_default_one() {
    let docs = documents(&render(&[
        "serviceAccount.name=quorate-op,serviceAccount.annotations.a=b",
    ]));
    assert_eq!(name(one(&docs, "ServiceAccount")), "quorate-op");
    assert_eq!(
        one(&docs, "ServiceAccount")["metadata"]["annotations"]["a"],
        "b"
    );
    assert_eq!(
        one(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "quorate-op"
    );

    let docs = documents(&render(&[
        "serviceAccount.create=false,serviceAccount.name=existing",
    ]));
    assert!(find(&docs, "ServiceAccount").is_empty());
    assert_eq!(
        one(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "existing"
    );

    let (args, out) = template_output(&["serviceAccount.create=false"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(!out.status.success(), "{}", describe(&refs, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serviceAccount.name is required"),
        "{}",
        describe(&refs, &out)
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC

/// (scope, apiGroup, resource, verb); scope is "ClusterRole" or "Role".
type Grant = (String, String, String, String);

fn rendered_grants(docs: &[Value]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for scope in ["ClusterRole", "Role"] {
        for role in find(docs, scope) {
            for rule in role["rules"].as_array().expect("rules") {
                let list = |key: &str| -> Vec<String> {
                    rule[key]
                        .as_array()
                        .unwrap_or_else(|| panic!("rule without {key}: {rule}"))
                        .iter()
                        .map(|v| v.as_str().expect("string").to_owned())
                        .collect()
                };
                for group in list("apiGroups") {
                    for resource in list("resources") {
                        for verb in list("verbs") {
                            grants.insert((scope.into(), group.clone(), resource.clone(), verb));
                        }
                    }
                }
            }
        }
    }
    grants
}

/// The rows of the RBAC table in the chart README:
/// `| Scope | API group | Resource | Verb | Why |`, the core group written `core`.
fn readme_grants() -> BTreeMap<Grant, String> {
    let path = repo_root().join(CHART).join("README.md");
    let text = std::fs::read_to_string(&path).expect("chart README");
    let mut grants = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 5 || !(cells[0] == "ClusterRole" || cells[0].starts_with("Role")) {
            continue;
        }
        let bare = |cell: &str| cell.trim_matches('`').to_owned();
        let scope = if cells[0] == "ClusterRole" {
            "ClusterRole"
        } else {
            "Role"
        };
        let group = if cells[1] == "core" {
            String::new()
        } else {
            bare(cells[1])
        };
        let grant = (scope.to_owned(), group, bare(cells[2]), bare(cells[3]));
        let reason = cells[4].to_owned();
        assert!(reason.len() > 10, "README RBAC row {grant:?} has no reason");
        assert!(
            grants.insert(grant.clone(), reason).is_none(),
            "README lists {grant:?} twice"
        );
    }
    grants
}

#[test]
fn rbac_matches_the_readme_table() {
    let rendered = rendered_grants(&documents(&render(&[])));
    let documented: BTreeSet<Grant> = readme_grants().into_keys().collect();
    let undocumented: Vec<_> = rendered.difference(&documented).collect();
    let not_granted: Vec<_> = documented.difference(&rendered).collect();
    assert!(
        undocumented.is_empty() && not_granted.is_empty(),
        "charts/quorate/README.md and the RBAC templates disagree\n  granted, not in the README: \
         {undocumented:?}\n  in the README, not granted: {not_granted:?}"
    );
}

#[test]
fn rbac_is_exactly_what_the_operator_uses() {
    let grants = rendered_grants(&documents(&render(&[])));
    let expected: &[(&str, &str, &[&str], &[&str])] = &[
        (
            "ClusterRole",
            "quorate.dev",
            &["replicagroups"],
            &["list", "watch", "patch"],
        ),
        (
            "ClusterRole",
            "quorate.dev",
            &["replicagroups/status"],
            &["patch"],
        ),
        (
            "ClusterRole",
            "quorate.dev",
            &["replicagroups/finalizers"],
            &["update"],
        ),
        (
            "ClusterRole",
            "apps",
            &["statefulsets"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "ClusterRole",
            "",
            &["services"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("ClusterRole", "", &["secrets"], &["get", "create", "patch"]),
        (
            "ClusterRole",
            "",
            &["pods"],
            &["list", "watch", "patch", "delete"],
        ),
        (
            "ClusterRole",
            "",
            &["persistentvolumeclaims"],
            &["get", "delete"],
        ),
        (
            "ClusterRole",
            "discovery.k8s.io",
            &["endpointslices"],
            &["get", "list", "watch", "create", "patch"],
        ),
        (
            "ClusterRole",
            "policy",
            &["poddisruptionbudgets"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "ClusterRole",
            "events.k8s.io",
            &["events"],
            &["create", "patch"],
        ),
        ("ClusterRole", "", &["events"], &["list", "watch"]),
        (
            "ClusterRole",
            "networking.k8s.io",
            &["networkpolicies"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "ClusterRole",
            "gateway.networking.k8s.io",
            &["httproutes"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "ClusterRole",
            "gateway.networking.k8s.io",
            &["gateways"],
            &["list", "watch"],
        ),
        ("ClusterRole", "", &["pods/eviction"], &["create"]),
        (
            "ClusterRole",
            "apiextensions.k8s.io",
            &["customresourcedefinitions"],
            &["get"],
        ),
        (
            "Role",
            "coordination.k8s.io",
            &["leases"],
            &["get", "list", "watch", "create", "patch"],
        ),
    ];
    let mut want = BTreeSet::new();
    for (scope, group, resources, verbs) in expected {
        for resource in *resources {
            for verb in *verbs {
                want.insert((
                    (*scope).to_owned(),
                    (*group).to_owned(),
                    (*resource).to_owned(),
                    (*verb).to_owned(),
                ));
            }
        }
    }
    let extra: Vec<_> = grants.difference(&want).collect();
    let missing: Vec<_> = want.difference(&grants).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "extra grants: {extra:?}\nmissing grants: {missing:?}"
    );
}

#[test]
fn rbac_is_bound_to_the_operator_and_its_lease() {
    for sets in [
        &[][..],
        &["fullnameOverride=qrt,serviceAccount.name=qrt-sa"][..],
    ] {
        let docs = documents(&render(sets));
        let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
        let account = pod["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        for (binding_kind, role_kind) in [
            ("ClusterRoleBinding", "ClusterRole"),
            ("RoleBinding", "Role"),
        ] {
            let binding = one(&docs, binding_kind);
            let role = one(&docs, role_kind);
            assert_eq!(binding["roleRef"]["kind"], role_kind, "{sets:?}");
            assert_eq!(binding["roleRef"]["name"], name(role), "{sets:?}");
            assert_eq!(
                binding["subjects"],
                serde_json::json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]),
                "{sets:?}"
            );
        }
        // Every Lease verb but create is limited to the Lease the operator is told to use.
        let lease = arg_value(&operator_args(&docs), "--leader-election-lease");
        for rule in one(&docs, "Role")["rules"].as_array().expect("rules") {
            let verbs = rule["verbs"].as_array().expect("verbs");
            if verbs.iter().any(|v| v != "create") {
                assert_eq!(
                    rule["resourceNames"],
                    serde_json::json!([lease]),
                    "{sets:?}: {rule}"
                );
            }
        }
        // No wildcards anywhere.
        for role in find(&docs, "ClusterRole")
            .into_iter()
            .chain(find(&docs, "Role"))
        {
            for rule in role["rules"].as_array().expect("rules") {
                for key in ["apiGroups", "resources", "verbs"] {
                    assert!(
                        rule[key].as_array().expect("list").iter().all(|v| v != "*"),
                        "{} {}: wildcard in {key}",
                        kind(role),
                        name(role)
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// documentation

/// Every top-level key of values.yaml is in the README's values table, and every key the table
/// names exists in values.yaml.
#[test]
fn readme_documents_every_value() {
    let chart = repo_root().join(CHART);
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart.join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let readme = std::fs::read_to_string(chart.join("README.md")).expect("README");
    let section = readme
        .split_once("\n## Values\n")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("README has a `## Values` section");
    let keys: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(key, _)| key.to_owned()))
        .filter(|key| !key.contains(' '))
        .collect();
    let mut failures = Vec::new();
    for top in values.as_object().expect("values map").keys() {
        if !keys
            .iter()
            .any(|k| k == top || k.starts_with(&format!("{top}.")))
        {
            failures.push(format!("values.yaml key {top} is not in the README"));
        }
    }
    for key in &keys {
        let mut node = &values;
        for part in key.split('.') {
            node = &node[part];
        }
        if node.is_null() {
            failures.push(format!(
                "README documents {key}, which values.yaml does not have"
            ));
        }
    }
    assert!(keys.len() >= 20, "README values table not found: {keys:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn network_policies_are_on_by_default_and_the_operator_admits_only_its_ports() {
    let docs = documents(&render(&[]));
    let policy = one(&docs, "NetworkPolicy");
    let deployment = one(&docs, "Deployment");
    assert!(
        selects(
            &policy["spec"]["podSelector"]["matchLabels"],
            &deployment["spec"]["template"]["metadata"]["labels"]
        ),
        "the policy selects the operator pods: {policy}"
    );
    assert_eq!(
        policy["spec"]["ingress"],
        serde_json::json!([{"ports": [{"port": 8080, "protocol": "TCP"}, {"port": 8081, "protocol": "TCP"}]}])
    );
    // The labels the groups' policies admit are the operator pods' own.
    let args = operator_args(&docs);
    let labels = arg_value(&args, "--operator-pod-labels");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for pair in labels.split(',') {
        let (k, v) = pair.split_once('=').expect("key=value");
        assert_eq!(pod_labels[k], v, "{k} in {pod_labels}");
    }
    let off = documents(&render(&["networkPolicy.enabled=false"]));
    assert!(find(&off, "NetworkPolicy").is_empty());
    assert_eq!(
        arg_value(&operator_args(&off), "--network-policies"),
        "false"
    );
}
