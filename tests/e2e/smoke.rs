//! Smoke suite of the test bed: a real node, images, Services, DNS, volumes, the CRD on a real
//! API server (with the whole invalid-manifest table) and the Helm chart.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use serde_json::json;

use crate::manifests;
use crate::support::{BUSYBOX, Ctx, restricted_container, testapp_container, wait_for};
use crate::tests;

pub fn tests() -> Vec<crate::support::Test> {
    tests![
        node_is_ready,
        service_cidr_and_pods_stay_on_the_machine,
        local_image_pod_is_reachable_through_a_cluster_ip,
        headless_pod_name_resolves_from_another_pod,
        pod_dns_does_not_resolve_outside_names,
        volume_data_survives_pod_recreation,
        crd_applies_server_side_and_explains_its_fields,
        api_server_rejects_every_invalid_manifest,
    ]
}

/// Run after every other phase: the chart must install and uninstall without leftovers.
pub fn last_tests() -> Vec<crate::support::Test> {
    tests![helm_install_and_uninstall_leave_nothing_behind]
}

async fn node_is_ready(ctx: Ctx) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let list = nodes.list(&Default::default()).await?;
    ensure!(!list.items.is_empty(), "the cluster has no node");
    for node in &list.items {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        ensure!(
            ready.as_deref() == Some("True"),
            "node {} not Ready: {ready:?}",
            node.metadata.name.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

fn route_device(ip: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["route", "get", ip])
        .output()
        .context("ip route get")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no device in `ip route get {ip}`: {text}"))
}

/// The network safety rule: Service IPs and pod IPs never leave the machine. On the test bed
/// (docs/testbed.md) the Service CIDR is routed onto the port-less bridge `quorate0`, each
/// node's pods through that node's veth `qnode<i>`, and a pod IP no node has is unreachable.
async fn service_cidr_and_pods_stay_on_the_machine(ctx: Ctx) -> Result<()> {
    if std::env::var("E2E_ENV").as_deref() == Ok("kind") {
        // kind routes through its node containers; these routes are the local test bed's.
        return Ok(());
    }
    let svc_ip = ctx.kubectl(&[
        "get",
        "service",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(
        route_device(&svc_ip)? == "quorate0",
        "Service IP {svc_ip} does not route via quorate0"
    );
    // An unallocated Service IP too: a DNAT miss must stay on the machine.
    ensure!(
        route_device("10.96.254.254")? == "quorate0",
        "the Service CIDR is not routed via quorate0"
    );
    let unassigned = Command::new("ip")
        .args(["route", "get", "10.88.250.1"])
        .output()
        .context("ip route get")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&unassigned.stdout),
        String::from_utf8_lossy(&unassigned.stderr)
    );
    ensure!(
        !unassigned.status.success() || text.contains("unreachable"),
        "a pod IP no node has is routed: {text}"
    );
    let ns = ctx.namespace("smoke-route")?;
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&sleeper_pod("probe").to_string()),
    )?;
    let (ip, node) = wait_for("a pod IP", Duration::from_secs(60), || async {
        let pod = Api::<Pod>::namespaced(ctx.client.clone(), &ns.name)
            .get("probe")
            .await?;
        let node = pod.spec.and_then(|s| s.node_name);
        Ok(pod.status.and_then(|s| s.pod_ip).zip(node))
    })
    .await?;
    let veth = format!(
        "qnode{}",
        node.strip_prefix("quorate-node-")
            .with_context(|| format!("node {node} is not a test-bed node"))?
    );
    ensure!(
        route_device(&ip)? == veth,
        "pod IP {ip} on {node} does not route via {veth}"
    );
    Ok(())
}

fn sleeper_pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "sh", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
            "command": ["sleep", "3600"], "securityContext": restricted_container()}]}})
}

async fn wait_pod_ready(ctx: &Ctx, ns: &str, name: &str) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    wait_for(
        &format!("pod {ns}/{name} Ready"),
        Duration::from_secs(90),
        || async {
            let pod = api.get(name).await?;
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Ok(ready.then_some(pod))
        },
    )
    .await
}

/// Runs a busybox pod to completion and returns its log.
async fn run_to_completion(ctx: &Ctx, ns: &str, name: &str, script: &str) -> Result<String> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "sh", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script], "securityContext": restricted_container()}]}});
    ctx.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], Some(&pod.to_string()))?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let phase = wait_for(
        &format!("pod {name} to finish"),
        Duration::from_secs(90),
        || async {
            let p = api.get(name).await?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
        },
    )
    .await?;
    let log = ctx.kubectl(&["logs", "-n", ns, name])?;
    ensure!(phase == "Succeeded", "pod {name} {phase}: {log}");
    Ok(log)
}

async fn local_image_pod_is_reachable_through_a_cluster_ip(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace("smoke-svc")?;
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "labels": {"app": "smoke"}},
         "spec": {"containers": [testapp_container(&ctx.image)]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
         "spec": {"selector": {"app": "smoke"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]});
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&manifest.to_string()),
    )?;
    wait_pod_ready(&ctx, &ns.name, "app").await?;
    let ip = ctx.kubectl(&[
        "get",
        "service",
        "app",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    // From the host (kube-proxy's OUTPUT rules) ...
    let body = wait_for(
        "the Service to answer from the host",
        Duration::from_secs(30),
        || async {
            let (status, body) = ctx.http_get(&format!("http://{ip}/"), None).await?;
            Ok((status == 200).then_some(body))
        },
    )
    .await?;
    ensure!(
        body.contains("\"member\""),
        "unexpected answer from the test workload: {body}"
    );
    // ... and from another pod (PREROUTING, hairpin on the bridge).
    let log = run_to_completion(
        &ctx,
        &ns.name,
        "client",
        // Bounded retries: the first pods after a cold start can run before kube-proxy has
        // programmed the Service in PREROUTING; every failed attempt is printed.
        &format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do \
               out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80 2>&1) \
                 && [ -n \"$out\" ] && {{ printf '%s\\n' \"$out\"; exit 0; }}; \
               echo \"attempt $i: no answer from {ip}:80 ($out)\"; sleep 1; \
             done"
        ),
    )
    .await?;
    ensure!(
        log.contains("200 OK") && log.contains("\"member\""),
        "pod-to-Service request failed: {log}"
    );
    Ok(())
}

async fn headless_pod_name_resolves_from_another_pod(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace("smoke-dns")?;
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
         "spec": {"clusterIP": "None", "selector": {"app": "dns"}, "ports": [{"port": 7470}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "member-0", "labels": {"app": "dns"}},
         "spec": {"hostname": "member-0", "subdomain": "peers", "terminationGracePeriodSeconds": 0,
                  "containers": [{"name": "sh", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"], "securityContext": restricted_container()}]}},
    ]});
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&manifest.to_string()),
    )?;
    let pod = wait_pod_ready(&ctx, &ns.name, "member-0").await?;
    let ip = pod.status.and_then(|s| s.pod_ip).context("pod IP")?;
    let fqdn = format!("member-0.peers.{}.svc.cluster.local", ns.name);
    let log = run_to_completion(&ctx, &ns.name, "resolver", &format!("nslookup {fqdn}")).await?;
    ensure!(log.contains(&ip), "{fqdn} did not resolve to {ip}: {log}");
    Ok(())
}

/// Pod DNS has no upstream: names outside the cluster never resolve.
async fn pod_dns_does_not_resolve_outside_names(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace("smoke-nodns")?;
    let log =
        run_to_completion(&ctx, &ns.name, "outside", "nslookup example.com 2>&1; true").await?;
    ensure!(
        !log.contains("Address: ") || log.matches("Address:").count() == 1,
        "example.com resolved from a pod: {log}"
    );
    ensure!(
        log.contains("SERVFAIL") || log.contains("can't find"),
        "unexpected lookup result: {log}"
    );
    Ok(())
}

async fn volume_data_survives_pod_recreation(ctx: Ctx) -> Result<()> {
    let ns = ctx.namespace("smoke-pvc")?;
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}});
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&claim.to_string()),
    )?;
    let pod = |script: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "writer"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "sh", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script], "volumeMounts": [{"name": "data", "mountPath": "/data"}], "securityContext": restricted_container()}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}})
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns.name);
    let finish = || async {
        wait_for(
            "the writer pod to succeed",
            Duration::from_secs(90),
            || async {
                let p = api.get("writer").await?;
                match p.status.and_then(|s| s.phase).as_deref() {
                    Some("Succeeded") => Ok(Some(())),
                    Some("Failed") => bail!(
                        "writer failed: {}",
                        ctx.kubectl(&["logs", "-n", &ns.name, "writer"])
                            .unwrap_or_default()
                    ),
                    _ => Ok(None),
                }
            },
        )
        .await
    };
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&pod("echo kept-across-pods > /data/marker").to_string()),
    )?;
    finish().await?;
    let phase = ctx.kubectl(&[
        "get",
        "pvc",
        "data",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.status.phase}",
    ])?;
    ensure!(phase == "Bound", "the claim is {phase}, not Bound");
    ctx.kubectl(&["delete", "pod", "writer", "-n", &ns.name, "--wait=true"])?;
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&pod("cat /data/marker").to_string()),
    )?;
    finish().await?;
    let log = ctx.kubectl(&["logs", "-n", &ns.name, "writer"])?;
    ensure!(
        log.trim() == "kept-across-pods",
        "data did not survive the pod: {log:?}"
    );
    Ok(())
}

/// Installs (idempotently) the CRD with server-side apply, as a user would.
pub fn apply_crd(ctx: &Ctx) -> Result<()> {
    let dir = ctx.root.join("crds");
    ctx.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &dir.to_string_lossy(),
    ])?;
    // `kubectl wait` fails at once, instead of waiting, while a fresh CRD has no conditions yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match ctx.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/replicagroups.quorate.dev",
            "--timeout=60s",
        ]) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.to_string().contains("accessor error")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn crd_applies_server_side_and_explains_its_fields(ctx: Ctx) -> Result<()> {
    apply_crd(&ctx)?;
    let explain = wait_for(
        "kubectl explain to know the CRD",
        Duration::from_secs(30),
        || async { Ok(ctx.kubectl(&["explain", "replicagroup.spec"]).ok()) },
    )
    .await?;
    for text in [
        "How the members share work",
        "replicas",
        "witnesses",
        "failover",
        "traffic",
    ] {
        ensure!(
            explain.contains(text),
            "`kubectl explain replicagroup.spec` lacks {text:?}:\n{explain}"
        );
    }
    let failover = ctx.kubectl(&["explain", "replicagroup.spec.failover.leaseMillis"])?;
    let flowing = failover.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure!(
        flowing.contains("200 to 60000 milliseconds"),
        "leaseMillis explain text missing its bounds:\n{failover}"
    );
    Ok(())
}

/// The foundation's table, replayed against the real API server.
async fn api_server_rejects_every_invalid_manifest(ctx: Ctx) -> Result<()> {
    apply_crd(&ctx)?;
    let ns = ctx.namespace("smoke-invalid")?;
    let mut failures = Vec::new();
    for case in manifests::invalid_cases() {
        let doc = |v: &serde_json::Value| serde_json::to_string(v).expect("json");
        let stderr = if let Some(old) = &case.old {
            ctx.kubectl_stdin(&["create", "-n", &ns.name, "-f", "-"], Some(&doc(old)))
                .with_context(|| format!("{}: creating the existing object", case.name))?;
            // An operator installed by an earlier run may write the new object meanwhile (its
            // status): a conflict is not the answer under test, so the replace is tried again.
            let mut r = ctx.kubectl_fails(
                &["replace", "-n", &ns.name, "-f", "-"],
                Some(&doc(&case.object)),
            );
            for _ in 0..5 {
                if !r.as_ref().is_ok_and(|stderr| stderr.contains("(Conflict)")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                r = ctx.kubectl_fails(
                    &["replace", "-n", &ns.name, "-f", "-"],
                    Some(&doc(&case.object)),
                );
            }
            ctx.kubectl(&["delete", "-n", &ns.name, "-f", "-", "--wait=false"])
                .ok();
            let _ = ctx.kubectl_stdin(
                &["delete", "-n", &ns.name, "-f", "-", "--wait=true"],
                Some(&doc(old)),
            );
            r
        } else {
            ctx.kubectl_fails(
                &["create", "-n", &ns.name, "-f", "-"],
                Some(&doc(&case.object)),
            )
        };
        match stderr {
            Ok(stderr) => {
                for expect in &case.expects {
                    if !stderr.contains(expect.as_str()) {
                        failures.push(format!(
                            "{}: expected {expect:?} in: {}",
                            case.name,
                            stderr.trim()
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: {e:#}", case.name)),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} case(s) not rejected as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Runs last: the operator installed by the operator phase (or now) must uninstall cleanly,
/// leaving only the CRD (crds.keep).
async fn helm_install_and_uninstall_leave_nothing_behind(ctx: Ctx) -> Result<()> {
    use crate::operator::{OPERATOR_NAMESPACE, RELEASE, ensure_operator, uninstall_operator};
    ensure_operator(&ctx).await?;
    let installed = labelled_objects(&ctx, RELEASE)?;
    ensure!(
        installed.iter().any(|o| o.starts_with("deployment")),
        "no operator Deployment after install: {installed:?}"
    );
    uninstall_operator(&ctx)?;
    let left = wait_for(
        "the release's objects to be gone",
        Duration::from_secs(60),
        || async {
            let left = labelled_objects(&ctx, RELEASE)?;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await;
    ctx.kubectl(&["delete", "namespace", OPERATOR_NAMESPACE, "--wait=false"])
        .ok();
    left.with_context(|| {
        format!(
            "left behind: {:?}",
            labelled_objects(&ctx, RELEASE).unwrap_or_default()
        )
    })?;
    // Except the CRD, on purpose (crds.keep): deleting it would delete every ReplicaGroup.
    let policy = ctx.kubectl(&[
        "get",
        "crd",
        "replicagroups.quorate.dev",
        "-o",
        "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
    ])?;
    ensure!(
        policy == "keep",
        "the CRD after helm uninstall: resource policy {policy:?}, wanted keep"
    );
    Ok(())
}

/// Every object (namespaced or not) labelled as part of a Helm release.
fn labelled_objects(ctx: &Ctx, release: &str) -> Result<Vec<String>> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let kinds = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,configmaps,secrets";
    let mut out = Vec::new();
    for (kinds, scope) in [
        (kinds, "--all-namespaces"),
        ("clusterroles,clusterrolebindings", ""),
    ] {
        let mut args = vec!["get", kinds, "-l", &selector, "-o", "name"];
        if !scope.is_empty() {
            args.push(scope);
        }
        out.extend(ctx.kubectl(&args)?.lines().map(|l| l.to_owned()));
    }
    Ok(out)
}
