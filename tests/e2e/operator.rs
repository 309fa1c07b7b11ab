//! The operator on a real cluster: install with Helm, groups from the example, failover, graceful
//! hand-off, scaling, switchover, pause, leader loss mid-failover, bad templates, clean deletion.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use quorate::api::ReplicaGroup;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::support::{Ctx, restricted_container, wait_for};
use crate::tests;

pub fn tests() -> Vec<crate::support::Test> {
    tests![
        crashed_primary_is_replaced_and_comes_back_as_a_backup,
        graceful_deletion_hands_over_at_once,
        scale_up_and_down_keeps_one_primary,
        switchover_through_the_kubectl_plugin,
        pause_and_resume_through_the_kubectl_plugin,
        fence_and_unfence_through_the_kubectl_plugin,
        leader_loss_during_a_failover_still_ends_routed,
        invalid_template_is_reported_without_a_crash_loop,
        deleting_a_group_removes_everything_it_created,
        objects_in_the_way_are_reported_and_never_taken_over,
        pods_refused_by_pod_security_are_reported_in_the_status,
        a_group_with_one_voter_has_no_disruption_budget,
        the_network_policy_admits_only_the_group_and_the_operator,
        a_lost_ca_is_an_incident_and_a_replaced_one_restarts_the_members,
        specs_whose_objects_the_api_server_refuses_are_reported,
        a_rolling_restart_through_the_plugin_changes_the_primary_once,
        a_new_member_certificate_rolls_the_members_with_traffic_running,
        a_template_change_rolls_the_members_with_one_switchover,
        a_rollback_during_a_roll_restarts_only_what_rolled_and_keeps_the_primary,
    ]
}

pub const OPERATOR_NAMESPACE: &str = "quorate-system";
pub const RELEASE: &str = "quorate";

static OPERATOR: OnceCell<()> = OnceCell::const_new();

/// How often the suites' operator reads the groups' Secrets again (1800 by default).
const SECRET_REREAD_SECONDS: u64 = 10;

/// The operator's pods before the suites installed the operator: on a kept test bed they run an
/// older build (and an older chart's rights) until the upgrade replaces them; the RBAC phase
/// leaves their requests out (tests/e2e/rbac.rs).
pub static EARLIER_OPERATOR_PODS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// What the operator is installed with besides the image and two replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorValues {
    /// What the suites need: Secrets re-read every `SECRET_REREAD_SECONDS` (the lost-CA test),
    /// debug logs.
    Suites,
    /// The chart's defaults, for benchmarks of the operator's own load.
    Defaults,
}

/// Installs the operator once per run (2 replicas, leader election), as a user would.
pub async fn ensure_operator(ctx: &Ctx) -> Result<()> {
    ensure_operator_with(ctx, OperatorValues::Suites).await
}

/// `ensure_operator` with `values`.
pub async fn ensure_operator_with(ctx: &Ctx, values: OperatorValues) -> Result<()> {
    OPERATOR
        .get_or_try_init(|| async {
            // Operator pods of an earlier install, which this upgrade replaces: their requests
            // are not this run's (tests/e2e/rbac.rs).
            let _ = EARLIER_OPERATOR_PODS.set(operator_pods(ctx)?);
            crate::smoke::apply_crd(ctx)?;
            install_chart(ctx, &ctx.root.join("charts/quorate"), &ctx.image, values)
        })
        .await
        .map(|_| ())
}

/// `helm upgrade --install` of the chart with `image` (operator and agents), as the suites run
/// it; also what `make bench-upgrade` upgrades with (another tag of the same build).
pub fn install_operator(ctx: &Ctx, image: &str) -> Result<()> {
    install_chart(
        ctx,
        &ctx.root.join("charts/quorate"),
        image,
        OperatorValues::Suites,
    )
}

/// `helm upgrade --install` of `chart` (a directory or a packaged chart) with the suites' values.
/// `--take-ownership`: the smoke phase applies the CRD with kubectl, as a user who manages it
/// outside Helm would, and a kept test bed may hold one installed from an older chart's crds/
/// folder; the chart templates the CRD and takes it over, the documented way
/// (charts/quorate/README.md, "CRDs").
pub fn install_chart(
    ctx: &Ctx,
    chart: &std::path::Path,
    image: &str,
    values: OperatorValues,
) -> Result<()> {
    let (repo, tag) = image.rsplit_once(':').context("image tag")?;
    // A rebuilt image keeps its tag: its digest on the pods makes helm roll them.
    let image_id = std::env::var("QUORATE_IMAGE_ID").unwrap_or_default();
    let image_id = format!("podAnnotations.quorate\\.dev/image-id={image_id}");
    let reread = format!("extraArgs[0]=--secret-reread-seconds={SECRET_REREAD_SECONDS}");
    let suites = [
        "--set",
        "logFormat=text",
        "--set",
        "logLevel=debug",
        // The suites delete a group's CA Secret and wait for the report.
        "--set",
        &reread,
    ];
    let suites: &[&str] = match values {
        OperatorValues::Suites => &suites,
        OperatorValues::Defaults => &[],
    };
    let chart = chart.to_string_lossy();
    let repository = format!("image.repository={repo}");
    let tag = format!("image.tag={tag}");
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        &chart,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        &repository,
        "--set",
        &tag,
        "--set",
        "replicaCount=2",
        "--set-string",
        &image_id,
        "--take-ownership",
        "--wait",
        "--timeout",
        "180s",
    ];
    args.extend_from_slice(suites);
    ctx.helm(&args)?;
    Ok(())
}

/// `helm uninstall` of the suites' release, waiting for its objects to go (the CRD stays:
/// crds.keep).
pub fn uninstall_operator(ctx: &Ctx) -> Result<()> {
    ctx.helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
    ])?;
    Ok(())
}

/// The names of the operator's pods now (none before the first install).
pub fn operator_pods(ctx: &Ctx) -> Result<Vec<String>> {
    let listed = ctx.kubectl(&[
        "get",
        "pods",
        "-n",
        OPERATOR_NAMESPACE,
        "--ignore-not-found",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    Ok(listed.split_whitespace().map(str::to_owned).collect())
}

/// A group running the test workload: the example's shape with an image the test bed has.
pub fn test_group(ctx: &Ctx, name: &str, mode: &str, replicas: i32) -> Value {
    let mut container = json!({
        "name": "app", "image": ctx.image, "imagePullPolicy": "IfNotPresent",
        "command": ["/quorate-testapp"], "args": ["--listen", "0.0.0.0:8080", "--role-file", "/run/quorate/role"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    });
    container["securityContext"] = restricted_container();
    json!({
        "apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup", "metadata": {"name": name},
        "spec": {
            "mode": mode, "replicas": replicas,
            "ports": [{"name": "http", "port": 8080}],
            "health": {"httpGet": {"port": 8080, "path": "/healthz"}, "periodMillis": 250, "failureThreshold": 2, "timeoutMillis": 200},
            "roleChange": {"httpPost": {"port": 8080, "path": "/quorate/role"}, "timeoutMillis": 500, "retries": 1},
            "storage": {"size": "16Mi"},
            "template": {"spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}},
        }
    })
}

pub fn groups(ctx: &Ctx, ns: &str) -> Api<ReplicaGroup> {
    Api::namespaced(ctx.client.clone(), ns)
}

fn condition_true(g: &ReplicaGroup, type_: &str) -> bool {
    g.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// The objects of `kinds` in `ns` that match the label `selector`, as `kind/name`.
pub fn labelled(ctx: &Ctx, ns: &str, kinds: &str, selector: &str) -> Result<Vec<String>> {
    let listed = ctx.kubectl(&["get", kinds, "-n", ns, "-l", selector, "-o", "name"])?;
    Ok(listed.lines().map(str::to_owned).collect())
}

/// The messages of the Events with `reason` in `ns`, space-separated.
pub fn event_messages(ctx: &Ctx, ns: &str, reason: &str) -> Result<String> {
    ctx.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("reason={reason}"),
        "-o",
        "jsonpath={.items[*].message}",
    ])
}

pub async fn wait_ready(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<ReplicaGroup> {
    let api = groups(ctx, ns);
    let last = std::sync::Mutex::new(String::new());
    let r = wait_for(
        &format!("ReplicaGroup {ns}/{name} Ready"),
        timeout,
        || async {
            let g = api.get(name).await?;
            if let Some(s) = &g.status {
                *last.lock().expect("lock") =
                    serde_json::to_string(&s.conditions).unwrap_or_default();
            }
            Ok(condition_true(&g, "Ready").then_some(g))
        },
    )
    .await;
    r.with_context(|| format!("last conditions: {}", last.lock().expect("lock")))
}

/// The addresses in the EndpointSlice `name`.
pub async fn slice_addresses(ctx: &Ctx, ns: &str, name: &str) -> Result<Vec<String>> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let s = api.get(name).await?;
    Ok(s.endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect())
}

/// The addresses in the `-rw` EndpointSlice and its epoch annotation.
pub async fn rw_slice(ctx: &Ctx, ns: &str, group: &str) -> Result<(Vec<String>, Option<u64>)> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let s = api.get(&format!("{group}-rw")).await?;
    let epoch = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("quorate.dev/epoch"))
        .and_then(|e| e.parse().ok());
    Ok((
        s.endpoints
            .iter()
            .flat_map(|e| e.addresses.clone())
            .collect(),
        epoch,
    ))
}

pub async fn pod_ip(ctx: &Ctx, ns: &str, pod: &str) -> Result<Option<String>> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .get_opt(pod)
        .await?
        .and_then(|p| p.status)
        .and_then(|s| s.pod_ip))
}

pub async fn service_ip(ctx: &Ctx, ns: &str, service: &str) -> Result<String> {
    ctx.kubectl(&[
        "get",
        "service",
        service,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
}

/// Asks the member behind a Service who it is (the test workload answers with its identity).
pub async fn who_answers(ctx: &Ctx, ip: &str) -> Result<Value> {
    let (status, body) = ctx.http_get(&format!("http://{ip}:8080/"), None).await?;
    ensure!(status == 200, "HTTP {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// One look at the control plane: the group's primary above epoch `after`, and `NAME-rw`'s
/// EndpointSlice routing that pod alone, at that epoch. Every suite adds its own check that the
/// workload behind `NAME-rw` answers as the primary.
pub async fn routed_primary(
    ctx: &Ctx,
    ns: &str,
    group: &str,
    after: u64,
) -> Result<Option<(String, u64)>> {
    let status = groups(ctx, ns).get(group).await?.status;
    let Some((primary, epoch)) = status.and_then(|s| Some((s.primary?, s.epoch? as u64))) else {
        return Ok(None);
    };
    if epoch <= after {
        return Ok(None);
    }
    let (addresses, slice_epoch) = rw_slice(ctx, ns, group).await?;
    let ip = pod_ip(ctx, ns, &primary).await?;
    let routed =
        addresses.len() == 1 && Some(&addresses[0]) == ip.as_ref() && slice_epoch == Some(epoch);
    Ok(routed.then_some((primary, epoch)))
}

/// Waits until the group has a primary above epoch `after`, routed by `-rw`, and the test app
/// through `-rw` answers as that primary. Returns (primary, epoch).
pub async fn wait_routed_primary(
    ctx: &Ctx,
    ns: &str,
    group: &str,
    after: u64,
    timeout: Duration,
) -> Result<(String, u64)> {
    let rw = service_ip(ctx, ns, &format!("{group}-rw")).await?;
    wait_for(
        &format!("{group}: a primary routed above epoch {after}"),
        timeout,
        || async {
            let Some((primary, epoch)) = routed_primary(ctx, ns, group, after).await? else {
                return Ok(None);
            };
            let answer = who_answers(ctx, &rw).await?;
            Ok(
                (answer["member"] == primary.as_str() && answer["role"] == "Primary")
                    .then_some((primary, epoch)),
            )
        },
    )
    .await
}

/// A namespace with a Ready three-member group `db` of the test workload, and its routed primary
/// and epoch: where most of these tests start.
async fn routed_db(ctx: &Ctx, prefix: &str) -> Result<(crate::support::Namespace, String, u64)> {
    ensure_operator(ctx).await?;
    let ns = ctx.namespace(prefix)?;
    create_group(ctx, &ns.name, &test_group(ctx, "db", "PrimaryBackup", 3)).await?;
    wait_ready(ctx, &ns.name, "db", Duration::from_secs(180)).await?;
    let (primary, epoch) =
        wait_routed_primary(ctx, &ns.name, "db", 0, Duration::from_secs(30)).await?;
    Ok((ns, primary, epoch))
}

pub async fn create_group(ctx: &Ctx, ns: &str, group: &Value) -> Result<()> {
    ctx.kubectl_stdin(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(&group.to_string()),
    )?;
    Ok(())
}

async fn crashed_primary_is_replaced_and_comes_back_as_a_backup(ctx: Ctx) -> Result<()> {
    let (ns, old, epoch) = routed_db(&ctx, "op-crash").await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns.name);
    let started = Instant::now();
    pods.delete(
        &old,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let (new, new_epoch) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch, Duration::from_secs(30)).await?;
    eprintln!(
        "    crash failover {old} -> {new}: {} ms",
        started.elapsed().as_millis()
    );
    ensure!(new != old, "the deleted primary {old} is primary again");
    ensure!(
        new_epoch == epoch + 1,
        "epoch went {epoch} -> {new_epoch}, expected +1"
    );
    // The old pod comes back (StatefulSet) and rejoins as a backup; the group is Ready again.
    let g = wait_ready(&ctx, &ns.name, "db", Duration::from_secs(120)).await?;
    let status = g.status.context("status")?;
    let back = status
        .members
        .iter()
        .find(|m| m.name == old)
        .context("old member")?;
    ensure!(
        back.healthy && back.role == quorate::api::MemberRole::Backup,
        "{old} after the crash: {back:?}"
    );
    let f = status.last_failover.context("lastFailover")?;
    ensure!(
        f.to.as_deref() == Some(new.as_str())
            && f.routed_at.is_some()
            && f.duration_millis.is_some(),
        "lastFailover: {f:?}"
    );
    Ok(())
}

async fn graceful_deletion_hands_over_at_once(ctx: Ctx) -> Result<()> {
    let (ns, old, epoch) = routed_db(&ctx, "op-graceful").await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns.name);
    let started = Instant::now();
    pods.delete(&old, &DeleteParams::default()).await?;
    let (new, new_epoch) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch, Duration::from_secs(20)).await?;
    let took = started.elapsed();
    eprintln!(
        "    graceful hand-off {old} -> {new}: {} ms",
        took.as_millis()
    );
    ensure!(new != old);
    // The hand-off went through the released lease (no expiry wait); how fast that is on an
    // idle machine is `make bench-failover`'s business, not a timed assertion's.
    // No lease had to run out: the next epoch, and no failover event for a lease expiry.
    ensure!(
        new_epoch == epoch + 1,
        "epoch went {epoch} -> {new_epoch} after {took:?}"
    );
    let failovers = event_messages(&ctx, &ns.name, "Failover")?;
    ensure!(
        !failovers.contains("LeaseExpired"),
        "the hand-off after {took:?} waited for the lease to expire: {failovers}"
    );
    Ok(())
}

async fn scale_up_and_down_keeps_one_primary(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-scale")?;
    create_group(&ctx, &ns.name, &test_group(&ctx, "db", "PrimaryBackup", 3)).await?;
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(180)).await?;
    for replicas in [5, 3] {
        ctx.kubectl(&[
            "scale",
            "-n",
            &ns.name,
            "rg/db",
            &format!("--replicas={replicas}"),
        ])?;
        let g = wait_for(
            &format!("{replicas} healthy voting members"),
            Duration::from_secs(180),
            || async {
                let g = groups(&ctx, &ns.name).get("db").await?;
                let s = g.status.clone().unwrap_or_default();
                let members: Vec<_> = s
                    .members
                    .iter()
                    .filter(|m| !m.name.contains("witness"))
                    .collect();
                let ok = members.len() == replicas
                    && members.iter().all(|m| m.healthy && m.voter)
                    && condition_true(&g, "Ready");
                Ok(ok.then_some(g))
            },
        )
        .await?;
        let primaries = g.status.as_ref().map_or(0, |s| {
            s.members
                .iter()
                .filter(|m| m.role == quorate::api::MemberRole::Primary)
                .count()
        });
        ensure!(
            primaries == 1,
            "after scaling to {replicas}: {primaries} primaries"
        );
        // Pods of removed members finish terminating shortly after they left the group.
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns.name);
        wait_for(
            &format!("{replicas} member pods"),
            Duration::from_secs(60),
            || async {
                let n = pods
                    .list(
                        &ListParams::default()
                            .labels("quorate.dev/group=db,quorate.dev/component=member"),
                    )
                    .await?
                    .items
                    .len();
                Ok((n == replicas).then_some(()))
            },
        )
        .await?;
        // One per-member Service per member: none left of removed members.
        let expected: Vec<String> = (0..replicas).map(|i| format!("service/db-{i}")).collect();
        wait_for(
            &format!("the per-member Services of {replicas} members"),
            Duration::from_secs(60),
            || async {
                let per_member: Vec<String> =
                    labelled(&ctx, &ns.name, "services", "quorate.dev/group=db")?
                        .into_iter()
                        .filter(|l| {
                            l.strip_prefix("service/db-")
                                .is_some_and(|rest| rest.parse::<u32>().is_ok())
                        })
                        .collect();
                Ok((per_member == expected).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// A `kubectl quorate` command that runs until stopped (`status --watch`, `logs -f`), in the
/// background, its output collected.
struct Background {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Background {
    fn start(ctx: &Ctx, args: &[&str]) -> Result<Self> {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-quorate"))
            .arg("--kubeconfig")
            .arg(&ctx.kubeconfig)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("the watch's stdout")?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let collected = output.clone();
        // Ends when the process does (its stdout closes).
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut out = collected.lock().unwrap_or_else(|p| p.into_inner());
                out.push_str(&line);
                out.push('\n');
            }
        });
        Ok(Self { child, output })
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops it (it runs until interrupted) and checks it had not failed before.
    fn stop(mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("it ended by itself ({status}): {}", self.output());
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // A failed test must not leave the watch running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn plugin(ctx: &Ctx, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-quorate"))
        .arg("--kubeconfig")
        .arg(&ctx.kubeconfig)
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "kubectl quorate {} failed: {}{}",
            args.join(" "),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

async fn switchover_through_the_kubectl_plugin(ctx: Ctx) -> Result<()> {
    let (ns, old, epoch) = routed_db(&ctx, "op-switch").await?;
    let target = ["db-0", "db-1", "db-2"]
        .into_iter()
        .find(|m| *m != old)
        .context("a target")?;
    // `status --watch` shows every change, and `logs -f` every new line, until stopped.
    let watch = Background::start(&ctx, &["-n", &ns.name, "status", "db", "--watch"])?;
    let followed = Background::start(
        &ctx,
        &[
            "-n", &ns.name, "logs", "db", "-f", "--since", "1s", "--of", "agent",
        ],
    )?;
    let out = plugin(
        &ctx,
        &[
            "-n",
            &ns.name,
            "switchover",
            "db",
            "--to",
            target,
            "--timeout",
            "60s",
        ],
    )?;
    ensure!(out.contains(target), "plugin output: {out}");
    let (new, epoch2) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch, Duration::from_secs(30)).await?;
    ensure!(
        new == target && epoch2 == epoch + 1,
        "switched to {new} at epoch {epoch2}, asked for {target} after epoch {epoch}"
    );
    let status = plugin(&ctx, &["-n", &ns.name, "status", "db"])?;
    ensure!(
        status.contains(target) && status.contains("Primary"),
        "status output: {status}"
    );
    ensure!(
        status.contains("Events") && status.contains("Switchover"),
        "status shows no Switchover Event: {status}"
    );
    let primary_line = |view: &str, key: &str| -> Option<String> {
        view.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let views = wait_for(
        "status --watch to show the new primary",
        Duration::from_secs(30),
        || async {
            let out = watch.output();
            let last = out.rsplit("--- ").next().unwrap_or_default().to_owned();
            let shown = primary_line(&last, "Primary:").as_deref() == Some(target)
                && primary_line(&last, "Epoch:") == Some(epoch2.to_string());
            Ok(shown.then(|| out.matches("--- ").count()))
        },
    )
    .await
    .with_context(|| format!("status --watch printed: {}", watch.output()))?;
    ensure!(views >= 2, "status --watch printed {views} view(s)");
    watch.stop()?;
    // The switchover's lines of the agents, as they were written.
    wait_for(
        "logs -f to print the agents' lines of the switchover",
        Duration::from_secs(30),
        || async {
            let out = followed.output();
            Ok(out
                .lines()
                .any(|l| l.contains(&format!("{target}/quorate-agent")))
                .then_some(()))
        },
    )
    .await
    .with_context(|| format!("logs -f printed: {}", followed.output()))?;
    followed.stop()?;

    // The logs of every member in time order (the test workload writes none of its own).
    let logs = plugin(&ctx, &["-n", &ns.name, "logs", "db", "--since", "10m"])?;
    for member in ["db-0", "db-1", "db-2"] {
        ensure!(
            logs.contains(&format!(" {member}/quorate-agent ")),
            "no lines of {member}'s agent in: {logs}"
        );
    }
    let times: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| !t.starts_with('-'))
        .collect();
    ensure!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "the lines are not in time order: {logs}"
    );
    let agents = plugin(&ctx, &["-n", &ns.name, "logs", "db", "--of", "agent"])?;
    ensure!(
        !agents.is_empty() && !agents.contains("/app "),
        "--of agent: {agents}"
    );
    let workload = plugin(&ctx, &["-n", &ns.name, "logs", "db", "--of", "workload"])?;
    ensure!(
        !workload.contains("/quorate-agent "),
        "--of workload: {workload}"
    );
    // A report: everything a bug report needs, no key material.
    let dir = std::env::temp_dir().join(format!("quorate-e2e-report-{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    let out = plugin(
        &ctx,
        &["-n", &ns.name, "report", "db", "--output-dir", &dir_arg],
    )?;
    ensure!(out.contains("report written to"), "{out}");
    let read =
        |file: &str| std::fs::read_to_string(dir.join(file)).with_context(|| file.to_owned());
    ensure!(read("status.txt")?.contains("Switchover"), "status.txt");
    let objects = read("objects.yaml")?;
    for kind in [
        "kind: StatefulSet",
        "kind: Pod",
        "kind: EndpointSlice",
        "kind: Secret",
    ] {
        ensure!(objects.contains(kind), "objects.yaml lacks {kind}");
    }
    ensure!(
        read("events.txt")?.contains("ReplicaGroup/db"),
        "events.txt"
    );
    ensure!(
        read(&format!("agents/{target}.json"))?.contains("Primary"),
        "agents/{target}.json"
    );
    ensure!(
        !read("logs/db-0_quorate-agent.log")?.is_empty(),
        "the agent's log"
    );
    ensure!(read("README.txt")?.contains("Redacted"), "README.txt");
    for entry in walk(&dir)? {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        ensure!(
            !text.contains("PRIVATE KEY") && !text.contains("BEGIN CERTIFICATE"),
            "key material in {}",
            entry.display()
        );
    }
    std::fs::remove_dir_all(&dir)?;

    for command in ["status", "logs", "report"] {
        let missing = plugin(&ctx, &["-n", &ns.name, command, "nosuch"])
            .expect_err("a missing group is an error")
            .to_string();
        ensure!(
            missing.contains(&format!(
                "replicagroup \"nosuch\" not found in namespace \"{}\"",
                ns.name
            )),
            "{command}: {missing}"
        );
    }

    Ok(())
}

/// Pause freezes every automatic change of primary, the operator's own hand-off from a
/// terminating primary pod included; resume lets the group replace the lost primary.
async fn fence_and_unfence_through_the_kubectl_plugin(ctx: Ctx) -> Result<()> {
    let (ns, primary, epoch) = routed_db(&ctx, "op-fence").await?;
    let backups: Vec<&str> = ["db-0", "db-1", "db-2"]
        .into_iter()
        .filter(|m| *m != primary)
        .collect();
    let (fenced, other) = (backups[0], backups[1]);
    let ip = |m: String| {
        let ctx = ctx.clone();
        let ns = ns.name.clone();
        async move { pod_ip(&ctx, &ns, &m).await?.context("a pod IP") }
    };
    let (fenced_ip, other_ip, primary_ip) = (
        ip(fenced.to_owned()).await?,
        ip(other.to_owned()).await?,
        ip(primary.clone()).await?,
    );
    let out = plugin(&ctx, &["-n", &ns.name, "fence", "db", fenced])?;
    ensure!(
        out.contains(&format!("{fenced} fenced")),
        "plugin output: {out}"
    );
    // Out of the read traffic, still running and healthy.
    wait_for(
        "the fenced member out of db-ro",
        Duration::from_secs(30),
        || async {
            let ro = slice_addresses(&ctx, &ns.name, "db-ro").await?;
            Ok((!ro.contains(&fenced_ip) && ro.contains(&other_ip)).then_some(()))
        },
    )
    .await?;
    let r = slice_addresses(&ctx, &ns.name, "db-r").await?;
    ensure!(
        !r.contains(&fenced_ip),
        "db-r still routes to {fenced}: {r:?}"
    );
    let g = groups(&ctx, &ns.name).get("db").await?;
    let member = g
        .status
        .as_ref()
        .and_then(|s| s.members.iter().find(|m| m.name == fenced).cloned());
    ensure!(
        member
            .as_ref()
            .is_some_and(|m| m.fenced && m.healthy && m.weight == 0),
        "{fenced} in the status: {member:?}"
    );
    // The primary: switched away first, to the only candidate left.
    let out = plugin(
        &ctx,
        &["-n", &ns.name, "fence", "db", &primary, "--timeout", "90s"],
    )?;
    ensure!(
        out.contains(&format!("{primary} fenced")),
        "plugin output: {out}"
    );
    let (new, epoch2) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch, Duration::from_secs(30)).await?;
    ensure!(
        new == other && epoch2 == epoch + 1,
        "after fencing the primary {primary}: {new} at epoch {epoch2}, wanted {other} at {}",
        epoch + 1
    );
    // The last candidate: refused, saying why, and nothing changes.
    let refused = plugin(&ctx, &["-n", &ns.name, "fence", "db", other])
        .err()
        .context("fencing the only healthy, unfenced member must fail")?
        .to_string();
    ensure!(
        refused.contains("no healthy, unfenced member") && refused.contains(&ns.name),
        "refusal: {refused}"
    );
    // Unfenced, both serve reads again.
    for m in [fenced, primary.as_str()] {
        let out = plugin(&ctx, &["-n", &ns.name, "unfence", "db", m])?;
        ensure!(
            out.contains(&format!("{m} unfenced")),
            "plugin output: {out}"
        );
    }
    wait_for(
        "both members back in db-ro",
        Duration::from_secs(30),
        || async {
            let ro = slice_addresses(&ctx, &ns.name, "db-ro").await?;
            Ok((ro.contains(&fenced_ip) && ro.contains(&primary_ip)).then_some(()))
        },
    )
    .await?;
    let g = groups(&ctx, &ns.name).get("db").await?;
    ensure!(
        g.spec.fenced_members.is_empty()
            && g.status
                .as_ref()
                .is_some_and(|s| s.members.iter().all(|m| !m.fenced)),
        "still fenced: {:?} {:?}",
        g.spec.fenced_members,
        g.status.map(|s| s.members)
    );
    Ok(())
}

async fn pause_and_resume_through_the_kubectl_plugin(ctx: Ctx) -> Result<()> {
    let (ns, new, epoch2) = routed_db(&ctx, "op-pause").await?;
    // Paused: a crashed primary is not replaced; routing drains it once its lease is gone.
    plugin(&ctx, &["-n", &ns.name, "pause", "db"])?;
    wait_for(
        "the group to report paused",
        Duration::from_secs(30),
        || async {
            let g = groups(&ctx, &ns.name).get("db").await?;
            let paused_event = ctx.kubectl(&[
                "get",
                "events",
                "-n",
                &ns.name,
                "--field-selector",
                "reason=Paused",
                "-o",
                "name",
            ])?;
            Ok((g.spec.paused && !paused_event.trim().is_empty()).then_some(()))
        },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns.name);
    pods.delete(
        &new,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let g = groups(&ctx, &ns.name).get("db").await?;
    ensure!(
        g.status.as_ref().and_then(|s| s.epoch) == Some(epoch2 as i64),
        "a primary was appointed while paused: {:?}",
        g.status
    );
    let (rw, _) = rw_slice(&ctx, &ns.name, "db").await?;
    ensure!(
        rw.is_empty()
            || pod_ip(&ctx, &ns.name, &new)
                .await?
                .is_some_and(|ip| rw == vec![ip]),
        "-rw routes elsewhere while paused: {rw:?}"
    );
    plugin(&ctx, &["-n", &ns.name, "resume", "db"])?;
    let (after, _) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch2, Duration::from_secs(60)).await?;
    eprintln!("    resumed: primary {after}");
    Ok(())
}

async fn leader_loss_during_a_failover_still_ends_routed(ctx: Ctx) -> Result<()> {
    let (ns, old, epoch) = routed_db(&ctx, "op-ha").await?;
    let holder = lease_holder(&ctx)?;
    ensure!(!holder.is_empty(), "no operator holds the lease");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns.name);
    let operators: Api<Pod> = Api::namespaced(ctx.client.clone(), OPERATOR_NAMESPACE);
    pods.delete(
        &old,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    operators
        .delete(
            &holder,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    let (new, _) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch, Duration::from_secs(90)).await?;
    ensure!(new != old);
    // A pod deleted with grace 0 still runs until the kubelet kills it, so the old leader may
    // have routed the failover itself in its last moments. Either way the standby must take
    // the lease once it runs out unrenewed (15 s), and then route from the group's state.
    let taken_over = wait_for(
        "the standby operator takes the lease",
        Duration::from_secs(45),
        || async {
            let now = lease_holder(&ctx)?;
            Ok((!now.is_empty() && now != holder).then_some(now))
        },
    )
    .await;
    let holder2 = taken_over
        .with_context(|| format!("the killed operator {holder} still holds the lease"))?;
    println!("    lease moved {holder} -> {holder2}");
    let (routed, _) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch, Duration::from_secs(30)).await?;
    ensure!(routed != old, "the new leader routes the old primary {old}");
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(120)).await?;
    Ok(())
}

/// Which operator replica holds the leader lease (its pod name; empty when none does).
pub fn lease_holder(ctx: &Ctx) -> Result<String> {
    ctx.kubectl(&[
        "get",
        "lease",
        RELEASE,
        "-n",
        OPERATOR_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

/// Restart counts of the operator's pods, by pod name.
fn operator_restarts(ctx: &Ctx) -> Result<Vec<(String, u64)>> {
    let out = ctx.kubectl(&["get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=quorate", "-o", r#"jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount}{"\n"}{end}"#])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(pod, n)| (pod.to_string(), n.trim().parse().unwrap_or(0)))
        .collect())
}

async fn invalid_template_is_reported_without_a_crash_loop(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-invalid")?;
    // Restarts for other reasons (a lost leader lease under load, a test killing the leader)
    // are not this test's business: only what happens while the invalid group exists counts.
    let restarts_before = operator_restarts(&ctx)?;
    // A reserved container name is refused by the API server itself, naming the field.
    let mut reserved = test_group(&ctx, "bad", "PrimaryBackup", 3);
    reserved["spec"]["template"]["spec"]["containers"][0]["name"] = json!("quorate-agent");
    let refused = ctx.kubectl_fails(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&reserved.to_string()),
    )?;
    ensure!(
        refused.contains("spec.template.spec.containers") && refused.contains("reserved"),
        "{refused}"
    );
    // What only the operator checks is reported in the status and an Event.
    let mut group = test_group(&ctx, "bad", "PrimaryBackup", 3);
    group["spec"]["template"]["spec"]["automountServiceAccountToken"] = json!(true);
    create_group(&ctx, &ns.name, &group).await?;
    let g = wait_for(
        "a Degraded condition naming the template",
        Duration::from_secs(60),
        || async {
            let g = groups(&ctx, &ns.name).get("bad").await?;
            let degraded = g
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded").cloned());
            Ok(degraded
                .filter(|c| c.status == "True" && c.reason == "InvalidTemplate")
                .map(|c| (g, c)))
        },
    )
    .await?;
    ensure!(
        g.1.message.contains("automountServiceAccountToken"),
        "message: {}",
        g.1.message
    );
    let events = event_messages(&ctx, &ns.name, "InvalidTemplate")?;
    ensure!(
        events.contains("automountServiceAccountToken"),
        "no InvalidTemplate event: {events}"
    );
    let sts = ctx.kubectl(&["get", "statefulsets", "-n", &ns.name, "-o", "name"])?;
    ensure!(
        sts.trim().is_empty(),
        "a StatefulSet was created from an invalid template: {sts}"
    );
    // The operator keeps running (no crash loop).
    let restarts = operator_restarts(&ctx)?;
    // Pods replaced meanwhile (another test kills the leader) do not count; restarts do.
    let restarted = restarts
        .iter()
        .any(|(pod, n)| restarts_before.iter().any(|(p, m)| p == pod && n > m));
    ensure!(
        !restarted,
        "operator restarts: {restarts_before:?} before the invalid group, {restarts:?} after"
    );
    Ok(())
}

async fn deleting_a_group_removes_everything_it_created(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-delete")?;
    create_group(&ctx, &ns.name, &test_group(&ctx, "db", "PrimaryBackup", 3)).await?;
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(180)).await?;
    ctx.kubectl(&[
        "delete",
        "rg",
        "db",
        "-n",
        &ns.name,
        "--wait=true",
        "--timeout=60s",
    ])?;
    let kinds = "statefulsets,services,endpointslices,poddisruptionbudgets,secrets,pods,persistentvolumeclaims";
    wait_for(
        "every object of the group to be gone",
        Duration::from_secs(120),
        || async {
            let left = labelled(&ctx, &ns.name, kinds, "quorate.dev/group=db")?;
            let pvcs = ctx.kubectl(&["get", "pvc", "-n", &ns.name, "-o", "name"])?;
            Ok((left.is_empty() && pvcs.trim().is_empty()).then_some(()))
        },
    )
    .await
}

/// The group's Degraded condition once its reason is `reason`.
async fn wait_degraded(ctx: &Ctx, ns: &str, group: &str, reason: &str) -> Result<String> {
    wait_for(
        &format!("{group}: Degraded with reason {reason}"),
        Duration::from_secs(90),
        || async {
            let g = groups(ctx, ns).get(group).await?;
            Ok(g.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .filter(|c| c.status == "True" && c.reason == reason)
                .map(|c| c.message.clone()))
        },
    )
    .await
}

/// A user's Service under a group's `-rw` name and a user's Secret under another group's CA
/// Secret name: neither is written to, the groups say which object is in the way and whose it
/// is, and deleting the groups leaves both objects as the user made them. (Two groups cannot
/// collide: the only derived names one group could share with another are a group named
/// `NAME-witness`'s, which the API server refuses; tests/invalid/43.)
async fn objects_in_the_way_are_reported_and_never_taken_over(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-conflict")?;
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-rw", "labels": {"app": "mine"}},
        "spec": {"ports": [{"name": "mine", "port": 1234}]}
    });
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "jobs-ca"},
        "stringData": {"ca.crt": "the user's own CA"}
    });
    for object in [&service, &secret] {
        ctx.kubectl_stdin(
            &["apply", "-n", &ns.name, "-f", "-"],
            Some(&object.to_string()),
        )?;
    }
    create_group(&ctx, &ns.name, &test_group(&ctx, "web", "PrimaryBackup", 3)).await?;
    create_group(
        &ctx,
        &ns.name,
        &test_group(&ctx, "jobs", "PrimaryBackup", 3),
    )
    .await?;
    let web = wait_degraded(&ctx, &ns.name, "web", "NameConflict").await?;
    ensure!(
        web.contains("Service web-rw exists and is not this group's (no owner)"),
        "web: {web}"
    );
    let jobs = wait_degraded(&ctx, &ns.name, "jobs", "NameConflict").await?;
    ensure!(
        jobs.contains("Secret jobs-ca exists and is not this group's (no owner)"),
        "jobs: {jobs}"
    );
    for (reason_for, needle) in [("web-rw", "Service web-rw"), ("jobs-ca", "Secret jobs-ca")] {
        let events = event_messages(&ctx, &ns.name, "NameConflict")?;
        ensure!(
            events.contains(needle),
            "no NameConflict event for {reason_for}: {events}"
        );
    }
    // The rest of web is created: its members run (the group cannot be Ready without its
    // Service, and says so).
    // (`kubectl rollout status` does not follow OnDelete StatefulSets: the ready replicas do.)
    ctx.kubectl(&[
        "wait",
        "statefulset/web",
        "-n",
        &ns.name,
        "--for=jsonpath={.status.readyReplicas}=3",
        "--timeout=180s",
    ])?;
    let untouched = |ctx: &Ctx| -> Result<()> {
        let svc = ctx.kubectl(&["get", "service", "web-rw", "-n", &ns.name, "-o", "json"])?;
        let svc: Value = serde_json::from_str(&svc)?;
        ensure!(
            svc["metadata"].get("ownerReferences").is_none()
                && svc["spec"]["ports"][0]["port"] == json!(1234)
                && svc["metadata"]["labels"] == json!({"app": "mine"}),
            "the user's Service was changed: {svc}"
        );
        let sec = ctx.kubectl(&["get", "secret", "jobs-ca", "-n", &ns.name, "-o", "json"])?;
        let sec: Value = serde_json::from_str(&sec)?;
        ensure!(
            sec["metadata"].get("ownerReferences").is_none()
                && sec["data"].as_object().is_some_and(|d| d.len() == 1),
            "the user's Secret was changed: {sec}"
        );
        Ok(())
    };
    untouched(&ctx)?;
    for group in ["web", "jobs"] {
        ctx.kubectl(&[
            "delete",
            "rg",
            group,
            "-n",
            &ns.name,
            "--wait=true",
            "--timeout=60s",
        ])?;
    }
    wait_for(
        "the groups' own objects to be gone",
        Duration::from_secs(120),
        || async {
            let left = labelled(
                &ctx,
                &ns.name,
                "statefulsets,services,secrets",
                "quorate.dev/group",
            )?;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await?;
    untouched(&ctx)
}

/// A namespace that enforces the `restricted` Pod Security profile and a template that breaks
/// it: the StatefulSet cannot create the pods, and the group says why with the admission
/// message (not only the StatefulSet's Events); once the template complies, the group comes up.
async fn pods_refused_by_pod_security_are_reported_in_the_status(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-psa")?;
    ctx.kubectl(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ])?;
    let mut group = test_group(&ctx, "db", "PrimaryBackup", 3);
    let compliant = group.clone();
    group["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] =
        json!(true);
    create_group(&ctx, &ns.name, &group).await?;
    let message = wait_degraded(&ctx, &ns.name, "db", "PodsRejected").await?;
    ensure!(
        message.starts_with("StatefulSet db: ")
            && message.contains("violates PodSecurity")
            && message.contains("allowPrivilegeEscalation"),
        "message: {message}"
    );
    let events = event_messages(&ctx, &ns.name, "PodsRejected")?;
    ensure!(
        events.contains("violates PodSecurity"),
        "no PodsRejected event: {events}"
    );
    ctx.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            &ns.name,
            "-f",
            "-",
        ],
        Some(&compliant.to_string()),
    )?;
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(240)).await?;
    Ok(())
}

/// A budget for a group of one voter would block every node drain for ever (its majority is
/// itself): such a group has none, gets one when it grows to two voters and loses it again when
/// it shrinks back to one.
async fn a_group_with_one_voter_has_no_disruption_budget(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-pdb")?;
    let budgets = |ctx: &Ctx| -> Result<String> {
        ctx.kubectl(&["get", "poddisruptionbudgets", "-n", &ns.name, "-o", "name"])
    };
    let wait_budget = |present: bool| {
        let ctx = &ctx;
        async move {
            wait_for(
                if present {
                    "a PodDisruptionBudget for two voters"
                } else {
                    "no PodDisruptionBudget for one voter"
                },
                Duration::from_secs(60),
                || async {
                    let found = budgets(ctx)?.trim() == "poddisruptionbudget.policy/solo";
                    Ok((found == present).then_some(()))
                },
            )
            .await
        }
    };
    create_group(&ctx, &ns.name, &test_group(&ctx, "solo", "ActiveActive", 1)).await?;
    wait_ready(&ctx, &ns.name, "solo", Duration::from_secs(120)).await?;
    ensure!(
        budgets(&ctx)?.trim().is_empty(),
        "a budget for one voter: {}",
        budgets(&ctx)?
    );
    for (replicas, present) in [(2, true), (1, false)] {
        ctx.kubectl(&[
            "scale",
            "-n",
            &ns.name,
            "rg/solo",
            &format!("--replicas={replicas}"),
        ])?;
        wait_budget(present).await?;
    }
    Ok(())
}

/// The group's NetworkPolicy as the API server holds it: the gRPC port for the group's pods and
/// the operator's only, the HTTP and workload ports for everyone, repaired when changed and
/// deleted when the group turns it off. The test bed's kernel cannot run a NetworkPolicy
/// enforcer (docs/security.md, "Network"): what reaches a pod is not checked here.
async fn the_network_policy_admits_only_the_group_and_the_operator(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-netpol")?;
    create_group(&ctx, &ns.name, &test_group(&ctx, "db", "PrimaryBackup", 3)).await?;
    let policy = || -> Result<Option<Value>> {
        let out = ctx.kubectl(&[
            "get",
            "networkpolicy",
            "-n",
            &ns.name,
            "--ignore-not-found",
            "db",
            "-o",
            "json",
        ])?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&out)?))
    };
    let wait_policy = |what: &'static str, want: fn(&Value) -> bool| {
        let policy = &policy;
        async move {
            wait_for(what, Duration::from_secs(60), || async {
                Ok(policy()?.filter(want))
            })
            .await
        }
    };
    let written = wait_policy("the group's NetworkPolicy", |_| true).await?;
    let ingress = &written["spec"]["ingress"];
    ensure!(
        written["spec"]["podSelector"]["matchLabels"] == json!({"quorate.dev/group": "db"})
            && written["spec"]["policyTypes"] == json!(["Ingress"]),
        "the policy selects the group's pods for ingress: {written}"
    );
    ensure!(
        ingress[0]["ports"] == json!([{"port": 7470, "protocol": "TCP"}])
            && ingress[0]["from"][0]
                == json!({"podSelector": {"matchLabels": {"quorate.dev/group": "db"}}})
            && ingress[0]["from"][1]["namespaceSelector"]["matchLabels"]
                == json!({"kubernetes.io/metadata.name": OPERATOR_NAMESPACE})
            && ingress[0]["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                == "operator"
            && ingress[0]["from"].as_array().map(Vec::len) == Some(2),
        "the gRPC port admits the group's pods and the operator's only: {ingress}"
    );
    ensure!(
        ingress[1].get("from").is_none()
            && ingress[1]["ports"]
                == json!([{"port": 7471, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}]),
        "the HTTP port and the workload's port admit everyone: {ingress}"
    );
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(180)).await?;

    // Someone opens the gRPC port to everyone: the operator puts its rule back.
    ctx.kubectl(&[
        "patch",
        "networkpolicy",
        "db",
        "-n",
        &ns.name,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/ingress/0/from"}]"#,
    ])?;
    wait_policy("the operator to repair its NetworkPolicy", |p| {
        p["spec"]["ingress"][0]["from"].as_array().map(Vec::len) == Some(2)
    })
    .await?;

    // Turned off for the group: the operator deletes it.
    ctx.kubectl(&[
        "patch",
        "rg",
        "db",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"networkPolicy":{"enabled":false}}}"#,
    ])?;
    wait_for(
        "the operator to delete the group's NetworkPolicy",
        Duration::from_secs(60),
        || async { Ok(policy()?.is_none().then_some(())) },
    )
    .await?;
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(60)).await?;
    Ok(())
}

/// The pods of a group and their uids.
fn pod_uids(ctx: &Ctx, ns: &str, group: &str) -> Result<BTreeMap<String, String>> {
    let out = ctx.kubectl(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("quorate.dev/group={group}"),
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}={.metadata.uid}{"\n"}{end}"#,
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(pod, uid)| (pod.to_owned(), uid.to_owned()))
        .collect())
}

/// Makes the operator look at the group now (a change of the group triggers a reconcile; the
/// Secrets are read again once `SECRET_REREAD_SECONDS` have passed): every 30th call of a
/// `wait_for` poll (every ~3 s).
fn poke(ctx: &Ctx, ns: &str, group: &str, n: u32) -> Result<()> {
    if !n.is_multiple_of(30) {
        return Ok(());
    }
    ctx.kubectl(&[
        "annotate",
        "replicagroup",
        group,
        "-n",
        ns,
        "--overwrite",
        &format!("e2e.quorate.dev/poke={}", n / 30),
    ])?;
    Ok(())
}

/// A deleted group CA is an incident, not a reset: the group says so with the recovery steps,
/// no new CA is made, and the group keeps failing over and routing on what the operator read
/// before. Restored from a backup it is healthy again. Replaced on purpose (the members'
/// Secret deleted too, as the message says), every member restarts together with the new CA
/// and the group is Ready again, with its state.
async fn a_lost_ca_is_an_incident_and_a_replaced_one_restarts_the_members(ctx: Ctx) -> Result<()> {
    let (ns, old, epoch) = routed_db(&ctx, "op-ca").await?;
    let secret = |name: &str| -> Result<Value> {
        Ok(serde_json::from_str(&ctx.kubectl(&[
            "get", "secret", name, "-n", &ns.name, "-o", "json",
        ])?)?)
    };
    let mut backup = secret("db-ca")?;
    ctx.kubectl(&["delete", "secret", "db-ca", "-n", &ns.name])?;

    // Reported, with both ways out, as a condition and an Event; no new CA.
    let poked = std::sync::atomic::AtomicU32::new(0);
    let message = wait_for(
        "db: Degraded with reason CaLost",
        Duration::from_secs(90),
        || async {
            poke(&ctx, &ns.name, "db", poked.fetch_add(1, Ordering::Relaxed))?;
            let g = groups(&ctx, &ns.name).get("db").await?;
            Ok(g.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .filter(|c| c.status == "True" && c.reason == "CaLost")
                .map(|c| c.message.clone()))
        },
    )
    .await?;
    let replace = format!("kubectl delete secret -n {} db-agent-tls", ns.name);
    ensure!(
        message.contains("Secret db-ca") && message.contains(&replace),
        "CaLost message: {message}"
    );
    ensure!(
        event_messages(&ctx, &ns.name, "CaLost")?.contains("Secret db-ca"),
        "no CaLost Event"
    );
    let made = ctx.kubectl(&[
        "get",
        "secret",
        "db-ca",
        "-n",
        &ns.name,
        "--ignore-not-found",
        "-o",
        "name",
    ])?;
    ensure!(made.trim().is_empty(), "a new CA was made: {made}");

    // The members run on, and a crashed primary is still replaced and routed.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns.name);
    pods.delete(
        &old,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let (new, new_epoch) =
        wait_routed_primary(&ctx, &ns.name, "db", epoch, Duration::from_secs(30)).await?;
    ensure!(new != old, "the deleted primary {old} is primary again");

    // Restored from the backup: healthy again.
    let metadata = backup["metadata"].as_object_mut().context("metadata")?;
    for field in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        metadata.remove(field);
    }
    ctx.kubectl_stdin(
        &["create", "-n", &ns.name, "-f", "-"],
        Some(&backup.to_string()),
    )?;
    wait_for(
        "db: Ready with the restored CA",
        Duration::from_secs(120),
        || async {
            poke(&ctx, &ns.name, "db", poked.fetch_add(1, Ordering::Relaxed))?;
            let g = groups(&ctx, &ns.name).get("db").await?;
            Ok(condition_true(&g, "Ready").then_some(()))
        },
    )
    .await?;

    // Replaced on purpose: every member restarts at once with the new CA; the group keeps its
    // state (the epoch goes on from where it was) and is Ready again.
    let before = pod_uids(&ctx, &ns.name, "db")?;
    ctx.kubectl(&["delete", "secret", "db-ca", "db-agent-tls", "-n", &ns.name])?;
    wait_for(
        "every member restarted with the new CA, and db Ready",
        Duration::from_secs(240),
        || async {
            poke(&ctx, &ns.name, "db", poked.fetch_add(1, Ordering::Relaxed))?;
            let now = pod_uids(&ctx, &ns.name, "db")?;
            let all_new = now.len() == before.len()
                && now.iter().all(|(pod, uid)| before.get(pod) != Some(uid));
            let g = groups(&ctx, &ns.name).get("db").await?;
            Ok((all_new && condition_true(&g, "Ready")).then_some(()))
        },
    )
    .await?;
    let replaced = secret("db-ca")?;
    ensure!(
        replaced["data"]["ca.crt"] != backup["data"]["ca.crt"],
        "the CA was not replaced"
    );
    ensure!(
        event_messages(&ctx, &ns.name, "CaReplaced")?.contains("restarting"),
        "no CaReplaced Event"
    );
    // The group's state survived: its epoch goes on from where it was.
    wait_routed_primary(&ctx, &ns.name, "db", new_epoch - 1, Duration::from_secs(60)).await?;
    Ok(())
}

/// Specs the ReplicaGroup schema accepts but whose derived objects the API server refuses: each
/// group says so within a reconcile (`Degraded`/`InvalidSpec` with the object, the field and
/// the API server's message, and an Event), and a fixed spec clears it.
async fn specs_whose_objects_the_api_server_refuses_are_reported(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("op-refused")?;
    type Change = fn(&mut Value);
    let cases: [(&str, Change, &str); 11] = [
        (
            "no-image",
            |c| {
                c.as_object_mut().map(|c| c.remove("image"));
            },
            "image: Required value",
        ),
        (
            "bad-quantity",
            |c| c["resources"]["limits"]["memory"] = json!("lots"),
            "quantities must match",
        ),
        (
            "bad-container-name",
            |c| c["name"] = json!("Bad_Name"),
            "containers[0].name",
        ),
        (
            "long-port-name",
            |c| c["ports"][0]["name"] = json!("a-very-long-port-name"),
            "must be no more than 15 characters",
        ),
        (
            "missing-volume",
            |c| c["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]),
            "volumeMounts[0].name: Not found",
        ),
        (
            "request-above-limit",
            |c| {
                c["resources"] =
                    json!({"requests": {"memory": "128Mi"}, "limits": {"memory": "64Mi"}})
            },
            "must be less than or equal to memory limit",
        ),
        (
            "bad-pull-policy",
            |c| c["imagePullPolicy"] = json!("Sometimes"),
            "imagePullPolicy: Unsupported value",
        ),
        (
            "negative-uid",
            |c| c["securityContext"]["runAsUser"] = json!(-1),
            "runAsUser",
        ),
        (
            "two-probe-handlers",
            |c| {
                c["livenessProbe"] =
                    json!({"exec": {"command": ["true"]}, "httpGet": {"port": 8080}})
            },
            "more than 1 handler type",
        ),
        (
            "bad-env-name",
            |c| c["env"] = json!([{"name": "A=B", "value": "x"}]),
            "env[0].name",
        ),
        (
            "bad-env-source",
            |c| c["env"] = json!([{"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
            "env[0].valueFrom",
        ),
    ];
    for (name, change, _) in &cases {
        let mut group = test_group(&ctx, name, "ActiveActive", 1);
        change(&mut group["spec"]["template"]["spec"]["containers"][0]);
        create_group(&ctx, &ns.name, &group).await?;
    }
    for (name, _, expected) in &cases {
        let message = wait_degraded(&ctx, &ns.name, name, "InvalidSpec").await?;
        ensure!(
            message.contains(&format!("StatefulSet {name}")) && message.contains(expected),
            "{name}: the InvalidSpec message does not say {expected:?}: {message}"
        );
    }
    let events = event_messages(&ctx, &ns.name, "InvalidSpec")?;
    for (name, _, _) in &cases {
        ensure!(
            events.contains(&format!("StatefulSet {name},")),
            "no InvalidSpec Event for {name}: {events}"
        );
    }
    // Fixed, the group runs.
    create_group(
        &ctx,
        &ns.name,
        &test_group(&ctx, "no-image", "ActiveActive", 1),
    )
    .await?;
    wait_ready(&ctx, &ns.name, "no-image", Duration::from_secs(120)).await?;
    Ok(())
}

/// What a roll of a group's members cost, seen through `NAME-rw` (asked every 100 ms).
pub struct RollSeen {
    pub took: Duration,
    pub longest_gap: Duration,
    pub answers: u32,
    pub asked: u32,
    /// The epoch before and after: a roll changes the primary exactly once.
    pub epochs: (u64, u64),
    /// The pods in the order they were restarted.
    pub order: Vec<String>,
}

impl std::fmt::Display for RollSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ms, longest gap through db-rw {} ms, {} answers of {}, epoch {} -> {}, order {:?}",
            self.took.as_millis(),
            self.longest_gap.as_millis(),
            self.answers,
            self.asked,
            self.epochs.0,
            self.epochs.1,
            self.order
        )
    }
}

/// Runs `start` (something that gives the members a new pod template) on the Ready group `db`
/// in `ns`, then asks `db-rw` who answers every 100 ms until the operator saw the change and
/// the group is Ready and UpToDate again (and, with `every_pod`, every pod was replaced). Bounded: a roll of three members takes well under a
/// minute here.
pub async fn roll_with_traffic(
    ctx: &Ctx,
    ns: &str,
    epoch: u64,
    start: impl FnOnce() -> Result<()>,
    every_pod: bool,
) -> Result<RollSeen> {
    let before = pod_uids(ctx, ns, "db")?;
    let rw = service_ip(ctx, ns, "db-rw").await?;
    start()?;
    // Done once the operator saw the change (it may come later: an upgrade's new leader).
    let generation = groups(ctx, ns)
        .get("db")
        .await?
        .metadata
        .generation
        .unwrap_or(0);
    let started = Instant::now();
    let probe = PrimaryProbe::start(ctx, &rw);
    let mut polls = 0u32;
    let group = loop {
        if started.elapsed() > Duration::from_secs(300) {
            let (_, answers, asked) = probe.stop()?;
            bail!("the members did not roll within 300 s ({answers} answers of {asked})");
        }
        poke(ctx, ns, "db", polls)?;
        polls += 1;
        let now = pod_uids(ctx, ns, "db")?;
        let all_new =
            now.len() == before.len() && now.iter().all(|(pod, uid)| before.get(pod) != Some(uid));
        let g = groups(ctx, ns).get("db").await?;
        let seen = g
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_some_and(|o| o >= generation);
        if (all_new || !every_pod)
            && seen
            && condition_true(&g, "Ready")
            && condition_true(&g, "UpToDate")
        {
            break g;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let (longest_gap, answers, asked) = probe.stop()?;
    let order = restart_order(ctx, ns)?;
    Ok(RollSeen {
        took: started.elapsed(),
        longest_gap,
        answers,
        asked,
        epochs: (
            epoch,
            group.status.and_then(|s| s.epoch).unwrap_or_default() as u64,
        ),
        order,
    })
}

/// Asks `http://IP:8080/` every 100 ms who answers, on a thread and runtime of its own: the
/// checks beside it run kubectl (blocking), which must not hold up the asking and show up as a
/// gap of the service. Bounded: it stops when told, or after 600 s.
struct PrimaryProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<(Duration, u32, u32)>>,
}

impl PrimaryProbe {
    fn start(ctx: &Ctx, ip: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ctx, ip, flag) = (ctx.clone(), ip.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let started = Instant::now();
                let mut last_answer = Instant::now();
                let (mut longest_gap, mut answers, mut asked) = (Duration::ZERO, 0u32, 0u32);
                while !flag.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(600)
                {
                    asked += 1;
                    let primary = who_answers(&ctx, &ip)
                        .await
                        .is_ok_and(|a| a["role"] == "Primary");
                    if primary {
                        longest_gap = longest_gap.max(last_answer.elapsed());
                        last_answer = Instant::now();
                        answers += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok((longest_gap.max(last_answer.elapsed()), answers, asked))
            })
        });
        Self { stop, thread }
    }

    /// (longest gap between answers as the primary, answers, asked).
    fn stop(self) -> Result<(Duration, u32, u32)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

/// The member pods of `db` by creation: the order a roll restarted them in (its steps are
/// seconds apart, the timestamps' resolution is one).
fn restart_order(ctx: &Ctx, ns: &str) -> Result<Vec<String>> {
    let listed = ctx.kubectl(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "quorate.dev/group=db,quorate.dev/component=member",
        "--sort-by=.metadata.creationTimestamp",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    Ok(listed.split_whitespace().map(str::to_owned).collect())
}

/// A roll changes the primary once, restarts the old primary last, and `NAME-rw` answers as
/// the primary throughout but for a hand-off's gap.
fn one_switchover_and_no_gap(seen: &RollSeen, old_primary: &str) -> Result<()> {
    ensure!(
        seen.epochs.1 == seen.epochs.0 + 1,
        "a roll changes the primary exactly once: {seen}"
    );
    ensure!(
        seen.order.len() == 3 && seen.order.last().map(String::as_str) == Some(old_primary),
        "backups first, the old primary {old_primary} last: {seen}"
    );
    ensure!(
        seen.longest_gap < Duration::from_secs(3),
        "db-rw did not answer as the primary for {} ms during the roll: {seen}",
        seen.longest_gap.as_millis()
    );
    Ok(())
}

/// A re-issued members' certificate (as 30 days before it expires; here because its Secret was
/// deleted, which asks for the same with the CA kept) rolls the members one at a time with the
/// same CA: old and new members talk throughout.
async fn a_new_member_certificate_rolls_the_members_with_traffic_running(ctx: Ctx) -> Result<()> {
    let (ns, primary, epoch) = routed_db(&ctx, "op-rotate").await?;
    let data = |name: &str, key: &str| -> Result<String> {
        ctx.kubectl(&[
            "get",
            "secret",
            name,
            "-n",
            &ns.name,
            "-o",
            &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
        ])
    };
    let (ca_before, cert_before) = (data("db-ca", "ca.crt")?, data("db-agent-tls", "tls.crt")?);
    let seen = roll_with_traffic(
        &ctx,
        &ns.name,
        epoch,
        || {
            ctx.kubectl(&["delete", "secret", "db-agent-tls", "-n", &ns.name])
                .map(drop)
        },
        true,
    )
    .await?;
    eprintln!("    member certificate roll: {seen}");
    ensure!(
        data("db-ca", "ca.crt")? == ca_before,
        "the CA changed: a re-issue keeps it"
    );
    ensure!(
        data("db-agent-tls", "tls.crt")? != cert_before,
        "the members' certificate was not re-issued"
    );
    one_switchover_and_no_gap(&seen, &primary)
}

/// Sets (or with `None` removes) an annotation of group `db`'s pod template: a new template.
fn annotate_template(ctx: &Ctx, ns: &str, key: &str, value: Option<&str>) -> Result<()> {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {key: value}}}}});
    ctx.kubectl(&[
        "patch",
        "replicagroup",
        "db",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ])
    .map(drop)
}

/// A change of the group's pod template (here an annotation, as `kubectl rollout restart` makes)
/// is rolled by the operator, not by the StatefulSet: backups first, one switchover, the old
/// primary last.
async fn a_template_change_rolls_the_members_with_one_switchover(ctx: Ctx) -> Result<()> {
    let (ns, primary, epoch) = routed_db(&ctx, "op-roll").await?;
    let seen = roll_with_traffic(
        &ctx,
        &ns.name,
        epoch,
        || {
            annotate_template(
                &ctx,
                &ns.name,
                "example.com/restarted-at",
                Some("2026-12-07T00:00:00Z"),
            )
        },
        true,
    )
    .await?;
    eprintln!("    template roll: {seen}");
    one_switchover_and_no_gap(&seen, &primary)
}

/// A rollback in the middle of a roll: the template goes back to the one the group started
/// with while the roll is under way. The pods already restarted roll back, the others (the
/// primary among them) were never touched and are up to date again: the group keeps its
/// primary, and `NAME-rw` answers throughout.
async fn a_rollback_during_a_roll_restarts_only_what_rolled_and_keeps_the_primary(
    ctx: Ctx,
) -> Result<()> {
    let (ns, primary, epoch) = routed_db(&ctx, "op-rollback").await?;
    let annotate =
        |value: Option<&str>| annotate_template(&ctx, &ns.name, "example.com/release", value);
    let before = pod_uids(&ctx, &ns.name, "db")?;
    let seen = roll_with_traffic(
        &ctx,
        &ns.name,
        epoch,
        || {
            annotate(Some("2"))?;
            // Back as soon as the first pod was replaced (bounded: a restart takes seconds here).
            let started = Instant::now();
            loop {
                let now = pod_uids(&ctx, &ns.name, "db")?;
                if now
                    .iter()
                    .any(|(pod, uid)| before.get(pod).is_some_and(|b| b != uid))
                {
                    break;
                }
                ensure!(
                    started.elapsed() < Duration::from_secs(120),
                    "no pod was restarted within 120 s of the change"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            annotate(None)
        },
        false,
    )
    .await?;
    eprintln!("    rollback during a roll: {seen}");
    let g = groups(&ctx, &ns.name).get("db").await?;
    let status = g.status.context("status")?;
    ensure!(
        status.epoch == Some(epoch as i64) && status.primary.as_deref() == Some(primary.as_str()),
        "a rollback before the primary's turn keeps the primary: {primary} at {epoch} -> {:?} at {:?}",
        status.primary,
        status.epoch
    );
    let now = pod_uids(&ctx, &ns.name, "db")?;
    ensure!(
        now.get(&primary) == before.get(&primary),
        "the primary {primary} was restarted"
    );
    ensure!(
        seen.longest_gap < Duration::from_secs(3),
        "db-rw did not answer as the primary for {} ms: {seen}",
        seen.longest_gap.as_millis()
    );
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// `kubectl quorate restart`: every member restarts, backups first, and the group changes its
/// primary exactly once (a planned switchover to a restarted member), ending Ready.
async fn a_rolling_restart_through_the_plugin_changes_the_primary_once(ctx: Ctx) -> Result<()> {
    let (ns, old, epoch) = routed_db(&ctx, "op-restart").await?;
    let before = pod_uids(&ctx, &ns.name, "db")?;
    let out = plugin(
        &ctx,
        &["-n", &ns.name, "restart", "db", "--timeout", "180s"],
    )?;
    ensure!(
        out.contains("on an older pod template") && out.contains("every member restarted"),
        "the plugin did not follow the roll: {out}"
    );
    // The old primary restarts last, after the switchover.
    let restarted = restart_order(&ctx, &ns.name)?;
    ensure!(
        restarted.len() == 3 && restarted.last() == Some(&old),
        "restart order: {restarted:?} (primary {old}): {out}"
    );
    let now = pod_uids(&ctx, &ns.name, "db")?;
    ensure!(
        now.len() == before.len() && now.iter().all(|(pod, uid)| before.get(pod) != Some(uid)),
        "not every pod restarted: {before:?} -> {now:?}"
    );
    let g = wait_ready(&ctx, &ns.name, "db", Duration::from_secs(60)).await?;
    let status = g.status.context("status")?;
    ensure!(
        status.epoch == Some(epoch as i64 + 1),
        "one switchover expected: epoch {epoch} -> {:?}",
        status.epoch
    );
    ensure!(
        status.primary.as_deref() != Some(old.as_str()),
        "{old} is primary again"
    );
    // A missing group is an error (one that is not Ready is refused: src/cli/restart.rs).
    let refused = plugin(&ctx, &["-n", &ns.name, "restart", "nosuch"])
        .expect_err("a missing group")
        .to_string();
    ensure!(refused.contains("not found"), "{refused}");
    Ok(())
}
