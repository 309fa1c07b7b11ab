//! What the cluster benchmarks share: one failover through Kubernetes routing, measured from
//! the delete call, the operator leader's metrics, and figures.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

use crate::operator;
use crate::support::{Ctx, Namespace, wait_for};

pub fn percentile(sorted: &[u128], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Percentiles of durations in milliseconds; shown as `p50=… p95=… max=… n=…`.
pub struct Summary {
    pub p50: u128,
    pub p95: u128,
    pub max: u128,
    pub n: usize,
}

impl Summary {
    pub fn of(mut ms: Vec<u128>) -> Self {
        ms.sort_unstable();
        Self {
            p50: percentile(&ms, 0.5),
            p95: percentile(&ms, 0.95),
            max: ms.last().copied().unwrap_or(0),
            n: ms.len(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50={} p95={} max={} n={}",
            self.p50, self.p95, self.max, self.n
        )
    }
}

/// What one failover took, from the delete call.
pub struct Measured {
    /// Until a request through `-rw` was answered by the new primary (the figure).
    pub total_ms: u128,
    /// Until the `-rw` EndpointSlice named the new primary.
    pub slice_ms: u128,
}

/// Each round starts from a whole group: every member pod Ready for longer than the cluster
/// DNS caches a missing name (the test bed's CoreDNS: 5 s). A pod replaced in the previous round
/// is not resolvable by its peers until then, and deleting the next primary meanwhile measures a
/// group that has lost its quorum, not a failover.
async fn settle(ctx: &Ctx, ns: &str, group: &str, members: usize) -> Result<()> {
    const DNS_NEGATIVE_CACHE: Duration = Duration::from_secs(6);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    wait_for(
        "every member pod Ready beyond the DNS cache time",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(
                    &kube::api::ListParams::default().labels(&format!("quorate.dev/group={group}")),
                )
                .await?;
            let now = jiff::Timestamp::now();
            let ready_since = |p: &Pod| {
                p.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.status == "True")?
                    .last_transition_time
                    .clone()
            };
            let settled = list.items.len() == members
                && list.items.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && ready_since(p).is_some_and(|t| {
                            now.duration_since(t.0).as_millis() as u128
                                >= DNS_NEGATIVE_CACHE.as_millis()
                        })
                });
            Ok(settled.then_some(()))
        },
    )
    .await
}

/// One failover: delete the primary's pod, wait for the new primary to be routed and to answer.
pub async fn failover(
    ctx: &Ctx,
    ns: &str,
    group: &str,
    members: usize,
    grace: Option<u32>,
) -> Result<Measured> {
    operator::wait_ready(ctx, ns, group, Duration::from_secs(180)).await?;
    settle(ctx, ns, group, members).await?;
    let (old, epoch) =
        operator::wait_routed_primary(ctx, ns, group, 0, Duration::from_secs(30)).await?;
    let rw = operator::service_ip(ctx, ns, &format!("{group}-rw")).await?;
    let old_ip = operator::pod_ip(ctx, ns, &old)
        .await?
        .context("old primary IP")?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let started = Instant::now();
    pods.delete(
        &old,
        &DeleteParams {
            grace_period_seconds: grace,
            ..Default::default()
        },
    )
    .await?;
    let mut slice_ms = None;
    // Polled every 20 ms; a request that kube-proxy still sends to the old pod's address gets no
    // answer at all, so each one is cut off after 250 ms and tried again (as a client would).
    while started.elapsed() < Duration::from_secs(30) {
        let (addresses, slice_epoch) = operator::rw_slice(ctx, ns, group).await?;
        let named = addresses.len() == 1
            && addresses[0] != old_ip
            && slice_epoch.is_some_and(|e| e > epoch);
        if named {
            let at = *slice_ms.get_or_insert(started.elapsed().as_millis());
            if let Ok(Ok(answer)) =
                tokio::time::timeout(Duration::from_millis(250), operator::who_answers(ctx, &rw))
                    .await
            {
                let ok = answer["role"] == "Primary"
                    && answer["member"] != old.as_str()
                    && answer["epoch"].as_u64().is_some_and(|e| e > epoch);
                if ok {
                    return Ok(Measured {
                        total_ms: started.elapsed().as_millis(),
                        slice_ms: at,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the operator and the group said when it did not happen: the figure alone does not
    // tell where a failover got stuck.
    let status = operator::groups(ctx, ns)
        .get(group)
        .await
        .ok()
        .and_then(|g| g.status);
    let slice = operator::rw_slice(ctx, ns, group).await.ok();
    let events = ctx
        .kubectl(&[
            "get",
            "events",
            "-n",
            ns,
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=T:.lastTimestamp,R:.reason,M:.message",
        ])
        .unwrap_or_default();
    anyhow::bail!(
        "no new primary routed and answering within 30 s (slice named one after {slice_ms:?} ms): deleted {old} (epoch {epoch}); -rw now {slice:?}; status {status:#?}; events:\n{events}"
    )
}

/// The operator leader's metrics (Prometheus text).
pub async fn leader_metrics(ctx: &Ctx) -> Result<String> {
    let holder = ctx.kubectl(&[
        "get",
        "lease",
        operator::RELEASE,
        "-n",
        operator::OPERATOR_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    let ip = ctx.kubectl(&[
        "get",
        "pod",
        &holder,
        "-n",
        operator::OPERATOR_NAMESPACE,
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    let (code, metrics) = ctx
        .http_get(&format!("http://{ip}:8080/metrics"), None)
        .await?;
    ensure!(code == 200, "operator metrics: HTTP {code}");
    Ok(metrics)
}

/// The value of an unlabelled metric.
pub fn metric(metrics: &str, name: &str) -> Result<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} in the operator's metrics"))
}

/// The operator leader's resident memory, MiB.
pub async fn operator_rss_mib(ctx: &Ctx) -> Result<f64> {
    let metrics = leader_metrics(ctx).await?;
    Ok(metric(&metrics, "quorate_operator_process_resident_memory_bytes")? / (1024.0 * 1024.0))
}

/// A namespace whose quota admits no pods: its groups are "tiny", the operator does all its
/// per-group work (objects, certificates, a state stream waiting for agents) without hundreds
/// of pods on the test bed.
pub fn podless_namespace(ctx: &Ctx, prefix: &str) -> Result<Namespace> {
    let ns = ctx.namespace(prefix)?;
    let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}});
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&quota.to_string()),
    )?;
    Ok(ns)
}

/// Creates groups `g<i>` for every i in `range` (one-member, in one apply) and waits until every
/// group of the namespace has a status.
pub async fn podless_groups(ctx: &Ctx, ns: &str, range: std::ops::Range<usize>) -> Result<()> {
    let list: Vec<_> = range
        .map(|i| operator::test_group(ctx, &format!("g{i}"), "ActiveActive", 1))
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": list});
    ctx.kubectl_stdin(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(&list.to_string()),
    )?;
    let api = operator::groups(ctx, ns);
    wait_for(
        "every group to have a status",
        Duration::from_secs(900),
        || async {
            let groups = api.list(&Default::default()).await?;
            let done = groups
                .items
                .iter()
                .all(|g| g.status.as_ref().is_some_and(|s| s.phase.is_some()));
            Ok(done.then_some(()))
        },
    )
    .await
}

/// Restarts the operator (a rollout of its Deployment) and waits until a new replica leads:
/// figures of a fresh process, not of one that served an earlier phase's groups.
pub async fn restart_operator(ctx: &Ctx) -> Result<()> {
    let deployment = format!("deployment/{}", operator::RELEASE);
    let ns = operator::OPERATOR_NAMESPACE;
    ctx.kubectl(&["rollout", "restart", &deployment, "-n", ns])?;
    ctx.kubectl(&["rollout", "status", &deployment, "-n", ns, "--timeout=180s"])?;
    wait_for(
        "a restarted operator replica to lead",
        Duration::from_secs(60),
        || async {
            let metrics = leader_metrics(ctx).await?;
            Ok((metric(&metrics, "quorate_operator_leader")? == 1.0).then_some(()))
        },
    )
    .await
}

/// Rounds of a benchmark: `BENCH_ROUNDS` when set to a positive number, else `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(default)
}
